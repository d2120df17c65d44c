use coffer_core::{CoreConfig, CoreError, SetParam, UnsealOutcome};

use crate::fixture;
use coffer_core::audit::Cx;

#[tokio::test]
async fn a_fresh_server_is_sealed_and_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    let st = c.seal_status().await.unwrap();
    assert!(!st.initialized && st.sealed);
    assert!(matches!(
        c.unseal(&Cx::default(), "anything").await,
        Err(CoreError::NotInitialized)
    ));
    assert!(matches!(
        c.identity()
            .login(&Cx::default(), "admin", "x", None, "test")
            .await,
        Err(CoreError::Sealed)
    ));
    assert!(matches!(
        c.identity().authenticate("cfs_x").await,
        Err(CoreError::Sealed)
    ));
}

#[tokio::test]
async fn init_twice_is_refused_and_bad_parameters_rejected() {
    let f = fixture().await;
    assert!(matches!(
        f.coffer.init(&Cx::default(), 3, 2).await,
        Err(CoreError::AlreadyInitialized)
    ));
    let dir = tempfile::tempdir().unwrap();
    let c = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    for (n, t) in [(3, 4), (3, 1), (1, 1), (0, 0)] {
        assert!(
            matches!(
                c.init(&Cx::default(), n, t).await,
                Err(CoreError::Invalid { .. })
            ),
            "{n}/{t}"
        );
    }
    assert!(
        !c.seal_status().await.unwrap().initialized,
        "a rejected init must change nothing"
    );
}

#[tokio::test]
async fn seal_wipes_keys_and_restart_requires_the_quorum_again() {
    let f = fixture().await;
    f.coffer
        .projects()
        .create_project(&Cx::default(), &f.owner, "app")
        .await
        .unwrap();
    f.coffer
        .params()
        .set_param(
            &Cx::default(),
            &f.owner,
            "app",
            "default",
            SetParam {
                name: "K",
                value: b"v",
                secret: Some(true),
            },
        )
        .await
        .unwrap();
    f.coffer.seal().unwrap();
    assert!(f.coffer.seal_status().await.unwrap().sealed);
    assert!(matches!(
        f.coffer
            .params()
            .get_param(&Cx::default(), &f.owner, "app", "default", "K")
            .await,
        Err(CoreError::Sealed)
    ));
    assert!(matches!(
        f.coffer
            .projects()
            .list_projects(&Cx::default(), &f.owner)
            .await,
        Err(CoreError::Sealed)
    ));

    // A "restart": a new process over the same database starts sealed.
    let c2 = f.open_again(CoreConfig::default()).await;
    assert!(c2.seal_status().await.unwrap().sealed);
    // Wrong and malformed shares: clear errors, progress never leaks share material.
    assert!(matches!(
        c2.unseal(&Cx::default(), "not-a-share").await,
        Err(CoreError::MalformedShare)
    ));
    assert_eq!(c2.seal_status().await.unwrap().progress, 0);
    assert!(matches!(
        c2.unseal(&Cx::default(), &f.shares[1]).await.unwrap(),
        UnsealOutcome::Progress { have: 1, .. }
    ));
    assert!(matches!(
        c2.unseal(&Cx::default(), &f.shares[1]).await,
        Err(CoreError::DuplicateShare)
    ));
    assert_eq!(
        c2.unseal(&Cx::default(), &f.shares[0]).await.unwrap(),
        UnsealOutcome::Unsealed
    );
    assert_eq!(
        c2.params()
            .get_param(&Cx::default(), &f.owner, "app", "default", "K")
            .await
            .unwrap()
            .value
            .unwrap()
            .expose_secret(),
        b"v"
    );
}

#[tokio::test]
async fn shares_of_another_server_do_not_unseal_and_reset_progress() {
    let f = fixture().await;
    let other = fixture().await;
    f.coffer.seal().unwrap();
    assert!(matches!(
        f.coffer.unseal(&Cx::default(), &f.shares[0]).await.unwrap(),
        UnsealOutcome::Progress { .. }
    ));
    // A share of a different root key completes the count but fails the root key check.
    assert_eq!(
        f.coffer
            .unseal(&Cx::default(), &other.shares[1])
            .await
            .unwrap(),
        UnsealOutcome::WrongShares
    );
    let st = f.coffer.seal_status().await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.progress, 0);
}

#[tokio::test]
async fn dev_seal_initialises_once_and_refuses_a_shamir_database() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dev-root.key");
    let c = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    let boot = c
        .start_dev(&key)
        .await
        .unwrap()
        .expect("first start creates the bootstrap account");
    assert_eq!(boot.username, "admin");
    let c2 = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    assert!(
        c2.start_dev(&key).await.unwrap().is_none(),
        "credentials are printed only once"
    );
    assert!(!c2.seal_status().await.unwrap().sealed);
    assert!(matches!(
        c2.start_sealed().await,
        Err(CoreError::WrongSealType)
    ));
    // Without its key file the data cannot be opened: refused, and no new key is made.
    std::fs::rename(&key, dir.path().join("moved.key")).unwrap();
    let c4 = coffer_testkit::open_sqlite(&dir.path().join("coffer.db"), CoreConfig::default())
        .await
        .unwrap();
    let e = c4.start_dev(&key).await.unwrap_err();
    assert!(matches!(e, CoreError::DevKeyMissing(_)), "{e:?}");
    assert!(e.to_string().contains("dev-root.key"), "{e}");
    assert!(!key.exists(), "no new key file next to the data");

    let f = fixture().await;
    let c3 = f.open_again(CoreConfig::default()).await;
    assert!(matches!(
        c3.start_dev(&f.dir.path().join("k")).await,
        Err(CoreError::WrongSealType)
    ));
}

#[tokio::test]
async fn login_failures_are_indistinguishable_and_logout_revokes() {
    let f = fixture().await;
    let unknown = f
        .coffer
        .identity()
        .login(&Cx::default(), "nobody", "whatever-password", None, "test")
        .await
        .unwrap_err();
    let wrong = f
        .coffer
        .identity()
        .login(&Cx::default(), "admin", "wrong-password", None, "test")
        .await
        .unwrap_err();
    assert!(matches!(unknown, CoreError::BadCredentials));
    assert_eq!(unknown.to_string(), wrong.to_string());

    f.coffer
        .identity()
        .add_user_to_org(
            f.owner.org_id,
            "Carol",
            "a long enough password",
            coffer_core::Role::Viewer,
        )
        .await
        .unwrap();
    let s = f
        .coffer
        .identity()
        .login(
            &Cx::default(),
            "  CAROL ",
            "a long enough password",
            None,
            "test",
        )
        .await
        .unwrap()
        .session()
        .unwrap();
    let tok = s.token.expose_secret().to_owned();
    assert_eq!(
        f.coffer
            .identity()
            .authenticate(&tok)
            .await
            .unwrap()
            .username,
        "carol"
    );
    f.coffer
        .identity()
        .logout(&Cx::default(), &tok)
        .await
        .unwrap();
    assert!(matches!(
        f.coffer.identity().authenticate(&tok).await,
        Err(CoreError::Unauthenticated)
    ));
    assert!(matches!(
        f.coffer.identity().authenticate("cfs_forged").await,
        Err(CoreError::Unauthenticated)
    ));
    assert!(matches!(
        f.coffer.identity().authenticate("not-even-prefixed").await,
        Err(CoreError::Unauthenticated)
    ));
}
