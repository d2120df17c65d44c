//! Tamper evidence of the audit chain, against an attacker with write access to the database.

use coffer_core::audit::Cx;
use coffer_core::audit::{AuditEvent, verify_export};
use coffer_core::{Coffer, Principal};
use sqlx::Connection;

use crate::{Fixture, fixture, sqlite_fixture};

pub(crate) async fn record_n(c: &Coffer, p: &Principal, n: usize) {
    for i in 0..n {
        let mut ev = AuditEvent::now(&format!("test.event{i}"));
        ev.org_id = Some(p.org_id);
        c.audit().record(&ev).await.unwrap();
    }
}

pub(crate) async fn raw(f: &Fixture) -> sqlx::SqliteConnection {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.db_path().display()))
        .await
        .unwrap();
    // The attacker drops the append-only and chain-link triggers first.
    for t in [
        "audit_log_no_update",
        "audit_log_no_delete",
        "audit_log_link",
        "audit_strings_no_update",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}")))
            .execute(&mut db)
            .await
            .unwrap();
    }
    db
}

pub(crate) fn org(p: &Principal) -> Vec<u8> {
    p.org_id.as_bytes().to_vec()
}

/// The events of `p`'s chain from `from` on, as (seq, JSON), read through the service (the
/// stored form is compact; the attacker can render it as the service does).
pub(crate) async fn json_events(c: &Coffer, p: &Principal, from: u64) -> Vec<(u64, String)> {
    c.audit()
        .audit_export_page(p, None, None, from.saturating_sub(1))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.body))
        .collect()
}

/// Store `body` at `seq` of `p`'s chain as the attacker would: as JSON (format byte 0),
/// with `hash`, the head following (the database's trigger).
pub(crate) async fn insert_json(
    db: &mut sqlx::SqliteConnection,
    p: &Principal,
    seq: u64,
    body: &str,
    hash: &[u8; 32],
) {
    let mut stored = vec![0u8];
    stored.extend_from_slice(body.as_bytes());
    sqlx::query(
        "INSERT INTO audit_log (chain, seq, time, action, outcome, target, hash, body) \
         VALUES ((SELECT chain FROM audit_chains WHERE org_id = ?), ?, 0, 'x', 'success', '', ?, ?)",
    )
    .bind(org(p))
    .bind(seq as i64)
    .bind(hash.to_vec())
    .bind(stored)
    .execute(&mut *db)
    .await
    .unwrap();
}

/// `DELETE FROM audit_log` of `p`'s chain where `cond` (on `seq`, with one `?`) holds.
pub(crate) async fn delete_where(
    db: &mut sqlx::SqliteConnection,
    p: &Principal,
    cond: &str,
    seq: i64,
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND {cond}"
    )))
    .bind(org(p))
    .bind(seq)
    .execute(&mut *db)
    .await
    .unwrap();
}

async fn problem(f: &Fixture) -> Option<(u64, String)> {
    let r = f
        .coffer
        .audit()
        .audit_verify(&Cx::default(), &f.owner)
        .await
        .unwrap();
    r.first_problem.map(|p| (p.seq, p.kind))
}

#[tokio::test]
async fn an_untouched_chain_verifies_with_checkpoints() {
    let f = fixture().await;
    // The owner's login is the chain's first event (seq 1).
    record_n(&f.coffer, &f.owner, 5).await;
    let cp = f
        .coffer
        .audit()
        .checkpoint(f.owner.org_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 6);
    record_n(&f.coffer, &f.owner, 2).await;
    let r = f
        .coffer
        .audit()
        .audit_verify(&Cx::default(), &f.owner)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.events, r.checkpoints, r.last_seq), (8, 1, Some(8)));
    // Checkpointing an unchanged chain returns the same checkpoint.
    let a = f
        .coffer
        .audit()
        .checkpoint(f.owner.org_id)
        .await
        .unwrap()
        .unwrap();
    let b = f
        .coffer
        .audit()
        .checkpoint(f.owner.org_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a, b);
    // (The system chain, with the server's init and unseal events, is signed once.)
    f.coffer.audit().checkpoint_all().await.unwrap();
    assert_eq!(f.coffer.audit().checkpoint_all().await.unwrap(), 0);
}

