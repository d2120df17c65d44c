//! KMS and HSM seals (auto-unseal, recovery shares, rekey, seal migration) and
//! organisations' own keys with revocation, against moto_server and SoftHSM2.

use std::sync::Arc;
use std::time::Duration;

use coffer_client::Client;
use coffer_core::CoreConfig;
use coffer_core::seal::{ExternalSeal, KeyProvider, KeyServices, Seal, ShamirSeal};
use coffer_extkeys::HsmProvider;
use coffer_testkit::{MotoKms, SoftHsm, TestOptions, TestServer};

fn seal_with(services: &KeyServices, reference: &str) -> Arc<dyn Seal> {
    Arc::new(ExternalSeal::new(services.resolve(reference).unwrap()).unwrap())
}

fn options(
    seal: Arc<dyn Seal>,
    services: KeyServices,
    dir: Option<tempfile::TempDir>,
) -> TestOptions {
    TestOptions {
        dev: false,
        seal,
        key_services: services,
        dir,
        // Restarts on the same data directory (the PostgreSQL variant is the two-node test).
        sqlite_only: true,
        ..TestOptions::default()
    }
}

async fn login_owner(srv: &TestServer, password: &str) -> Client {
    srv.login("admin", password).await
}

fn code(e: coffer_client::ClientError) -> String {
    e.code().unwrap_or("none").to_owned()
}

/// Init, restart and auto-unseal, rekey with recovery shares, then migrate to Shamir and
/// back: the value written at the start reads at every step.
async fn seal_lifecycle(services: KeyServices, reference: &str) {
    let seal = seal_with(&services, reference);
    let srv = TestServer::with(options(seal.clone(), services.clone(), None)).await;
    let init = srv.client().init(5, 3).await.unwrap();
    assert!(init.unsealed, "a KMS/HSM seal unseals at init");
    let status = srv.client().seal_status().await.unwrap();
    assert!(!status.sealed);
    assert_eq!(status.seal_type.as_deref(), Some(seal.kind().as_str()));
    let password = init.bootstrap.password.clone();
    let owner = login_owner(&srv, &password).await;
    owner.create_project("app").await.unwrap();
    owner
        .set_param("app", "default", "DB_URL", "postgres://db/app", Some(false))
        .await
        .unwrap();
    let dir = srv.stop_keep_dir().await;
    let db = std::fs::read(dir.path().join("data/coffer.db")).unwrap();
    assert!(
        !db.windows(17).any(|w| w == b"postgres://db/app"),
        "values are encrypted at rest"
    );

    // Restart: unsealed by the seal, no operator.
    let srv = TestServer::with(options(seal.clone(), services.clone(), Some(dir))).await;
    assert!(!srv.client().seal_status().await.unwrap().sealed);
    let owner = login_owner(&srv, &password).await;
    let read = owner.get_param("app", "default", "DB_URL").await.unwrap();
    assert_eq!(read.value.as_deref(), Some("postgres://db/app"));

    // Recovery shares authorise a rekey; the new root key is wrapped by the seal.
    let old = init.shares[..3].to_vec();
    let rekeyed = owner.rekey(&old, 3, 2).await.unwrap();
    assert_eq!(
        code(owner.rekey(&old, 3, 2).await.unwrap_err()),
        "bad_request",
        "old recovery shares are void"
    );
    let dir = srv.stop_keep_dir().await;
    let srv = TestServer::with(options(seal.clone(), services.clone(), Some(dir))).await;
    assert!(!srv.client().seal_status().await.unwrap().sealed);

    // Migrate to Shamir: the server waits sealed until a quorum is given.
    let dir = srv.stop_keep_dir().await;
    let srv = TestServer::with(options(Arc::new(ShamirSeal), services.clone(), Some(dir))).await;
    let anon = srv.client();
    assert!(anon.seal_status().await.unwrap().sealed);
    assert_eq!(
        code(anon.migrate_seal(&rekeyed.shares[..1]).await.unwrap_err()),
        "bad_request",
        "one share is not a quorum"
    );
    let st = anon.migrate_seal(&rekeyed.shares[1..3]).await.unwrap();
    assert!(!st.sealed);
    assert_eq!(st.seal_type.as_deref(), Some("shamir"));
    let dir = srv.stop_keep_dir().await;
    let srv = TestServer::with(options(Arc::new(ShamirSeal), services.clone(), Some(dir))).await;
    assert!(
        srv.client().seal_status().await.unwrap().sealed,
        "Shamir waits for shares"
    );
    srv.client().unseal(&rekeyed.shares[0]).await.unwrap();
    assert!(
        !srv.client()
            .unseal(&rekeyed.shares[2])
            .await
            .unwrap()
            .sealed
    );
    let owner = login_owner(&srv, &password).await;
    let read = owner.get_param("app", "default", "DB_URL").await.unwrap();
    assert_eq!(read.value.as_deref(), Some("postgres://db/app"));

    // And back to the KMS/HSM seal with the same shares.
    let dir = srv.stop_keep_dir().await;
    let srv = TestServer::with(options(seal.clone(), services.clone(), Some(dir))).await;
    assert!(srv.client().seal_status().await.unwrap().sealed);
    srv.client()
        .migrate_seal(&rekeyed.shares[..2])
        .await
        .unwrap();
    let dir = srv.stop_keep_dir().await;
    let srv = TestServer::with(options(seal, services, Some(dir))).await;
    assert!(!srv.client().seal_status().await.unwrap().sealed);
    srv.stop().await;
}

