//! Tenant key rotation: new term at once, rewrap without decryption, resumable job,
//! destruction of retired terms, automatic rotation.

use coffer_core::audit::Cx;
use std::time::Duration;

use coffer_core::{CoreConfig, CoreError, Principal, Role, SetParam};
use sqlx::Connection;

use crate::{Fixture, fixture_with, sqlite_fixture_with};

fn set<'a>(name: &'a str, value: &'a str) -> SetParam<'a> {
    SetParam {
        name,
        value: value.as_bytes(),
        secret: Some(true),
    }
}

fn fast_keys() -> CoreConfig {
    CoreConfig {
        key_cache_ttl: Duration::from_millis(100),
        rewrap_batch: 7,
        ..CoreConfig::default()
    }
}

/// 20 parameters with 2 versions each: 40 stored values under term 1.
async fn populate(f: &Fixture) {
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    for i in 0..20 {
        let name = format!("K{i:02}");
        c.params()
            .set_param(
                &Cx::default(),
                p,
                "app",
                "default",
                set(&name, &format!("old-{i}")),
            )
            .await
            .unwrap();
        c.params()
            .set_param(
                &Cx::default(),
                p,
                "app",
                "default",
                set(&name, &format!("value-{i}")),
            )
            .await
            .unwrap();
    }
}

async fn assert_all_read(f: &Fixture) {
    for i in 0..20 {
        let v = f
            .coffer
            .params()
            .get_param(
                &Cx::default(),
                &f.owner,
                "app",
                "default",
                &format!("K{i:02}"),
            )
            .await
            .unwrap();
        assert_eq!(
            v.value.unwrap().expose_secret(),
            format!("value-{i}").as_bytes()
        );
    }
}

/// An old version still opens (rollback decrypts it). Changes K03.
async fn assert_old_version_opens(f: &Fixture) {
    let v = f
        .coffer
        .params()
        .rollback_param(&Cx::default(), &f.owner, "app", "default", "K03", 1)
        .await
        .unwrap();
    assert_eq!(v.version, 3);
    let now = f
        .coffer
        .params()
        .get_param(&Cx::default(), &f.owner, "app", "default", "K03")
        .await
        .unwrap();
    assert_eq!(now.value.unwrap().expose_secret(), b"old-3");
}

/// (credential id, term, bytes of the encrypted value after the 68-byte wrapped data key).
async fn stored(f: &Fixture) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.db_path().display()))
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, key_term, ciphertext FROM credentials ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, term, ct)| (id, term, ct[68..].to_vec()))
        .collect()
}

#[tokio::test]
async fn rotation_seals_new_values_at_once_and_rewraps_without_touching_values() {
    let f = sqlite_fixture_with(fast_keys()).await;
    let (c, p) = (&f.coffer, &f.owner);
    populate(&f).await;
    let before = stored(&f).await;
    assert_eq!(before.len(), 40);
    assert!(before.iter().all(|(_, t, _)| *t == 1));

    let s = c.keys().rotate_key(&Cx::default(), p).await.unwrap();
    assert_eq!(s.active_term, 2);
    let r = s.rotation.unwrap();
    assert_eq!(
        (r.target_term, r.total, r.done, r.reason.as_str()),
        (2, 40, 0, "manual")
    );
    assert!(r.finished_at.is_none());

    // A value written now is sealed under term 2 straight away.
    c.params()
        .set_param(&Cx::default(), p, "app", "default", set("NEW", "fresh"))
        .await
        .unwrap();
    let s = c.keys().key_status(&Cx::default(), p).await.unwrap();
    let values: Vec<(u32, u64)> = s.terms.iter().map(|t| (t.term, t.values)).collect();
    assert_eq!(values, vec![(1, 40), (2, 1)]);
    assert_all_read(&f).await;

    // The job moves the 40 older values.
    let moved = c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(moved, 40);
    let s = c.keys().key_status(&Cx::default(), p).await.unwrap();
    let r = s.rotation.clone().unwrap();
    assert_eq!((r.done, r.total), (40, 40));
    assert!(r.finished_at.is_some());
    assert_eq!(
        s.terms
            .iter()
            .map(|t| (t.term, t.values))
            .collect::<Vec<_>>(),
        vec![(1, 0), (2, 41)]
    );

    // Only the data-key wrap changed: every encrypted value is byte for byte the same.
    let after = stored(&f).await;
    for (id, term, value) in &before {
        let (_, t2, v2) = after.iter().find(|(i, _, _)| i == id).unwrap();
        assert_eq!((*term, *t2), (1, 2));
        assert_eq!(value, v2, "the value itself must not be re-encrypted");
    }
    assert_all_read(&f).await;

    // Term 1 is kept until every node's cached key set has expired, then destroyed.
    c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(
        c.keys()
            .key_status(&Cx::default(), p)
            .await
            .unwrap()
            .terms
            .len(),
        2
    );
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    c.keys().run_key_maintenance().await.unwrap();
    let s = c.keys().key_status(&Cx::default(), p).await.unwrap();
    assert_eq!(
        s.terms.iter().map(|t| t.term).collect::<Vec<_>>(),
        vec![2],
        "the unused retired term is destroyed"
    );
    assert_all_read(&f).await;
    assert_old_version_opens(&f).await;
}

