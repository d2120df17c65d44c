use coffer_client::Client;
use coffer_testkit::TestServer;

#[tokio::test]
async fn full_flow_over_tls_with_a_pinned_ca() {
    let srv = TestServer::dev().await;
    let c = srv.owner().await;
    assert_eq!(c.whoami().await.unwrap().role, "owner");
    c.create_project("web").await.unwrap();
    c.create_env("web", "production", None).await.unwrap();
    c.set_param("web", "default", "DB", "sqlite://x", None)
        .await
        .unwrap();
    c.set_param(
        "web",
        "production",
        "API KEY/with?odd#chars%",
        "s3cret",
        Some(true),
    )
    .await
    .unwrap_err();
    c.set_param(
        "web",
        "production",
        "API KEY with spaces ü",
        "s3cret",
        Some(true),
    )
    .await
    .unwrap();
    let p = c
        .get_param("web", "production", "API KEY with spaces ü")
        .await
        .unwrap();
    assert_eq!(p.value.as_deref(), Some("s3cret"));
    let all = c.list_params("web", "production", false).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|p| p.masked && p.value.is_none()));
    let e = c
        .get_param("web", "production", "missing")
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));
    c.logout().await.unwrap();
    assert_eq!(
        c.whoami().await.unwrap_err().code(),
        Some("unauthenticated")
    );
    srv.stop().await;
}

#[tokio::test]
async fn clients_that_do_not_trust_the_ca_are_refused() {
    let srv = TestServer::dev().await;
    // No CA given: the platform trust store does not know Coffer's internal CA.
    let untrusting = Client::new(&srv.url(), None).unwrap();
    assert!(matches!(
        untrusting.seal_status().await,
        Err(coffer_client::ClientError::Http(_))
    ));
    // A CA from another server does not work either.
    let other = TestServer::dev().await;
    let wrong = Client::new(&srv.url(), Some(&other.ca_pem)).unwrap();
    assert!(wrong.seal_status().await.is_err());
    // Plain HTTP is refused by the client and by the server.
    assert!(Client::new(&format!("http://{}", srv.addr), None).is_err());
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v1/sys/health", srv.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    srv.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn production_init_unseal_and_login() {
    let srv = TestServer::production().await;
    let c = srv.client();
    let (code, h) = c.health().await.unwrap();
    assert_eq!((code, h.initialized), (501, false));
    let init = c.init(5, 3).await.unwrap();
    assert_eq!(init.shares.len(), 5);
    assert_eq!(
        c.init(5, 3).await.unwrap_err().code(),
        Some("already_initialized")
    );
    assert_eq!(c.health().await.unwrap().0, 503);
    // Sealed: login refused with a clear code.
    assert_eq!(
        c.login(&init.bootstrap.username, &init.bootstrap.password)
            .await
            .unwrap_err()
            .code(),
        Some("sealed")
    );
    assert_eq!(
        c.unseal("definitely-not-a-share").await.unwrap_err().code(),
        Some("malformed_share")
    );
    let st = c.unseal(&init.shares[4]).await.unwrap();
    assert_eq!((st.progress, st.threshold, st.sealed), (1, 3, true));
    assert_eq!(
        c.unseal(&init.shares[4]).await.unwrap_err().code(),
        Some("duplicate_share")
    );
    assert_eq!(c.unseal_reset().await.unwrap().progress, 0);
    for s in &init.shares[1..3] {
        assert!(c.unseal(s).await.unwrap().sealed);
    }
    let st = c.unseal(&init.shares[0]).await.unwrap();
    assert!(!st.sealed);
    assert_eq!(c.health().await.unwrap().0, 200);
    assert_eq!(
        c.unseal(&init.shares[3]).await.unwrap_err().code(),
        Some("already_unsealed")
    );
    let login = c
        .login(&init.bootstrap.username, &init.bootstrap.password)
        .await
        .unwrap();
    let owner = srv.client().with_token(login.token.unwrap());
    owner.create_project("p").await.unwrap();
    owner.seal().await.unwrap();
    assert_eq!(owner.projects().await.unwrap_err().code(), Some("sealed"));
    srv.stop().await;
}

