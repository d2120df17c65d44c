use coffer_crypto::{KeyTerm, RecordContext, RootKey, TenantKey};
use coffer_store::prelude::*;
use coffer_store::*;
use uuid::Uuid;

pub async fn org(s: &dyn Store, name: &str) -> Uuid {
    let root = RootKey::generate();
    let id = Uuid::new_v4();
    let wrapped = root
        .wrap_tenant_key(id, &TenantKey::generate(KeyTerm(1)))
        .unwrap();
    s.create_org(
        &OrgRow {
            id,
            name: name.into(),
            created_at: 1,
        },
        &TenantKeyRow {
            org_id: id,
            term: KeyTerm(1),
            wrapped,
            created_at: 1,
        },
        None,
        None,
    )
    .await
    .unwrap();
    id
}

pub async fn project_env(s: &dyn Store, org_id: Uuid) -> (ProjectRow, EnvRow) {
    let p = ProjectRow {
        id: Uuid::new_v4(),
        org_id,
        name: "app".into(),
        created_at: 1,
    };
    let e = EnvRow {
        id: Uuid::new_v4(),
        org_id,
        project_id: p.id,
        parent_id: None,
        name: "default".into(),
        created_at: 1,
    };
    // The project and its first environment in one transaction.
    s.create_project(&p, std::slice::from_ref(&e), None)
        .await
        .unwrap();
    assert_eq!(s.envs(org_id, p.id).await.unwrap(), vec![e.clone()]);
    (p, e)
}

/// `at` is (organisation, environment, parameter).
pub fn write(
    (org_id, env_id, param_id): (Uuid, Uuid, Uuid),
    name: &str,
    expected: u64,
    action: VersionAction,
    key: &TenantKey,
    value: &[u8],
) -> ParamWrite {
    let version = expected + 1;
    let ciphertext = (action != VersionAction::Delete).then(|| {
        key.seal(
            &RecordContext {
                org_id,
                record_id: param_id,
                version,
            },
            value,
        )
        .unwrap()
    });
    ParamWrite {
        org_id,
        env_id,
        param_id,
        name: name.into(),
        expected_current: expected,
        version: ParamVersionRow {
            param_id,
            version,
            is_secret: true,
            action,
            actor_id: Uuid::nil(),
            created_at: 10 + version as i64,
        },
        ciphertext,
        credential_id: Uuid::new_v4(),
        event: None,
    }
}

pub async fn seal_config_is_written_once(s: &dyn Store) {
    assert!(s.seal_config().await.unwrap().is_none());
    let root = RootKey::generate();
    let cfg = SealConfigRow {
        kind: "shamir".into(),
        shares: 5,
        threshold: 3,
        root_check: root.check_value().unwrap(),
        created_at: 7,
        sealed_root: None,
    };
    s.init_seal_config(&cfg, None, None).await.unwrap();
    assert!(matches!(
        s.init_seal_config(&cfg, None, None).await,
        Err(StoreError::Conflict)
    ));
    let back = s.seal_config().await.unwrap().unwrap();
    assert_eq!(
        (
            back.kind.as_str(),
            back.shares,
            back.threshold,
            back.created_at
        ),
        ("shamir", 5, 3, 7)
    );
    assert!(root.matches(&back.root_check));
    assert_eq!(back.sealed_root, None);

    // Seal migration: only with the current check value; the root key stays.
    let other = RootKey::generate().check_value().unwrap();
    assert!(matches!(
        s.migrate_seal("awskms", Some(b"wrapped"), &other, None)
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.seal_config().await.unwrap().unwrap().kind, "shamir");
    s.migrate_seal("awskms", Some(b"wrapped"), &back.root_check, None)
        .await
        .unwrap();
    let moved = s.seal_config().await.unwrap().unwrap();
    assert_eq!(
        (moved.kind.as_str(), moved.sealed_root.as_deref()),
        ("awskms", Some(&b"wrapped"[..]))
    );
    assert!(root.matches(&moved.root_check));
    s.migrate_seal("shamir", None, &back.root_check, None)
        .await
        .unwrap();
    assert_eq!(s.seal_config().await.unwrap().unwrap().sealed_root, None);
}

pub async fn orgs_and_tenant_keys_roundtrip(s: &dyn Store) {
    let root = RootKey::generate();
    let id = Uuid::new_v4();
    let tk = TenantKey::generate(KeyTerm(1));
    let wrapped = root.wrap_tenant_key(id, &tk).unwrap();
    let row = OrgRow {
        id,
        name: "acme".into(),
        created_at: 3,
    };
    s.create_org(
        &row,
        &TenantKeyRow {
            org_id: id,
            term: KeyTerm(1),
            wrapped: wrapped.clone(),
            created_at: 3,
        },
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.org(id).await.unwrap(), Some(row.clone()));
    let keys = s.tenant_keys(id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].term, KeyTerm(1));
    assert_eq!(
        root.unwrap_tenant_key(id, &keys[0].wrapped).unwrap().term(),
        KeyTerm(1)
    );
    // Same name again: conflict, and nothing half-written.
    let other = Uuid::new_v4();
    let w2 = root.wrap_tenant_key(other, &tk).unwrap();
    let dup = s
        .create_org(
            &OrgRow {
                id: other,
                name: "acme".into(),
                created_at: 4,
            },
            &TenantKeyRow {
                org_id: other,
                term: KeyTerm(1),
                wrapped: w2,
                created_at: 4,
            },
            None,
            None,
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict)));
    assert!(s.org(other).await.unwrap().is_none());
    assert!(s.tenant_keys(other).await.unwrap().is_empty());
}