#[tokio::test]
async fn the_database_refuses_updates_and_deletes() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 2).await;
    f.coffer
        .audit()
        .checkpoint(f.owner.org_id)
        .await
        .unwrap()
        .unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.db_path().display()))
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "UPDATE audit_strings SET text = 'x'",
        "DELETE FROM audit_strings",
        "UPDATE audit_chains SET org_id = x'00'",
        "DELETE FROM audit_chains",
    ] {
        assert!(
            sqlx::query(sql).execute(&mut db).await.is_err(),
            "{sql} must be refused"
        );
    }
    assert!(
        sqlx::query("DELETE FROM audit_checkpoints")
            .execute(&mut db)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("UPDATE audit_checkpoints SET seq = 1")
            .execute(&mut db)
            .await
            .is_err()
    );
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'test.%'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(n.0, 2);
}

#[tokio::test]
async fn an_altered_entry_is_reported_first() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 5).await;
    let (_, body) = json_events(&f.coffer, &f.owner, 4).await.remove(0);
    let mut db = raw(&f).await;
    let mut stored = vec![0u8];
    stored.extend_from_slice(body.replace("test.event2", "test.innocent").as_bytes());
    sqlx::query("UPDATE audit_log SET body = ? WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = 4")
        .bind(stored)
        .bind(org(&f.owner))
        .execute(&mut db)
        .await
        .unwrap();
    // seq 1 is the owner's login; test.event2 is seq 4.
    assert_eq!(problem(&f).await, Some((4, "altered".into())));
}

#[tokio::test]
async fn an_altered_interned_text_is_reported_at_its_first_event() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 5).await;
    // Read once, so that a cache (if verification used one) would hold the text.
    assert_eq!(problem(&f).await, None);
    let mut db = raw(&f).await;
    // test.event2's template holds its action: one stored text for every such event.
    let changed = sqlx::query("UPDATE audit_strings SET text = replace(text, 'test.event2', 'test.innocent') WHERE text LIKE '%test.event2%'")
        .execute(&mut db)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
    assert_eq!(problem(&f).await, Some((4, "altered".into())));
}

#[tokio::test]
async fn events_are_stored_compact_and_read_back_exactly() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 3).await;
    let mut db = raw(&f).await;
    let formats: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, substr(body, 1, 1) FROM audit_log \
         WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) ORDER BY seq",
    )
    .bind(org(&f.owner))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(formats.len(), 4);
    assert!(formats.iter().all(|(_, f)| f == &[1u8]), "{formats:?}");
    assert_eq!(coffer_store::compact_fallbacks(), 0);
    // What is read back is the JSON that was hashed: the chain verifies.
    let events = json_events(&f.coffer, &f.owner, 1).await;
    assert!(
        events[1].1.contains("\"action\":\"test.event0\""),
        "{events:?}"
    );
    assert_eq!(problem(&f).await, None);
}

#[tokio::test]
async fn a_deleted_entry_is_reported() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 5).await;
    let mut db = raw(&f).await;
    delete_where(&mut db, &f.owner, "seq = ?", 2).await;
    assert_eq!(problem(&f).await, Some((2, "missing".into())));
}

#[tokio::test]
async fn reordered_entries_are_reported() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 5).await;
    let mut db = raw(&f).await;
    // Swap entries 2 and 3 (their content and hashes) by renumbering.
    for (from, to) in [(2, 100), (3, 2), (100, 3)] {
        sqlx::query("UPDATE audit_log SET seq = ? WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = ?")
            .bind(to)
            .bind(org(&f.owner))
            .bind(from)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let (seq, _) = problem(&f).await.unwrap();
    assert_eq!(seq, 2);
}

#[tokio::test]
async fn a_rewritten_chain_with_valid_hashes_is_caught_by_a_checkpoint() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 4).await;
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    // The attacker inserts an entry after 2 and recomputes every later hash, so the chain
    // itself is consistent again; only the signed checkpoint can tell.
    let rows = json_events(&f.coffer, &f.owner, 1).await;
    let mut db = raw(&f).await;
    let mut bodies: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    // (bodies[0] is the owner's login.)
    bodies.insert(3, bodies[2].replace("test.event1", "test.forged"));
    delete_where(&mut db, &f.owner, "seq >= ?", 1).await;
    sqlx::query("UPDATE audit_heads SET seq = 0 WHERE org_id = ?")
        .bind(org(&f.owner))
        .execute(&mut db)
        .await
        .unwrap();
    let mut prev = coffer_crypto::audit::GENESIS;
    for (i, body) in bodies.iter().enumerate() {
        let seq = i as u64 + 1;
        let hash =
            coffer_crypto::audit::chain_hash(&prev, &coffer_crypto::audit::chain_entry(seq, body));
        insert_json(&mut db, &f.owner, seq, body, &hash).await;
        prev = hash;
    }
    // ...and the head, so appends go on (the verification is itself recorded).
    sqlx::query("UPDATE audit_heads SET seq = ?, hash = ? WHERE org_id = ?")
        .bind(bodies.len() as i64)
        .bind(prev.to_vec())
        .bind(org(&f.owner))
        .execute(&mut db)
        .await
        .unwrap();
    let r = f
        .coffer
        .audit()
        .audit_verify(&Cx::default(), &f.owner)
        .await
        .unwrap();
    let p = r.first_problem.expect("tampering must be detected");
    assert_eq!((p.seq, p.kind.as_str()), (5, "altered"), "{p:?}");
}

