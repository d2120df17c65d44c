//! Archiving and pruning the audit log (docs/audit.md, "Archive segments"). An archive run
//! writes every chain's events up to a signed checkpoint before the cut into one segment
//! file (temp file, fsync, rename), verifies the file as written, and records it. Pruning
//! takes segment files, verifies them again with the public key, checks they are the ones
//! recorded and cover each chain without a gap from its anchor, records `audit.pruned` in
//! each chain, moves the anchor and deletes the events at or below it in short batches.
//!
//! Neither needs the root key: the anchors were signed by the nodes that wrote the events,
//! and everything else in a segment is covered by the chain hashes up to them. So an
//! operator can run both against the database while the server is sealed or stopped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use coffer_crypto::audit::GENESIS;
use coffer_crypto::offline::{Identities, Recipients};
use coffer_store::{AuditFilter, CheckpointRow, SegmentChainRow, SegmentRow};
use serde::Serialize;
use uuid::Uuid;

use super::segment::{
    PreviousSegment, SEGMENT_FORMAT, SegmentLine, SegmentWriter, anchor_line, checkpoint_line,
    segment_name, verify_segments,
};
use super::{AuditLog, PAGE, Verifier};
use crate::CoreError;
use crate::clock::now_ms;

mod files;
mod prune;

use files::{
    DiskDigest, SegmentOut, create_private, file_digest, refuse_overwrite, sync_dir, temp_path,
};
pub use prune::{PruneReport, PrunedChain};

/// Archive runs of the scheduled job that failed, since the process started.
static ARCHIVE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// When this process's scheduled job runs next (ms since the epoch; 0: not scheduled here).
static NEXT_RUN_MS: AtomicI64 = AtomicI64::new(0);

/// `[audit.archive]` and `audit.retain_live` of the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct ArchiveSettings {
    /// Archive events older than this (off when None).
    pub after: Option<Duration>,
    /// Where the server writes its segments.
    pub dir: Option<PathBuf>,
    /// Prune archived events older than this (never when None).
    pub retain_live: Option<Duration>,
    /// Events per second an archive run writes at most, so that it leaves the machine to
    /// the requests (unlimited when None).
    pub rate: Option<u32>,
    /// Encrypt the segments the server writes to these age recipients (the backup
    /// recipients); plaintext when None.
    pub recipients: Option<Recipients>,
}

impl ArchiveSettings {
    /// How often the leader runs the job: half of `after`, between 1 s and 1 h, so that
    /// no event waits much longer than `after` to be archived.
    pub fn every(&self) -> Option<Duration> {
        self.after
            .map(|a| (a / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600)))
    }
}

/// One chain's part in a planned segment.
#[derive(Debug, Clone)]
struct PlannedChain {
    org_id: Uuid,
    /// The last archived (or pruned) event before the range, or (0, GENESIS).
    start: (u64, [u8; 32]),
    /// The signed checkpoint that ends the range.
    anchor: CheckpointRow,
    /// The checkpoints inside the range, before the anchor.
    checkpoints: Vec<CheckpointRow>,
}

/// What one archive run will write.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    pub number: u64,
    pub name: String,
    pub cut_ms: i64,
    /// Events the segment will hold.
    pub events: u64,
    public_key: Vec<u8>,
    previous: Option<PreviousSegment>,
    chains: Vec<PlannedChain>,
}

/// `coffer audit status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArchiveStatus {
    pub chains: u64,
    pub live_events: u64,
    /// See `coffer_store::AuditStorage::bytes`.
    pub bytes: u64,
    pub oldest_live_event_ms: Option<i64>,
    pub segments: u64,
    pub archived_events: u64,
    /// Events pruned from the database, over every chain (up to the anchors).
    pub pruned_events: u64,
    pub last_segment: Option<String>,
    pub last_archive_ms: Option<i64>,
    /// Chains with archived events above their anchor (prunable once old enough).
    pub chains_pending_prune: u64,
    pub archive_failures: u64,
    /// The schedule, when archiving is configured: how often the leader runs the job.
    pub every_secs: Option<u64>,
    /// When the job runs next in this process (known in the server that runs it).
    pub next_run_ms: Option<i64>,
    /// The next run archives events signed before this time (now minus `after`).
    pub next_cut_ms: Option<i64>,
    /// Segments are encrypted to age recipients (`backup.recipients`).
    pub encrypted: bool,
}

