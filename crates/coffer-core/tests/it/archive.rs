//! Archive segments, anchors and pruning (docs/audit.md, "Archive segments"), on both
//! backends where the test does not open the SQLite file itself.

use std::path::{Path, PathBuf};

use coffer_core::Coffer;
use coffer_core::audit::segment::{SegmentLine, export_from_segments, verify_segments};
use coffer_core::audit::{ArchiveTarget, AuditEvent, Cx, ExportLine, Identities, Recipients};
use sqlx::Connection;
use uuid::Uuid;

use crate::audit::{json_events, org, record_n};
use crate::{Fixture, fixture, sqlite_fixture};

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The service as an operator runs it to archive and prune: on PostgreSQL as the schema
/// owner (the runtime role the servers use may neither record segments nor delete events);
/// on SQLite the same service.
async fn operator(f: &Fixture) -> Coffer {
    match &f.pg {
        Some(app_url) => {
            let (head, name) = app_url.rsplit_once('/').unwrap();
            let owner = head.replacen(&format!("://{name}_app@"), &format!("://{name}@"), 1);
            coffer_testkit::open_coffer_on(
                f.dir.path(),
                Some(&format!("{owner}/{name}")),
                Default::default(),
            )
            .await
        }
        None => f.coffer.clone(),
    }
}

/// Sign what was written so far (every chain) and archive it into `path`.
async fn archive_now(f: &Fixture, path: &Path) -> coffer_store::SegmentRow {
    archive_encrypted(f, path, None).await
}

/// The same, encrypted to `to`.
async fn archive_encrypted(
    f: &Fixture,
    path: &Path,
    to: Option<&Recipients>,
) -> coffer_store::SegmentRow {
    let c = &f.coffer;
    // The server appends to the system chain after the operator's last `audit.archived`
    // (written by a sealed process, which signs nothing): its signed head covers both.
    c.audit()
        .record(&AuditEvent::now("test.tick"))
        .await
        .unwrap();
    c.audit().checkpoint(f.owner.org_id).await.unwrap();
    c.audit().checkpoint_all().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    operator(f)
        .await
        .audit()
        .archive(
            now_ms(),
            ArchiveTarget::File(path.to_owned()),
            to,
            &mut |_, _| {},
        )
        .await
        .unwrap()
        .expect("something to archive")
}

async fn verify_online(f: &Fixture) -> coffer_core::audit::VerifyReport {
    f.coffer
        .audit()
        .audit_verify(&Cx::default(), &f.owner)
        .await
        .unwrap()
}

fn events_of(export: &str) -> Vec<(u64, String)> {
    export
        .lines()
        .filter_map(|l| match serde_json::from_str::<ExportLine>(l).unwrap() {
            ExportLine::Event { seq, body, .. } => Some((seq, body)),
            _ => None,
        })
        .collect()
}

