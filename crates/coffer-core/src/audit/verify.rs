//! Verification of an organisation's audit chain, from the database or from an export.
//!
//! For each event in sequence order: the sequence number follows its predecessor's (a gap
//! means deleted entries), `prev_hash` equals the predecessor's hash (else an entry was
//! inserted or the order changed), and `hash = SHA-256("coffer/audit/v1" || prev_hash ||
//! seq || body)` (else the entry was altered). Each checkpoint's Ed25519 signature must
//! verify and its hash must equal the hash of the event it names (a chain's latest signed
//! head is checked as one more checkpoint); a checkpoint or chain head beyond the last event
//! means the end of the chain was cut off. Online, the entry the verifying server last
//! appended must be there unchanged too. The first problem is reported.

use std::collections::BTreeMap;
use std::io::BufRead;

use coffer_crypto::audit::{GENESIS, checkpoint_message, event_hash, verify_signature};
use coffer_store::CheckpointRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyProblem {
    pub seq: u64,
    /// `missing`, `altered`, `broken_link`, `foreign`, `bad_checkpoint`, `truncated`.
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub org_id: Uuid,
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub first_problem: Option<VerifyProblem>,
}

#[derive(Debug)]
pub struct Verifier {
    org_id: Uuid,
    public_key: Option<Vec<u8>>,
    checkpoints: BTreeMap<u64, CheckpointRow>,
    /// The newest entry the verifying node itself appended (online verification only).
    written: Option<(u64, [u8; 32])>,
    prev: Option<(u64, [u8; 32])>,
    /// The entry before the first one pushed (0 at the chain's start).
    start_seq: u64,
    events: u64,
    first_seq: Option<u64>,
    problem: Option<VerifyProblem>,
}

impl Verifier {
    /// `start`: the (seq, hash) just before the first event to be pushed, for an export
    /// that begins mid-chain; None for a chain from its beginning.
    pub fn new(
        org_id: Uuid,
        public_key: Option<Vec<u8>>,
        checkpoints: Vec<CheckpointRow>,
        start: Option<(u64, [u8; 32])>,
    ) -> Self {
        let start = start.unwrap_or((0, GENESIS));
        Self {
            org_id,
            public_key,
            checkpoints: checkpoints.into_iter().map(|c| (c.seq, c)).collect(),
            written: None,
            prev: Some(start),
            start_seq: start.0,
            events: 0,
            first_seq: None,
            problem: None,
        }
    }

    /// The chain must hold the entry (seq, hash) this node appended: changed or cut off
    /// since, even after the last signature, it is reported.
    pub fn expect_written(&mut self, head: (u64, [u8; 32])) {
        self.written = Some(head);
    }

    /// The first problem found so far.
    pub fn problem(&self) -> Option<&VerifyProblem> {
        self.problem.as_ref()
    }

    fn fail(&mut self, seq: u64, kind: &str, message: String) {
        if self.problem.is_none() {
            self.problem = Some(VerifyProblem {
                seq,
                kind: kind.into(),
                message,
            });
        }
    }

    pub fn push(&mut self, seq: u64, prev_hash: &[u8; 32], hash: &[u8; 32], body: &str) {
        self.events += 1;
        self.first_seq.get_or_insert(seq);
        let (pseq, phash) = self.prev.unwrap_or((0, GENESIS));
        if seq != pseq + 1 {
            if seq > pseq + 1 {
                self.fail(
                    pseq + 1,
                    "missing",
                    format!("entries {} to {} are missing (deleted)", pseq + 1, seq - 1),
                );
            } else {
                self.fail(
                    seq,
                    "broken_link",
                    format!("entry {seq} is out of order after {pseq}"),
                );
            }
        }
        if event_hash(prev_hash, seq, body) != *hash {
            self.fail(
                seq,
                "altered",
                format!("entry {seq} does not match its hash (altered)"),
            );
        }
        if *prev_hash != phash {
            self.fail(seq, "broken_link", format!("entry {seq} does not follow entry {pseq} (inserted, reordered or predecessor altered)"));
        }
        let org_ok = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .map(|v| v.get("org_id").and_then(|o| o.as_str()).map(str::to_owned))
            .is_some_and(|o| {
                o.as_deref()
                    .map_or(self.org_id.is_nil(), |o| o == self.org_id.to_string())
            });
        if !org_ok {
            self.fail(
                seq,
                "foreign",
                format!("entry {seq} belongs to another organisation's chain"),
            );
        }
        if let Some(c) = self.checkpoints.get(&seq).cloned() {
            self.check_checkpoint(&c, hash);
        }
        if let Some((wseq, whash)) = self.written
            && wseq == seq
            && whash != *hash
        {
            self.fail(
                seq,
                "altered",
                format!("entry {seq} differs from what this server wrote"),
            );
        }
        self.prev = Some((seq, *hash));
    }

    pub(crate) fn check_checkpoint(&mut self, c: &CheckpointRow, event_hash: &[u8; 32]) {
        let msg = checkpoint_message(self.org_id, c.seq, &c.hash, c.created_at);
        let signed = self
            .public_key
            .as_deref()
            .is_some_and(|k| verify_signature(k, &msg, &c.signature));
        if !signed {
            self.fail(
                c.seq,
                "bad_checkpoint",
                format!("the checkpoint at entry {} has an invalid signature", c.seq),
            );
        } else if c.hash != *event_hash {
            self.fail(
                c.seq,
                "altered",
                format!("entry {} differs from what its checkpoint signed", c.seq),
            );
        }
    }