#[tokio::test]
async fn a_cut_off_end_is_reported() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 5).await;
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    let mut db = raw(&f).await;
    delete_where(&mut db, &f.owner, "seq >= ?", 4).await;
    sqlx::query("UPDATE audit_heads SET seq = 3 WHERE org_id = ?")
        .bind(org(&f.owner))
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(problem(&f).await, Some((4, "truncated".into())));
}

/// Build an NDJSON export the way the server streams it.
async fn export(f: &Fixture) -> String {
    use coffer_core::audit::{EXPORT_FORMAT, ExportLine};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = serde_json::to_string(&ExportLine::Header {
        format: EXPORT_FORMAT.into(),
        org_id: f.owner.org_id,
        public_key: f.coffer.audit().audit_public_key().await.unwrap(),
        exported_at: "now".into(),
    })
    .unwrap();
    out.push('\n');
    for r in f
        .coffer
        .audit()
        .audit_export_page(&f.owner, None, None, 0)
        .await
        .unwrap()
    {
        out.push_str(
            &serde_json::to_string(&ExportLine::Event {
                seq: r.seq,
                prev_hash: hex(&r.prev_hash),
                hash: hex(&r.hash),
                body: r.body,
            })
            .unwrap(),
        );
        out.push('\n');
    }
    for c in f.coffer.audit().audit_checkpoints(&f.owner).await.unwrap() {
        out.push_str(
            &serde_json::to_string(&ExportLine::Checkpoint {
                seq: c.seq,
                hash: hex(&c.hash),
                created_at: c.created_at,
                signature: hex(&c.signature),
            })
            .unwrap(),
        );
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn exports_verify_offline_and_tampering_in_the_file_is_found() {
    let f = fixture().await;
    record_n(&f.coffer, &f.owner, 6).await;
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    let text = export(&f).await;
    let r = verify_export(text.as_bytes(), None).unwrap();
    // Six test events after the owner's login.
    assert!(r.ok && r.events == 7 && r.checkpoints == 1, "{r:?}");

    let altered = text.replace("test.event3", "test.eventX");
    let r = verify_export(altered.as_bytes(), None).unwrap();
    assert_eq!(
        r.first_problem.map(|p| (p.seq, p.kind)),
        Some((5, "altered".into()))
    );

    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(3); // an event line
    let r = verify_export(lines.join("\n").as_bytes(), None).unwrap();
    assert_eq!(r.first_problem.map(|p| p.kind), Some("missing".into()));

    // Pinning another public key makes the checkpoint fail.
    let other = "00".repeat(32);
    let r = verify_export(text.as_bytes(), Some(&other)).unwrap();
    assert_eq!(
        r.first_problem.map(|p| p.kind),
        Some("bad_checkpoint".into())
    );
    assert!(verify_export("not json".as_bytes(), None).is_err());
}

#[tokio::test]
async fn export_pages_through_long_logs() {
    let f = fixture().await;
    // Concurrent appends share commits, so 2,500 events are quick to write.
    let mut tasks = Vec::new();
    for chunk in 0..25 {
        let (c, p) = (f.coffer.clone(), f.owner.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let mut ev = AuditEvent::now(&format!("bulk.{chunk}.{i}"));
                ev.org_id = Some(p.org_id);
                c.audit().record(&ev).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    f.coffer.audit().checkpoint(f.owner.org_id).await.unwrap();
    let text = export(&f).await;
    // export() reads one page; the server streams page after page: check both paths.
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"type\":\"event\""))
            .count(),
        coffer_core::audit::PAGE as usize
    );
    let r = f
        .coffer
        .audit()
        .audit_verify(&Cx::default(), &f.owner)
        .await
        .unwrap();
    assert!(r.ok && r.events == 2501, "{r:?}");
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = f
            .coffer
            .audit()
            .audit_export_page(&f.owner, None, None, after)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= coffer_core::audit::PAGE as usize);
        after = last.seq;
        n += page.len();
    }
    // (and the audit.verify event above)
    assert_eq!(n, 2502);
}
