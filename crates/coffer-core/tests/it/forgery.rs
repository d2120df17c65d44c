//! An attacker with write access to the database but not the root key rewrites the recent
//! history and makes the chain consistent again (every hash and the head recomputed): the
//! signed heads and the heads the server remembers writing catch it — online on the server
//! that wrote the events, and after a restart and offline once the heads were signed.

use coffer_core::audit::{Cx, verify_export};
use coffer_core::{Coffer, CoreConfig, Principal};
use coffer_crypto::audit::{GENESIS, chain_entry, chain_hash};

use crate::audit::{delete_where, insert_json, json_events, org, raw, record_n};
use crate::{Fixture, sqlite_fixture};

/// Rewrite the chain from entry `from` on with `edit` applied to each body, recomputing
/// every later hash and the head: consistent in itself.
async fn rewrite_from(
    db: &mut sqlx::SqliteConnection,
    c: &Coffer,
    p: &Principal,
    from: i64,
    edit: &str,
) {
    let prev: Vec<u8> = sqlx::query_scalar(
        "SELECT hash FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = ?",
    )
    .bind(org(p))
    .bind(from - 1)
    .fetch_optional(&mut *db)
    .await
    .unwrap()
    .unwrap_or(GENESIS.to_vec());
    let rows = json_events(c, p, from as u64).await;
    assert!(!rows.is_empty());
    delete_where(db, p, "seq >= ?", from).await;
    let mut prev: [u8; 32] = prev.try_into().unwrap();
    sqlx::query("UPDATE audit_heads SET seq = ?, hash = ? WHERE org_id = ?")
        .bind(from - 1)
        .bind(prev.to_vec())
        .bind(org(p))
        .execute(&mut *db)
        .await
        .unwrap();
    for (seq, body) in rows {
        let body = body.replace("test.event", edit);
        let hash = chain_hash(&prev, &chain_entry(seq, &body));
        insert_json(db, p, seq, &body, &hash).await;
        prev = hash;
    }
}

/// Cut the chain after entry `keep`, moving the head back to it.
async fn cut_after(db: &mut sqlx::SqliteConnection, p: &Principal, keep: i64) {
    delete_where(db, p, "seq > ?", keep).await;
    sqlx::query("UPDATE audit_heads SET seq = ?, hash = (SELECT hash FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = ?) WHERE org_id = ?")
        .bind(keep)
        .bind(org(p))
        .bind(keep)
        .bind(org(p))
        .execute(&mut *db)
        .await
        .unwrap();
}

async fn problem(c: &Coffer, p: &Principal) -> Option<(u64, String)> {
    let r = c.audit().audit_verify(&Cx::default(), p).await.unwrap();
    r.first_problem.map(|p| (p.seq, p.kind))
}

/// The export as the server streams it, checked offline with the public key only.
async fn offline_problem(f: &Fixture) -> Option<(u64, String)> {
    use coffer_core::audit::{EXPORT_FORMAT, ExportLine};
    let mut out = vec![ExportLine::Header {
        format: EXPORT_FORMAT.into(),
        org_id: f.owner.org_id,
        public_key: f.coffer.audit().audit_public_key().await.unwrap(),
        exported_at: "now".into(),
    }];
    let points = f.coffer.audit().audit_checkpoints(&f.owner).await.unwrap();
    for r in f
        .coffer
        .audit()
        .audit_export_page(&f.owner, None, None, 0)
        .await
        .unwrap()
    {
        out.push(ExportLine::Event {
            seq: r.seq,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
            body: r.body,
        });
    }
    for c in points {
        out.push(ExportLine::Checkpoint {
            seq: c.seq,
            hash: hex::encode(c.hash),
            created_at: c.created_at,
            signature: hex::encode(&c.signature),
        });
    }
    let text: String = out
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect();
    let pinned = f.coffer.audit().audit_public_key().await.unwrap();
    verify_export(text.as_bytes(), pinned.as_deref())
        .unwrap()
        .first_problem
        .map(|p| (p.seq, p.kind))
}

#[tokio::test]
async fn an_edit_after_the_last_checkpoint_is_caught_by_what_the_server_wrote() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 4).await;
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    // Entries 6 to 8, not signed yet.
    record_n(&f.coffer, &f.owner, 3).await;
    let mut db = raw(&f).await;
    rewrite_from(&mut db, &f.coffer, &f.owner, 7, "test.forged").await;
    assert_eq!(
        problem(&f.coffer, &f.owner).await,
        Some((8, "altered".into()))
    );
}

