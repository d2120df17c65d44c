use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use coffer_core::audit::Cx;
use coffer_core::{Coffer, CoreConfig};
use coffer_server::{AppState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) struct Api {
    _dir: tempfile::TempDir,
    pub(crate) coffer: Coffer,
    app: axum::Router,
    pub(crate) token: String,
}

/// The router over a service on the test backend (on PostgreSQL its database is left to
/// scripts/test.sh to drop).
pub(crate) async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let (coffer, _pg) = coffer_testkit::open_coffer(dir.path(), CoreConfig::default()).await;
    api_on(dir, coffer).await
}

/// [`api`] on SQLite whatever the test backend, for tests that open its file.
async fn api_sqlite() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let coffer = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    api_on(dir, coffer).await
}

async fn api_on(dir: tempfile::TempDir, coffer: Coffer) -> Api {
    let boot = coffer
        .start_dev(&dir.path().join("root.key"))
        .await
        .unwrap()
        .unwrap();
    let app = router(AppState::new(coffer.clone()));
    let token = coffer
        .identity()
        .login(
            &Cx::default(),
            "admin",
            boot.password.expose_secret(),
            None,
            "test",
        )
        .await
        .unwrap()
        .session()
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    Api {
        _dir: dir,
        coffer,
        app,
        token,
    }
}

impl Api {
    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        auth: bool,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if auth {
            b = b.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.raw(req).await
    }

    pub(crate) async fn raw(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, 4 << 20).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (parts.status, parts.headers, v)
    }
}