#[tokio::test]
async fn kms_seal_auto_unseals_rekeys_and_migrates() {
    let moto = MotoKms::start();
    let key = moto.create_key().await;
    let services = moto.services();
    seal_lifecycle(services.clone(), &format!("awskms:{key}")).await;

    // The seal's key is not an organisation's key, under any of its names.
    let seal = seal_with(&services, &format!("awskms:{key}"));
    let srv = TestServer::with(options(seal.clone(), services.clone(), None)).await;
    let init = srv.client().init(3, 2).await.unwrap();
    let owner = login_owner(&srv, &init.bootstrap.password).await;
    let arn = moto
        .call("DescribeKey", serde_json::json!({ "KeyId": key }))
        .await["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    for name in [format!("awskms:{key}"), format!("awskms:{arn}")] {
        let e = owner.attach_external_key(&name).await.unwrap_err();
        assert_eq!(code(e), "bad_request", "{name}");
    }
    srv.stop().await;

    // A disabled seal key keeps the server from starting (fail closed).
    let srv = TestServer::with(options(seal.clone(), services.clone(), None)).await;
    srv.client().init(3, 2).await.unwrap();
    let dir = srv.stop_keep_dir().await;
    moto.set_enabled(&key, false).await;
    let err = TestServer::try_with(options(seal, services, Some(dir)))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("seal"), "{err:#}");
}

#[tokio::test]
async fn pkcs11_seal_auto_unseals_rekeys_and_migrates() {
    let h = SoftHsm::open();
    h.ensure_key("seal-lifecycle").unwrap();
    let services = KeyServices::new(vec![Arc::new(HsmProvider(h)) as Arc<dyn KeyProvider>]);
    seal_lifecycle(services, "pkcs11:seal-lifecycle").await;
}

