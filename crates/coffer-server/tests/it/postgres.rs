//! The server on PostgreSQL, as two nodes sharing one database.

use std::time::Duration;

use coffer_testkit::{TestServer, drop_pg_database, pg_database};

#[tokio::test]
async fn two_nodes_on_one_postgres_database() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a = TestServer::production_on(&url).await;
    let b = TestServer::production_on(&url).await;
    let init = a.client().init(3, 2).await.unwrap();
    // Node B sees that the shared database is initialised, but unseals on its own.
    assert!(b.client().seal_status().await.unwrap().initialized);
    for node in [&a, &b] {
        node.client().unseal(&init.shares[0]).await.unwrap();
        assert!(!node.client().unseal(&init.shares[2]).await.unwrap().sealed);
    }
    let token = a
        .client()
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await
        .unwrap()
        .token
        .unwrap();
    let on_a = a.client().with_token(token.clone());
    let on_b = b.client().with_token(token);
    on_a.create_project("web").await.unwrap();
    on_a.set_param("web", "default", "DB_PASSWORD", "pg-secret", Some(true))
        .await
        .unwrap();
    // Written on A, read on B at once; a session made on A works on B.
    assert_eq!(
        on_b.get_param("web", "default", "DB_PASSWORD")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("pg-secret")
    );
    on_b.set_param("web", "default", "DB_PASSWORD", "rotated", None)
        .await
        .unwrap();
    assert_eq!(
        on_a.get_param("web", "default", "DB_PASSWORD")
            .await
            .unwrap()
            .version,
        2
    );
    // Both nodes append to the same audit chains, and the result verifies.
    on_a.audit_checkpoint().await.unwrap();
    let v = on_b.audit_verify().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["events"].as_u64().unwrap() >= 6);
    // Logging out on B ends the session on A (after at most the 1 s session cache).
    on_b.logout().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        on_a.whoami().await.unwrap_err().code(),
        Some("unauthenticated")
    );
    a.stop().await;
    b.stop().await;
    drop_pg_database(&url).await;
}