#[tokio::test]
async fn error_bodies_are_stable() {
    let a = api().await;
    let (s, h, v) = a.call("GET", "/v1/projects", None, false).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    assert_eq!(
        v,
        json!({"error": {"code": "unauthenticated", "message": "missing or malformed Authorization: Bearer header"}})
    );

    let (s, _, v) = a.call("GET", "/v1/nope", None, false).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "no such endpoint"}})
        )
    );

    let (s, _, v) = a.call("GET", "/v1/projects/ghost/envs", None, true).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "project 'ghost' not found"}})
        )
    );

    let (s, _, wrong_pw) = a
        .call(
            "POST",
            "/v1/auth/login",
            Some(json!({"username": "admin", "password": "wrong"})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong_pw,
        json!({"error": {"code": "bad_credentials", "message": "invalid username or password"}})
    );
    let (s2, _, unknown) = a
        .call(
            "POST",
            "/v1/auth/login",
            Some(json!({"username": "nobody", "password": "wrong"})),
            false,
        )
        .await;
    assert_eq!(
        (s2, unknown),
        (StatusCode::UNAUTHORIZED, wrong_pw),
        "unknown users look exactly like wrong passwords"
    );

    let (s, _, v) = a.call("GET", "/v1/projects", None, false).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn bad_requests_change_nothing_and_echo_nothing() {
    let a = api().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    // Invalid names: 400 with a clear message.
    for bad in ["..", "a%2Fb", "%0A", &"x".repeat(300)] {
        let (s, _, v) = a
            .call(
                "PUT",
                &format!("/v1/projects/app/envs/default/params/{bad}"),
                Some(json!({"value": "v"})),
                true,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    // Wrong types: the schema error does not quote the input (it could be a secret).
    let (s, _, v) = a
        .call(
            "PUT",
            "/v1/projects/app/envs/default/params/K",
            Some(json!({"value": 1, "secret": "CANARY-in-error"})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_json");
    assert!(!v.to_string().contains("CANARY"), "{v}");
    // Unknown fields are rejected too.
    let (s, _, _) = a
        .call(
            "PUT",
            "/v1/projects/app/envs/default/params/K",
            Some(json!({"value": "v", "org_id": "x"})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Not JSON / wrong media type.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/auth/login")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("username=admin"))
        .unwrap();
    assert_eq!(a.raw(req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (s, _, v) = a.raw(req).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    // Over the body limit.
    let big = json!({"value": "v".repeat(coffer_server::MAX_BODY_BYTES + 10)});
    let (s, _, _) = a
        .call(
            "PUT",
            "/v1/projects/app/envs/default/params/BIG",
            Some(big),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing of the above was stored.
    let (_, _, v) = a
        .call("GET", "/v1/projects/app/envs/default/params", None, true)
        .await;
    assert_eq!(v, json!({"params": []}));
}

#[tokio::test]
async fn security_headers_and_request_ids() {
    let a = api().await;
    let (_, h, _) = a.call("GET", "/v1/sys/health", None, false).await;
    assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
    assert!(h.get(header::STRICT_TRANSPORT_SECURITY).is_some());
    assert_eq!(h.get("x-request-id").unwrap().len(), 36);
}

/// The server gives every request its own id: a client's `x-request-id` cannot choose the
/// id its request is recorded under, and is kept beside it.
#[tokio::test]
async fn request_ids_are_the_servers_and_the_clients_is_kept_beside() {
    let a = api().await;
    let req = Request::builder()
        .method("GET")
        .uri("/v1/projects")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header("x-request-id", "spoofed-id")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = a.raw(req).await;
    assert_eq!(status, StatusCode::OK);
    let id = h.get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_ne!(id, "spoofed-id");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let (_, _, events) = a
        .call("GET", "/v1/audit/events?action=project.list", None, true)
        .await;
    let ev = &events["events"].as_array().unwrap()[0]["event"];
    assert_eq!(ev["request_id"], id.as_str());
    assert_eq!(ev["client_request_id"], "spoofed-id");
}

#[tokio::test]
async fn health_follows_the_seal_and_a_sealed_server_serves_no_data() {
    let a = api().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    a.call(
        "PUT",
        "/v1/projects/app/envs/default/params/K",
        Some(json!({"value": "CANARY-sealed", "secret": true})),
        true,
    )
    .await;
    assert_eq!(
        a.call("GET", "/v1/sys/health", None, false).await.0,
        StatusCode::OK
    );
    let (s, _, v) = a.call("POST", "/v1/sys/seal", Some(json!({})), true).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sealed"], true);
    let (s, _, v) = a.call("GET", "/v1/sys/health", None, false).await;
    assert_eq!(
        (s, v["sealed"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(true))
    );
    for (m, uri) in [
        ("GET", "/v1/projects/app/envs/default/params/K"),
        ("GET", "/v1/projects/app/envs/default/params?reveal=true"),
        ("GET", "/v1/projects"),
        ("GET", "/v1/auth/whoami"),
    ] {
        let (s, _, v) = a.call(m, uri, None, true).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(v["error"]["code"], "sealed");
        assert!(!v.to_string().contains("CANARY"));
    }
    let (s, _, v) = a
        .call(
            "POST",
            "/v1/auth/login",
            Some(json!({"username": "admin", "password": "x"})),
            false,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("sealed"))
    );
    // Status remains available.
    let (s, _, v) = a.call("GET", "/v1/sys/seal-status", None, false).await;
    assert_eq!(
        (s, v["sealed"].as_bool(), v["seal_type"].as_str()),
        (StatusCode::OK, Some(true), Some("dev-file"))
    );
    // A dev-file seal cannot be unsealed with shares: the server's state, not the request,
    // is what stands in the way.
    let (s, _, v) = a
        .call("POST", "/v1/sys/unseal", Some(json!({"share": "x"})), false)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("wrong_seal_type"))
    );
}

#[tokio::test]
async fn corrupted_ciphertext_gives_a_generic_500() {
    let a = api_sqlite().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    a.call(
        "PUT",
        "/v1/projects/app/envs/default/params/K",
        Some(json!({"value": "CANARY-corrupt"})),
        true,
    )
    .await;
    // Read once, so the running server holds the ciphertext in its cache.
    let (s, _, _) = a
        .call("GET", "/v1/projects/app/envs/default/params/K", None, true)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Corrupt the stored ciphertext behind the server's back.
    let db = a._dir.path().join("coffer.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        db.display()
    ))
    .await
    .unwrap();
    let (id, mut ct): (Vec<u8>, Vec<u8>) = sqlx::query_as("SELECT id, ciphertext FROM credentials")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 0x80;
    sqlx::query("UPDATE credentials SET ciphertext = ? WHERE id = ?")
        .bind(ct)
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    // The running server still holds the authentic ciphertext in its cache; the attacker's
    // change takes effect when the server next starts on these files.
    let (s, _, _) = a
        .call("GET", "/v1/projects/app/envs/default/params/K", None, true)
        .await;
    assert_eq!(s, StatusCode::OK);
    let restarted = coffer_testkit::open_sqlite(&db, CoreConfig::default())
        .await
        .unwrap();
    assert!(
        restarted
            .start_dev(&a._dir.path().join("root.key"))
            .await
            .unwrap()
            .is_none()
    );
    let b = Api {
        app: router(AppState::new(restarted.clone())),
        coffer: restarted,
        _dir: a._dir,
        token: a.token,
    };
    let (s, _, v) = b
        .call("GET", "/v1/projects/app/envs/default/params/K", None, true)
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["code"], "internal");
    let text = v.to_string();
    assert!(
        !text.contains("CANARY") && !text.contains("integrity") && !text.contains("decrypt"),
        "{text}"
    );
    drop(b.coffer);
}

#[tokio::test]
async fn openapi_document_describes_the_routes() {
    let a = api().await;
    let (s, _, v) = a.call("GET", "/v1/openapi.json", None, false).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    let paths = v["paths"].as_object().unwrap();
    for p in [
        "/v1/sys/health",
        "/v1/sys/unseal",
        "/v1/auth/login",
        "/v1/projects/{project}/envs/{env}/params/{name}",
        "/v1/projects/{project}/diff",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(v["components"]["securitySchemes"]["bearer"].is_object());
}

/// `HEAD` on a value is the read it is (the value is decrypted to answer it): audited as
/// `param.get`, answered without a body.
#[tokio::test]
async fn head_on_a_value_is_audited_as_a_read() {
    let a = api().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    a.call(
        "PUT",
        "/v1/projects/app/envs/default/params/TOKEN",
        Some(json!({"value": "CANARY-head", "secret": true})),
        true,
    )
    .await;
    let (s, _, body) = a
        .call(
            "HEAD",
            "/v1/projects/app/envs/default/params/TOKEN",
            None,
            true,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, Value::Null, "no body");
    let (_, _, events) = a.call("GET", "/v1/audit/events", None, true).await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"param.get"), "{actions:?}");
    assert!(!actions.contains(&"unknown"), "{actions:?}");
}

/// Names that differ only by Unicode normalisation would be different parameters that
/// look the same: new names must be in NFC, on every route that creates one.
#[tokio::test]
async fn new_names_must_be_in_nfc() {
    let a = api().await;
    // "é" as e + combining acute (NFD).
    let (s, _, v) = a
        .call(
            "POST",
            "/v1/projects",
            Some(json!({"name": "cafe\u{301}"})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("NFC"),
        "{v}"
    );
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    let (s, _, v) = a
        .call(
            "POST",
            "/v1/projects/app/envs",
            Some(json!({"name": "cafe\u{301}"})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, v) = a
        .call(
            "PUT",
            "/v1/projects/app/envs/default/params/caf%65%CC%81",
            Some(json!({"value": "v"})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("NFC"),
        "{v}"
    );
    // The NFC spelling works; the NFD one names nothing.
    let (s, _, v) = a
        .call(
            "PUT",
            "/v1/projects/app/envs/default/params/caf%C3%A9",
            Some(json!({"value": "v"})),
            true,
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (s, _, _) = a
        .call(
            "GET",
            "/v1/projects/app/envs/default/params/caf%65%CC%81",
            None,
            true,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A path segment or query string of the wrong shape is refused by the framework before any
/// operation runs: still the JSON error (not plain text, not 503), recorded as a rejection.
#[tokio::test]
async fn malformed_paths_and_queries_get_the_json_error() {
    let a = api().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    for (method, uri) in [
        ("GET", "/v1/projects/app/diff"),
        ("DELETE", "/v1/org/api-keys/0"),
        ("DELETE", "/v1/auth/sessions/CANARY"),
        ("GET", "/v1/audit/events?limit=CANARY"),
        ("GET", "/v1/projects/app/envs/default/params?reveal=CANARY"),
        ("GET", "/v1/audit/events?outcome=CANARY"),
    ] {
        let (s, h, v) = a.call(method, uri, None, true).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{method} {uri}");
        assert_eq!(
            h.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{method} {uri}"
        );
        assert!(!v.to_string().contains("CANARY"), "{method} {uri}: {v}");
    }
}

/// Every route of the API document, called with a method it does not take, with each path
/// parameter replaced by something no parameter parses as, and with malformed query
/// strings: every answer is the documented JSON error, and a 400 repeats nothing of the
/// input (issue 19).
#[tokio::test]
async fn every_route_answers_malformed_requests_with_the_json_error() {
    let a = api().await;
    a.call("POST", "/v1/projects", Some(json!({"name": "app"})), true)
        .await;
    let (_, _, doc) = a.call("GET", "/v1/openapi.json", None, false).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "{}", paths.len());
    let mut checked = 0;
    for (path, ops) in paths {
        let ops = ops.as_object().unwrap();
        let concrete = path
            .replace("{project}", "app")
            .replace("{env}", "default")
            .replace("{name}", "X");
        let mut calls = Vec::new();
        for m in ["get", "post", "put", "delete", "patch"] {
            if !ops.contains_key(m) {
                calls.push((m.to_uppercase(), concrete.clone(), Some(405)));
            }
        }
        if path.contains('{') {
            // Uuids, usernames, names: a value none of them takes.
            let bad = fill_params(path, "%FF%00CANARY");
            for m in ops.keys().filter(|m| m.as_str() != "parameters") {
                calls.push((m.to_uppercase(), bad.clone(), None));
            }
        }
        if ops.contains_key("get") {
            calls.push((
                "GET".into(),
                format!("{concrete}?limit=CANARY&reveal=CANARY&format=CANARY&cursor=%FFCANARY&from=CANARY&a=%00"),
                None,
            ));
        }
        for (method, uri, want) in calls {
            let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH").then(|| json!({}));
            let (s, h, v) = a.call(&method, &uri, body, true).await;
            checked += 1;
            if s.is_success() {
                continue;
            }
            if let Some(w) = want {
                assert_eq!(s.as_u16(), w, "{method} {uri}: {v}");
                assert_eq!(v["error"]["code"], "method_not_allowed", "{method} {uri}");
            }
            assert!(s.is_client_error(), "{method} {uri}: {s} {v}");
            assert_eq!(
                h.get(header::CONTENT_TYPE).map(|c| c.to_str().unwrap()),
                Some("application/json"),
                "{method} {uri}: {v}"
            );
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "{method} {uri}: {v}"
            );
            if s == StatusCode::BAD_REQUEST {
                assert!(!v.to_string().contains("CANARY"), "{method} {uri}: {v}");
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

/// Every `{param}` of a path template replaced by `with`.
fn fill_params(path: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        out.push_str(with);
        rest = &rest[rest[i..].find('}').map_or(rest.len(), |j| i + j + 1)..];
    }
    out.push_str(rest);
    out
}