/// Straight from one vendor's seal to another's: KMS to PKCS#11 and back, each move
/// authorised by the recovery shares; the value written at the start reads at every step.
#[tokio::test]
async fn migrate_seal_between_kms_and_pkcs11() {
    let moto = MotoKms::start();
    let kms_key = moto.create_key().await;
    let h = SoftHsm::open();
    h.ensure_key("seal-kms-hsm").unwrap();
    let services = KeyServices::new(vec![
        Arc::new(moto.client()) as Arc<dyn KeyProvider>,
        Arc::new(HsmProvider(h)) as Arc<dyn KeyProvider>,
    ]);
    let kms = seal_with(&services, &format!("awskms:{kms_key}"));
    let hsm = seal_with(&services, "pkcs11:seal-kms-hsm");
    let srv = TestServer::with(options(kms.clone(), services.clone(), None)).await;
    let init = srv.client().init(3, 2).await.unwrap();
    let owner = login_owner(&srv, &init.bootstrap.password).await;
    owner.create_project("app").await.unwrap();
    owner
        .set_param("app", "default", "K", "kept", Some(true))
        .await
        .unwrap();
    let mut dir = srv.stop_keep_dir().await;
    for (to, kind) in [(&hsm, "pkcs11"), (&kms, "awskms")] {
        let srv = TestServer::with(options(to.clone(), services.clone(), Some(dir))).await;
        assert!(
            srv.client().seal_status().await.unwrap().sealed,
            "migration pending"
        );
        let st = srv.client().migrate_seal(&init.shares[1..3]).await.unwrap();
        assert_eq!((st.sealed, st.seal_type.as_deref()), (false, Some(kind)));
        dir = srv.stop_keep_dir().await;
        // Restarted, the new seal unseals by itself.
        let srv = TestServer::with(options(to.clone(), services.clone(), Some(dir))).await;
        assert!(!srv.client().seal_status().await.unwrap().sealed);
        let owner = login_owner(&srv, &init.bootstrap.password).await;
        let v = owner.get_param("app", "default", "K").await.unwrap();
        assert_eq!(v.value.as_deref(), Some("kept"), "after moving to {kind}");
        dir = srv.stop_keep_dir().await;
    }
}

/// An organisation attaches its own key; revoking it makes its data unreadable within the
/// key cache lifetime, with `tenant_key_unavailable` (audited), while another organisation
/// carries on; enabling it restores access; detaching moves back to the root key.
async fn own_key_round(services: KeyServices, reference: &str, set_enabled: impl AsyncFn(bool)) {
    let ttl = Duration::from_millis(500);
    let srv = TestServer::with(TestOptions {
        core: CoreConfig {
            key_cache_ttl: ttl,
            ..TestServer::fast_core()
        },
        key_services: services,
        ..TestOptions::default()
    })
    .await;
    let owner = srv.owner().await;
    owner.create_project("app").await.unwrap();
    for i in 0..5 {
        owner
            .set_param(
                "app",
                "default",
                &format!("K{i}"),
                &format!("v{i}"),
                Some(false),
            )
            .await
            .unwrap();
    }
    // Another organisation, on the root key.
    owner.create_org("other").await.unwrap();
    let other = srv
        .client()
        .with_token(owner.switch_org("other").await.unwrap().token.unwrap());
    other.create_project("svc").await.unwrap();
    other
        .set_param("svc", "default", "X", "x-value", Some(false))
        .await
        .unwrap();
    // Switching traded the first token; a new session for the first organisation.
    let owner = srv.owner().await;

    let st = owner.attach_external_key(reference).await.unwrap();
    // Recorded by its canonical name (a KMS key's ARN), which ends with the key id.
    let recorded = st.external_key.clone().unwrap();
    let (scheme, name) = reference.split_once(':').unwrap();
    assert!(
        recorded.starts_with(scheme) && recorded.ends_with(name),
        "{recorded}"
    );
    assert_eq!(
        code(other.attach_external_key(reference).await.unwrap_err()),
        "already_exists",
        "one organisation per external key"
    );
    srv.coffer().keys().run_key_maintenance().await.unwrap();
    let st = owner.key_status().await.unwrap();
    let active = st.terms.iter().find(|t| t.active).unwrap();
    assert_eq!(active.wrapped_by, recorded);
    assert_eq!(active.values, 5, "every value moved to the external term");
    // A value written now is sealed under the external term too.
    owner
        .set_param("app", "default", "K5", "v5", Some(false))
        .await
        .unwrap();

    set_enabled(false).await;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let err = owner.get_param("app", "default", "K1").await.unwrap_err();
    assert_eq!(code(err), "tenant_key_unavailable");
    let err = owner
        .set_param("app", "default", "K1", "new", Some(false))
        .await
        .unwrap_err();
    assert_eq!(code(err), "tenant_key_unavailable");
    let x = other.get_param("svc", "default", "X").await.unwrap();
    assert_eq!(
        x.value.as_deref(),
        Some("x-value"),
        "other organisations carry on"
    );
    let events = owner
        .audit_events(&[("limit", "1000")])
        .await
        .unwrap()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e["event"]["error_code"] == "tenant_key_unavailable"
                && e["event"]["action"] == "param.get"),
        "the refusal is audited"
    );

    set_enabled(true).await;
    let v = owner.get_param("app", "default", "K1").await.unwrap();
    assert_eq!(
        v.value.as_deref(),
        Some("v1"),
        "enabling the key restores access"
    );

    // Detach: back to the root key once the rewrap is done and the old terms are gone.
    let st = owner.detach_external_key().await.unwrap();
    assert_eq!(st.external_key, None);
    srv.coffer().keys().run_key_maintenance().await.unwrap();
    tokio::time::sleep(ttl * 2 + Duration::from_millis(1100)).await;
    srv.coffer().keys().run_key_maintenance().await.unwrap();
    let st = owner.key_status().await.unwrap();
    assert!(
        st.terms.iter().all(|t| t.wrapped_by == "root"),
        "{:?}",
        st.terms
    );
    // The key's life is in the organisation's audit log, each change once, by the system.
    let events = owner
        .audit_events(&[("limit", "1000")])
        .await
        .unwrap()
        .events;
    let count = |action: &str| {
        events
            .iter()
            .filter(|e| e["event"]["action"] == action && e["event"]["actor"]["kind"] == "system")
            .count()
    };
    assert_eq!(
        count("key.external_unavailable"),
        1,
        "once, not per refused request"
    );
    assert_eq!(count("key.external_available"), 1);
    assert_eq!(count("key.rewrap_finished"), 2, "to the own key, and back");
    assert!(count("key.terms_destroyed") >= 1);
    set_enabled(false).await;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let v = owner.get_param("app", "default", "K5").await.unwrap();
    assert_eq!(
        v.value.as_deref(),
        Some("v5"),
        "no longer depends on the external key"
    );
    set_enabled(true).await;
    srv.stop().await;
}