#[tokio::test]
async fn a_cut_after_the_last_checkpoint_is_caught_by_what_the_server_wrote() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 4).await;
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    record_n(&f.coffer, &f.owner, 3).await;
    let mut db = raw(&f).await;
    cut_after(&mut db, &f.owner, 6).await;
    // The signed head goes too: only the server's memory is left to tell.
    sqlx::query("DELETE FROM audit_signed_heads")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(
        problem(&f.coffer, &f.owner).await,
        Some((7, "truncated".into()))
    );
}

#[tokio::test]
async fn signed_heads_catch_edits_after_a_restart_and_offline() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 4).await;
    // The background job's round: the organisation's entries up to 5 signed (and the
    // system chain's: initialising, unsealing), no checkpoint kept.
    assert_eq!(f.coffer.audit().sign_heads().await.unwrap(), 2);
    let mut db = raw(&f).await;
    rewrite_from(&mut db, &f.coffer, &f.owner, 4, "test.forged").await;
    let f = f.restart(CoreConfig::default()).await;
    assert_eq!(offline_problem(&f).await, Some((5, "altered".into())));
    assert_eq!(
        problem(&f.coffer, &f.owner).await,
        Some((5, "altered".into()))
    );
}

#[tokio::test]
async fn signed_heads_catch_a_cut_end_after_a_restart_and_offline() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 4).await;
    f.coffer.audit().sign_heads().await.unwrap();
    let mut db = raw(&f).await;
    cut_after(&mut db, &f.owner, 3).await;
    let f = f.restart(CoreConfig::default()).await;
    assert_eq!(offline_problem(&f).await, Some((4, "truncated".into())));
    assert_eq!(
        problem(&f.coffer, &f.owner).await,
        Some((4, "truncated".into()))
    );
}

/// A signed head is only ever replaced by a later one, and a forged one does not verify.
#[tokio::test]
async fn signed_heads_only_move_forward_and_cannot_be_forged() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 2).await;
    f.coffer.audit().sign_heads().await.unwrap();
    record_n(&f.coffer, &f.owner, 2).await;
    f.coffer.audit().sign_heads().await.unwrap();
    assert_eq!(
        f.coffer.audit().sign_heads().await.unwrap(),
        0,
        "nothing new to sign"
    );
    let points = f.coffer.audit().audit_checkpoints(&f.owner).await.unwrap();
    assert_eq!(points.last().unwrap().seq, 5);
    // The attacker replaces the signed head's hash (after rewriting entry 5 to match).
    let mut db = raw(&f).await;
    rewrite_from(&mut db, &f.coffer, &f.owner, 5, "test.forged").await;
    let forged: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = 5")
            .bind(org(&f.owner))
            .fetch_one(&mut db)
            .await
            .unwrap();
    sqlx::query("UPDATE audit_signed_heads SET hash = ?")
        .bind(forged)
        .execute(&mut db)
        .await
        .unwrap();
    let f = f.restart(CoreConfig::default()).await;
    assert_eq!(
        offline_problem(&f).await,
        Some((5, "bad_checkpoint".into()))
    );
}

/// The server knows where every event it appends goes, whichever way it is written (a
/// change's event in its transaction, a parameter write's in the group commit, a read's by
/// the audit writer), on both backends: the signed head is the chain's end.
#[tokio::test]
async fn the_heads_of_every_kind_of_append_are_signed() {
    let f = crate::fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let end = || async {
        f.coffer
            .audit()
            .audit_export_page(&f.owner, None, None, 0)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    };
    let signed = || async {
        f.coffer.audit().sign_heads().await.unwrap();
        f.coffer
            .audit()
            .audit_checkpoints(&f.owner)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    };
    c.projects().create_project(&cx, p, "web").await.unwrap();
    assert_eq!(signed().await, end().await, "a change's event");
    c.params()
        .set_param(
            &cx,
            p,
            "web",
            "default",
            coffer_core::SetParam {
                name: "TOKEN",
                value: b"v",
                secret: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(signed().await, end().await, "a parameter write's event");
    c.params()
        .get_param(&cx, p, "web", "default", "TOKEN")
        .await
        .unwrap();
    assert_eq!(signed().await, end().await, "a read's event");
}
