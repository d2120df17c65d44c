use coffer_core::Role;
use coffer_testkit::TestServer;
use serde_json::Value;
use sqlx::Connection;

const SECRET: &str = "CANARY-audit-secret-value";

/// The SQLite file of a server on SQLite (made with `dev_sqlite`, say).
async fn db(srv: &TestServer) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        srv.data_dir().join("coffer.db").display()
    ))
    .await
    .unwrap()
}

/// Every stored audit event as (organisation, action, body), chain by chain in order, read
/// from whichever database the server runs on (on PostgreSQL as the administrative role,
/// past row-level security), each body rendered from its stored form as the store does;
/// and every interned text as stored.
async fn stored_events(srv: &TestServer) -> (Vec<(uuid::Uuid, String, String)>, Vec<String>) {
    const EVENTS: &str = "SELECT c.org_id, l.action, l.time, l.body FROM audit_log l \
         JOIN audit_chains c ON c.chain = l.chain ORDER BY c.org_id, l.seq";
    const STRINGS: &str = "SELECT id, text FROM audit_strings";
    type Event = (Vec<u8>, String, i64, Vec<u8>);
    let (rows, strings): (Vec<Event>, Vec<(i64, String)>) = match &srv.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(&coffer_testkit::pg_admin_url_for(url))
                .await
                .unwrap();
            (
                sqlx::query_as(EVENTS).fetch_all(&mut conn).await.unwrap(),
                sqlx::query_as(STRINGS).fetch_all(&mut conn).await.unwrap(),
            )
        }
        None => {
            let mut conn = db(srv).await;
            (
                sqlx::query_as(EVENTS).fetch_all(&mut conn).await.unwrap(),
                sqlx::query_as(STRINGS).fetch_all(&mut conn).await.unwrap(),
            )
        }
    };
    let texts: std::collections::HashMap<u64, String> = strings
        .iter()
        .map(|(id, t)| (*id as u64, t.clone()))
        .collect();
    let events = rows
        .into_iter()
        .map(|(org, action, time, body)| {
            use coffer_store::audit_codec::{FORMAT_COMPACT, render_body};
            // Every event the service records has a compact form that renders back exactly
            // (otherwise it would be stored as JSON, format 0).
            assert_eq!(body[0], FORMAT_COMPACT, "{action} was stored as JSON");
            let json = render_body(&body, time, &|id| texts.get(&id).cloned()).unwrap();
            (uuid::Uuid::from_slice(&org).unwrap(), action, json)
        })
        .collect();
    (events, strings.into_iter().map(|s| s.1).collect())
}

async fn all_events(c: &coffer_client::Client) -> Vec<Value> {
    c.audit_events(&[("limit", "1000")]).await.unwrap().events
}

