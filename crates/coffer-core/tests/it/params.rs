use coffer_core::{CoreError, DiffKind, Principal, Role, SetParam};

use crate::{fixture, sqlite_fixture};
use coffer_core::audit::Cx;

fn set<'a>(name: &'a str, value: &'a str, secret: Option<bool>) -> SetParam<'a> {
    SetParam {
        name,
        value: value.as_bytes(),
        secret,
    }
}

fn val(v: &coffer_core::ParamView) -> String {
    String::from_utf8(
        v.value
            .as_ref()
            .expect("value present")
            .expose_secret()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn versions_history_rollback_and_delete() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    assert_eq!(
        c.params()
            .set_param(&Cx::default(), p, "app", "default", set("K", "one", None))
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        c.params()
            .set_param(
                &Cx::default(),
                p,
                "app",
                "default",
                set("K", "two", Some(true))
            )
            .await
            .unwrap()
            .version,
        2
    );
    // Updating without a flag keeps the secret flag.
    let v3 = c
        .params()
        .set_param(&Cx::default(), p, "app", "default", set("K", "three", None))
        .await
        .unwrap();
    assert!(v3.secret && v3.version == 3);
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await
            .unwrap()),
        "three"
    );

    let r = c
        .params()
        .rollback_param(&Cx::default(), p, "app", "default", "K", 1)
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    assert!(
        !r.secret,
        "rollback restores the flag of the version rolled back to"
    );
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await
            .unwrap()),
        "one"
    );

    let h = c
        .params()
        .param_history(&Cx::default(), p, "app", "default", "K")
        .await
        .unwrap();
    assert_eq!(
        h.iter().map(|e| (e.version, e.action)).collect::<Vec<_>>(),
        vec![(4, "rollback"), (3, "set"), (2, "set"), (1, "set")]
    );
    assert!(h[0].current && !h[1].current);
    // Actors by name, not only by id (issue 19).
    assert!(
        h.iter()
            .all(|e| e.actor.as_deref() == Some(p.username.as_str()) && e.actor_id == p.user_id),
        "{h:?}"
    );

    assert_eq!(
        c.params()
            .delete_param(&Cx::default(), p, "app", "default", "K")
            .await
            .unwrap()
            .version,
        5
    );
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        c.params()
            .delete_param(&Cx::default(), p, "app", "default", "K")
            .await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(
        matches!(
            c.params()
                .rollback_param(&Cx::default(), p, "app", "default", "K", 5)
                .await,
            Err(CoreError::Invalid { .. })
        ),
        "a deletion has no value"
    );
    assert!(matches!(
        c.params()
            .rollback_param(&Cx::default(), p, "app", "default", "K", 99)
            .await,
        Err(CoreError::NotFound { .. })
    ));
    // Undelete by rolling back.
    c.params()
        .rollback_param(&Cx::default(), p, "app", "default", "K", 2)
        .await
        .unwrap();
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await
            .unwrap()),
        "two"
    );
}