/// Handshake with the `openssl` command line tool at one protocol version.
fn openssl_handshake(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    version_flag: &str,
) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            version_flag,
            "-CAfile",
        ])
        .arg(ca)
        // Let OpenSSL itself offer legacy versions, so that a refusal comes from Coffer.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command is needed for this test (.ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_offered() {
    let srv = TestServer::dev().await;
    let ca = srv.data_dir().join("tls/ca.pem");
    let (addr, ca2) = (srv.addr, ca.clone());
    let results = tokio::task::spawn_blocking(move || {
        ["-tls1_3", "-tls1_2", "-tls1_1", "-tls1"].map(|v| (v, openssl_handshake(addr, &ca2, v)))
    })
    .await
    .unwrap();
    for (flag, (ok, out)) in results {
        match flag {
            "-tls1_3" => assert!(
                ok && out.contains("TLSv1.3") && out.contains("Verify return code: 0"),
                "TLS 1.3 must work: {out}"
            ),
            "-tls1_2" => assert!(ok && out.contains("TLSv1.2"), "TLS 1.2 must work: {out}"),
            _ => assert!(!ok, "{flag} must be refused: {out}"),
        }
    }
    srv.stop().await;
}

/// The benchmark's lean reader: its own connection, the pinned CA, the same answers and
/// errors as the regular client, many reads on one connection.
#[tokio::test]
async fn a_param_reader_reads_over_its_own_pinned_connection() {
    let srv = TestServer::dev().await;
    let c = srv.owner().await;
    c.create_project("web").await.unwrap();
    c.set_param("web", "default", "API KEY ü", "s3cret", Some(true))
        .await
        .unwrap();
    let mut r = c.param_reader("web", "default", "API KEY ü").await.unwrap();
    for _ in 0..3 {
        assert_eq!(r.get().await.unwrap().value.as_deref(), Some("s3cret"));
    }
    c.set_param("web", "default", "API KEY ü", "rotated", None)
        .await
        .unwrap();
    assert_eq!(r.get().await.unwrap().value.as_deref(), Some("rotated"));
    // Not found and unauthenticated are errors, not values.
    let mut missing = c.param_reader("web", "default", "NOPE").await.unwrap();
    assert!(matches!(
        missing.get().await,
        Err(coffer_client::ClientError::Unexpected(404))
    ));
    let mut forged = srv
        .client()
        .with_token("cfs_forged")
        .param_reader("web", "default", "API KEY ü")
        .await
        .unwrap();
    assert!(matches!(
        forged.get().await,
        Err(coffer_client::ClientError::Unexpected(401))
    ));
    // Without the server's CA there is nothing to pin: refused.
    let no_ca = coffer_client::Client::new(&srv.url(), None)
        .unwrap()
        .with_token("cfs_x");
    assert!(no_ca.param_reader("web", "default", "X").await.is_err());
}

/// A request's line and headers are capped (16 KiB by default): over the cap 431 with the
/// JSON error, far over it 431 from the HTTP layer itself; never 200, and the server serves
/// on.
#[tokio::test]
async fn oversized_request_heads_are_refused_with_431() {
    let srv = TestServer::dev().await;
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&srv.ca_pem).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v1/sys/health", srv.url());
    let with_header = |n: usize| http.get(&url).header("x-padding", "a".repeat(n)).send();
    assert_eq!(with_header(8 * 1024).await.unwrap().status(), 200);
    let res = with_header(20 * 1024).await.unwrap();
    assert_eq!(res.status(), 431);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    for n in [64 * 1024, 256 * 1024, 1024 * 1024] {
        if let Ok(res) = with_header(n).await {
            assert_eq!(res.status(), 431, "{n} bytes");
        }
    }
    assert_eq!(with_header(0).await.unwrap().status(), 200);
    srv.stop().await;
}