#[tokio::test]
async fn every_operation_is_recorded_and_no_secret_reaches_the_log() {
    let srv = TestServer::dev().await;
    let anon = srv.client();
    // A password typed into the username field must not be logged in clear.
    assert!(anon.login("typed-my-password-CANARY", "x").await.is_err());
    let owner = srv.owner().await;
    owner.create_project("web").await.unwrap();
    owner
        .set_param("web", "default", "TOKEN", SECRET, Some(true))
        .await
        .unwrap();
    assert_eq!(
        owner
            .get_param("web", "default", "TOKEN")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some(SECRET)
    );
    owner.list_params("web", "default", true).await.unwrap();
    srv.coffer()
        .identity()
        .add_user_to_org(
            owner.whoami().await.unwrap().org_id,
            "vic",
            "viewer password 1",
            Role::Viewer,
        )
        .await
        .unwrap();
    let viewer = srv.client().with_token(
        srv.client()
            .login("vic", "viewer password 1")
            .await
            .unwrap()
            .token
            .unwrap(),
    );
    assert_eq!(
        viewer
            .get_param("web", "default", "TOKEN")
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );

    let vic_session = viewer.whoami().await.unwrap();
    viewer.logout().await.unwrap();
    let events = all_events(&owner).await;
    let logout = events
        .iter()
        .find(|e| e["event"]["action"] == "auth.logout")
        .expect("logout is audited in the org chain");
    assert_eq!(logout["event"]["actor"]["name"], "vic");
    assert_eq!(vic_session.username, "vic");
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event"]["action"].as_str().unwrap().to_owned(),
                e["event"]["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("auth.login", "success"),
        ("project.create", "success"),
        ("param.set", "success"),
        ("param.get", "success"),
        ("param.list", "success"),
        ("auth.whoami", "success"),
        ("param.get", "denied"),
    ] {
        assert!(
            summary.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "missing {expected:?} in {summary:?}"
        );
    }
    let get = events
        .iter()
        .find(|e| e["event"]["action"] == "param.get")
        .unwrap();
    let ev = &get["event"];
    let t = &ev["target"];
    assert_eq!(
        (t["project"].as_str(), t["env"].as_str(), t["name"].as_str()),
        (Some("web"), Some("default"), Some("TOKEN"))
    );
    let project_id = owner.projects().await.unwrap()[0].id.to_string();
    let env_id = owner.envs("web").await.unwrap()[0].id.to_string();
    assert_eq!(
        (t["project_id"].as_str(), t["env_id"].as_str()),
        (Some(project_id.as_str()), Some(env_id.as_str()))
    );
    assert_eq!(
        t["param_id"].as_str().map(str::len),
        Some(36),
        "parameter id recorded"
    );
    assert_eq!(ev["actor"]["name"], "admin");
    assert_eq!(ev["actor"]["auth_method"], "password");
    assert_eq!(ev["source"], "127.0.0.1");
    assert!(
        ev["user_agent"]
            .as_str()
            .unwrap()
            .starts_with("coffer-client/")
    );
    assert_eq!(ev["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(
        ev["hmac"]["session"].as_str().unwrap().len(),
        64,
        "sessions are correlated by HMAC"
    );
    let denied = events
        .iter()
        .find(|e| e["event"]["outcome"] == "denied")
        .unwrap();
    assert_eq!(
        (
            denied["event"]["actor"]["name"].as_str(),
            denied["event"]["error_code"].as_str()
        ),
        (Some("vic"), Some("forbidden"))
    );

    // Nothing secret anywhere in the stored audit data, in either chain.
    let (stored, texts) = stored_events(&srv).await;
    let all = stored
        .iter()
        .map(|e| e.2.as_str())
        .chain(texts.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !all.contains(SECRET) && !all.contains("CANARY"),
        "secret material in the audit log"
    );
    assert!(!all.contains("viewer password"));
    // The failed login of an unknown user went to the system chain, with an HMAC of the name.
    let sys = stored
        .iter()
        .find(|e| e.0.is_nil() && e.1 == "auth.login")
        .expect("the failed login is in the system chain");
    let failed: Value = serde_json::from_str(&sys.2).unwrap();
    assert_eq!(
        (failed["outcome"].as_str(), failed["error_code"].as_str()),
        (Some("denied"), Some("bad_credentials"))
    );
    assert_eq!(failed["hmac"]["username"].as_str().unwrap().len(), 64);
    srv.stop().await;
}

#[tokio::test]
async fn sealed_server_attempts_are_recorded() {
    let srv = TestServer::production().await;
    let c = srv.client();
    c.init(3, 2).await.unwrap();
    assert_eq!(
        c.login("admin", "whatever").await.unwrap_err().code(),
        Some("sealed")
    );
    let rows: Vec<(String, String)> = stored_events(&srv)
        .await
        .0
        .into_iter()
        .filter(|e| e.0.is_nil())
        .map(|e| (e.1, e.2))
        .collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(actions, vec!["sys.init", "auth.login"]);
    let login: Value = serde_json::from_str(&rows[1].1).unwrap();
    assert_eq!(login["error_code"], "sealed");
    // The init response carried the shares: they must not be in the log.
    assert!(!rows[0].1.contains("shares\":["));
    srv.stop().await;
}

#[tokio::test]
async fn no_audit_no_response_and_service_recovers() {
    let srv = TestServer::dev_sqlite().await;
    let owner = srv.owner().await;
    owner.create_project("web").await.unwrap();
    owner
        .set_param("web", "default", "TOKEN", SECRET, Some(true))
        .await
        .unwrap();
    // Make the audit store unwritable.
    let mut conn = db(&srv).await;
    sqlx::query("CREATE TRIGGER audit_outage BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = owner
        .get_param("web", "default", "TOKEN")
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some("audit_unavailable"))
    );
    assert!(!err.to_string().contains(SECRET));
    let raw = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&srv.ca_pem).unwrap())
        .build()
        .unwrap()
        .get(format!(
            "{}/v1/projects/web/envs/default/params?reveal=true",
            srv.url()
        ))
        .bearer_auth(owner_token(&srv).await)
        .send()
        .await;
    // (The login above could not be audited either, so it was refused: no token, no data.)
    assert!(raw.map(|r| r.status().as_u16()).unwrap_or(503) >= 500);
    let (code, _) = srv.client().health().await.unwrap();
    assert_eq!(
        code, 200,
        "health itself is not audited and reports the failures"
    );
    let metrics = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&srv.ca_pem).unwrap())
        .build()
        .unwrap()
        .get(format!("{}/v1/sys/metrics", srv.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coffer_audit_store_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "coffer_audit_compact_fallbacks_total 0"),
        "{metrics}"
    );
    sqlx::query("DROP TRIGGER audit_outage")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        owner
            .get_param("web", "default", "TOKEN")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some(SECRET)
    );
    srv.stop().await;
}