#[tokio::test]
async fn children_inherit_what_they_do_not_override() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.projects()
        .create_env(&Cx::default(), p, "app", "production", None)
        .await
        .unwrap();
    c.projects()
        .create_env(
            &Cx::default(),
            p,
            "app",
            "production-eu",
            Some("production"),
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            set("LOG", "debug", None),
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            set("HOST", "localhost", None),
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "production",
            set("LOG", "warn", None),
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "production-eu",
            set("REGION", "eu", None),
        )
        .await
        .unwrap();

    let l = c
        .params()
        .list_params(&Cx::default(), p, "app", "production-eu", true)
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = l
        .iter()
        .map(|v| (v.name.clone(), val(v), v.env.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("HOST".into(), "localhost".into(), "default".into()),
            ("LOG".into(), "warn".into(), "production".into()),
            ("REGION".into(), "eu".into(), "production-eu".into()),
        ]
    );
    assert_eq!(
        c.params()
            .get_param(&Cx::default(), p, "app", "production-eu", "LOG")
            .await
            .unwrap()
            .env,
        "production"
    );
    // Deleting the override lets the parent's value show through.
    c.params()
        .delete_param(&Cx::default(), p, "app", "production", "LOG")
        .await
        .unwrap();
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), p, "app", "production-eu", "LOG")
            .await
            .unwrap()),
        "debug"
    );

    let d = c
        .params()
        .diff_envs(&Cx::default(), p, "app", "default", "production-eu", true)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].name.as_str(), d[0].kind),
        ("REGION", DiffKind::OnlyInB)
    );
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "production-eu",
            set("HOST", "eu.example", None),
        )
        .await
        .unwrap();
    let d = c
        .params()
        .diff_envs(&Cx::default(), p, "app", "default", "production-eu", false)
        .await
        .unwrap();
    assert!(
        d.iter()
            .any(|e| e.name == "HOST" && e.kind == DiffKind::Changed)
    );

    assert!(matches!(
        c.projects()
            .create_env(&Cx::default(), p, "app", "x", Some("missing"))
            .await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        c.projects()
            .create_env(&Cx::default(), p, "app", "production", None)
            .await,
        Err(CoreError::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn secrets_are_masked_unless_revealed_and_viewers_never_see_them() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            set("TOKEN", "hunter2", Some(true)),
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            set("PORT", "8080", None),
        )
        .await
        .unwrap();
    let masked = c
        .params()
        .list_params(&Cx::default(), p, "app", "default", false)
        .await
        .unwrap();
    assert!(
        masked
            .iter()
            .find(|v| v.name == "TOKEN")
            .unwrap()
            .value
            .is_none()
    );
    assert_eq!(
        val(masked.iter().find(|v| v.name == "PORT").unwrap()),
        "8080"
    );
    let revealed = c
        .params()
        .list_params(&Cx::default(), p, "app", "default", true)
        .await
        .unwrap();
    assert_eq!(
        val(revealed.iter().find(|v| v.name == "TOKEN").unwrap()),
        "hunter2"
    );

    c.identity()
        .create_member(p, "vera", "viewer password 123", Role::Viewer)
        .await
        .unwrap();
    let viewer = c
        .identity()
        .login(&Cx::default(), "vera", "viewer password 123", None, "test")
        .await
        .unwrap()
        .session()
        .unwrap()
        .principal;
    let l = c
        .params()
        .list_params(&Cx::default(), &viewer, "app", "default", true)
        .await
        .unwrap();
    assert!(
        l.iter()
            .find(|v| v.name == "TOKEN")
            .unwrap()
            .value
            .is_none(),
        "reveal does not lift a Viewer's mask"
    );
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), &viewer, "app", "default", "TOKEN")
            .await,
        Err(CoreError::Forbidden(_))
    ));
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), &viewer, "app", "default", "PORT")
            .await
            .unwrap()),
        "8080"
    );
    assert!(matches!(
        c.params()
            .set_param(
                &Cx::default(),
                &viewer,
                "app",
                "default",
                set("X", "1", None)
            )
            .await,
        Err(CoreError::Forbidden(_))
    ));
    assert!(matches!(
        c.projects()
            .create_project(&Cx::default(), &viewer, "mine")
            .await,
        Err(CoreError::Forbidden(_))
    ));
    assert!(matches!(
        c.identity()
            .create_member(&viewer, "eve", "another long password", Role::Viewer)
            .await,
        Err(CoreError::Forbidden(_))
    ));
    let d = c
        .params()
        .diff_envs(&Cx::default(), &viewer, "app", "default", "default", true)
        .await
        .unwrap();
    assert!(d.is_empty());
}

#[tokio::test]
async fn organisations_cannot_see_each_other() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            set("K", "org-a-secret", Some(true)),
        )
        .await
        .unwrap();

    let org_b = c.identity().create_org("org-b").await.unwrap();
    c.identity()
        .add_user_to_org(org_b, "bob", "bob's long password", Role::Owner)
        .await
        .unwrap();
    let bob: Principal = c
        .identity()
        .login(&Cx::default(), "bob", "bob's long password", None, "test")
        .await
        .unwrap()
        .session()
        .unwrap()
        .principal;
    assert_eq!(bob.org_id, org_b);
    assert!(
        c.projects()
            .list_projects(&Cx::default(), &bob)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), &bob, "app", "default", "K")
            .await,
        Err(CoreError::NotFound { .. })
    ));
    // Same names in another organisation are independent.
    c.projects()
        .create_project(&Cx::default(), &bob, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            &bob,
            "app",
            "default",
            set("K", "org-b-value", None),
        )
        .await
        .unwrap();
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), &bob, "app", "default", "K")
            .await
            .unwrap()),
        "org-b-value"
    );
    assert_eq!(
        val(&c
            .params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await
            .unwrap()),
        "org-a-secret"
    );
}