fn segment_events(files: &[PathBuf], org_id: Uuid) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    export_from_segments(files, org_id, &Identities::none(), &mut out).unwrap();
    events_of(&String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn archive_prune_and_verify_across_segments() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    let op = operator(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let seg1 = dir.path().join("one.ndjson");
    let seg2 = dir.path().join("two.ndjson");
    record_n(c, p, 5).await;
    let row1 = archive_now(&f, &seg1).await;
    assert_eq!(row1.number, 1);
    let before = json_events(c, p, 1).await;
    record_n(c, p, 3).await;
    let row2 = archive_now(&f, &seg2).await;
    assert_eq!(row2.number, 2);
    let all = json_events(c, p, 1).await;

    // The two files verify as a series, and hold exactly the events the database held.
    let files = vec![seg1.clone(), seg2.clone()];
    let report = verify_segments(&files, None, &Identities::none()).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.segments.len(), 2);
    let archived = segment_events(&files, p.org_id);
    let end2 = report.segments[1]
        .chains
        .iter()
        .find(|r| r.org_id == p.org_id)
        .unwrap()
        .to_seq;
    assert_eq!(archived, all[..usize::try_from(end2).unwrap()].to_vec());
    assert_eq!(
        &archived[..before.len().min(archived.len())],
        &before[..before.len().min(archived.len())]
    );

    // Pruning the first segment deletes its events; the live chain verifies from the anchor.
    let pruned = op
        .audit()
        .prune(std::slice::from_ref(&seg1), &Identities::none())
        .await
        .unwrap();
    let mine = pruned.chains.iter().find(|x| x.org_id == p.org_id).unwrap();
    assert!(mine.deleted > 0);
    let live = json_events(c, p, 1).await;
    assert_eq!(live.first().unwrap().0, mine.through_seq + 1);
    let r = verify_online(&f).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.first_seq, Some(mine.through_seq + 1));
    // Pruning was recorded in the chain itself.
    assert!(
        live.iter()
            .any(|(_, b)| b.contains("\"action\":\"audit.pruned\"")),
        "{live:?}"
    );

    // Then the second; what the segments hold is still what the database held.
    op.audit()
        .prune(std::slice::from_ref(&seg2), &Identities::none())
        .await
        .unwrap();
    assert_eq!(segment_events(&files, p.org_id), archived);
    let r = verify_online(&f).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.first_seq, Some(end2 + 1));
    // Pruning the same segments again changes nothing.
    assert_eq!(
        op.audit()
            .prune(&files, &Identities::none())
            .await
            .unwrap()
            .deleted,
        0
    );

    // The system chain records each archive run.
    let system = segment_events(&files, Uuid::nil());
    assert!(
        system
            .iter()
            .any(|(_, b)| b.contains("\"action\":\"audit.archived\"")),
        "{system:?}"
    );
    let st = op
        .audit()
        .archive_status(true, &Default::default())
        .await
        .unwrap();
    assert_eq!((st.segments, st.chains_pending_prune), (2, 0));
    assert_eq!(st.archived_events, row1.events + row2.events);
    assert!(
        st.live_events > 0 && st.oldest_live_event_ms.is_some(),
        "{st:?}"
    );
}