async fn owner_token(srv: &TestServer) -> String {
    match srv
        .client()
        .login("admin", srv.owner_password.as_deref().unwrap())
        .await
    {
        Ok(r) => r.token.unwrap(),
        Err(_) => "cfs_none".into(),
    }
}

#[tokio::test]
async fn customer_events_permissions_export_and_verify() {
    let srv = TestServer::dev().await;
    let owner = srv.owner().await;
    let detail = serde_json::json!({"ticket": "CHG-42", "approved_by": "alice"});
    let r = owner
        .audit_log("deploy.approved", Some(&detail))
        .await
        .unwrap();
    assert_eq!(r["action"], "customer.deploy.approved");
    assert_eq!(
        owner
            .audit_log("bad action!", None)
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    assert_eq!(
        owner
            .audit_log("ok", Some(&serde_json::json!([1])))
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    let events = all_events(&owner).await;
    let cust = events
        .iter()
        .find(|e| e["event"]["customer"] == true)
        .unwrap();
    assert_eq!(
        (cust["event"]["action"].as_str(), &cust["event"]["detail"]),
        (Some("customer.deploy.approved"), &detail)
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"]["customer"] == true)
            .count(),
        1,
        "rejected customer events are not marked as customer events"
    );

    // Filters and cursors.
    let page = owner
        .audit_events(&[("action", "customer.deploy.approved")])
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    let first = owner.audit_events(&[("limit", "2")]).await.unwrap();
    let cursor = first.next_cursor.clone().unwrap();
    let second = owner
        .audit_events(&[("limit", "2"), ("cursor", &cursor)])
        .await
        .unwrap();
    assert!(second.events[0]["seq"].as_u64().unwrap() > first.events[1]["seq"].as_u64().unwrap());
    assert_eq!(
        owner
            .audit_events(&[("cursor", "!!")])
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );

    // Only Owners and Admins read the log.
    let org = owner.whoami().await.unwrap().org_id;
    srv.coffer()
        .identity()
        .add_user_to_org(org, "cora", "contributor password", Role::Contributor)
        .await
        .unwrap();
    let contributor = srv.client().with_token(
        srv.client()
            .login("cora", "contributor password")
            .await
            .unwrap()
            .token
            .unwrap(),
    );
    assert_eq!(
        contributor.audit_events(&[]).await.unwrap_err().status(),
        Some(403)
    );
    assert_eq!(
        contributor.audit_verify().await.unwrap_err().status(),
        Some(403)
    );
    assert_eq!(
        contributor.audit_export(&[]).await.unwrap_err().status(),
        Some(403)
    );

    owner.audit_checkpoint().await.unwrap();
    let v = owner.audit_verify().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["public_key"].as_str().unwrap().len(), 64);

    let text = owner.audit_export(&[]).await.unwrap().text().await.unwrap();
    let report =
        coffer_core::audit::verify_export(text.as_bytes(), v["public_key"].as_str()).unwrap();
    assert!(
        report.ok && report.events >= 5 && report.checkpoints == 1,
        "{report:?}"
    );
    let json: Value = serde_json::from_str(
        &owner
            .audit_export(&[("format", "json")])
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    // One more event than the first export: the first export's own audit record.
    assert_eq!(
        json["events"].as_array().unwrap().len() as u64,
        report.events + 1
    );
    assert_eq!(json["checkpoints"].as_array().unwrap().len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn streamed_exports_span_many_pages_and_still_verify() {
    let srv = TestServer::dev().await;
    let owner = srv.owner().await;
    let org = owner.whoami().await.unwrap().org_id;
    let mut tasks = Vec::new();
    for t in 0..12 {
        let c = srv.coffer().clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let mut ev = coffer_core::audit::AuditEvent::now(&format!("bulk.{t}.{i}"));
                ev.org_id = Some(org);
                c.audit().record(&ev).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    owner.audit_checkpoint().await.unwrap();
    let ndjson = owner.audit_export(&[]).await.unwrap().text().await.unwrap();
    let r = coffer_core::audit::verify_export(ndjson.as_bytes(), None).unwrap();
    assert!(r.ok && r.events > 1200 && r.checkpoints == 1, "{r:?}");
    let json: Value = serde_json::from_str(
        &owner
            .audit_export(&[("format", "json")])
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        json["events"].as_array().unwrap().len() as u64,
        r.events + 1
    );
    // A time range in the future is empty but well-formed.
    let empty = owner
        .audit_export(&[("from", "2100-01-01T00:00:00Z")])
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(empty.lines().count(), 1, "header only: {empty}");
    assert_eq!(
        owner
            .audit_export(&[("from", "yesterday")])
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    srv.stop().await;
}

/// Write events name the parameter written, also where its name is defined in a parent
/// environment too: deleting the override records the override's id, not the id of the
/// inherited value that shows through afterwards.
#[tokio::test]
async fn write_events_name_the_parameter_written() {
    let srv = TestServer::dev().await;
    let owner = srv.owner().await;
    owner.create_project("web").await.unwrap();
    owner
        .create_env("web", "prod", Some("default"))
        .await
        .unwrap();
    owner
        .set_param("web", "default", "K", "base", None)
        .await
        .unwrap();
    for v in ["override", "override 2"] {
        owner.set_param("web", "prod", "K", v, None).await.unwrap();
    }
    owner.rollback("web", "prod", "K", 1).await.unwrap();
    owner.delete_param("web", "prod", "K").await.unwrap();
    owner.history("web", "prod", "K").await.unwrap();
    let events = all_events(&owner).await;
    let ids = |action: &str, env: &str| -> Vec<String> {
        events
            .iter()
            .map(|e| &e["event"])
            .filter(|e| e["action"] == action && e["target"]["env"] == env)
            .map(|e| e["target"]["param_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (base, prod) = (ids("param.set", "default"), ids("param.set", "prod"));
    assert_eq!((base.len(), prod.len()), (1, 2));
    assert_ne!(base[0], prod[0]);
    assert_eq!(prod[0], prod[1]);
    assert_eq!(ids("param.rollback", "prod"), vec![prod[0].clone()]);
    assert_eq!(ids("param.delete", "prod"), vec![prod[0].clone()]);
    assert_eq!(ids("param.history", "prod"), vec![prod[0].clone()]);
    srv.stop().await;
}