#[tokio::test]
async fn bad_input_is_rejected_and_changes_nothing() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    let long = "n".repeat(257);
    for bad in ["", "..", "a/b", "a\u{0}b", "x\ny", long.as_str()] {
        // An environment's parent is refused as invalid, not looked up and echoed.
        let r = c
            .projects()
            .create_env(&Cx::default(), p, "app", "child", Some(bad))
            .await;
        assert!(
            matches!(
                r,
                Err(CoreError::Invalid {
                    field: "parent",
                    ..
                })
            ),
            "{bad:?}: {r:?}"
        );
        assert!(
            matches!(
                c.params()
                    .set_param(&Cx::default(), p, "app", "default", set(bad, "v", None))
                    .await,
                Err(CoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                c.projects().create_project(&Cx::default(), p, bad).await,
                Err(CoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    let huge = "v".repeat(c.config().max_value_bytes + 1);
    assert!(matches!(
        c.params()
            .set_param(&Cx::default(), p, "app", "default", set("BIG", &huge, None))
            .await,
        Err(CoreError::Invalid { .. })
    ));
    let not_utf8 = SetParam {
        name: "BIN",
        value: &[0xff, 0xfe],
        secret: None,
    };
    assert!(matches!(
        c.params()
            .set_param(&Cx::default(), p, "app", "default", not_utf8)
            .await,
        Err(CoreError::Invalid { .. })
    ));
    assert!(
        c.params()
            .list_params(&Cx::default(), p, "app", "default", true)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "nope", "default", "K")
            .await,
        Err(CoreError::NotFound {
            kind: "project",
            ..
        })
    ));
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "app", "nope", "K")
            .await,
        Err(CoreError::NotFound {
            kind: "environment",
            ..
        })
    ));
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "K")
            .await,
        Err(CoreError::NotFound {
            kind: "parameter",
            ..
        })
    ));
    assert!(matches!(
        c.projects().create_project(&Cx::default(), p, "app").await,
        Err(CoreError::AlreadyExists { .. })
    ));
}

#[tokio::test]
async fn concurrent_writers_get_distinct_versions() {
    let f = fixture().await;
    f.coffer
        .projects()
        .create_project(&Cx::default(), &f.owner, "app")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, p) = (f.coffer.clone(), f.owner.clone());
        tasks.push(tokio::spawn(async move {
            c.params()
                .set_param(
                    &Cx::default(),
                    &p,
                    "app",
                    "default",
                    SetParam {
                        name: "RACE",
                        value: format!("w{i}").as_bytes(),
                        secret: None,
                    },
                )
                .await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await.unwrap() {
            versions.push(v.version);
        }
    }
    versions.sort_unstable();
    let n = versions.len() as u64;
    assert!(n >= 1);
    assert_eq!(
        versions,
        (1..=n).collect::<Vec<_>>(),
        "every accepted write has its own version"
    );
    let h = f
        .coffer
        .params()
        .param_history(&Cx::default(), &f.owner, "app", "default", "RACE")
        .await
        .unwrap();
    assert_eq!(h.len() as u64, n);
}

/// Changing how new values are encrypted leaves every stored value readable: each opens
/// with the scheme its header names.
#[tokio::test]
async fn stored_values_keep_their_scheme_when_the_default_changes() {
    use sqlx::Connection;
    let f = sqlite_fixture().await;
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
            set("OLD", "gcm", Some(true)),
        )
        .await
        .unwrap();
    let f = f
        .restart(coffer_core::CoreConfig {
            value_scheme: coffer_core::ValueScheme::Aes256GcmSiv,
            ..coffer_core::CoreConfig::default()
        })
        .await;
    let (c, owner) = (&f.coffer, &f.owner);
    c.params()
        .set_param(
            &Cx::default(),
            owner,
            "app",
            "default",
            set("NEW", "siv", Some(true)),
        )
        .await
        .unwrap();
    for (name, want) in [("OLD", "gcm"), ("NEW", "siv")] {
        let v = c
            .params()
            .get_param(&Cx::default(), owner, "app", "default", name)
            .await
            .unwrap();
        assert_eq!(val(&v), want);
    }
    // Both schemes are on disk (byte 3 of the header names it).
    let url = format!("sqlite://{}?mode=ro", f.db_path().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut schemes: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT unicode(substr(ciphertext, 4, 1)) FROM credentials")
            .fetch_all(&mut db)
            .await
            .unwrap();
    schemes.sort_unstable();
    assert_eq!(schemes, vec![1, 2]);
}