pub async fn users_are_unique_and_sessions_expire(s: &dyn Store) {
    let org_id = org(s, "o").await;
    let u = UserRow {
        id: Uuid::new_v4(),
        username: "alice".into(),
        password_hash: "$argon2id$x".into(),
        created_at: 1,
        email: Some("alice@example.com".into()),
        mfa_enabled: false,
    };
    s.create_user(&u).await.unwrap();
    let dup = UserRow {
        id: Uuid::new_v4(),
        ..u.clone()
    };
    assert!(matches!(
        s.create_user(&dup).await,
        Err(StoreError::Conflict)
    ));
    let same_email = UserRow {
        id: Uuid::new_v4(),
        username: "alice2".into(),
        ..u.clone()
    };
    assert!(matches!(
        s.create_user(&same_email).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        u.id
    );
    assert_eq!(s.user_by_name("alice").await.unwrap().unwrap().id, u.id);
    assert!(s.user_by_name("bob").await.unwrap().is_none());
    s.add_membership(
        &MembershipRow {
            user_id: u.id,
            org_id,
            role: "owner".into(),
            created_at: 1,
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.memberships(u.id).await.unwrap()[0].role, "owner");

    let live = session(u.id, org_id, 1, 1000);
    let old = SessionRow {
        expires_at: 50,
        ..session(u.id, org_id, 2, 0)
    };
    let idle = SessionRow {
        last_seen_at: 10,
        ..session(u.id, org_id, 3, 1000)
    };
    s.create_session(&live, None).await.unwrap();
    s.create_session(&old, None).await.unwrap();
    s.create_session(&idle, None).await.unwrap();
    s.touch_session(org_id, live.id, 90).await.unwrap();
    let got = s.session(&[1; 32]).await.unwrap().unwrap();
    assert_eq!((got.expires_at, got.last_seen_at), (1000, 90));
    assert_eq!(s.user_sessions(u.id).await.unwrap().len(), 3);
    // At 100 with a 50 ms idle limit: `old` has expired and `idle` was last seen at 10.
    assert_eq!(s.delete_expired_sessions(100, 50).await.unwrap(), 2);
    assert!(s.session(&[2; 32]).await.unwrap().is_none());
    assert!(s.session(&[3; 32]).await.unwrap().is_none());
    assert!(s.delete_session(&[1; 32], None).await.unwrap());
    assert!(!s.delete_session(&[1; 32], None).await.unwrap());
    assert!(s.session(&[1; 32]).await.unwrap().is_none());
}

pub async fn projects_and_envs_are_scoped_by_org(s: &dyn Store) {
    let a = org(s, "a").await;
    let b = org(s, "b").await;
    let (p, e) = project_env(s, a).await;
    assert!(matches!(
        s.create_project(
            &ProjectRow {
                id: Uuid::new_v4(),
                ..p.clone()
            },
            &[],
            None
        )
        .await,
        Err(StoreError::Conflict)
    ));
    // The same name in another organisation is fine.
    s.create_project(
        &ProjectRow {
            id: Uuid::new_v4(),
            org_id: b,
            ..p.clone()
        },
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.project_by_name(a, "app").await.unwrap().unwrap().id, p.id);
    assert_ne!(s.project_by_name(b, "app").await.unwrap().unwrap().id, p.id);
    assert!(
        s.envs(b, p.id).await.unwrap().is_empty(),
        "envs of org a's project are invisible to org b"
    );
    let child = EnvRow {
        id: Uuid::new_v4(),
        parent_id: Some(e.id),
        name: "prod".into(),
        ..e.clone()
    };
    s.create_env(&child, None).await.unwrap();
    let envs = s.envs(a, p.id).await.unwrap();
    assert_eq!(envs.len(), 2);
    assert_eq!(
        envs.iter().find(|x| x.name == "prod").unwrap().parent_id,
        Some(e.id)
    );
    // The project and its environments in one read equal the two reads.
    let (project, tree) = s.project_tree(a, "app").await.unwrap().unwrap();
    assert_eq!(project, s.project_by_name(a, "app").await.unwrap().unwrap());
    assert_eq!(tree, envs);
    // Org b's project of the same name has no environments: its one row carries NULLs.
    let (other, none) = s.project_tree(b, "app").await.unwrap().unwrap();
    assert_ne!(other.id, p.id);
    assert!(none.is_empty());
    assert!(s.project_tree(a, "missing").await.unwrap().is_none());
    assert!(matches!(
        s.create_env(
            &EnvRow {
                id: Uuid::new_v4(),
                ..child
            },
            None
        )
        .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.projects(a).await.unwrap().len(), 1);
}

pub async fn param_versions_append_with_optimistic_concurrency(s: &dyn Store) {
    let o = org(s, "o").await;
    let (_, e) = project_env(s, o).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = Uuid::new_v4();
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"one",
    ))
    .await
    .unwrap();
    // A second "create" of the same name loses.
    let racer = write(
        (o, e.id, Uuid::new_v4()),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"x",
    );
    assert!(matches!(
        s.append_param_version(&racer).await,
        Err(StoreError::Conflict)
    ));
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        1,
        VersionAction::Set,
        &key,
        b"two",
    ))
    .await
    .unwrap();
    // A writer based on a stale version loses and writes nothing.
    assert!(matches!(
        s.append_param_version(&write(
            (o, e.id, pid),
            "K",
            1,
            VersionAction::Set,
            &key,
            b"stale"
        ))
        .await,
        Err(StoreError::Conflict)
    ));
    let hist = s.param_history(o, pid).await.unwrap();
    assert_eq!(
        hist.iter().map(|h| h.version).collect::<Vec<_>>(),
        vec![1, 2]
    );

    let cur = s.current_value(o, e.id, "K").await.unwrap().unwrap();
    assert_eq!(cur.version.version, 2);
    let ctx = RecordContext {
        org_id: o,
        record_id: pid,
        version: 2,
    };
    assert_eq!(
        key.open(&ctx, cur.ciphertext.as_ref().unwrap())
            .unwrap()
            .expose_secret(),
        b"two"
    );
    let v1 = s.param_version(o, pid, 1).await.unwrap().unwrap();
    assert_eq!(
        key.open(
            &RecordContext { version: 1, ..ctx },
            v1.ciphertext.as_ref().unwrap()
        )
        .unwrap()
        .expose_secret(),
        b"one"
    );
    assert!(s.param_version(o, pid, 9).await.unwrap().is_none());
}

pub async fn deletion_markers_hide_values(s: &dyn Store) {
    let o = org(s, "o").await;
    let (_, e) = project_env(s, o).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = Uuid::new_v4();
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"v",
    ))
    .await
    .unwrap();
    s.append_param_version(
        &write((o, e.id, pid), "L", 0, VersionAction::Set, &key, b"w")
            .clone_with_id(Uuid::new_v4()),
    )
    .await
    .unwrap();
    let mut plain =
        write((o, e.id, pid), "M", 0, VersionAction::Set, &key, b"m").clone_with_id(Uuid::new_v4());
    plain.version.is_secret = false;
    s.append_param_version(&plain).await.unwrap();
    // What a write reads first: the row and whether the current version is a secret.
    let state = |name: &'static str| async move {
        s.param_state(o, e.id, name)
            .await
            .unwrap()
            .map(|(row, secret)| (row.id, row.current_version, row.deleted, secret))
    };
    assert_eq!(state("K").await, Some((pid, 1, false, true)));
    assert_eq!(state("M").await, Some((plain.param_id, 1, false, false)));
    assert_eq!(state("NONE").await, None);
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        1,
        VersionAction::Delete,
        &key,
        b"",
    ))
    .await
    .unwrap();
    assert_eq!(state("K").await, Some((pid, 2, true, false)));
    assert!(s.current_value(o, e.id, "K").await.unwrap().is_none());
    let row = s.param(o, e.id, "K").await.unwrap().unwrap();
    assert!(row.deleted && row.current_version == 2);
    assert!(
        s.param_version(o, pid, 2)
            .await
            .unwrap()
            .unwrap()
            .ciphertext
            .is_none()
    );
    let all = s.current_values(o, &[e.id]).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|v| v.param.name.as_str())
            .collect::<Vec<_>>(),
        vec!["L", "M"]
    );
}

pub async fn the_nearest_environment_defines_a_value(s: &dyn Store) {
    let o = org(s, "o").await;
    let (p, parent) = project_env(s, o).await;
    let child = EnvRow {
        id: Uuid::new_v4(),
        org_id: o,
        project_id: p.id,
        parent_id: Some(parent.id),
        name: "child".into(),
        created_at: 1,
    };
    s.create_env(&child, None).await.unwrap();
    let key = TenantKey::generate(KeyTerm(1));
    let (in_parent, in_child) = (Uuid::new_v4(), Uuid::new_v4());
    let set = |env: Uuid, id: Uuid, value: &[u8]| {
        write((o, env, id), "K", 0, VersionAction::Set, &key, value)
    };
    s.append_param_version(&set(parent.id, in_parent, b"parent"))
        .await
        .unwrap();
    let chain = [child.id, parent.id];
    let found = |v: Option<ParamValue>| v.map(|v| (v.param.env_id, v.param.id));
    // Only the parent defines it: inherited.
    assert_eq!(
        found(s.nearest_value(o, &chain, "K").await.unwrap()),
        Some((parent.id, in_parent))
    );
    // The child's own value wins over the parent's.
    s.append_param_version(&set(child.id, in_child, b"child"))
        .await
        .unwrap();
    assert_eq!(
        found(s.nearest_value(o, &chain, "K").await.unwrap()),
        Some((child.id, in_child))
    );
    // The order of the chain decides, not the order rows come back in.
    assert_eq!(
        found(
            s.nearest_value(o, &[parent.id, child.id], "K")
                .await
                .unwrap()
        ),
        Some((parent.id, in_parent))
    );
    // Deleted in the child: the parent's value shows through again.
    s.append_param_version(&write(
        (o, child.id, in_child),
        "K",
        1,
        VersionAction::Delete,
        &key,
        b"",
    ))
    .await
    .unwrap();
    assert_eq!(
        found(s.nearest_value(o, &chain, "K").await.unwrap()),
        Some((parent.id, in_parent))
    );
    // Other names, other organisations and empty chains find nothing.
    assert!(s.nearest_value(o, &chain, "L").await.unwrap().is_none());
    assert!(s.nearest_value(o, &[], "K").await.unwrap().is_none());
    let other = org(s, "other").await;
    assert!(s.nearest_value(other, &chain, "K").await.unwrap().is_none());
}