#[tokio::test]
async fn a_stale_write_is_resealed_under_the_newest_term() {
    let f = fixture_with(CoreConfig {
        key_cache_ttl: Duration::from_secs(3600),
        ..CoreConfig::default()
    })
    .await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.params()
        .set_param(&Cx::default(), p, "app", "default", set("A", "1"))
        .await
        .unwrap();
    // A second service on the same file plays "another node": it rotates behind the
    // first one's long-lived key cache.
    let other = f.open_again(CoreConfig::default()).await;
    other.unseal(&Cx::default(), &f.shares[0]).await.unwrap();
    other.unseal(&Cx::default(), &f.shares[1]).await.unwrap();
    other
        .keys()
        .rotate_org_key(p.org_id, "manual")
        .await
        .unwrap();
    c.params()
        .set_param(&Cx::default(), p, "app", "default", set("B", "2"))
        .await
        .unwrap();
    let s = other.keys().org_key_status(p.org_id).await.unwrap();
    assert_eq!(
        s.terms
            .iter()
            .map(|t| (t.term, t.values))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)],
        "B went to the new term although this node had cached term 1 as active"
    );
    // ...and a value the other side rewrapped to a term this node has not cached still reads.
    other.keys().run_key_maintenance().await.unwrap();
    for (name, want) in [("A", "1"), ("B", "2")] {
        let v = c
            .params()
            .get_param(&Cx::default(), p, "app", "default", name)
            .await
            .unwrap();
        assert_eq!(v.value.unwrap().expose_secret(), want.as_bytes());
    }
}

#[tokio::test]
async fn rewrap_resumes_after_an_interruption() {
    let slow = CoreConfig {
        rewrap_pause: Duration::from_millis(100),
        ..fast_keys()
    };
    let f = fixture_with(slow).await;
    let (c, p) = (&f.coffer, &f.owner);
    populate(&f).await;
    c.keys().rotate_key(&Cx::default(), p).await.unwrap();
    // Stop the job after a few batches by dropping its future, as a crash would.
    let job = c.keys().run_key_maintenance();
    assert!(
        tokio::time::timeout(Duration::from_millis(250), job)
            .await
            .is_err()
    );
    let mid = c
        .keys()
        .key_status(&Cx::default(), p)
        .await
        .unwrap()
        .rotation
        .unwrap();
    assert!(
        mid.done > 0 && mid.done < 40 && mid.done % 7 == 0,
        "stopped between batches: {mid:?}"
    );
    // A fresh service (a restart) continues from the committed cursor; the old one is
    // gone first, as after a crash.
    let f = f.restart(fast_keys()).await;
    let (restarted, p) = (&f.coffer, &f.owner);
    let moved = restarted.keys().run_key_maintenance().await.unwrap();
    assert_eq!(moved, 40 - mid.done);
    let s = restarted.keys().org_key_status(p.org_id).await.unwrap();
    assert_eq!(s.rotation.unwrap().done, 40);
    assert_all_read(&f).await;
    assert_old_version_opens(&f).await;
}

