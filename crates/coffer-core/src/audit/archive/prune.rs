//! Pruning: events leave the database only for segments that verify (or, encrypted and
//! without their identity, are byte for byte the files recorded) and cover each chain from
//! its anchor without a gap.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use coffer_crypto::offline::Identities;
use coffer_store::{AnchorRow, CheckpointRow, SegmentRow};
use serde::Serialize;
use uuid::Uuid;

use super::files::file_digest;
use super::{io, refuse};
use crate::CoreError;
use crate::audit::AuditLog;
use crate::audit::segment::{is_encrypted, verify_segments};

/// Events deleted per transaction while pruning: short enough that appends and reads go on.
const PRUNE_BATCH: u32 = 10_000;

/// A segment's number and, per chain it holds, (organisation, first seq, anchor).
type SegmentRanges = (u64, Vec<(Uuid, u64, CheckpointRow)>);

/// What a prune did, per chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    pub chains: Vec<PrunedChain>,
    pub deleted: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrunedChain {
    pub org_id: Uuid,
    pub through_seq: u64,
    pub segment: u64,
    pub deleted: u64,
}

impl AuditLog {
    /// Prune what the given segments hold, once they verify (with the public key in the
    /// database), are the segments recorded, and cover each chain from its anchor without
    /// a gap. Refuses with nothing pruned otherwise. Encrypted segments are decrypted with
    /// `ids` and verified; without identities, each file must be byte for byte the one
    /// verified while it was written (its recorded digest), and its ranges and anchors
    /// are the ones recorded with it.
    pub async fn prune(
        &self,
        files: &[PathBuf],
        ids: &Identities,
    ) -> Result<PruneReport, CoreError> {
        let recorded: HashMap<u64, SegmentRow> = self
            .archive
            .segments()
            .await?
            .into_iter()
            .map(|s| (s.number, s))
            .collect();
        let mut encrypted = false;
        for f in files {
            encrypted |= is_encrypted(f).map_err(refuse)?;
        }
        let segments = if encrypted && ids.is_empty() {
            self.recorded_ranges(files, &recorded).await?
        } else {
            self.verified_ranges(files, ids, &recorded).await?
        };
        // Per chain: where the given segments start it, and their last range of it. Each
        // range must follow the chain's previous one: a segment left out between them
        // would be pruned unseen (the verifier reports that for files it reads; the
        // recorded ranges of encrypted files are checked here).
        let mut first: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut last: BTreeMap<Uuid, (u64, CheckpointRow)> = BTreeMap::new();
        for (number, ranges) in segments {
            for (org, from_seq, anchor) in ranges {
                if let Some((_, prev)) = last.get(&org)
                    && from_seq != prev.seq + 1
                {
                    return Err(refuse(format!(
                        "pruning refused: entries {} to {} of chain {org} are in none of the segments given (segment {number:06} does not follow the one before it)",
                        prev.seq + 1,
                        from_seq.saturating_sub(1)
                    )));
                }
                first.entry(org).or_insert(from_seq);
                last.insert(org, (number, anchor));
            }
        }
        let anchors = self.anchor_seqs().await?;
        let mut todo = Vec::new();
        for (org, (segment, anchor)) in last {
            let current = anchors.get(&org).copied().unwrap_or(0);
            if anchor.seq <= current {
                continue;
            }
            let from = first.get(&org).copied().unwrap_or(1);
            if from > current + 1 {
                return Err(refuse(format!(
                    "pruning refused: entries {} to {} of chain {org} are in none of the segments given (give the earlier segments too)",
                    current + 1,
                    from - 1
                )));
            }
            todo.push((org, segment, anchor));
        }
        let mut out = PruneReport {
            chains: Vec::new(),
            deleted: 0,
        };
        for (org, segment, anchor) in todo {
            // Recorded first, in the chain itself: a prune that stops half-way is resumed by
            // the next run and was still announced.
            self.record_archive_event(
                org,
                "audit.pruned",
                serde_json::json!({ "segment": segment, "through_seq": anchor.seq }),
            )
            .await?;
            let through = anchor.seq;
            self.archive
                .set_anchor(&AnchorRow {
                    checkpoint: anchor,
                    segment,
                })
                .await?;
            let mut deleted = 0;
            loop {
                let n = self.archive.prune_events(org, through, PRUNE_BATCH).await?;
                deleted += n;
                if n == 0 {
                    break;
                }
            }
            out.deleted += deleted;
            out.chains.push(PrunedChain {
                org_id: org,
                through_seq: through,
                segment,
                deleted,
            });
        }
        Ok(out)
    }