#[tokio::test]
async fn pruning_is_refused_unless_the_segments_are_the_recorded_ones_and_cover_the_chain() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    let op = operator(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let seg1 = dir.path().join("one.ndjson");
    let seg2 = dir.path().join("two.ndjson");
    record_n(c, p, 4).await;
    archive_now(&f, &seg1).await;
    record_n(c, p, 2).await;
    archive_now(&f, &seg2).await;
    let untouched = json_events(c, p, 1).await;

    // An edited copy of a segment.
    let edited = dir.path().join("edited.ndjson");
    let text = std::fs::read_to_string(&seg1).unwrap();
    std::fs::write(&edited, text.replacen("test.event1", "test.eventX", 1)).unwrap();
    let e = op
        .audit()
        .prune(&[edited], &Identities::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused") && e.contains("edited.ndjson"), "{e}");

    // The second segment alone would delete the first one's events too.
    let e = op
        .audit()
        .prune(std::slice::from_ref(&seg2), &Identities::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("give the earlier segments"), "{e}");

    // A segment that verifies but was never recorded (written without being recorded).
    let plan = c.audit().plan_archive(now_ms()).await.unwrap();
    assert!(plan.is_none(), "everything signed is archived already");
    record_n(c, p, 1).await;
    c.audit().checkpoint(p.org_id).await.unwrap();
    let plan = c.audit().plan_archive(now_ms() + 1).await.unwrap().unwrap();
    let stray = dir.path().join("stray.ndjson");
    let file = std::fs::File::create(&stray).unwrap();
    c.audit()
        .write_segment(&plan, file, &mut |_| {})
        .await
        .unwrap();
    let series = vec![seg1.clone(), seg2.clone(), stray];
    assert!(
        verify_segments(&series, None, &Identities::none())
            .unwrap()
            .ok
    );
    let e = op
        .audit()
        .prune(&series, &Identities::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("as it was recorded"), "{e}");

    // On PostgreSQL the servers' runtime role may not prune at all (no DELETE on events, no
    // writes to anchors: docs/postgres-runtime-role.sql); SQLite has no roles.
    if f.pg.is_some() {
        let e = c
            .audit()
            .prune(std::slice::from_ref(&seg1), &Identities::none())
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("permission denied"), "{e:?}");
    }

    // A recorded segment is never overwritten by a later run.
    let e = op
        .audit()
        .archive(
            now_ms() + 1,
            ArchiveTarget::File(seg1.clone()),
            None,
            &mut |_, _| {},
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds the recorded segment"), "{e}");

    // Nothing was deleted by any refusal.
    assert_eq!(json_events(c, p, 1).await[..untouched.len()], untouched[..]);
    assert!(verify_online(&f).await.ok);
}

#[tokio::test]
async fn encrypted_segments_open_with_the_identity_and_prune_by_their_recorded_digest() {
    let f = fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    let op = operator(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (public, secret) = coffer_crypto::offline::generate_identity();
    let (_, other) = coffer_crypto::offline::generate_identity();
    let to = Recipients::parse(&[public]).unwrap();
    let ids = Identities::parse(&secret).unwrap();
    let seg1 = dir.path().join("one.ndjson.age");
    let seg2 = dir.path().join("two.ndjson.age");
    record_n(c, p, 4).await;
    let row1 = archive_encrypted(&f, &seg1, Some(&to)).await;
    record_n(c, p, 2).await;
    let row2 = archive_encrypted(&f, &seg2, Some(&to)).await;
    let all = json_events(c, p, 1).await;

    // Nothing readable on disk; the record keeps both digests.
    let bytes = std::fs::read(&seg1).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    assert!(!String::from_utf8_lossy(&bytes).contains("test.event"));
    assert!(row1.file_sha256.is_some_and(|d| d != row1.sha256));
    assert_eq!(row1.bytes, bytes.len() as u64);

    // Verification and export need the identity, and then work as for plaintext.
    let files = vec![seg1.clone(), seg2.clone()];
    let e = verify_segments(&files, None, &Identities::none()).unwrap_err();
    assert!(
        e.contains("one.ndjson.age") && e.contains("--identity"),
        "{e}"
    );
    let e = verify_segments(&files, None, &Identities::parse(&other).unwrap()).unwrap_err();
    assert!(e.contains("none of the identities"), "{e}");
    let report = verify_segments(&files, None, &ids).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.segments[0].sha256, hex::encode(row1.sha256));
    let mut out = Vec::new();
    export_from_segments(&files, p.org_id, &ids, &mut out).unwrap();
    let archived = events_of(&String::from_utf8(out).unwrap());
    assert_eq!(archived, all[..archived.len()].to_vec());
    assert!(archived.len() >= 6, "{archived:?}");

    // A changed byte: refused without the identity (not the recorded file) and with it
    // (it no longer decrypts); nothing pruned.
    let changed = dir.path().join("changed.ndjson.age");
    let mut b = std::fs::read(&seg2).unwrap();
    let at = b.len() - 20;
    b[at] ^= 1;
    std::fs::write(&changed, &b).unwrap();
    let e = op
        .audit()
        .prune(&[seg1.clone(), changed.clone()], &Identities::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("changed.ndjson.age") && e.contains("as it was recorded"),
        "{e}"
    );
    let e = op
        .audit()
        .prune(&[seg1.clone(), changed], &ids)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused") && e.contains("changed.ndjson.age"),
        "{e}"
    );
    assert_eq!(json_events(c, p, 1).await[..all.len()], all[..]);

    // Without the identity, a segment left out between two given ones is refused too
    // (the verifier cannot see the gap in files it does not read).
    record_n(c, p, 2).await;
    let seg3 = dir.path().join("three.ndjson.age");
    archive_encrypted(&f, &seg3, Some(&to)).await;
    let e = op
        .audit()
        .prune(&[seg1.clone(), seg3.clone()], &Identities::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("in none of the segments given"), "{e}");
    assert_eq!(json_events(c, p, 1).await[..all.len()], all[..]);

    // The server's way (no identity): the files as recorded, their ranges and anchors from
    // the record; then the live chain verifies from the anchor.
    let pruned = op
        .audit()
        .prune(std::slice::from_ref(&seg1), &Identities::none())
        .await
        .unwrap();
    assert!(pruned.deleted > 0);
    // The operator's way: decrypted and verified.
    let pruned = op
        .audit()
        .prune(std::slice::from_ref(&seg2), &ids)
        .await
        .unwrap();
    let mine = pruned.chains.iter().find(|x| x.org_id == p.org_id).unwrap();
    let end2 = report.segments[1]
        .chains
        .iter()
        .find(|r| r.org_id == p.org_id)
        .unwrap()
        .to_seq;
    assert_eq!(mine.through_seq, end2);
    assert_eq!(row2.number, 2);
    let r = verify_online(&f).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.first_seq, Some(end2 + 1));
}