#[tokio::test]
async fn rotation_by_age_and_by_usage() {
    // The age must comfortably exceed how long setting up the organisation takes on a
    // loaded CI machine (300 ms did not), or the key is already "old" at the first check.
    let f = fixture_with(CoreConfig {
        key_rotate_after: Duration::from_secs(2),
        key_rotate_after_encryptions: 1_000_000,
        ..fast_keys()
    })
    .await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(
        c.keys()
            .key_status(&Cx::default(), p)
            .await
            .unwrap()
            .active_term,
        1
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    c.keys().run_key_maintenance().await.unwrap();
    let s = c.keys().key_status(&Cx::default(), p).await.unwrap();
    assert_eq!(s.active_term, 2);
    assert_eq!(s.rotation.unwrap().reason, "age");

    let f = fixture_with(CoreConfig {
        key_rotate_after_encryptions: 5,
        ..fast_keys()
    })
    .await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    for i in 0..4 {
        c.params()
            .set_param(
                &Cx::default(),
                p,
                "app",
                "default",
                set(&format!("K{i}"), "v"),
            )
            .await
            .unwrap();
    }
    c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(
        c.keys()
            .key_status(&Cx::default(), p)
            .await
            .unwrap()
            .active_term,
        1,
        "4 < 5"
    );
    c.params()
        .set_param(&Cx::default(), p, "app", "default", set("K4", "v"))
        .await
        .unwrap();
    c.keys().run_key_maintenance().await.unwrap();
    let s = c.keys().key_status(&Cx::default(), p).await.unwrap();
    assert_eq!(
        (s.active_term, s.rotation.unwrap().reason.as_str()),
        (2, "usage")
    );
    // The 5 rewrapped values alone do not trigger another rotation.
    c.keys().run_key_maintenance().await.unwrap();
    c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(
        c.keys()
            .key_status(&Cx::default(), p)
            .await
            .unwrap()
            .active_term,
        2
    );
}

#[tokio::test]
async fn only_owners_and_admins_manage_keys() {
    let f = fixture_with(fast_keys()).await;
    let c = &f.coffer;
    for role in [Role::Viewer, Role::Contributor] {
        let p = Principal {
            role,
            ..f.owner.clone()
        };
        assert!(matches!(
            c.keys().key_status(&Cx::default(), &p).await,
            Err(CoreError::Forbidden(_))
        ));
        assert!(matches!(
            c.keys().rotate_key(&Cx::default(), &p).await,
            Err(CoreError::Forbidden(_))
        ));
    }
    assert_eq!(
        c.keys()
            .key_status(&Cx::default(), &f.owner)
            .await
            .unwrap()
            .active_term,
        1
    );
}

async fn raw(path: &std::path::Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

fn root_of(shares: &[String]) -> coffer_crypto::RootKey {
    let parsed: Vec<_> = shares
        .iter()
        .map(|s| coffer_crypto::shamir::Share::parse(s).unwrap())
        .collect();
    coffer_crypto::shamir::combine(&parsed).unwrap()
}

#[tokio::test]
async fn deleting_an_org_shreds_it_even_in_a_copy_taken_before() {
    let f = sqlite_fixture_with(fast_keys()).await;
    let (c, owner) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), owner, "app")
        .await
        .unwrap();
    c.params()
        .set_param(&Cx::default(), owner, "app", "default", set("KEEP", "kept"))
        .await
        .unwrap();
    let acme_id = c
        .identity()
        .create_org_as(&Cx::default(), owner, "acme")
        .await
        .unwrap();
    let acme = Principal {
        org_id: acme_id,
        org_name: "acme".into(),
        ..owner.clone()
    };
    c.projects()
        .create_project(&Cx::default(), &acme, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            &acme,
            "app",
            "default",
            set("DOOMED", "acme-secret"),
        )
        .await
        .unwrap();
    let copy = f.dir.path().join("before-delete.db");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        copy.display()
    )))
    .execute(&mut raw(&f.db_path()).await)
    .await
    .unwrap();

    // Only an Owner, naming the organisation, can delete it; a refusal changes nothing.
    let admin = Principal {
        role: Role::Admin,
        ..acme.clone()
    };
    assert!(matches!(
        c.delete_org(&Cx::default(), &admin, "acme").await,
        Err(CoreError::Forbidden(_))
    ));
    assert!(matches!(
        c.delete_org(&Cx::default(), &acme, "acme2").await,
        Err(CoreError::Invalid { .. })
    ));
    assert!(
        c.params()
            .get_param(&Cx::default(), &acme, "app", "default", "DOOMED")
            .await
            .is_ok()
    );
    // The control for the search below: before the deletion the live files do hold acme's
    // wrapped key.
    let (acme_key,): (Vec<u8>,) =
        sqlx::query_as("SELECT wrapped FROM tenant_keys WHERE org_id = ?")
            .bind(acme_id.as_bytes().as_slice())
            .fetch_one(&mut raw(&f.db_path()).await)
            .await
            .unwrap();
    let live_files = || {
        let mut all = std::fs::read(f.db_path()).unwrap();
        all.extend(std::fs::read(f.dir.path().join("coffer.db-wal")).unwrap_or_default());
        all
    };
    assert!(
        live_files().windows(32).any(|w| w == &acme_key[8..40]),
        "the deleted organisation's key was on disk before"
    );
    c.delete_org(&Cx::default(), &acme, "acme").await.unwrap();

    // The live database holds nothing of it any more: no key, no ciphertext.
    let mut live = raw(&f.db_path()).await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenant_keys WHERE org_id = ?")
        .bind(acme_id.as_bytes().as_slice())
        .fetch_one(&mut live)
        .await
        .unwrap();
    let creds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials")
        .fetch_one(&mut live)
        .await
        .unwrap();
    assert_eq!(
        (keys, creds),
        (0, 1),
        "only the other organisation's value is left"
    );
    assert!(
        c.params()
            .get_param(&Cx::default(), &acme, "app", "default", "DOOMED")
            .await
            .is_err()
    );

    // The copy still has acme's key wrapped by the root key: with the current root it
    // opens (this is what the test must rule out next).
    let mut old_copy = raw(&copy).await;
    let (wrapped,): (Vec<u8>,) = sqlx::query_as("SELECT wrapped FROM tenant_keys WHERE org_id = ?")
        .bind(acme_id.as_bytes().as_slice())
        .fetch_one(&mut old_copy)
        .await
        .unwrap();
    // No byte sequence of that wrapped key, nor of acme's stored value, is left anywhere in
    // the live database's files: deleted rows are zeroed and the log was emptied.
    let (doomed,): (Vec<u8>,) = sqlx::query_as(
        "SELECT c.ciphertext FROM credentials c JOIN param_versions v ON v.credential_id = c.id WHERE v.org_id = ?",
    )
    .bind(acme_id.as_bytes().as_slice())
    .fetch_one(&mut old_copy)
    .await
    .unwrap();
    let bytes = live_files();
    for (what, needle) in [
        ("wrapped key", &wrapped[8..40]),
        ("ciphertext", &doomed[8..40]),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{what} of the deleted organisation found in the live database files"
        );
    }
    let wrapped = coffer_crypto::WrappedTenantKey::from_stored_bytes(wrapped);
    assert!(
        root_of(&f.shares[..2])
            .unwrap_tenant_key(acme_id, &wrapped)
            .is_ok()
    );

    // Rotating the root key (operator rekey) with the current quorum ends that.
    let admin = Principal {
        role: Role::Admin,
        ..owner.clone()
    };
    assert!(
        matches!(
            c.rekey(&Cx::default(), &admin, &f.shares[1..3], 5, 3).await,
            Err(CoreError::Forbidden(_))
        ),
        "only an Owner rekeys, even with a quorum"
    );
    assert!(
        matches!(
            c.rekey(&Cx::default(), owner, &f.shares[..1], 5, 3).await,
            Err(CoreError::Invalid { .. })
        ),
        "one share is not a quorum"
    );
    let new = c
        .rekey(&Cx::default(), owner, &f.shares[1..3], 5, 3)
        .await
        .unwrap();
    let new_shares: Vec<String> = new.shares.iter().map(|s| s.to_string()).collect();
    assert_eq!((new_shares.len(), new.threshold), (5, 3));
    let live_root = root_of(&new_shares[..3]);
    assert!(
        live_root.unwrap_tenant_key(acme_id, &wrapped).is_err(),
        "the live root key opens nothing of the deleted organisation in the old copy"
    );
    // A server on the copy cannot be unsealed with the live shares either.
    let on_copy = coffer_testkit::open_sqlite(&copy, CoreConfig::default())
        .await
        .unwrap();
    for s in &new_shares[..3] {
        let _ = on_copy.unseal(&Cx::default(), s).await;
    }
    assert!(on_copy.seal_status().await.unwrap().sealed);

    // The live service goes on with the other organisation, TOTP and audit intact.
    let v = c
        .params()
        .get_param(&Cx::default(), owner, "app", "default", "KEEP")
        .await
        .unwrap();
    assert_eq!(v.value.unwrap().expose_secret(), b"kept");
    let mut ev = coffer_core::audit::AuditEvent::now("test.after_rekey");
    ev.org_id = Some(owner.org_id);
    c.audit().record(&ev).await.unwrap();
    assert!(
        c.audit().checkpoint(owner.org_id).await.unwrap().is_some(),
        "the audit signing key was resealed"
    );
    // After a restart the old shares are useless and the new ones unseal.
    let restarted = f.open_again(CoreConfig::default()).await;
    restarted
        .unseal(&Cx::default(), &f.shares[0])
        .await
        .unwrap();
    restarted
        .unseal(&Cx::default(), &f.shares[1])
        .await
        .unwrap();
    assert_eq!(
        restarted
            .unseal(&Cx::default(), &f.shares[2])
            .await
            .unwrap(),
        coffer_core::UnsealOutcome::WrongShares,
        "old shares no longer unseal"
    );
    for s in &new_shares[2..5] {
        restarted.unseal(&Cx::default(), s).await.unwrap();
    }
    assert!(!restarted.seal_status().await.unwrap().sealed);
    let v = restarted
        .params()
        .get_param(&Cx::default(), owner, "app", "default", "KEEP")
        .await
        .unwrap();
    assert_eq!(v.value.unwrap().expose_secret(), b"kept");
}