pub async fn values_are_scoped_by_org(s: &dyn Store) {
    let a = org(s, "a").await;
    let b = org(s, "b").await;
    let (_, e) = project_env(s, a).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = Uuid::new_v4();
    s.append_param_version(&write(
        (a, e.id, pid),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"v",
    ))
    .await
    .unwrap();
    assert!(s.current_value(b, e.id, "K").await.unwrap().is_none());
    assert!(s.current_values(b, &[e.id]).await.unwrap().is_empty());
    assert!(s.param(b, e.id, "K").await.unwrap().is_none());
    assert!(s.param_version(b, pid, 1).await.unwrap().is_none());
    assert!(s.param_history(b, pid).await.unwrap().is_empty());
    // Writing into org a's parameter while claiming org b fails.
    assert!(
        s.append_param_version(&write(
            (b, e.id, pid),
            "K",
            1,
            VersionAction::Set,
            &key,
            b"x"
        ))
        .await
        .is_err()
    );
    assert_eq!(
        s.current_value(a, e.id, "K")
            .await
            .unwrap()
            .unwrap()
            .version
            .version,
        1
    );
}

trait CloneWithId {
    fn clone_with_id(self, id: Uuid) -> Self;
}

impl CloneWithId for ParamWrite {
    /// The same write for another parameter id (fresh ciphertext context is not needed:
    /// the store does not decrypt).
    fn clone_with_id(mut self, id: Uuid) -> Self {
        self.param_id = id;
        self.version.param_id = id;
        self
    }
}

pub async fn reads_see_every_committed_write(s: &dyn Store) {
    let o = org(s, "o").await;
    let (_, e) = project_env(s, o).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = Uuid::new_v4();
    let read = |v: Option<ParamValue>| v.map(|v| v.version.version);
    // A miss is remembered as a miss only until the next write.
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), None);
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"1",
    ))
    .await
    .unwrap();
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), Some(1));
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), Some(1));
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        1,
        VersionAction::Set,
        &key,
        b"2",
    ))
    .await
    .unwrap();
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), Some(2));
    // A failed write changes nothing that readers see.
    let _ = s
        .append_param_version(&write(
            (o, e.id, pid),
            "K",
            1,
            VersionAction::Set,
            &key,
            b"stale",
        ))
        .await;
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), Some(2));
    s.append_param_version(&write(
        (o, e.id, pid),
        "K",
        2,
        VersionAction::Delete,
        &key,
        b"",
    ))
    .await
    .unwrap();
    assert_eq!(read(s.current_value(o, e.id, "K").await.unwrap()), None);
}

pub async fn concurrent_writes_commit_independently(s: &dyn Store) {
    let o = org(s, "o").await;
    let (_, e) = project_env(s, o).await;
    let key = TenantKey::generate(KeyTerm(1));
    // Independent parameters: every write lands.
    let writes: Vec<ParamWrite> = (0..40)
        .map(|i| {
            write(
                (o, e.id, Uuid::new_v4()),
                &format!("P{i}"),
                0,
                VersionAction::Set,
                &key,
                b"v",
            )
        })
        .collect();
    let results = append_all(s, &writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(s.current_values(o, &[e.id]).await.unwrap().len(), 40);
    // Racing writers on one version: exactly one wins, the others see Conflict.
    let pid = Uuid::new_v4();
    s.append_param_version(&write(
        (o, e.id, pid),
        "R",
        0,
        VersionAction::Set,
        &key,
        b"0",
    ))
    .await
    .unwrap();
    let racers: Vec<ParamWrite> = (0..20)
        .map(|_| write((o, e.id, pid), "R", 1, VersionAction::Set, &key, b"x"))
        .collect();
    let results = append_all(s, &racers).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::Conflict)))
    );
    assert_eq!(s.param_history(o, pid).await.unwrap().len(), 2);
    // A write that fails with an error (an environment that does not exist) queued among
    // good ones: it fails alone, and every neighbour lands.
    let mut mixed: Vec<ParamWrite> = (0..10)
        .map(|i| {
            write(
                (o, e.id, Uuid::new_v4()),
                &format!("M{i}"),
                0,
                VersionAction::Set,
                &key,
                b"v",
            )
        })
        .collect();
    mixed.insert(
        5,
        write(
            (o, Uuid::new_v4(), Uuid::new_v4()),
            "NOWHERE",
            0,
            VersionAction::Set,
            &key,
            b"v",
        ),
    );
    let results = append_all(s, &mixed).await;
    assert!(results[5].is_err(), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        10,
        "{results:?}"
    );
    assert_eq!(s.current_values(o, &[e.id]).await.unwrap().len(), 51);
}

/// Poll all writes at once, so the writer finds them queued together.
async fn append_all(s: &dyn Store, writes: &[ParamWrite]) -> Vec<Result<(), StoreError>> {
    join_all(writes.iter().map(|w| s.append_param_version(w)).collect()).await
}

pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Every row of a chain (from its start, in order) links to its predecessor with the hash
/// verification recomputes; returns the last hash.
pub fn assert_linked(rows: &[AuditRow]) -> [u8; 32] {
    let mut prev = coffer_crypto::audit::GENESIS;
    for r in rows {
        assert_eq!(r.prev_hash, prev, "seq {} links to its predecessor", r.seq);
        assert_eq!(
            r.hash,
            coffer_crypto::audit::chain_hash(
                &prev,
                &coffer_crypto::audit::chain_entry(r.seq, &r.body)
            )
        );
        prev = r.hash;
    }
    prev
}