/// Three segments with events between them, and the public key.
async fn three_segments(f: &Fixture, dir: &Path) -> (Vec<PathBuf>, String) {
    let mut files = Vec::new();
    for i in 0..3 {
        record_n(&f.coffer, &f.owner, 2).await;
        let path = dir.join(format!("seg{i}.ndjson"));
        archive_now(f, &path).await;
        files.push(path);
    }
    let key = f.coffer.audit().audit_public_key().await.unwrap().unwrap();
    (files, key)
}

fn problem_of(files: &[PathBuf], key: &str) -> coffer_core::audit::segment::SegmentProblem {
    let r = verify_segments(files, Some(key), &Identities::none()).unwrap();
    assert!(!r.ok);
    r.first_problem.unwrap()
}

/// Rewrite a segment's lines with `f`, and its end line to match (an attacker who knows
/// the format).
fn rewrite(path: &Path, f: impl Fn(SegmentLine) -> SegmentLine) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut w = coffer_core::audit::segment::SegmentWriter::new(Vec::new());
    for l in text.lines() {
        match f(serde_json::from_str(l).unwrap()) {
            SegmentLine::End { .. } => {}
            l => w.line(&l).unwrap(),
        }
    }
    std::fs::write(path, w.finish().unwrap().0).unwrap();
}