#[tokio::test]
async fn organisations_own_kms_key_can_be_revoked_and_restored() {
    let moto = MotoKms::start();
    let key = moto.create_key().await;
    let services = moto.services();
    let moto = &moto;
    let k = key.clone();
    own_key_round(services, &format!("awskms:{key}"), async move |on| {
        moto.set_enabled(&k, on).await
    })
    .await;
}

#[tokio::test]
async fn organisations_own_hsm_key_can_be_revoked_and_restored() {
    let h = SoftHsm::open();
    h.ensure_key("org-own-key").unwrap();
    let services = KeyServices::new(vec![
        Arc::new(HsmProvider(h.clone())) as Arc<dyn KeyProvider>
    ]);
    own_key_round(services, "pkcs11:org-own-key", async move |on| {
        h.set_key_enabled("org-own-key", on).unwrap()
    })
    .await;
}

#[tokio::test]
async fn attaching_needs_a_usable_key_and_an_owner() {
    let moto = MotoKms::start();
    let key = moto.create_key().await;
    let services = moto.services();
    let srv = TestServer::with(TestOptions {
        key_services: services,
        ..TestOptions::default()
    })
    .await;
    let owner = srv.owner().await;
    for bad in [
        "awskms:11111111-2222-3333-4444-555555555555",
        "vault:x",
        "awskms:",
    ] {
        let e = owner.attach_external_key(bad).await.unwrap_err();
        assert_eq!(code(e), "bad_request", "{bad}");
    }
    // A well-formed reference to a service this server has none of.
    let e = owner
        .attach_external_key("pkcs11:no-hsm-configured")
        .await
        .unwrap_err();
    assert_eq!(code(e), "not_configured");
    let st = owner.key_status().await.unwrap();
    assert_eq!(
        (st.external_key, st.terms.len()),
        (None, 1),
        "nothing changed"
    );
    assert_eq!(
        code(owner.detach_external_key().await.unwrap_err()),
        "not_found",
        "none is attached"
    );
    // A key is one key however it is named: attached by its id here, it cannot be
    // attached by an alias of it elsewhere; the organisation's status shows its ARN.
    moto.call(
        "CreateAlias",
        serde_json::json!({ "AliasName": "alias/shared", "TargetKeyId": key }),
    )
    .await;
    let st = owner
        .attach_external_key(&format!("awskms:{key}"))
        .await
        .unwrap();
    let arn = st.external_key.clone().unwrap();
    assert!(
        arn.starts_with("awskms:arn:aws:kms:") && arn.ends_with(&key),
        "{arn}"
    );
    owner.create_org("second").await.unwrap();
    let second = srv
        .client()
        .with_token(owner.switch_org("second").await.unwrap().token.unwrap());
    for other_name in ["awskms:alias/shared", arn.as_str()] {
        let e = second.attach_external_key(other_name).await.unwrap_err();
        assert_eq!(code(e), "already_exists", "{other_name}");
    }
    assert_eq!(second.key_status().await.unwrap().external_key, None);
    // Switching traded the first token; a new session for the first organisation.
    let owner = srv.owner().await;
    owner.detach_external_key().await.unwrap();
    second
        .attach_external_key("awskms:alias/shared")
        .await
        .unwrap();
    assert_eq!(
        second.key_status().await.unwrap().external_key.as_deref(),
        Some(arn.as_str())
    );
    second.detach_external_key().await.unwrap();

    moto.set_enabled(&key, false).await;
    let e = owner
        .attach_external_key(&format!("awskms:{key}"))
        .await
        .unwrap_err();
    assert_eq!(code(e), "bad_request", "a disabled key is refused up front");
    srv.stop().await;
}