/// Events arrive with their compact form: stored compact when it renders back to exactly the
/// JSON that is hashed, as JSON otherwise; either way read back byte for byte, linked, with
/// the filters working on both, through both writers (the audit writer's batches and a
/// change's transaction).
pub async fn compact_events_read_back_exactly(s: &dyn Store) {
    use coffer_store::audit_codec::{CompactEvent, Hole};
    let org = Uuid::new_v4();
    let actor = Uuid::new_v4();
    // {"action":"<action>","actor":<fragment>,"time_ms":<time>,"n":<n>}
    let ev = |n: u32, fragment: &str, body_actor: &str| {
        let action = format!("c.{}", n % 3);
        let time = 1_700_000_000_000 + i64::from(n);
        NewAuditEvent {
            org_id: org,
            id: Uuid::now_v7(),
            time,
            action: action.clone(),
            actor_id: Some(actor),
            outcome: "success".into(),
            target: format!("p/e/k{}", n % 2),
            body: format!(
                "{{\"action\":\"{action}\",\"actor\":{body_actor},\"time_ms\":{time},\"n\":{n}}}"
            ),
            compact: Some(CompactEvent {
                template: format!(
                    "{{\"action\":\"{action}\",\"actor\":\u{7},\"time_ms\":\u{4},\"n\":\u{9}}}"
                ),
                holes: vec![Hole::Ref(0), Hole::TimeMs, Hole::Raw(n.to_string())],
                fragments: vec![fragment.to_owned()],
            }),
        }
    };
    let fallbacks = coffer_store::compact_fallbacks();
    let mut events: Vec<NewAuditEvent> = (1..=30)
        .map(|n| {
            ev(
                n,
                "{\"id\":\"u\",\"name\":\"ünï\\\"code\"}",
                "{\"id\":\"u\",\"name\":\"ünï\\\"code\"}",
            )
        })
        .collect();
    // A compact form that does not render to its JSON (a writer bug) is stored as the JSON.
    events.push(ev(31, "{\"id\":\"v\"}", "{\"id\":\"w\"}"));
    let results = join_all(events.iter().map(|e| s.append_audit(e)).collect()).await;
    for r in &results {
        r.as_ref().unwrap();
    }
    // One fallback here (and at most one from this test on the other backend, running at
    // the same time): the 30 others were stored compact.
    let added = coffer_store::compact_fallbacks() - fallbacks;
    assert!((1..=2).contains(&added), "{added} events fell back to JSON");
    let rows = s
        .audit_events(
            org,
            &AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 31);
    assert_linked(&rows);
    let mut expected: Vec<&str> = events.iter().map(|e| e.body.as_str()).collect();
    let mut got: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, expected);
    // Filters and paging over stored (compact) rows.
    let only = |f: AuditFilter| async move {
        s.audit_events(org, &AuditFilter { limit: 100, ..f })
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        only(AuditFilter {
            action: Some("c.0".into()),
            ..AuditFilter::default()
        })
        .await,
        10
    );
    assert_eq!(
        only(AuditFilter {
            target: Some("p/e/k1".into()),
            ..AuditFilter::default()
        })
        .await,
        16
    );
    assert_eq!(
        only(AuditFilter {
            actor_id: Some(actor),
            after_seq: 25,
            ..AuditFilter::default()
        })
        .await,
        6
    );
    assert_eq!(
        only(AuditFilter {
            from: Some(1_700_000_000_011),
            to: Some(1_700_000_000_021),
            ..AuditFilter::default()
        })
        .await,
        10
    );
    // Another organisation's chain sees none of it, and its own texts are its own.
    let other = Uuid::new_v4();
    let mut e = ev(1, "{\"id\":\"o\"}", "{\"id\":\"o\"}");
    e.org_id = other;
    assert_eq!(s.append_audit(&e).await.unwrap().0, 1);
    let theirs = s
        .audit_events(
            other,
            &AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].body, e.body);
}