#[tokio::test]
async fn a_segment_edited_truncated_missing_or_swapped_is_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let (files, key) = three_segments(&f, dir.path()).await;
    assert!(
        verify_segments(&files, Some(&key), &Identities::none())
            .unwrap()
            .ok
    );
    // A series may be verified from the middle (its first segment names a predecessor).
    assert!(
        verify_segments(&files[1..], Some(&key), &Identities::none())
            .unwrap()
            .ok
    );
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        files
            .iter()
            .map(|s| {
                let t = d.join(s.file_name().unwrap());
                std::fs::copy(s, &t).unwrap();
                t
            })
            .collect::<Vec<_>>()
    };

    // An event edited in the middle segment.
    let edited = copy("edited");
    let text = std::fs::read_to_string(&edited[1]).unwrap();
    std::fs::write(&edited[1], text.replacen("test.event", "test.evenT", 1)).unwrap();
    let p = problem_of(&edited, &key);
    assert_eq!(
        (p.file.as_str(), p.kind.as_str()),
        ("seg1.ndjson", "altered"),
        "{p:?}"
    );

    // The same edit with every hash and the end line recomputed is still caught: the
    // anchor's signature covers the chain.
    let forged = copy("forged");
    rewrite(&forged[1], |l| match l {
        SegmentLine::Event {
            seq,
            prev_hash,
            hash,
            body,
        } => SegmentLine::Event {
            seq,
            prev_hash,
            hash,
            body: body.replacen("test.event", "test.evenT", 1),
        },
        l => l,
    });
    let p = problem_of(&forged, &key);
    assert_eq!(p.file, "seg1.ndjson", "{p:?}");

    // Truncated.
    let cut = copy("cut");
    let bytes = std::fs::read(&cut[2]).unwrap();
    std::fs::write(&cut[2], &bytes[..bytes.len() / 2]).unwrap();
    let p = problem_of(&cut, &key);
    assert_eq!(
        (p.file.as_str(), p.kind.as_str()),
        ("seg2.ndjson", "truncated"),
        "{p:?}"
    );

    // The middle one missing.
    let p = problem_of(&[files[0].clone(), files[2].clone()], &key);
    assert_eq!(p.kind, "missing", "{p:?}");
    assert!(p.message.contains("segment 000002 is missing"), "{p:?}");

    // Two segments swapped (their numbers exchanged, end lines recomputed).
    let swapped = copy("swapped");
    for (path, to) in [(&swapped[1], 3), (&swapped[2], 2)] {
        rewrite(path, |l| match l {
            SegmentLine::Segment {
                format,
                name,
                cut_ms,
                created_at,
                public_key,
                chains,
                events,
                previous,
                ..
            } => SegmentLine::Segment {
                format,
                number: to,
                name,
                cut_ms,
                created_at,
                public_key,
                chains,
                events,
                previous,
            },
            l => l,
        });
    }
    let p = problem_of(&swapped, &key);
    assert_eq!(p.kind, "broken_link", "{p:?}");
    assert!(p.message.contains("does not follow"), "{p:?}");

    // Another key than the one pinned.
    let r = verify_segments(&files, Some(&"ab".repeat(32)), &Identities::none()).unwrap();
    assert_eq!(r.first_problem.unwrap().kind, "bad_checkpoint");
}

#[tokio::test]
async fn the_database_keeps_events_above_the_anchor_and_anchors_at_segment_ends() {
    let f = sqlite_fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    let op = operator(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("one.ndjson");
    record_n(c, p, 3).await;
    archive_now(&f, &seg).await;
    op.audit()
        .prune(std::slice::from_ref(&seg), &Identities::none())
        .await
        .unwrap();
    let anchor = json_events(c, p, 1).await.first().unwrap().0 - 1;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.db_path().display()))
        .await
        .unwrap();
    // Deleting a live event is refused by the database itself.
    let e = sqlx::query(
        "DELETE FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = ?) AND seq = ?",
    )
    .bind(org(p))
    .bind(i64::try_from(anchor + 1).unwrap())
    .execute(&mut db)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("only archived events"), "{e}");
    // An anchor cannot move to a point no segment ends at.
    let e = sqlx::query("UPDATE audit_anchors SET seq = seq + 1 WHERE org_id = ?")
        .bind(org(p))
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must end a recorded segment"), "{e}");
    // An attacker who drops the triggers and forges the anchor's signature is reported.
    sqlx::query("DROP TRIGGER audit_anchors_archived_update")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_anchors SET signature = zeroblob(64), seq = seq + 1 WHERE org_id = ?",
    )
    .bind(org(p))
    .execute(&mut db)
    .await
    .unwrap();
    let r = verify_online(&f).await;
    assert_eq!(r.first_problem.unwrap().kind, "bad_checkpoint");
}

#[tokio::test]
async fn an_archive_run_keeps_to_its_rate() {
    let f = sqlite_fixture().await;
    record_n(&f.coffer, &f.owner, 40).await;
    let dir = tempfile::tempdir().unwrap();
    // 40-odd events at 100 per second take at least 0.4 s; unpaced they take milliseconds.
    f.coffer.audit().set_archive_rate(Some(100));
    let started = std::time::Instant::now();
    let row = archive_now(&f, &dir.path().join("paced.ndjson")).await;
    let took = started.elapsed();
    assert!(row.events >= 40);
    assert!(
        took >= std::time::Duration::from_millis(row.events * 10 * 9 / 10),
        "{} events in {took:?}",
        row.events
    );
}