/// A broken record in one organisation (a ciphertext that no longer opens) fails that
/// organisation's rewrap, and the job says so, but every other organisation's rotation
/// still completes in the same run.
#[tokio::test]
async fn one_broken_organisation_does_not_hold_back_the_others() {
    let f = sqlite_fixture_with(fast_keys()).await;
    let (c, owner) = (&f.coffer, &f.owner);
    populate(&f).await;
    let other_id = c
        .identity()
        .create_org_as(&Cx::default(), owner, "other")
        .await
        .unwrap();
    let other = Principal {
        org_id: other_id,
        org_name: "other".into(),
        ..owner.clone()
    };
    c.projects()
        .create_project(&Cx::default(), &other, "svc")
        .await
        .unwrap();
    for i in 0..5 {
        c.params()
            .set_param(
                &Cx::default(),
                &other,
                "svc",
                "default",
                set(&format!("O{i}"), "o"),
            )
            .await
            .unwrap();
    }
    // Break one stored value of the first (older, so first in line) organisation: another
    // record's ciphertext in its place no longer opens there.
    let mut db = raw(&f.db_path()).await;
    let ids: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT credential_id FROM param_versions WHERE org_id = ? AND credential_id IS NOT NULL LIMIT 2",
    )
    .bind(owner.org_id.as_bytes().as_slice())
    .fetch_all(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE credentials SET ciphertext = (SELECT ciphertext FROM credentials WHERE id = ?) WHERE id = ?")
        .bind(&ids[1])
        .bind(&ids[0])
        .execute(&mut db)
        .await
        .unwrap();
    c.keys().rotate_key(&Cx::default(), owner).await.unwrap();
    c.keys().rotate_key(&Cx::default(), &other).await.unwrap();
    assert!(
        c.keys().run_key_maintenance().await.is_err(),
        "the broken organisation is reported"
    );
    let done = c
        .keys()
        .key_status(&Cx::default(), &other)
        .await
        .unwrap()
        .rotation
        .unwrap();
    assert_eq!(
        (done.done, done.total),
        (5, 5),
        "the other organisation's rewrap finished"
    );
    for i in 0..5 {
        let v = c
            .params()
            .get_param(&Cx::default(), &other, "svc", "default", &format!("O{i}"))
            .await
            .unwrap();
        assert_eq!(v.value.unwrap().expose_secret(), b"o");
    }
}