/// PostgreSQL crashes (`stop -m immediate`) under two nodes running as a non-superuser role,
/// with writes under way: requests fail fast with 503,
/// both nodes recover by themselves once it is back, writes acknowledged before the crash
/// (on either node) are there, and credentials revoked before it stay revoked on both.
#[tokio::test]
async fn a_postgres_crash_fails_fast_and_recovers_without_a_restart() {
    let Some(pg) = coffer_testkit::PrivatePostgres::start() else {
        return;
    };
    let url = pg.app_url();
    let a = TestServer::production_on(&url).await;
    let b = TestServer::production_on(&url).await;
    let init = init_and_unseal(&a, &b).await;
    let login = |c: coffer_client::Client| {
        let (u, p) = (
            init.bootstrap.username.clone(),
            init.bootstrap.password.clone(),
        );
        async move { c.login(&u, &p).await.unwrap().token.unwrap() }
    };
    let token = login(a.client()).await;
    let (on_a, on_b) = (
        a.client().with_token(token.clone()),
        b.client().with_token(token),
    );
    let revoked = a.client().with_token(login(a.client()).await);
    on_a.create_project("web").await.unwrap();
    on_a.set_param("web", "default", "K", "acknowledged", Some(true))
        .await
        .unwrap();
    on_b.set_param("web", "default", "FROM_B", "also", Some(true))
        .await
        .unwrap();
    // An API key revoked on A before the crash, and a session ended on A.
    let key = on_a
        .create_api_key(&serde_json::json!({"name": "ci", "role": "viewer"}))
        .await
        .unwrap();
    let api_key = key["key"].as_str().unwrap().to_owned();
    on_a.revoke_api_key(key["api_key"]["id"].as_str().unwrap())
        .await
        .unwrap();
    revoked.logout().await.unwrap();

    // Writes under way when the database goes: one after the other, each acknowledged
    // before the next is sent, until the first fails.
    let writer = on_a.clone();
    let writes = tokio::spawn(async move {
        let mut acknowledged = 0u32;
        for n in 1.. {
            let v = n.to_string();
            if writer
                .set_param("web", "default", "COUNTER", &v, Some(true))
                .await
                .is_err()
            {
                break;
            }
            acknowledged = n;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop_immediate();
    let acknowledged = writes.await.unwrap();
    assert!(acknowledged > 0, "writes went through before the crash");
    for node in [&on_a, &on_b] {
        let started = std::time::Instant::now();
        let err = node.get_param("web", "default", "K").await.unwrap_err();
        assert_eq!(err.status(), Some(503), "{err}");
        // The pool's 2 s acquire timeout, once or (two database steps) twice; deployment.md
        // says so. The rest is slack for a loaded debug build.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "must fail fast, took {:?}",
            started.elapsed()
        );
    }

    pg.start_again();
    // The same Coffer processes recover on their own.
    for (node, name, want) in [(&on_a, "FROM_B", "also"), (&on_b, "K", "acknowledged")] {
        let mut value = None;
        for _ in 0..50 {
            if let Ok(p) = node.get_param("web", "default", name).await {
                value = p.value;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(
            value.as_deref(),
            Some(want),
            "no acknowledged write is lost"
        );
    }
    // The last acknowledged write survived; the one that failed may or may not have
    // committed before the crash.
    let counter: u32 = on_b
        .get_param("web", "default", "COUNTER")
        .await
        .unwrap()
        .value
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        counter == acknowledged || counter == acknowledged + 1,
        "acknowledged {acknowledged}, read {counter}"
    );
    for node in [&a, &b] {
        assert_eq!(
            node.client()
                .exchange_api_key(&api_key)
                .await
                .unwrap_err()
                .code(),
            Some("unauthenticated"),
            "a revoked API key stays revoked"
        );
    }
    assert_eq!(
        revoked.whoami().await.unwrap_err().code(),
        Some("unauthenticated"),
        "a revoked session stays revoked"
    );
    let v = on_b.audit_verify().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn identity_changes_on_one_node_hold_on_the_other() {
    let Some(url) = pg_database().await else {
        return;
    };
    let a = TestServer::production_on(&url).await;
    let b = TestServer::production_on(&url).await;
    let init = init_and_unseal(&a, &b).await;
    let owner_a = a
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await;
    let inv = owner_a
        .invite("eve@example.com", "contributor")
        .await
        .unwrap();
    let token = inv["token"].as_str().unwrap();
    b.client()
        .accept_invitation(token, Some("eve"), "eve long password")
        .await
        .unwrap();
    let eve_b = b.login("eve", "eve long password").await;
    assert_eq!(eve_b.whoami().await.unwrap().role, "contributor");

    // An API key made on A works on B; revoked on A, it fails on B within a second.
    let key = owner_a
        .create_api_key(&serde_json::json!({"name": "ci", "role": "viewer"}))
        .await
        .unwrap();
    let key_b = b.client().with_token(key["key"].as_str().unwrap());
    assert_eq!(key_b.whoami().await.unwrap().role, "viewer");
    owner_a
        .revoke_api_key(key["api_key"]["id"].as_str().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        key_b.whoami().await.unwrap_err().code(),
        Some("unauthenticated")
    );

    // A demotion on A limits Eve's session on B within a second.
    owner_a.set_role("eve", "viewer").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(eve_b.whoami().await.unwrap().role, "viewer");

    // Lockout counters are shared: three failures on A lock the account on B too.
    for _ in 0..3 {
        assert!(a.client().login("eve", "wrong password!").await.is_err());
    }
    let e = b
        .client()
        .login("eve", "eve long password")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_credentials"));
    a.stop().await;
    b.stop().await;
    drop_pg_database(&url).await;
}

/// With caches that would otherwise hold for a minute, changes still reach the other node
/// at once: PostgreSQL LISTEN/NOTIFY carries the invalidations.
#[tokio::test]
async fn invalidations_reach_the_other_node_through_notify() {
    let Some(url) = pg_database().await else {
        return;
    };
    let node = || {
        coffer_testkit::TestServer::with(coffer_testkit::TestOptions {
            dev: false,
            database_url: Some(url.clone()),
            core: coffer_core::CoreConfig {
                session_cache_ttl: std::time::Duration::from_secs(60),
                ..TestServer::fast_core()
            },
            ..coffer_testkit::TestOptions::default()
        })
    };
    let a = node().await;
    let b = node().await;
    let init = init_and_unseal(&a, &b).await;
    let owner_a = a
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await;
    let owner_b = b
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await;
    owner_a.create_project("web").await.unwrap();
    // B caches the project's environments...
    assert_eq!(owner_b.envs("web").await.unwrap().len(), 1);
    let key = owner_a
        .create_api_key(&serde_json::json!({"name": "ci", "role": "viewer"}))
        .await
        .unwrap();
    let key_b = b.client().with_token(key["key"].as_str().unwrap());
    // ...and the key's principal.
    assert_eq!(key_b.whoami().await.unwrap().role, "viewer");

    owner_a.create_env("web", "prod", None).await.unwrap();
    owner_a
        .revoke_api_key(key["api_key"]["id"].as_str().unwrap())
        .await
        .unwrap();
    let mut seen = (false, false);
    for _ in 0..40 {
        seen = (
            owner_b.envs("web").await.unwrap().len() == 2,
            key_b.whoami().await.is_err(),
        );
        if seen == (true, true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        seen,
        (true, true),
        "(new environment seen, revoked key refused) on B"
    );
    a.stop().await;
    b.stop().await;
    drop_pg_database(&url).await;
}

/// Wait (up to 20 s) until the organisation's rewrap job reports finished.
async fn rewrap_finished(c: &coffer_client::Client, term: u32) -> coffer_client::KeyStatus {
    for _ in 0..200 {
        let st = c.key_status().await.unwrap();
        if st
            .rotation
            .as_ref()
            .is_some_and(|r| r.target_term == term && r.finished_at.is_some())
        {
            return st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the rewrap to term {term} never finished");
}

/// Two nodes on one database share the background jobs and key rotations: one node leads;
/// a rotation on the other is used at once for new values on both, and the leader's job
/// (woken through PostgreSQL notifications) rewraps everything; when the leader stops, the
/// other node takes the jobs over and finishes the next rotation itself.
#[tokio::test]
async fn two_nodes_share_background_jobs_and_key_rotations() {
    let Some(url) = pg_database().await else {
        return;
    };
    let (a, b, on_a, on_b) = two_nodes_one_session(&url).await;
    on_a.create_project("web").await.unwrap();
    for i in 0..5 {
        on_a.set_param("web", "default", &format!("K{i}"), "v", Some(true))
            .await
            .unwrap();
    }
    // Exactly one node leads the background jobs.
    let (a_leads, b_leads) = (
        a.coffer().audit().is_job_leader().await,
        b.coffer().audit().is_job_leader().await,
    );
    assert!(a_leads != b_leads, "one leader: a={a_leads} b={b_leads}");
    let (leader, follower, on_leader, on_follower) = if a_leads {
        (a, b, on_a, on_b)
    } else {
        (b, a, on_b, on_a)
    };
    // Rotated through the follower: the very next write on the leader uses the new term,
    // and the leader's job moves every value there.
    assert_eq!(on_follower.rotate_key().await.unwrap().active_term, 2);
    on_leader
        .set_param("web", "default", "NEW", "after", Some(true))
        .await
        .unwrap();
    let st = rewrap_finished(&on_follower, 2).await;
    let under: Vec<(u32, u64)> = st
        .terms
        .iter()
        .map(|t| (t.term, t.values))
        .filter(|t| t.1 > 0)
        .collect();
    assert_eq!(
        under,
        vec![(2, 6)],
        "every value under term 2: {:?} {:?}",
        st.terms,
        st.rotation
    );
    for c in [&on_leader, &on_follower] {
        assert_eq!(
            c.get_param("web", "default", "K3")
                .await
                .unwrap()
                .value
                .as_deref(),
            Some("v")
        );
    }
    // The leader goes away: the follower takes the jobs over and finishes a rotation alone.
    leader.stop().await;
    let mut took_over = false;
    for _ in 0..50 {
        if follower.coffer().audit().is_job_leader().await {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(took_over, "leadership passes to the remaining node");
    assert_eq!(on_follower.rotate_key().await.unwrap().active_term, 3);
    let st = rewrap_finished(&on_follower, 3).await;
    assert_eq!(st.rotation.unwrap().done, 6);
    assert_eq!(
        on_follower
            .get_param("web", "default", "NEW")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("after")
    );
    follower.stop().await;
    drop_pg_database(&url).await;
}

/// Initialise the shared database through `a` and unseal both nodes with two shares.
/// The value of a counter in a node's metrics.
async fn counter(c: &coffer_client::Client, name: &str) -> u64 {
    let text = c.metrics().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
}

/// Node B answers repeated reads of a value from its cache. After a write on node A, B's
/// cache still holds the old value, but the audit append finds it stale: B drops that
/// answer and answers again from the database, and only the answer sent is audited.
#[tokio::test]
async fn a_read_cached_before_a_write_on_another_node_is_answered_again() {
    let Some(url) = pg_database().await else {
        return;
    };
    let (a, b, on_a, on_b) = two_nodes_one_session(&url).await;
    on_a.create_project("web").await.unwrap();
    on_a.set_param("web", "default", "TOKEN", "first", Some(true))
        .await
        .unwrap();
    let read = || async {
        on_b.get_param("web", "default", "TOKEN")
            .await
            .unwrap()
            .value
            .unwrap()
    };
    let cached = |name| counter(&on_b, name);
    assert_eq!(read().await, "first");
    assert_eq!(read().await, "first");
    assert_eq!(cached("coffer_cached_reads_confirmed_total").await, 1);
    assert_eq!(cached("coffer_cached_reads_stale_total").await, 0);

    on_a.set_param("web", "default", "TOKEN", "second", None)
        .await
        .unwrap();
    assert_eq!(read().await, "second", "never the value replaced on A");
    assert_eq!(cached("coffer_cached_reads_stale_total").await, 1);
    assert_eq!(read().await, "second");
    assert_eq!(cached("coffer_cached_reads_confirmed_total").await, 2);
    assert_eq!(read().await, "second");

    // One event per request, each with the version it answered; the chain verifies.
    let reads: Vec<u64> = on_b
        .audit_events(&[("action", "param.get"), ("limit", "100")])
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e["event"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(reads, vec![200; 5]);
    let v = on_b.audit_verify().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    a.stop().await;
    b.stop().await;
    drop_pg_database(&url).await;
}

/// Two unsealed production nodes on one database, and clients of each carrying one owner
/// session (made on the first).
async fn two_nodes_one_session(
    url: &str,
) -> (
    TestServer,
    TestServer,
    coffer_client::Client,
    coffer_client::Client,
) {
    let a = TestServer::production_on(url).await;
    let b = TestServer::production_on(url).await;
    let init = init_and_unseal(&a, &b).await;
    let token = a
        .client()
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await
        .unwrap()
        .token
        .unwrap();
    let on_a = a.client().with_token(token.clone());
    let on_b = b.client().with_token(token);
    (a, b, on_a, on_b)
}

async fn init_and_unseal(a: &TestServer, b: &TestServer) -> coffer_client::InitResponse {
    let init = a.client().init(3, 2).await.unwrap();
    for node in [a, b] {
        node.client().unseal(&init.shares[0]).await.unwrap();
        node.client().unseal(&init.shares[1]).await.unwrap();
    }
    init
}

/// No audit, no response, on PostgreSQL too: while audit events cannot be written, a read
/// of a secret is refused with 503 `audit_unavailable` (the secret is not in the answer);
/// once the store accepts events again, the same node serves again.
#[tokio::test]
async fn an_audit_outage_on_postgres_fails_closed_and_recovers() {
    use sqlx::Connection;
    let Some(url) = pg_database().await else {
        return;
    };
    let srv = coffer_testkit::TestServer::with(coffer_testkit::TestOptions {
        dev: true,
        database_url: Some(url.clone()),
        ..coffer_testkit::TestOptions::default()
    })
    .await;
    let owner = srv.owner().await;
    owner.create_project("web").await.unwrap();
    owner
        .set_param("web", "default", "TOKEN", "pg-audited-secret", Some(true))
        .await
        .unwrap();
    // The database role owns the schema here: it can make the audit table refuse inserts.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION audit_outage() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
         CREATE TRIGGER audit_outage BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION audit_outage();",
    )
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
    assert!(!err.to_string().contains("pg-audited-secret"));
    sqlx::raw_sql("DROP TRIGGER audit_outage ON audit_log")
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
        Some("pg-audited-secret")
    );
    let v = owner.audit_verify().await.unwrap();
    assert_eq!(
        v["ok"], true,
        "the chain has no gap where events were refused: {v}"
    );
    conn.close().await.unwrap();
    srv.stop().await;
    drop_pg_database(&url).await;
}

/// The mail outbox is shared: a message queued on either node is delivered once, by the
/// node that holds the job leadership, and when that node goes the other one delivers.
#[tokio::test]
async fn two_nodes_deliver_each_queued_mail_once() {
    use coffer_server::mail::SmtpConfig;
    use coffer_testkit::{SmtpReceiver, TestOptions, free_port};
    let Some(url) = pg_database().await else {
        return;
    };
    let rx = SmtpReceiver::start_on(free_port());
    let node = || {
        TestServer::with(TestOptions {
            dev: false,
            database_url: Some(url.clone()),
            smtp: Some(SmtpConfig {
                host: "127.0.0.1".into(),
                port: rx.port,
                security: "none".into(),
                username: None,
                password: None,
                from: "coffer@example.com".into(),
            }),
            ..TestOptions::default()
        })
    };
    let a = node().await;
    let b = node().await;
    let init = init_and_unseal(&a, &b).await;
    let owner = |srv: &TestServer| {
        let (srv, u, p) = (
            srv.client(),
            init.bootstrap.username.clone(),
            init.bootstrap.password.clone(),
        );
        async move {
            let token = srv.login(&u, &p).await.unwrap().token.unwrap();
            srv.with_token(token)
        }
    };
    let (on_a, on_b) = (owner(&a).await, owner(&b).await);
    let delivered = |to: &str| {
        let to = format!("To: {to}");
        rx.messages().iter().filter(|m| m.contains(&to)).count()
    };

    // Queued on both nodes, each delivered once, whichever node leads.
    on_a.invite("one@example.com", "viewer").await.unwrap();
    on_b.invite("two@example.com", "viewer").await.unwrap();
    rx.wait_for("To: one@example.com", Duration::from_secs(30))
        .await;
    rx.wait_for("To: two@example.com", Duration::from_secs(30))
        .await;
    // Two more delivery rounds: nothing is sent again.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        (delivered("one@example.com"), delivered("two@example.com")),
        (1, 1)
    );

    // The first node goes (whether it led or not); the other delivers what comes next.
    a.stop().await;
    on_b.invite("three@example.com", "viewer").await.unwrap();
    rx.wait_for("To: three@example.com", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(delivered("three@example.com"), 1);
    assert_eq!(rx.messages().len(), 3, "nothing else was sent");
    assert_eq!(b.coffer().identity().pending_mail().await.unwrap(), 0);
    b.stop().await;
    drop_pg_database(&url).await;
}