/// Two nodes on one PostgreSQL database with a KMS seal: each unseals itself; an
/// organisation's own key, revoked once in the KMS, stops both nodes within the key cache
/// lifetime, and enabling it restores both; after a rekey on one node the other follows
/// the new root key by itself.
#[tokio::test]
async fn two_nodes_auto_unseal_and_honour_a_revoked_own_key() {
    let Some(url) = coffer_testkit::pg_database().await else {
        return;
    };
    let moto = MotoKms::start();
    let (seal_key, org_key) = (moto.create_key().await, moto.create_key().await);
    let services = moto.services();
    let seal = seal_with(&services, &format!("awskms:{seal_key}"));
    let ttl = Duration::from_millis(500);
    let node = |seal: Arc<dyn Seal>| TestOptions {
        dev: false,
        database_url: Some(url.clone()),
        seal,
        key_services: services.clone(),
        core: CoreConfig {
            key_cache_ttl: ttl,
            ..TestServer::fast_core()
        },
        ..TestOptions::default()
    };
    let a = TestServer::with(node(seal.clone())).await;
    let init = a.client().init(3, 2).await.unwrap();
    assert!(init.unsealed);
    let b = TestServer::with(node(seal.clone())).await;
    assert!(
        !b.client().seal_status().await.unwrap().sealed,
        "node B unsealed itself through KMS"
    );
    let token = a
        .client()
        .login("admin", &init.bootstrap.password)
        .await
        .unwrap()
        .token
        .unwrap();
    let (on_a, on_b) = (
        a.client().with_token(token.clone()),
        b.client().with_token(token),
    );
    on_a.create_project("web").await.unwrap();
    on_a.set_param("web", "default", "K", "v", Some(false))
        .await
        .unwrap();
    on_a.attach_external_key(&format!("awskms:{org_key}"))
        .await
        .unwrap();
    a.coffer().keys().run_key_maintenance().await.unwrap();
    for c in [&on_a, &on_b] {
        assert_eq!(
            c.get_param("web", "default", "K")
                .await
                .unwrap()
                .value
                .as_deref(),
            Some("v")
        );
    }
    moto.set_enabled(&org_key, false).await;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    for c in [&on_a, &on_b] {
        let e = c.get_param("web", "default", "K").await.unwrap_err();
        assert_eq!(code(e), "tenant_key_unavailable");
    }
    moto.set_enabled(&org_key, true).await;
    for c in [&on_a, &on_b] {
        assert_eq!(
            c.get_param("web", "default", "K")
                .await
                .unwrap()
                .value
                .as_deref(),
            Some("v")
        );
    }

    // A rekey on A replaces the root key: B notices, seals, and unseals itself again with
    // the new root key through the KMS; what B seals afterwards, A can open.
    on_a.rekey(&init.shares[..2], 3, 2).await.unwrap();
    let mut b_caught_up = false;
    for _ in 0..50 {
        if b.coffer().root_check_matches().await {
            b_caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b_caught_up, "node B follows the new root key");
    assert!(!b.client().seal_status().await.unwrap().sealed);
    let login_b = b
        .client()
        .login("admin", &init.bootstrap.password)
        .await
        .unwrap()
        .token
        .unwrap();
    let on_b = b.client().with_token(login_b);
    // A new organisation's key is wrapped with B's root key: it must be the new one.
    on_b.create_org("made-on-b").await.unwrap();
    let on_b = b
        .client()
        .with_token(on_b.switch_org("made-on-b").await.unwrap().token.unwrap());
    on_b.create_project("p").await.unwrap();
    on_b.set_param("p", "default", "S", "from-b", Some(true))
        .await
        .unwrap();
    let on_a = a
        .client()
        .with_token(on_a.switch_org("made-on-b").await.unwrap().token.unwrap());
    assert_eq!(
        on_a.get_param("p", "default", "S")
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("from-b")
    );
    a.stop().await;
    b.stop().await;
    coffer_testkit::drop_pg_database(&url).await;
}

/// The real KMS key, with a count of unwraps: how often the key service is asked.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn coffer_core::seal::ExternalKey>,
    unwraps: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl coffer_core::seal::ExternalKey for Counted {
    fn reference(&self) -> String {
        self.inner.reference()
    }
    async fn wrap(
        &self,
        plaintext: &[u8],
        context: &coffer_core::seal::EncryptionContext,
    ) -> Result<Vec<u8>, coffer_core::seal::SealError> {
        self.inner.wrap(plaintext, context).await
    }
    async fn unwrap(
        &self,
        blob: &[u8],
        context: &coffer_core::seal::EncryptionContext,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, coffer_core::seal::SealError> {
        self.unwraps
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.unwrap(blob, context).await
    }
}

#[derive(Debug)]
struct CountingKms {
    kms: coffer_extkeys::KmsClient,
    unwraps: Arc<std::sync::atomic::AtomicUsize>,
}

impl KeyProvider for CountingKms {
    fn scheme(&self) -> &'static str {
        "awskms"
    }
    fn key(
        &self,
        name: &str,
    ) -> Result<Arc<dyn coffer_core::seal::ExternalKey>, coffer_core::seal::SealError> {
        Ok(Arc::new(Counted {
            inner: self.kms.key(name)?,
            unwraps: self.unwraps.clone(),
        }))
    }
}

/// When an organisation's cached keys expire under load, one request unwraps them through
/// the KMS and the others wait for it, rather than each calling the KMS.
#[tokio::test]
async fn expired_own_keys_are_unwrapped_once_for_many_concurrent_requests() {
    let moto = MotoKms::start();
    let key = moto.create_key().await;
    let unwraps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let services = KeyServices::new(vec![Arc::new(CountingKms {
        kms: moto.client(),
        unwraps: unwraps.clone(),
    }) as Arc<dyn KeyProvider>]);
    let ttl = Duration::from_millis(300);
    let srv = TestServer::with(TestOptions {
        core: CoreConfig {
            key_cache_ttl: ttl,
            ..TestServer::fast_core()
        },
        key_services: services,
        ..TestOptions::default()
    })
    .await;
    let owner = srv.owner().await;
    owner.create_project("app").await.unwrap();
    owner
        .set_param("app", "default", "K", "v", Some(false))
        .await
        .unwrap();
    owner
        .attach_external_key(&format!("awskms:{key}"))
        .await
        .unwrap();
    srv.coffer().keys().run_key_maintenance().await.unwrap();
    // Wait until the root-wrapped term is gone, so one load is exactly one unwrap.
    tokio::time::sleep(ttl * 2 + Duration::from_millis(1100)).await;
    srv.coffer().keys().run_key_maintenance().await.unwrap();
    assert_eq!(owner.key_status().await.unwrap().terms.len(), 1);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let before = unwraps.load(std::sync::atomic::Ordering::SeqCst);
    let reads = (0..16).map(|_| owner.get_param("app", "default", "K"));
    for r in futures_util::future::join_all(reads).await {
        assert_eq!(r.unwrap().value.as_deref(), Some("v"));
    }
    let calls = unwraps.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(calls, 1, "16 concurrent reads after expiry: one KMS unwrap");
    srv.stop().await;
}
