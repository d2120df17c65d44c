//! Identity end to end over TLS with real peers: mail through an SMTP server that comes up
//! late (aiosmtpd), and logins with JWTs from a real OpenID provider (oidc-provider).

use coffer_core::audit::Cx;
use std::time::Duration;

use coffer_core::oidc::{JwtAlgorithm, OidcIssuer};
use coffer_core::{CoreConfig, Role};
use coffer_server::jwks::JwksLocation;
use coffer_server::mail::SmtpConfig;
use coffer_testkit::{OidcProvider, SmtpReceiver, TestOptions, TestServer, free_port};

fn db_bytes(srv: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    assert!(
        srv.data_dir().join("coffer.db").exists(),
        "an SQLite server"
    );
    for f in ["coffer.db", "coffer.db-wal"] {
        if let Ok(b) = std::fs::read(srv.data_dir().join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn token_in(mail: &str, prefix: &str) -> String {
    let at = mail.find(prefix).unwrap();
    mail[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

#[tokio::test]
async fn mail_waits_in_the_outbox_while_the_mail_server_is_down() {
    let port = free_port();
    let srv = TestServer::with(TestOptions {
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            security: "none".into(),
            username: None,
            password: None,
            from: "coffer@example.com".into(),
        }),
        // The test reads the SQLite files for the invitation token.
        sqlite_only: true,
        ..TestOptions::default()
    })
    .await;
    let owner = srv.owner().await;
    let inv = owner
        .invite("Zed@Example.com", "contributor")
        .await
        .unwrap();
    // With mail configured, the token goes by mail only.
    assert!(inv.get("token").is_none(), "{inv}");
    // The mail server is down: delivery fails and the message stays queued, sealed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(srv.coffer().identity().pending_mail().await.unwrap(), 1);
    assert!(!contains(&db_bytes(&srv), "cfi_"));

    let rx = SmtpReceiver::start_on(port);
    let mail = rx
        .wait_for("To: zed@example.com", Duration::from_secs(30))
        .await;
    assert!(mail.contains("invited you to join organisation"));
    let token = token_in(&mail, "cfi_");
    let anon = srv.client();
    anon.accept_invitation(&token, Some("zed"), "zed long password")
        .await
        .unwrap();
    // One-time: a second use fails and changes nothing.
    assert!(
        anon.accept_invitation(&token, Some("zed2"), "zed long password")
            .await
            .is_err()
    );
    let zed = srv.login("zed", "zed long password").await;
    assert_eq!(zed.whoami().await.unwrap().role, "contributor");

    // Account changes are notified: a password change, an API key.
    zed.change_password("zed long password", "zed newer password")
        .await
        .unwrap();
    rx.wait_for("password was changed", Duration::from_secs(30))
        .await;
    let zed = srv.login("zed", "zed newer password").await;
    let created = zed
        .create_api_key(&serde_json::json!({"name": "ci", "role": "viewer"}))
        .await
        .unwrap();
    let m = rx.wait_for("API key 'ci'", Duration::from_secs(30)).await;
    // The mail names the key by its prefix, never the key itself.
    assert!(!m.contains(created["key"].as_str().unwrap()));
    // The delivery is recorded just after the SMTP server took the message.
    let mut pending = srv.coffer().identity().pending_mail().await.unwrap();
    for _ in 0..50 {
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pending = srv.coffer().identity().pending_mail().await.unwrap();
    }
    assert_eq!(pending, 0, "every message delivered and marked sent");
}

#[tokio::test]
async fn oidc_logins_verify_issuer_audience_and_keys() {
    let idp = OidcProvider::start();
    let issuer = |jit: bool| OidcIssuer {
        issuer: idp.issuer.clone(),
        audience: "https://coffer.test".into(),
        algorithms: vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
        jit,
        jit_org: Some("default".into()),
        jit_role: Role::Viewer,
        leeway_secs: 60,
    };
    let srv = TestServer::with(TestOptions {
        core: CoreConfig {
            oidc: vec![issuer(true)],
            ..TestServer::fast_core()
        },
        jwks: [(idp.issuer.clone(), JwksLocation::Url(idp.jwks_url()))].into(),
        ..TestOptions::default()
    })
    .await;
    let anon = srv.client();
    let jwt = idp
        .token("coffer-ci", "coffer-ci-secret", "https://coffer.test")
        .await;
    let r = anon.oidc_login(&jwt, None).await.unwrap();
    let who = r.whoami.unwrap();
    assert_eq!(who.role, "viewer");
    assert!(who.username.starts_with("oidc-") && who.username.ends_with("-coffer-ci"));
    // The same subject maps to the same user next time.
    let again = anon
        .oidc_login(
            &idp.token("coffer-ci", "coffer-ci-secret", "https://coffer.test")
                .await,
            None,
        )
        .await
        .unwrap();
    assert_eq!(again.whoami.unwrap().user_id, who.user_id);

    // Wrong audience, tampered payload, alg none, HS256 signed with public material,
    // an unknown issuer: all the same 401.
    let wrong_aud = idp
        .token(
            "coffer-ci",
            "coffer-ci-secret",
            "https://wrong-audience.test",
        )
        .await;
    let parts: Vec<&str> = jwt.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = "admin".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let hs = {
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let h = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]});
        let signing_input = format!("{}.{}", b64.encode(h.to_string()), parts[1]);
        // HMAC keyed with the public JWKS document: the classic confusion attack.
        let jwks = reqwest::get(idp.jwks_url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwks.as_bytes());
        let sig = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(sig.as_ref()))
    };
    let jku = {
        let h = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "evil", "jku": "http://127.0.0.1:1/jwks"});
        format!("{}.{}.{}", b64.encode(h.to_string()), parts[1], parts[2])
    };
    for (what, bad) in [
        ("wrong audience", wrong_aud),
        ("tampered", tampered),
        ("alg none", none),
        ("HS256 confusion", hs),
        ("jku", jku),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let e = anon.oidc_login(&bad, None).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{what}: {e}");
        assert_eq!(e.code(), Some("bad_credentials"), "{what}");
    }
}

#[tokio::test]
async fn login_attempts_are_throttled_per_address() {
    let srv = TestServer::with(TestOptions {
        login_rate_per_minute: 3,
        ..TestOptions::default()
    })
    .await;
    let anon = srv.client();
    for _ in 0..3 {
        let e = anon.login("nobody", "some password").await.unwrap_err();
        assert_eq!(e.status(), Some(401));
    }
    // The fourth within the minute is refused before any password work, whatever the user.
    let e = anon.login("admin", "another password").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(429), Some("too_many_requests"))
    );
    // Authenticated traffic is not affected.
    let owner = srv.client().with_token(
        srv.coffer()
            .identity()
            .login(
                &Cx::default(),
                "admin",
                srv.owner_password.as_deref().unwrap(),
                None,
                "127.0.0.1",
            )
            .await
            .unwrap()
            .session()
            .unwrap()
            .token
            .expose_secret(),
    );
    assert_eq!(owner.whoami().await.unwrap().role, "owner");
}