    /// Verify segment files (decrypting them with `ids`) and check they are the segments
    /// recorded; their ranges with the anchors the files hold, in segment order.
    async fn verified_ranges(
        &self,
        files: &[PathBuf],
        ids: &Identities,
        recorded: &HashMap<u64, SegmentRow>,
    ) -> Result<Vec<SegmentRanges>, CoreError> {
        let key = self
            .audit
            .audit_key()
            .await?
            .ok_or_else(|| refuse("the audit log has no signing key"))?;
        let key = hex::encode(key.public_key);
        let (list, ids) = (files.to_vec(), ids.clone());
        let report = tokio::task::spawn_blocking(move || verify_segments(&list, Some(&key), &ids))
            .await
            .map_err(|_| refuse("the verification task failed"))?
            .map_err(|e| refuse(format!("pruning refused: {e}")))?;
        if let Some(p) = report.first_problem {
            return Err(refuse(format!("pruning refused: {}", p.message)));
        }
        if report.exports > 0 || report.segments.is_empty() {
            return Err(refuse("pruning takes segment files only"));
        }
        let mut out = Vec::new();
        for seg in report.segments {
            let same = recorded.get(&seg.number).is_some_and(|r| {
                r.name == seg.name && hex::encode(r.sha256).eq_ignore_ascii_case(&seg.sha256)
            });
            if !same {
                return Err(refuse(format!(
                    "pruning refused: {} is not segment {:06} as it was recorded (altered, or never recorded)",
                    seg.file, seg.number
                )));
            }
            let mut ranges = Vec::new();
            for r in seg.chains {
                let anchor = r.anchor.ok_or_else(|| refuse("a range without anchor"))?;
                ranges.push((r.org_id, r.from_seq, anchor));
            }
            out.push((seg.number, ranges));
        }
        Ok(out)
    }

    /// Find each file among the recorded segments by the digest of its bytes (the one
    /// read back after it was written and verified); its ranges and anchors as recorded.
    async fn recorded_ranges(
        &self,
        files: &[PathBuf],
        recorded: &HashMap<u64, SegmentRow>,
    ) -> Result<Vec<SegmentRanges>, CoreError> {
        let mut out = Vec::new();
        for f in files {
            let path = f.clone();
            let digest = tokio::task::spawn_blocking(move || file_digest(&path))
                .await
                .map_err(|_| refuse("the digest task failed"))?
                .map_err(|e| io("read", f, e))?;
            let seg = recorded
                .values()
                .find(|r| r.file_sha256.unwrap_or(r.sha256) == digest)
                .ok_or_else(|| {
                    refuse(format!(
                        "pruning refused: {} is not a segment as it was recorded (altered, or never recorded); give --identity to verify its contents",
                        f.display()
                    ))
                })?;
            let mut ranges = Vec::new();
            for c in self.archive.segment_chains(seg.number).await? {
                let anchor = c.anchor.ok_or_else(|| {
                    refuse(format!(
                        "segment {:06} was recorded without its anchors: give --identity so that its file is read",
                        seg.number
                    ))
                })?;
                ranges.push((c.org_id, c.from_seq, anchor));
            }
            out.push((seg.number, ranges));
        }
        out.sort_by_key(|(n, _)| *n);
        out.dedup_by_key(|(n, _)| *n);
        Ok(out)
    }
}