pub async fn audit_chains_append_in_order_with_filters_and_checkpoints(s: &dyn Store) {
    let a = Uuid::new_v4();
    let ev = |org: Uuid, n: u32| NewAuditEvent {
        org_id: org,
        id: Uuid::new_v4(),
        time: i64::from(n),
        action: format!("a.{n}"),
        actor_id: None,
        outcome: "success".into(),
        target: "p/e/n".into(),
        body: format!("{{\"n\":{n}}}"),
        compact: None,
    };
    // Concurrent appends to one chain get distinct, consecutive sequence numbers.
    let events: Vec<NewAuditEvent> = (1..=20).map(|n| ev(a, n)).collect();
    let results = join_all(events.iter().map(|e| s.append_audit(e)).collect()).await;
    let mut seqs: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap().0).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Another chain starts at 1.
    assert_eq!(s.append_audit(&ev(Uuid::nil(), 1)).await.unwrap().0, 1);
    let rows = s
        .audit_events(
            a,
            &AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20);
    let prev = assert_linked(&rows);
    assert_eq!(s.audit_head(a).await.unwrap(), Some((20, prev)));
    // Filters and cursors.
    let f = AuditFilter {
        action: Some("a.3".into()),
        limit: 10,
        ..AuditFilter::default()
    };
    assert_eq!(s.audit_events(a, &f).await.unwrap().len(), 1);
    let page = s
        .audit_events(
            a,
            &AuditFilter {
                after_seq: 18,
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![19, 20]);
    let by_target = s
        .audit_events(
            a,
            &AuditFilter {
                target: Some("p/e".into()),
                from: Some(5),
                to: Some(7),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_target.len(), 2);
    assert!(
        s.audit_events(
            Uuid::new_v4(),
            &AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
    // Checkpoints and keys.
    let cp = CheckpointRow {
        org_id: a,
        seq: 20,
        hash: prev,
        created_at: 1,
        signature: vec![7; 64],
    };
    assert_eq!(s.orgs_needing_checkpoint().await.unwrap().len(), 2);
    s.insert_checkpoint(&cp).await.unwrap();
    assert!(matches!(
        s.insert_checkpoint(&cp).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.checkpoints(a).await.unwrap(), vec![cp]);
    assert_eq!(
        s.orgs_needing_checkpoint().await.unwrap(),
        vec![Uuid::nil()]
    );
    let key = AuditKeyRow {
        public_key: vec![1; 32],
        wrapped_key: vec![2; 60],
        created_at: 3,
    };
    assert!(s.audit_key().await.unwrap().is_none());
    s.init_audit_key(&key).await.unwrap();
    assert!(matches!(
        s.init_audit_key(&key).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.audit_key().await.unwrap().unwrap().public_key,
        vec![1; 32]
    );
}

pub fn session(user_id: Uuid, org_id: Uuid, n: u8, expires_at: i64) -> SessionRow {
    SessionRow {
        id: Uuid::new_v4(),
        token_hash: [n; 32],
        user_id,
        org_id,
        stage: "full".into(),
        method: "password".into(),
        api_key_id: None,
        address: "127.0.0.1".into(),
        created_at: 1,
        last_seen_at: 1,
        expires_at,
    }
}

pub async fn user(s: &dyn Store, org_id: Uuid, name: &str, role: &str) -> Uuid {
    let id = Uuid::new_v4();
    s.create_user(&UserRow {
        id,
        username: name.into(),
        password_hash: "$argon2id$x".into(),
        created_at: 1,
        email: None,
        mfa_enabled: false,
    })
    .await
    .unwrap();
    s.add_membership(
        &MembershipRow {
            user_id: id,
            org_id,
            role: role.into(),
            created_at: 1,
        },
        None,
    )
    .await
    .unwrap();
    id
}

pub async fn login_attempts_are_claimed_atomically(s: &dyn Store) {
    let org_id = org(s, "o").await;
    let u = user(s, org_id, "alice", "owner").await;
    // 50 concurrent guesses: at most 3 may be evaluated.
    let claims = futures_join_all((0..50).map(|_| s.claim_login_attempt(u, 1_000, 3, 0))).await;
    let granted: Vec<u32> = claims.into_iter().filter_map(|c| c.unwrap()).collect();
    let mut sorted = granted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2, 3]);
    s.lock_if_exhausted(u, 3, 5_000).await.unwrap();
    assert_eq!(s.claim_login_attempt(u, 4_999, 3, 0).await.unwrap(), None);
    // Once the lock has passed, counting starts afresh.
    assert_eq!(
        s.claim_login_attempt(u, 5_000, 3, 0).await.unwrap(),
        Some(1)
    );
    // A delay step makes the next attempt wait.
    assert_eq!(
        s.claim_login_attempt(u, 5_001, 3, 100).await.unwrap(),
        Some(2)
    );
    assert_eq!(s.claim_login_attempt(u, 5_100, 3, 100).await.unwrap(), None);
    assert_eq!(
        s.claim_login_attempt(u, 5_201, 3, 100).await.unwrap(),
        Some(3)
    );
    s.release_login_attempt(u).await.unwrap();
    assert_eq!(
        s.claim_login_attempt(u, 5_202, 3, 0).await.unwrap(),
        Some(3)
    );
    s.reset_login_attempts(u).await.unwrap();
    assert_eq!(
        s.claim_login_attempt(u, 5_203, 3, 0).await.unwrap(),
        Some(1)
    );
    // Unknown users have no row to claim.
    assert_eq!(
        s.claim_login_attempt(Uuid::new_v4(), 1, 3, 0)
            .await
            .unwrap(),
        None
    );
}

/// Run futures concurrently on this task and collect their outputs in order (without
/// pulling in the futures crate).
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

pub async fn the_last_owner_stays(s: &dyn Store) {
    let org_id = org(s, "o").await;
    let a = user(s, org_id, "a", "owner").await;
    let b = user(s, org_id, "b", "admin").await;
    assert!(matches!(
        s.set_role(org_id, a, "admin", None).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        s.remove_member(org_id, a, None).await,
        Err(StoreError::Conflict)
    ));
    assert!(s.set_role(org_id, b, "owner", None).await.unwrap());
    assert!(s.set_role(org_id, a, "viewer", None).await.unwrap());
    assert_eq!(
        s.membership(org_id, a).await.unwrap().unwrap().role,
        "viewer"
    );
    // The caller's membership, user and organisation in one read, and only in its own
    // organisation.
    let (m, u, o) = s.member(org_id, a).await.unwrap().unwrap();
    assert_eq!(
        (m.role.as_str(), m.user_id, m.org_id),
        ("viewer", a, org_id)
    );
    assert_eq!((u.id, u.username.as_str()), (a, "a"));
    assert_eq!((o.id, o.name.as_str()), (org_id, "o"));
    let elsewhere = org(s, "p").await;
    assert!(s.member(elsewhere, a).await.unwrap().is_none());
    assert!(
        s.member(org_id, uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        s.remove_member(org_id, b, None).await,
        Err(StoreError::Conflict)
    ));
    s.create_session(&session(a, org_id, 9, i64::MAX), None)
        .await
        .unwrap();
    assert!(s.remove_member(org_id, a, None).await.unwrap());
    assert!(s.session(&[9; 32]).await.unwrap().is_none());
    assert!(s.membership(org_id, a).await.unwrap().is_none());
    assert!(s.member(org_id, a).await.unwrap().is_none());
    let members = s.org_members(org_id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].1.username, "b");
}

pub async fn totp_steps_and_recovery_codes_are_single_use(s: &dyn Store) {
    let org_id = org(s, "o").await;
    let u = user(s, org_id, "a", "owner").await;
    assert!(!s.user_requires_mfa(u).await.unwrap());
    s.set_org_require_mfa(org_id, true, None).await.unwrap();
    assert!(s.user_requires_mfa(u).await.unwrap());
    assert!(s.org_requires_mfa(org_id).await.unwrap());
    s.set_mfa(u, Some(b"sealed"), true, None).await.unwrap();
    let st = s.mfa_state(u).await.unwrap().unwrap();
    assert!(st.enabled);
    assert_eq!(st.sealed_secret.as_deref(), Some(b"sealed".as_slice()));
    assert!(s.user(u).await.unwrap().unwrap().mfa_enabled);
    assert!(s.use_totp_step(u, 100).await.unwrap());
    assert!(!s.use_totp_step(u, 100).await.unwrap());
    assert!(!s.use_totp_step(u, 99).await.unwrap());
    assert!(s.use_totp_step(u, 101).await.unwrap());
    s.replace_recovery_codes(u, &[[1; 32], [2; 32]])
        .await
        .unwrap();
    assert!(s.use_recovery_code(u, &[1; 32], 5).await.unwrap());
    assert!(!s.use_recovery_code(u, &[1; 32], 6).await.unwrap());
    assert!(!s.use_recovery_code(u, &[3; 32], 6).await.unwrap());
    s.replace_recovery_codes(u, &[[4; 32]]).await.unwrap();
    assert!(!s.use_recovery_code(u, &[2; 32], 7).await.unwrap());
    s.set_mfa(u, None, false, None).await.unwrap();
    assert!(!s.mfa_state(u).await.unwrap().unwrap().enabled);
}

pub async fn api_keys_invitations_identities_and_mail(s: &dyn Store) {
    let org_id = org(s, "o").await;
    let other = org(s, "other").await;
    let u = user(s, org_id, "a", "owner").await;
    let key = ApiKeyRow {
        id: Uuid::new_v4(),
        org_id,
        user_id: u,
        name: "ci".into(),
        role: "viewer".into(),
        key_hash: [7; 32],
        prefix: "cfr_abcd".into(),
        read_only: true,
        projects: vec!["app".into()],
        envs: vec![],
        created_at: 1,
        expires_at: 10_000,
        last_used_at: None,
        revoked_at: None,
    };
    s.create_api_key(&key, None).await.unwrap();
    assert_eq!(s.api_key_by_hash(&[7; 32]).await.unwrap().unwrap(), key);
    assert!(s.api_key(other, key.id).await.unwrap().is_none());
    assert_eq!(s.api_keys(org_id).await.unwrap().len(), 1);
    assert!(s.api_keys(other).await.unwrap().is_empty());
    s.touch_api_keys(&[(org_id, key.id, 50), (other, key.id, 55)])
        .await
        .unwrap();
    // An older use does not move the time back.
    s.touch_api_keys(&[(org_id, key.id, 40)]).await.unwrap();
    let mut access = session(u, org_id, 8, 10_000);
    access.method = "apikey".into();
    access.api_key_id = Some(key.id);
    s.create_session(&access, None).await.unwrap();
    assert!(!s.revoke_api_key(other, key.id, 60, None).await.unwrap());
    assert!(s.revoke_api_key(org_id, key.id, 60, None).await.unwrap());
    assert!(!s.revoke_api_key(org_id, key.id, 61, None).await.unwrap());
    let k = s.api_key(org_id, key.id).await.unwrap().unwrap();
    assert_eq!((k.last_used_at, k.revoked_at), (Some(50), Some(60)));
    assert!(s.session(&[8; 32]).await.unwrap().is_none());

    let inv = InvitationRow {
        id: Uuid::new_v4(),
        org_id,
        email: "bob@example.com".into(),
        role: "contributor".into(),
        token_hash: [5; 32],
        invited_by: u,
        created_at: 1,
        expires_at: 100,
        accepted_at: None,
    };
    s.create_invitation(&inv, None, None).await.unwrap();
    assert_eq!(s.invitation_by_hash(&[5; 32]).await.unwrap().unwrap(), inv);
    // Bob (a member elsewhere) accepts: the invitation is used and his membership added
    // together, or neither.
    let bob = user(s, other, "bob", "viewer").await;
    let member = MembershipRow {
        user_id: bob,
        org_id,
        role: "contributor".into(),
        created_at: 99,
    };
    assert!(
        !s.consume_invitation(inv.org_id, inv.id, 100, None, Some(&member), None)
            .await
            .unwrap()
    );
    assert!(
        s.membership(org_id, bob).await.unwrap().is_none(),
        "expired: no membership"
    );
    assert!(
        s.consume_invitation(inv.org_id, inv.id, 99, None, Some(&member), None)
            .await
            .unwrap()
    );
    assert_eq!(
        s.membership(org_id, bob).await.unwrap(),
        Some(member.clone())
    );
    assert!(
        !s.consume_invitation(inv.org_id, inv.id, 99, None, None, None)
            .await
            .unwrap()
    );
    assert_eq!(
        s.invitations(org_id).await.unwrap()[0].accepted_at,
        Some(99)
    );
    // A newcomer's account is stored with the invitation's use, or not at all.
    let carol_inv = InvitationRow {
        id: Uuid::new_v4(),
        email: "carol@example.com".into(),
        token_hash: [6; 32],
        ..inv.clone()
    };
    s.create_invitation(&carol_inv, None, None).await.unwrap();
    let carol = UserRow {
        id: Uuid::new_v4(),
        username: "carol".into(),
        password_hash: "$argon2id$x".into(),
        created_at: 99,
        email: Some("carol@example.com".into()),
        mfa_enabled: false,
    };
    let carol_member = MembershipRow {
        user_id: carol.id,
        ..member.clone()
    };
    assert!(
        !s.consume_invitation(
            org_id,
            carol_inv.id,
            100,
            Some(&carol),
            Some(&carol_member),
            None
        )
        .await
        .unwrap()
    );
    assert!(
        s.user(carol.id).await.unwrap().is_none(),
        "expired: no account"
    );
    // The name is taken: the invitation stays unused.
    let taken = UserRow {
        username: "bob".into(),
        ..carol.clone()
    };
    assert!(matches!(
        s.consume_invitation(
            org_id,
            carol_inv.id,
            99,
            Some(&taken),
            Some(&carol_member),
            None
        )
        .await,
        Err(StoreError::Conflict)
    ));
    assert!(s.user(carol.id).await.unwrap().is_none());
    assert!(
        s.consume_invitation(
            org_id,
            carol_inv.id,
            99,
            Some(&carol),
            Some(&carol_member),
            None
        )
        .await
        .unwrap()
    );
    assert_eq!(s.user(carol.id).await.unwrap().unwrap().username, "carol");
    assert_eq!(
        s.membership(org_id, carol.id).await.unwrap(),
        Some(carol_member)
    );

    assert!(
        s.identity_user("https://idp", "sub-1")
            .await
            .unwrap()
            .is_none()
    );
    let external = UserRow {
        id: Uuid::new_v4(),
        username: "oidc-x-sub-1".into(),
        email: None,
        ..carol.clone()
    };
    let external_member = MembershipRow {
        user_id: external.id,
        ..member.clone()
    };
    // A taken name: nothing is written, the identity stays unlinked.
    assert!(matches!(
        s.create_external_user(
            &UserRow {
                username: "carol".into(),
                ..external.clone()
            },
            &external_member,
            "https://idp",
            "sub-1"
        )
        .await,
        Err(StoreError::Conflict)
    ));
    assert!(s.user(external.id).await.unwrap().is_none());
    assert!(
        s.identity_user("https://idp", "sub-1")
            .await
            .unwrap()
            .is_none()
    );
    s.create_external_user(&external, &external_member, "https://idp", "sub-1")
        .await
        .unwrap();
    assert_eq!(
        s.identity_user("https://idp", "sub-1").await.unwrap(),
        Some(external.id)
    );
    assert_eq!(
        s.membership(org_id, external.id).await.unwrap(),
        Some(external_member.clone())
    );
    // The same identity twice (two first logins at once): the second is a conflict.
    let twin = UserRow {
        id: Uuid::new_v4(),
        username: "oidc-x-sub-1b".into(),
        ..external.clone()
    };
    assert!(matches!(
        s.create_external_user(
            &twin,
            &MembershipRow {
                user_id: twin.id,
                ..member.clone()
            },
            "https://idp",
            "sub-1"
        )
        .await,
        Err(StoreError::Conflict)
    ));
    assert!(s.user(twin.id).await.unwrap().is_none());
    assert!(s.note_login_address(u, "10.0.0.1", 1).await.unwrap());
    assert!(!s.note_login_address(u, "10.0.0.1", 2).await.unwrap());
    assert!(s.note_login_address(u, "10.0.0.2", 3).await.unwrap());
    assert_eq!(s.login_address_count(u).await.unwrap(), 2);

    let m = OutboxRow {
        id: Uuid::new_v4(),
        sealed: vec![1, 2, 3],
        created_at: 1,
        attempts: 0,
        next_attempt_at: 10,
    };
    s.enqueue_mail(&m).await.unwrap();
    assert!(s.due_mail(9, 10).await.unwrap().is_empty());
    assert_eq!(s.due_mail(10, 10).await.unwrap()[0].sealed, vec![1, 2, 3]);
    // One sender takes it; a second (another node that listed it too) cannot, until the
    // lease runs out.
    assert!(!s.claim_mail(m.id, 9, 15).await.unwrap(), "not due yet");
    assert!(s.claim_mail(m.id, 10, 15).await.unwrap());
    assert!(!s.claim_mail(m.id, 10, 15).await.unwrap());
    assert!(s.due_mail(14, 10).await.unwrap().is_empty());
    assert!(
        s.claim_mail(m.id, 15, 16).await.unwrap(),
        "due again after the lease"
    );
    s.mail_failed(m.id, 20, "connection refused").await.unwrap();
    assert!(s.due_mail(19, 10).await.unwrap().is_empty());
    assert_eq!(s.due_mail(20, 10).await.unwrap()[0].attempts, 1);
    assert_eq!(s.pending_mail().await.unwrap(), 1);
    s.mail_sent(m.id, 21).await.unwrap();
    assert!(s.due_mail(i64::MAX, 10).await.unwrap().is_empty());
    assert!(
        !s.claim_mail(m.id, i64::MAX, i64::MAX).await.unwrap(),
        "sent"
    );
    assert_eq!(s.pending_mail().await.unwrap(), 0);
}

pub async fn key_rotation_rewrap_and_org_deletion(s: &dyn Store) {
    let root = RootKey::generate();
    let a = org(s, "keys-a").await;
    let b = org(s, "keys-b").await;
    let (_, env) = project_env(s, a).await;
    let (_, env_b) = project_env(s, b).await;
    let k1 = TenantKey::generate(KeyTerm(1));
    let k2 = TenantKey::generate(KeyTerm(2));
    let mut params = Vec::new();
    for n in 0..5 {
        let pid = Uuid::new_v4();
        let name = format!("P{n}");
        let w = write((a, env.id, pid), &name, 0, VersionAction::Set, &k1, b"v");
        s.append_param_version(&w).await.unwrap();
        params.push((pid, name));
    }
    s.append_param_version(&write(
        (b, env_b.id, Uuid::new_v4()),
        "B",
        0,
        VersionAction::Set,
        &k1,
        b"b",
    ))
    .await
    .unwrap();
    // Cached before the rewrap (SQLite keeps a ciphertext cache): must not survive it.
    let cached = s.current_value(a, env.id, "P0").await.unwrap().unwrap();
    assert_eq!(cached.ciphertext.unwrap().key_term(), KeyTerm(1));
    let kept = s.nearest_value(a, &[env.id], "P1").await.unwrap().unwrap();
    assert_eq!(kept.ciphertext.unwrap().key_term(), KeyTerm(1));

    let row = |term: u32, created_at: i64| TenantKeyRow {
        org_id: a,
        term: KeyTerm(term),
        wrapped: root
            .wrap_tenant_key(a, &TenantKey::generate(KeyTerm(term)))
            .unwrap(),
        created_at,
    };
    assert!(matches!(
        s.rotate_tenant_key(&row(3, 50), "manual", None).await,
        Err(StoreError::Conflict)
    ));
    let r = s
        .rotate_tenant_key(&row(2, 50), "manual", None)
        .await
        .unwrap();
    assert_eq!(
        (r.target_term, r.total, r.done, r.cursor, r.finished_at),
        (KeyTerm(2), 5, 0, None, None)
    );
    assert!(
        matches!(
            s.rotate_tenant_key(&row(2, 51), "manual", None).await,
            Err(StoreError::Conflict)
        ),
        "two rotations to the same term: one wins"
    );
    // Term 1 no longer seals new values in this organisation; B is unaffected.
    let stale = write(
        (a, env.id, Uuid::new_v4()),
        "LATE",
        0,
        VersionAction::Set,
        &k1,
        b"x",
    );
    assert!(matches!(
        s.append_param_version(&stale).await,
        Err(StoreError::StaleKeyTerm)
    ));
    assert!(
        s.param(a, env.id, "LATE").await.unwrap().is_none(),
        "nothing written"
    );
    assert_eq!(s.term_usage(a).await.unwrap(), vec![(KeyTerm(1), 5)]);

    let mut cursor = None;
    let mut moved = 0;
    loop {
        let batch = s.rewrap_batch(a, KeyTerm(2), cursor, 3).await.unwrap();
        let done = batch.len() < 3;
        let out: Vec<Rewrapped> = batch
            .iter()
            .map(|it| Rewrapped {
                credential_id: it.credential_id,
                old_term: it.ciphertext.key_term(),
                ciphertext: k1
                    .rewrap(
                        &k2,
                        &RecordContext {
                            org_id: a,
                            record_id: it.param_id,
                            version: it.version,
                        },
                        &it.ciphertext,
                    )
                    .unwrap(),
            })
            .collect();
        cursor = batch.last().map(|i| i.credential_id).or(cursor);
        moved += s
            .apply_rewrap(a, KeyTerm(2), &out, cursor, done.then_some(99), None)
            .await
            .unwrap();
        let job = s.rotation(a).await.unwrap().unwrap();
        assert_eq!((job.done, job.cursor), (moved, cursor));
        if done {
            assert_eq!(job.finished_at, Some(99));
            // Replaying a batch changes nothing: the stored terms no longer match.
            assert_eq!(
                s.apply_rewrap(a, KeyTerm(2), &out, cursor, Some(99), None)
                    .await
                    .unwrap(),
                0
            );
            break;
        }
    }
    assert_eq!(moved, 5);
    assert_eq!(s.term_usage(a).await.unwrap(), vec![(KeyTerm(2), 5)]);
    assert_eq!(s.term_usage(b).await.unwrap(), vec![(KeyTerm(1), 1)]);
    for (pid, name) in &params {
        let v = s.current_value(a, env.id, name).await.unwrap().unwrap();
        let ct = v.ciphertext.unwrap();
        assert_eq!(ct.key_term(), KeyTerm(2));
        let nearest = s.nearest_value(a, &[env.id], name).await.unwrap().unwrap();
        assert_eq!(nearest.ciphertext.unwrap().as_bytes(), ct.as_bytes());
        let ctx = RecordContext {
            org_id: a,
            record_id: *pid,
            version: 1,
        };
        assert_eq!(k2.open(&ctx, &ct).unwrap().expose_secret(), b"v");
    }

    // Retired term 1 goes only once its successor is old enough, and never term 2.
    assert!(s.retired_terms(a, 49).await.unwrap().is_empty());
    assert_eq!(s.retired_terms(a, 50).await.unwrap(), vec![KeyTerm(1)]);
    // Only exactly the terms retired now: a stale list deletes nothing.
    for stale in [&[][..], &[KeyTerm(1), KeyTerm(2)], &[KeyTerm(2)]] {
        assert!(matches!(
            s.destroy_retired_keys(a, 50, stale, None).await,
            Err(StoreError::Conflict)
        ));
    }
    assert!(matches!(
        s.destroy_retired_keys(a, 49, &[KeyTerm(1)], None).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.tenant_keys(a).await.unwrap().len(), 2);
    s.destroy_retired_keys(a, 50, &[KeyTerm(1)], None)
        .await
        .unwrap();
    assert_eq!(
        s.tenant_keys(a)
            .await
            .unwrap()
            .iter()
            .map(|k| k.term)
            .collect::<Vec<_>>(),
        vec![KeyTerm(2)]
    );
    assert_eq!(s.tenant_keys(b).await.unwrap().len(), 1, "B keeps its key");

    // Root rotation replaces wrapped forms in place, all or nothing.
    s.init_seal_config(
        &SealConfigRow {
            kind: "shamir".into(),
            shares: 3,
            threshold: 2,
            root_check: RootKey::generate().check_value().unwrap(),
            created_at: 1,
            sealed_root: None,
        },
        None,
        None,
    )
    .await
    .ok();
    let old_check = s.seal_config().await.unwrap().unwrap().root_check;
    let previous = s.root_secrets().await.unwrap();
    assert!(
        previous.tenant_keys.iter().any(|k| k.org_id == a)
            && previous.tenant_keys.iter().any(|k| k.org_id == b)
    );
    let mut secrets = previous.clone();
    let new_wrap = row(2, 50);
    for k in secrets.tenant_keys.iter_mut().filter(|k| k.org_id == a) {
        k.wrapped = new_wrap.wrapped.clone();
    }
    let check = RootKey::generate().check_value().unwrap();
    let seal = |previous: &RootSecrets, secrets: RootSecrets| RootRotation {
        previous_check: old_check.clone(),
        previous: previous.clone(),
        root_check: check.clone(),
        shares: 5,
        threshold: 3,
        sealed_root: Some(b"new root, wrapped".to_vec()),
        secrets,
    };
    // A secret that is not (or no longer) there.
    let mut bad = secrets.clone();
    bad.tenant_keys.push(row(7, 50));
    assert!(matches!(
        s.rotate_root(&seal(&previous, bad), None).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        s.tenant_keys(a).await.unwrap()[0].wrapped != new_wrap.wrapped,
        "rolled back"
    );
    // Something sealed with the old root key after the secrets were read (here: a new
    // organisation's key) would be lost: the rotation is refused.
    let late = org(s, "late").await;
    assert!(matches!(
        s.rotate_root(&seal(&previous, secrets.clone()), None).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        s.tenant_keys(a).await.unwrap()[0].wrapped != new_wrap.wrapped,
        "rolled back"
    );
    // Read again, it is complete; but a rotation computed for another root key than the
    // stored one is still refused.
    let previous = s.root_secrets().await.unwrap();
    assert!(previous.tenant_keys.iter().any(|k| k.org_id == late));
    let mut secrets = previous.clone();
    for k in secrets.tenant_keys.iter_mut().filter(|k| k.org_id == a) {
        k.wrapped = new_wrap.wrapped.clone();
    }
    let mut wrong_root = seal(&previous, secrets.clone());
    wrong_root.previous_check = RootKey::generate().check_value().unwrap();
    assert!(matches!(
        s.rotate_root(&wrong_root, None).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        s.tenant_keys(a).await.unwrap()[0].wrapped != new_wrap.wrapped,
        "rolled back"
    );
    s.rotate_root(&seal(&previous, secrets), None)
        .await
        .unwrap();
    assert!(s.tenant_keys(a).await.unwrap()[0].wrapped == new_wrap.wrapped);
    let cfg = s.seal_config().await.unwrap().unwrap();
    assert_eq!((cfg.shares, cfg.threshold), (5, 3));
    assert!(cfg.root_check == check);
    assert_eq!(cfg.sealed_root.as_deref(), Some(&b"new root, wrapped"[..]));

    // A rotation to a term wrapped by an external key attaches that key, in the same
    // transaction; a rotation back to the root key detaches it. A key belongs to one
    // organisation at a time.
    assert_eq!(s.external_key(a).await.unwrap(), None);
    let newest = |org: Uuid| async move {
        s.tenant_keys(org)
            .await
            .unwrap()
            .iter()
            .map(|k| k.term.0)
            .max()
            .unwrap()
    };
    let external = |org: Uuid, term: u32, reference: &str| TenantKeyRow {
        org_id: org,
        term: KeyTerm(term),
        wrapped: WrappedTenantKey::external(KeyTerm(term), reference, b"kms blob").unwrap(),
        created_at: 60,
    };
    let by_root = |org: Uuid, term: u32| TenantKeyRow {
        org_id: org,
        ..row(term, 61)
    };
    let t = newest(a).await;
    s.rotate_tenant_key(
        &external(a, t + 1, "awskms:arn:k/a"),
        "attach-external",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.external_key(a).await.unwrap().as_deref(),
        Some("awskms:arn:k/a")
    );
    let tb = newest(b).await;
    assert!(matches!(
        s.rotate_tenant_key(
            &external(b, tb + 1, "awskms:arn:k/a"),
            "attach-external",
            None
        )
        .await,
        Err(StoreError::KeyInUse)
    ));
    assert_eq!(s.external_key(b).await.unwrap(), None);
    assert_eq!(newest(b).await, tb, "nothing written");
    s.rotate_tenant_key(&by_root(a, t + 2), "detach-external", None)
        .await
        .unwrap();
    assert_eq!(s.external_key(a).await.unwrap(), None);
    s.rotate_tenant_key(
        &external(b, tb + 1, "awskms:arn:k/a"),
        "attach-external",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.external_key(b).await.unwrap().as_deref(),
        Some("awskms:arn:k/a")
    );

    // Deleting A removes its keys, values and metadata; B is untouched.
    assert!(s.delete_org(a, None).await.unwrap());
    assert!(s.org(a).await.unwrap().is_none());
    assert!(s.tenant_keys(a).await.unwrap().is_empty());
    assert!(s.term_usage(a).await.unwrap().is_empty());
    assert!(s.current_value(a, env.id, "P0").await.unwrap().is_none());
    assert!(s.rotation(a).await.unwrap().is_none());
    assert!(!s.org_ids().await.unwrap().contains(&a));
    assert!(!s.delete_org(a, None).await.unwrap());
    assert!(s.current_value(b, env_b.id, "B").await.unwrap().is_some());
}

/// Reads that may come from a node's cache: what they answer is current as far as this
/// store knows (its own writes are never answered stale), and any check that comes with an
/// answer is confirmed by the audit append. A check the store cannot confirm appends
/// nothing.
pub async fn cached_reads_are_confirmed_when_audited(s: &dyn Store) {
    let o = org(s, "o").await;
    let (_, env) = project_env(s, o).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = Uuid::new_v4();
    let event = |n: u32| NewAuditEvent {
        org_id: o,
        id: Uuid::new_v4(),
        time: i64::from(n),
        action: "param.get".into(),
        actor_id: None,
        outcome: "success".into(),
        target: "app/default/K".into(),
        body: format!("{{\"n\":{n}}}"),
        compact: None,
    };
    let mut appended = 0;
    for version in 1..=3u64 {
        s.append_param_version(&write(
            (o, env.id, pid),
            "K",
            version - 1,
            VersionAction::Set,
            &key,
            b"v",
        ))
        .await
        .unwrap();
        for _ in 0..2 {
            let (value, check) = s.nearest_value_cached(o, &[env.id], "K").await.unwrap();
            assert_eq!(value.map(|v| v.version.version), Some(version));
            let checks: Vec<ReadCheck> = check.into_iter().collect();
            if let Some(c) = checks.first() {
                assert_eq!(
                    (c.org_id, c.envs.as_slice(), c.param_id, c.version),
                    (o, &[env.id][..], pid, version)
                );
            }
            let at = s
                .append_audit_checked(&event(appended), &checks, Durability::Written)
                .await
                .unwrap();
            appended += 1;
            assert_eq!(at.map(|a| a.0), Some(u64::from(appended)));
        }
    }
    // Nothing found is never a cached answer.
    let (value, check) = s
        .nearest_value_cached(o, &[env.id], "MISSING")
        .await
        .unwrap();
    assert!(value.is_none() && check.is_none());
    // A check that no longer holds (here: a version that never existed) appends nothing.
    let stale = ReadCheck {
        org_id: o,
        envs: vec![env.id],
        name: "K".into(),
        param_id: pid,
        version: 99,
    };
    assert_eq!(
        s.append_audit_checked(&event(99), &[stale], Durability::Stable)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.audit_head(o).await.unwrap().map(|h| h.0),
        Some(u64::from(appended))
    );
}

/// What signing out and changing one's account touch: a user's sessions in every
/// organisation (on PostgreSQL through the user's own row-level security scope), and the
/// user's row.
pub async fn sign_out_and_account_changes(s: &dyn Store) {
    let (a, b) = (org(s, "a").await, org(s, "b").await);
    assert_eq!(s.org_by_name("b").await.unwrap().unwrap().id, b);
    assert!(s.org_by_name("c").await.unwrap().is_none());
    let alice = user(s, a, "alice", "owner").await;
    s.add_membership(
        &MembershipRow {
            user_id: alice,
            org_id: b,
            role: "viewer".into(),
            created_at: 1,
        },
        None,
    )
    .await
    .unwrap();
    let bob = user(s, a, "bob", "admin").await;
    let (a1, a2, b1) = (
        session(alice, a, 1, i64::MAX),
        session(alice, a, 2, i64::MAX),
        session(alice, b, 3, i64::MAX),
    );
    let bobs = session(bob, a, 4, i64::MAX);
    for x in [&a1, &a2, &b1, &bobs] {
        s.create_session(x, None).await.unwrap();
    }

    // Ending one session by id needs the session's own user.
    assert!(!s.delete_session_by_id(bob, a2.id, None).await.unwrap());
    assert!(s.session(&[2; 32]).await.unwrap().is_some());
    assert!(s.delete_session_by_id(alice, a2.id, None).await.unwrap());
    assert!(s.session(&[2; 32]).await.unwrap().is_none());
    assert!(!s.delete_session_by_id(alice, a2.id, None).await.unwrap());

    // "Sign out everywhere" keeps the current session, ends the others in every
    // organisation, and leaves other users alone.
    s.create_session(&a2, None).await.unwrap();
    assert_eq!(s.delete_user_sessions(alice, Some(a1.id)).await.unwrap(), 2);
    let left: Vec<Uuid> = s
        .user_sessions(alice)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, vec![a1.id]);
    assert!(s.session(&[3; 32]).await.unwrap().is_none());
    assert!(s.session(&[4; 32]).await.unwrap().is_some());
    // A session is touched only through its own organisation.
    s.touch_session(b, a1.id, 500).await.unwrap();
    assert_eq!(s.session(&[1; 32]).await.unwrap().unwrap().last_seen_at, 1);
    s.touch_session(a, a1.id, 500).await.unwrap();
    assert_eq!(
        s.session(&[1; 32]).await.unwrap().unwrap().last_seen_at,
        500
    );
    assert_eq!(s.delete_user_sessions(alice, None).await.unwrap(), 1);
    assert!(s.user_sessions(alice).await.unwrap().is_empty());

    // A session that had to enrol MFA first becomes a full one, in its organisation only.
    let enrol = SessionRow {
        stage: "enroll".into(),
        ..session(alice, b, 5, i64::MAX)
    };
    s.create_session(&enrol, None).await.unwrap();
    s.promote_session(a, enrol.id, None).await.unwrap();
    assert_eq!(s.session(&[5; 32]).await.unwrap().unwrap().stage, "enroll");
    s.promote_session(b, enrol.id, None).await.unwrap();
    assert_eq!(s.session(&[5; 32]).await.unwrap().unwrap().stage, "full");

    // Password, e-mail address and MFA.
    s.set_password(alice, "$argon2id$new", None).await.unwrap();
    assert_eq!(
        s.user(alice).await.unwrap().unwrap().password_hash,
        "$argon2id$new"
    );
    assert_eq!(
        s.user(bob).await.unwrap().unwrap().password_hash,
        "$argon2id$x"
    );
    s.set_email(alice, Some("alice@example.com"), None)
        .await
        .unwrap();
    assert_eq!(
        s.user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        alice
    );
    s.set_email(alice, None, None).await.unwrap();
    assert!(
        s.user_by_email("alice@example.com")
            .await
            .unwrap()
            .is_none()
    );
    // Without a stored seed there is nothing to enable.
    s.enable_mfa(alice, None).await.unwrap();
    assert!(!s.user(alice).await.unwrap().unwrap().mfa_enabled);
    s.set_mfa(alice, Some(b"sealed"), false, None)
        .await
        .unwrap();
    assert!(!s.mfa_state(alice).await.unwrap().unwrap().enabled);
    s.enable_mfa(alice, None).await.unwrap();
    assert!(s.mfa_state(alice).await.unwrap().unwrap().enabled);
    assert!(s.user(alice).await.unwrap().unwrap().mfa_enabled);
    assert!(!s.user(bob).await.unwrap().unwrap().mfa_enabled);
}