    /// `head`: the chain's recorded end, when known (server-side verification).
    pub fn finish(mut self, head: Option<(u64, [u8; 32])>) -> VerifyReport {
        let last = self.prev.map(|p| p.0).filter(|&s| s > 0 && self.events > 0);
        // A chain pruned up to its anchor, with nothing after it, ends at the anchor.
        let end = last.unwrap_or(self.start_seq);
        if let Some((&cseq, _)) = self.checkpoints.range(end + 1..).next() {
            self.fail(
                end + 1,
                "truncated",
                format!(
                    "a checkpoint covers entry {cseq} but the chain ends at {end} (entries removed)"
                ),
            );
        }
        if let Some((wseq, _)) = self.written
            && wseq > end
        {
            self.fail(
                end + 1,
                "truncated",
                format!(
                    "this server wrote entry {wseq} but the entries end at {end} (entries removed)"
                ),
            );
        }
        if let Some((hseq, _)) = head
            && hseq > end
        {
            self.fail(
                end + 1,
                "truncated",
                format!(
                    "the chain head is at {hseq} but the entries end at {end} (entries removed)"
                ),
            );
        }
        VerifyReport {
            ok: self.problem.is_none(),
            org_id: self.org_id,
            events: self.events,
            first_seq: self.first_seq,
            last_seq: last,
            checkpoints: self.checkpoints.len() as u64,
            first_problem: self.problem,
        }
    }
}

/// One line of an NDJSON export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    Header {
        format: String,
        org_id: Uuid,
        public_key: Option<String>,
        exported_at: String,
    },
    Event {
        seq: u64,
        prev_hash: String,
        hash: String,
        body: String,
    },
    Checkpoint {
        seq: u64,
        hash: String,
        created_at: i64,
        signature: String,
    },
}

pub const EXPORT_FORMAT: &str = "coffer-audit-export/v1";

fn h32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Verify an NDJSON export offline, streaming. `pinned_key` (hex) overrides the key in the
/// export's header, so a forged export signed with another key is caught.
pub fn verify_export(
    reader: impl BufRead,
    pinned_key: Option<&str>,
) -> Result<VerifyReport, String> {
    let mut lines = reader.lines();
    let header = lines
        .next()
        .ok_or("empty export")?
        .map_err(|e| e.to_string())?;
    let (org_id, key) = match serde_json::from_str::<ExportLine>(&header)
        .map_err(|e| format!("bad header: {e}"))?
    {
        ExportLine::Header {
            format,
            org_id,
            public_key,
            ..
        } if format == EXPORT_FORMAT => (org_id, pinned_key.map(str::to_owned).or(public_key)),
        _ => return Err("the first line is not a coffer-audit-export/v1 header".into()),
    };
    let key = key
        .map(|k| hex::decode(k).map_err(|_| "public key is not hex".to_string()))
        .transpose()?;
    // Events come first, checkpoints after them: buffer only the events' (seq, hash) pairs
    // we need to compare against checkpoints — 40 bytes per event, not the events themselves.
    let mut hashes: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut checkpoints = Vec::new();
    let mut v: Option<Verifier> = None;
    for line in lines {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ExportLine>(&line).map_err(|e| format!("bad line: {e}"))? {
            ExportLine::Event {
                seq,
                prev_hash,
                hash,
                body,
            } => {
                let (p, h) = (
                    h32(&prev_hash).ok_or("bad prev_hash")?,
                    h32(&hash).ok_or("bad hash")?,
                );
                let ver = v.get_or_insert_with(|| {
                    Verifier::new(
                        org_id,
                        key.clone(),
                        Vec::new(),
                        Some((seq.saturating_sub(1), p)),
                    )
                });
                ver.push(seq, &p, &h, &body);
                hashes.insert(seq, h);
            }
            ExportLine::Checkpoint {
                seq,
                hash,
                created_at,
                signature,
            } => checkpoints.push(CheckpointRow {
                org_id,
                seq,
                hash: h32(&hash).ok_or("bad checkpoint hash")?,
                created_at,
                signature: hex::decode(signature).map_err(|_| "bad signature")?,
            }),
            ExportLine::Header { .. } => return Err("a second header in the export".into()),
        }
    }
    let mut ver = v.unwrap_or_else(|| Verifier::new(org_id, key.clone(), Vec::new(), None));
    for c in &checkpoints {
        match hashes.get(&c.seq) {
            Some(h) => ver.check_checkpoint(c, h),
            None => {
                let last = hashes.keys().next_back().copied().unwrap_or(0);
                if c.seq > last {
                    ver.fail(
                        last + 1,
                        "truncated",
                        format!(
                            "a checkpoint covers entry {} but the export ends at {last}",
                            c.seq
                        ),
                    );
                }
            }
        }
    }
    let mut report = ver.finish(None);
    report.checkpoints = checkpoints.len() as u64;
    Ok(report)
}