/// Where an archive run writes.
#[derive(Debug, Clone)]
pub enum ArchiveTarget {
    /// This file (`coffer audit archive --out`).
    File(PathBuf),
    /// The segment's own name in this directory, kept there and recorded as its location
    /// (the scheduled job).
    Dir(PathBuf),
}

fn refuse(msg: impl Into<String>) -> CoreError {
    CoreError::Archive(msg.into())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CoreError {
    CoreError::Archive(format!("{what} {}: {e}", path.display()))
}

impl AuditLog {
    /// Pace archive runs to at most `rate` events per second (None: unlimited).
    pub fn set_archive_rate(&self, rate: Option<u32>) {
        self.archive_rate
            .store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Plan a segment of every chain's events up to its newest signed checkpoint (or signed
    /// head) made before `cut_ms`, after what earlier segments hold. None: nothing to archive.
    pub async fn plan_archive(&self, cut_ms: i64) -> Result<Option<ArchivePlan>, CoreError> {
        let key = self.audit.audit_key().await?.ok_or_else(|| {
            refuse("the audit log has no signing key yet (unseal the server once)")
        })?;
        let segments = self.archive.segments().await?;
        let previous = segments.last().map(|s| PreviousSegment {
            number: s.number,
            name: s.name.clone(),
            sha256: hex::encode(s.sha256),
        });
        let mut starts: HashMap<Uuid, (u64, [u8; 32])> = HashMap::new();
        for a in self.archive.anchors().await? {
            starts.insert(a.checkpoint.org_id, (a.checkpoint.seq, a.checkpoint.hash));
        }
        for e in self.archive.archived_ends().await? {
            let s = starts.entry(e.org_id).or_insert((e.to_seq, e.to_hash));
            if e.to_seq > s.0 {
                *s = (e.to_seq, e.to_hash);
            }
        }
        let mut chains = Vec::new();
        let mut events = 0;
        for head in self.archive.chain_heads().await? {
            let start = starts.get(&head.org_id).copied().unwrap_or((0, GENESIS));
            if head.seq <= start.0 {
                continue;
            }
            let points = self.signed_points(head.org_id).await?;
            let Some(anchor) = points
                .iter()
                .filter(|c| c.created_at < cut_ms && c.seq > start.0 && c.seq <= head.seq)
                .max_by_key(|c| c.seq)
                .cloned()
            else {
                continue;
            };
            let checkpoints = points
                .into_iter()
                .filter(|c| c.seq > start.0 && c.seq < anchor.seq)
                .collect();
            events += anchor.seq - start.0;
            chains.push(PlannedChain {
                org_id: head.org_id,
                start,
                anchor,
                checkpoints,
            });
        }
        if chains.is_empty() {
            return Ok(None);
        }
        let number = segments.last().map_or(1, |s| s.number + 1);
        Ok(Some(ArchivePlan {
            number,
            name: segment_name(number, cut_ms),
            cut_ms,
            events,
            public_key: key.public_key,
            previous,
            chains,
        }))
    }

    /// Write a planned segment, verifying every chain as it goes: a chain that does not
    /// verify up to its anchor stops the run (nothing is recorded). `progress` gets the
    /// events written so far. Returns the writer, the file's SHA-256 and its size.
    pub async fn write_segment<W: Write>(
        &self,
        plan: &ArchivePlan,
        out: W,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(W, [u8; 32], u64), CoreError> {
        let w_err = |e: std::io::Error| refuse(format!("write the segment: {e}"));
        let rate = self.archive_rate.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let mut w = SegmentWriter::new(out);
        w.line(&SegmentLine::Segment {
            format: SEGMENT_FORMAT.into(),
            number: plan.number,
            name: plan.name.clone(),
            cut_ms: plan.cut_ms,
            created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            public_key: hex::encode(&plan.public_key),
            chains: plan.chains.len() as u64,
            events: plan.events,
            previous: plan.previous.clone(),
        })
        .map_err(w_err)?;
        for c in &plan.chains {
            let org = c.org_id;
            w.line(&SegmentLine::Chain {
                org_id: org,
                from_seq: c.start.0 + 1,
                prev_hash: hex::encode(c.start.1),
                to_seq: c.anchor.seq,
            })
            .map_err(w_err)?;
            for cp in &c.checkpoints {
                w.line(&checkpoint_line(cp)).map_err(w_err)?;
            }
            w.line(&anchor_line(&c.anchor)).map_err(w_err)?;
            let mut points = c.checkpoints.clone();
            points.push(c.anchor.clone());
            let mut v = Verifier::new(org, Some(plan.public_key.clone()), points, Some(c.start));
            let mut at = c.start.0;
            while at < c.anchor.seq {
                let rows = self
                    .audit
                    .audit_events(
                        org,
                        &AuditFilter {
                            after_seq: at,
                            limit: PAGE,
                            ..AuditFilter::default()
                        },
                    )
                    .await?;
                if rows.is_empty() {
                    break;
                }
                for r in rows.iter().take_while(|r| r.seq <= c.anchor.seq) {
                    v.push(r.seq, &r.prev_hash, &r.hash, &r.body);
                    if let Some(p) = v.problem() {
                        return Err(refuse(format!(
                            "chain {org} does not verify at entry {}: {}; nothing was archived",
                            p.seq, p.message
                        )));
                    }
                    w.line(&SegmentLine::Event {
                        seq: r.seq,
                        prev_hash: hex::encode(r.prev_hash),
                        hash: hex::encode(r.hash),
                        body: r.body.clone(),
                    })
                    .map_err(w_err)?;
                    at = r.seq;
                }
                progress(w.events());
                if rate > 0 {
                    // Behind schedule never; ahead of it, wait for the time the rate allows.
                    let due = Duration::from_secs_f64(w.events() as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if at != c.anchor.seq {
                return Err(refuse(format!(
                    "chain {org} ends at entry {at} before its checkpoint at {}; nothing was archived",
                    c.anchor.seq
                )));
            }
        }
        w.finish().map_err(w_err)
    }

    /// Plan, write, verify and record a segment of the events before `cut_ms`. The file is
    /// written under a temporary name, synced and renamed: a crash leaves no partial file at
    /// the final path, and nothing is recorded (or pruned) for a file not verified. None:
    /// nothing to archive.
    pub async fn archive(
        &self,
        cut_ms: i64,
        target: ArchiveTarget,
        recipients: Option<&Recipients>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Option<SegmentRow>, CoreError> {
        let Some(plan) = self.plan_archive(cut_ms).await? else {
            return Ok(None);
        };
        let (path, location) = match &target {
            ArchiveTarget::File(p) => (p.clone(), None),
            ArchiveTarget::Dir(d) => {
                std::fs::create_dir_all(d).map_err(|e| io("create", d, e))?;
                let ext = if recipients.is_some() {
                    "ndjson.age"
                } else {
                    "ndjson"
                };
                let p = d.join(format!("{}.{ext}", plan.name));
                let abs = std::path::absolute(&p).unwrap_or_else(|_| p.clone());
                (p, Some(abs.display().to_string()))
            }
        };
        refuse_overwrite(&path, &self.archive.segments().await?)?;
        let tmp = temp_path(&path);
        // A temporary file is only ever a crashed run's: nothing refers to it.
        let _ = std::fs::remove_file(&tmp);
        let file = std::io::BufWriter::new(create_private(&tmp)?);
        let out = match recipients {
            Some(r) => SegmentOut::Age(
                r.encrypt(DiskDigest::new(file))
                    .map_err(|e| io("encrypt", &tmp, e))?,
            ),
            None => SegmentOut::Plain(file),
        };
        let total = plan.events;
        let written = self
            .write_segment(&plan, out, &mut |n| progress(n, total))
            .await;
        let (out, sha256, plain_bytes) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let finish = || -> std::io::Result<Option<files::OnDisk>> {
            let (buf, on_disk) = out.finish()?;
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &path)?;
            sync_dir(&path)?;
            Ok(on_disk)
        };
        let on_disk = match finish() {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("finish", &path, e));
            }
        };
        // A plaintext file is its segment: its digest and size are the segment's.
        let (file_sha256, bytes) = match on_disk {
            Some((digest, bytes)) => (Some(digest), bytes),
            None => (None, plain_bytes),
        };
        self.read_back(&path, &plan, sha256, file_sha256).await?;
        let now = now_ms();
        let row = SegmentRow {
            number: plan.number,
            name: plan.name.clone(),
            cut_ms,
            created_at: now,
            events: plan.events,
            bytes,
            sha256,
            location,
            verified_at: now,
            file_sha256,
        };
        let chains: Vec<SegmentChainRow> = plan
            .chains
            .iter()
            .map(|c| SegmentChainRow {
                number: plan.number,
                org_id: c.org_id,
                from_seq: c.start.0 + 1,
                to_seq: c.anchor.seq,
                to_hash: c.anchor.hash,
                anchor: Some(c.anchor.clone()),
            })
            .collect();
        match self.archive.record_segment(&row, &chains).await {
            Ok(()) => {}
            Err(coffer_store::StoreError::Conflict) => {
                return Err(refuse(format!(
                    "another archive run recorded segment {:06} first; {} is not recorded",
                    plan.number,
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.record_archive_event(
            Uuid::nil(),
            "audit.archived",
            serde_json::json!({
                "segment": row.number,
                "name": row.name,
                "events": row.events,
                "chains": chains.len(),
                "sha256": hex::encode(row.sha256),
            }),
        )
        .await?;
        Ok(Some(row))
    }

    /// Check what reached the disk before recording it: a plaintext segment verifies again
    /// from the file; an encrypted one (which the server cannot read) must have
    /// `file_sha256`, the digest of the bytes written, its contents having been verified
    /// as they were written.
    async fn read_back(
        &self,
        path: &Path,
        plan: &ArchivePlan,
        sha256: [u8; 32],
        file_sha256: Option<[u8; 32]>,
    ) -> Result<(), CoreError> {
        let check = path.to_owned();
        let why = if let Some(written) = file_sha256 {
            let digest = tokio::task::spawn_blocking(move || file_digest(&check))
                .await
                .map_err(|_| refuse("the digest task failed"))?
                .map_err(|e| io("read", path, e))?;
            (digest != written).then(|| "its digest changed".to_owned())
        } else {
            let key = hex::encode(&plan.public_key);
            let report = tokio::task::spawn_blocking(move || {
                verify_segments(&[check], Some(&key), &Identities::none())
            })
            .await
            .map_err(|_| refuse("the verification task failed"))?
            .map_err(refuse)?;
            let read = report.segments.first().map(|s| s.sha256.clone());
            if report.ok && read.as_deref() == Some(hex::encode(sha256).as_str()) {
                None
            } else {
                Some(
                    report
                        .first_problem
                        .map_or_else(|| "its digest changed".to_owned(), |p| p.message),
                )
            }
        };
        match why {
            None => Ok(()),
            Some(why) => Err(refuse(format!(
                "{} does not verify as written ({why}); it is not recorded",
                path.display()
            ))),
        }
    }

    /// Each chain's anchor (the last pruned event), by organisation.
    async fn anchor_seqs(&self) -> Result<HashMap<Uuid, u64>, CoreError> {
        Ok(self
            .archive
            .anchors()
            .await?
            .into_iter()
            .map(|a| (a.checkpoint.org_id, a.checkpoint.seq))
            .collect())
    }

    /// An event of the service itself (actor `system`) in a chain (nil: the system chain),
    /// durably, or an error: archiving and pruning are not done unrecorded.
    async fn record_archive_event(
        &self,
        org: Uuid,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), CoreError> {
        self.k
            .append_system((!org.is_nil()).then_some(org), action, "success", detail)
            .await
    }

    /// How much the audit log holds and what is archived. `oldest`: also find the oldest
    /// event still in the database (one read per chain).
    pub async fn archive_status(
        &self,
        oldest: bool,
        settings: &ArchiveSettings,
    ) -> Result<ArchiveStatus, CoreError> {
        let storage = self.archive.audit_storage().await?;
        let segments = self.archive.segments().await?;
        let anchors = self.anchor_seqs().await?;
        let pruned_events = anchors.values().sum();
        let heads = self.archive.chain_heads().await?;
        let pending = self
            .archive
            .archived_ends()
            .await?
            .iter()
            .filter(|e| e.to_seq > anchors.get(&e.org_id).copied().unwrap_or(0))
            .count() as u64;
        let mut oldest_ms: Option<i64> = None;
        if oldest {
            for h in &heads {
                let after = anchors.get(&h.org_id).copied().unwrap_or(0);
                if h.seq <= after {
                    continue;
                }
                let f = AuditFilter {
                    after_seq: after,
                    limit: 1,
                    ..AuditFilter::default()
                };
                if let Some(r) = self.audit.audit_events(h.org_id, &f).await?.first() {
                    oldest_ms = Some(oldest_ms.map_or(r.time, |o| o.min(r.time)));
                }
            }
        }
        Ok(ArchiveStatus {
            chains: heads.len() as u64,
            live_events: storage.live_events,
            bytes: storage.bytes,
            oldest_live_event_ms: oldest_ms,
            segments: segments.len() as u64,
            archived_events: segments.iter().map(|s| s.events).sum(),
            pruned_events,
            last_segment: segments.last().map(|s| s.name.clone()),
            last_archive_ms: segments.last().map(|s| s.created_at),
            chains_pending_prune: pending,
            archive_failures: ARCHIVE_FAILURES.load(Ordering::Relaxed),
            every_secs: settings.every().map(|d| d.as_secs()),
            next_run_ms: Some(NEXT_RUN_MS.load(Ordering::Relaxed)).filter(|t| *t > 0),
            next_cut_ms: settings
                .after
                .map(|a| now_ms() - i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            encrypted: settings.recipients.is_some(),
        })
    }

    /// One round of the scheduled job (the leader runs it): archive what is older than
    /// `after` into `dir`, then prune the segments kept there whose cut is older than
    /// `retain_live`, verifying their files again first.
    pub async fn run_archive_job(&self, s: &ArchiveSettings) -> Result<(), CoreError> {
        let r = self.archive_round(s).await;
        if r.is_err() {
            ARCHIVE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The scheduled job's next run in this process is `after` from now.
    pub fn note_next_run(&self, after: Duration) {
        let at = now_ms() + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2);
        NEXT_RUN_MS.store(at, Ordering::Relaxed);
    }

    async fn archive_round(&self, s: &ArchiveSettings) -> Result<(), CoreError> {
        let (Some(after), Some(dir)) = (s.after, s.dir.as_ref()) else {
            return Ok(());
        };
        let now = now_ms();
        let cut = now - i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        if let Some(seg) = self
            .archive(
                cut,
                ArchiveTarget::Dir(dir.clone()),
                s.recipients.as_ref(),
                &mut |_, _| {},
            )
            .await?
        {
            tracing::info!(segment = %seg.name, events = seg.events, "audit events archived");
        }
        let Some(retain) = s.retain_live else {
            return Ok(());
        };
        let keep_from = now - i64::try_from(retain.as_millis()).unwrap_or(i64::MAX);
        let anchors = self.anchor_seqs().await?;
        let mut files = Vec::new();
        for seg in self.archive.segments().await? {
            if seg.cut_ms >= keep_from {
                break;
            }
            let pending = self
                .archive
                .segment_chains(seg.number)
                .await?
                .iter()
                .any(|c| c.to_seq > anchors.get(&c.org_id).copied().unwrap_or(0));
            if !pending {
                continue;
            }
            let Some(location) = seg.location else {
                // Written by an operator elsewhere: pruned with `coffer audit prune`.
                break;
            };
            files.push(PathBuf::from(location));
        }
        if !files.is_empty() {
            // The server holds no identity: encrypted segments are checked against the
            // digests recorded when they were written and verified.
            let r = self.prune(&files, &Identities::none()).await?;
            tracing::info!(
                deleted = r.deleted,
                chains = r.chains.len(),
                "archived audit events pruned"
            );
        }
        Ok(())
    }
}
