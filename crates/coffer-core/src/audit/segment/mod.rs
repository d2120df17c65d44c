//! Archive segment files (`coffer-audit-segment/v1`, docs/audit.md "Archive segments"):
//! their lines, a writer that hashes what it writes, and the offline verification of a
//! series of segments (and of live exports that follow them), streaming, with the public
//! key only.
//!
//! A segment holds, for every chain that grew, the events after the previous segment's end
//! up to a signed checkpoint (the *anchor*), with the checkpoints in between. Each chain's
//! section lists its checkpoints and anchor before its events, so the verifier knows them
//! when it meets their entries and keeps nothing per event. The last line carries the
//! SHA-256 of every byte before it; the next segment's header names the whole file's
//! SHA-256, so the files form a chain of their own.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use coffer_crypto::Sha256;
use coffer_crypto::offline::{Identities, is_age};
use coffer_store::CheckpointRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::verify::{EXPORT_FORMAT, ExportLine};

mod verify;
pub use verify::{SegmentProblem, SegmentsReport, VerifiedRange, VerifiedSegment, verify_segments};

pub const SEGMENT_FORMAT: &str = "coffer-audit-segment/v1";

/// The previous segment, as the next one's header names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreviousSegment {
    pub number: u64,
    pub name: String,
    /// SHA-256 of the whole previous file (hex).
    pub sha256: String,
}

/// One line of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SegmentLine {
    Segment {
        format: String,
        number: u64,
        name: String,
        cut_ms: i64,
        created_at: String,
        public_key: String,
        chains: u64,
        events: u64,
        previous: Option<PreviousSegment>,
    },
    /// A chain's section begins: its events `from_seq..=to_seq`, the first linking to
    /// `prev_hash` (zeros at the chain's start).
    Chain {
        org_id: Uuid,
        from_seq: u64,
        prev_hash: String,
        to_seq: u64,
    },
    Checkpoint {
        seq: u64,
        hash: String,
        created_at: i64,
        signature: String,
    },
    /// The signed checkpoint at the section's last event.
    Anchor {
        org_id: Uuid,
        seq: u64,
        hash: String,
        created_at: i64,
        signature: String,
    },
    Event {
        seq: u64,
        prev_hash: String,
        hash: String,
        body: String,
    },
    End {
        chains: u64,
        events: u64,
        /// SHA-256 of every byte before this line (hex).
        sha256: String,
    },
}

/// `coffer-audit-<number>-<cut>`: sorts by number, says up to when.
pub fn segment_name(number: u64, cut_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(cut_ms).unwrap_or(0));
    let stamp: String = humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("coffer-audit-{number:06}-{stamp}")
}

pub(crate) fn checkpoint_line(c: &CheckpointRow) -> SegmentLine {
    SegmentLine::Checkpoint {
        seq: c.seq,
        hash: hex::encode(c.hash),
        created_at: c.created_at,
        signature: hex::encode(&c.signature),
    }
}

pub(crate) fn anchor_line(c: &CheckpointRow) -> SegmentLine {
    SegmentLine::Anchor {
        org_id: c.org_id,
        seq: c.seq,
        hash: hex::encode(c.hash),
        created_at: c.created_at,
        signature: hex::encode(&c.signature),
    }
}

/// Writes lines, hashing every byte; `finish` writes the end line.
pub struct SegmentWriter<W: Write> {
    out: W,
    hash: Sha256,
    bytes: u64,
    chains: u64,
    events: u64,
}

impl<W: Write> std::fmt::Debug for SegmentWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("bytes", &self.bytes)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl<W: Write> SegmentWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            hash: Sha256::new(),
            bytes: 0,
            chains: 0,
            events: 0,
        }
    }

    pub fn line(&mut self, l: &SegmentLine) -> std::io::Result<()> {
        match l {
            SegmentLine::Chain { .. } => self.chains += 1,
            SegmentLine::Event { .. } => self.events += 1,
            _ => {}
        }
        let mut text = serde_json::to_vec(l).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.hash.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Write the end line and flush; returns the writer, the file's SHA-256 and its size.
    pub fn finish(mut self) -> std::io::Result<(W, [u8; 32], u64)> {
        let end = SegmentLine::End {
            chains: self.chains,
            events: self.events,
            sha256: hex::encode(self.hash.clone().finish()),
        };
        let mut text = serde_json::to_vec(&end).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.hash.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)?;
        self.out.flush()?;
        Ok((self.out, self.hash.finish(), self.bytes))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn h32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

struct Header {
    number: u64,
    name: String,
    public_key: String,
    previous: Option<PreviousSegment>,
}

/// A file opened for reading, and whether it is encrypted with age (from its first bytes,
/// which stay in the buffer).
fn open_peek(path: &Path) -> Result<(std::io::BufReader<std::fs::File>, bool), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = std::io::BufReader::new(f);
    let age = is_age(
        r.fill_buf()
            .map_err(|e| format!("{}: {e}", path.display()))?,
    );
    Ok((r, age))
}

/// Whether a file is encrypted with age (docs/audit.md, "Encrypted segments").
pub fn is_encrypted(path: &Path) -> Result<bool, String> {
    Ok(open_peek(path)?.1)
}

/// Open a segment or export for reading its lines: an age-encrypted file is decrypted with
/// `ids` as it is read (refused, saying so, without them).
pub(crate) fn open_lines(path: &Path, ids: &Identities) -> Result<Box<dyn BufRead>, String> {
    let (r, age) = open_peek(path)?;
    if !age {
        return Ok(Box::new(r));
    }
    let plain = ids.decrypt(r).map_err(|e| {
        if ids.is_empty() {
            format!("{} is {e} (--identity)", path.display())
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    Ok(Box::new(std::io::BufReader::new(plain)))
}

/// The name of the segment in a file, from its header; None when the file is not a
/// segment.
pub fn segment_in(path: &Path, ids: &Identities) -> Result<Option<String>, String> {
    Ok(read_header(path, ids)?.map(|h| h.name))
}

/// The first line of a file: a segment's header, or None for anything else.
fn read_header(path: &Path, ids: &Identities) -> Result<Option<Header>, String> {
    let mut first = String::new();
    open_lines(path, ids)?
        .read_line(&mut first)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(match serde_json::from_str::<SegmentLine>(&first) {
        Ok(SegmentLine::Segment {
            format,
            number,
            name,
            public_key,
            previous,
            ..
        }) if format == SEGMENT_FORMAT => Some(Header {
            number,
            name,
            public_key,
            previous,
        }),
        _ => None,
    })
}

/// Write one organisation's events and checkpoints from segments as a standard export
/// (`coffer-audit-export/v1`); its event lines are the ones the server exported before the
/// events were pruned. The segments must verify first ([`verify_segments`]).
pub fn export_from_segments(
    files: &[PathBuf],
    org_id: Uuid,
    ids: &Identities,
    out: &mut impl Write,
) -> Result<u64, String> {
    let mut ordered = Vec::new();
    for p in files {
        let h = read_header(p, ids)?.ok_or_else(|| format!("{} is not a segment", p.display()))?;
        ordered.push((h.number, h.public_key, p.clone()));
    }
    ordered.sort_by_key(|(n, _, _)| *n);
    let key = ordered.first().map(|(_, k, _)| k.clone());
    let header = ExportLine::Header {
        format: EXPORT_FORMAT.into(),
        org_id,
        public_key: key,
        exported_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    let io = |e: std::io::Error| e.to_string();
    let json = |l: &ExportLine| serde_json::to_string(l).map_err(|e| e.to_string());
    writeln!(out, "{}", json(&header)?).map_err(io)?;
    let mut points: BTreeMap<u64, ExportLine> = BTreeMap::new();
    let mut events = 0;
    for (_, _, path) in &ordered {
        let mut mine = false;
        for l in open_lines(path, ids)?.lines() {
            let l = l.map_err(io)?;
            match serde_json::from_str::<SegmentLine>(&l).map_err(|e| e.to_string())? {
                SegmentLine::Chain { org_id: o, .. } => mine = o == org_id,
                SegmentLine::Event {
                    seq,
                    prev_hash,
                    hash,
                    body,
                } if mine => {
                    events += 1;
                    let e = ExportLine::Event {
                        seq,
                        prev_hash,
                        hash,
                        body,
                    };
                    writeln!(out, "{}", json(&e)?).map_err(io)?;
                }
                SegmentLine::Checkpoint {
                    seq,
                    hash,
                    created_at,
                    signature,
                }
                | SegmentLine::Anchor {
                    seq,
                    hash,
                    created_at,
                    signature,
                    ..
                } if mine => {
                    points.insert(
                        seq,
                        ExportLine::Checkpoint {
                            seq,
                            hash,
                            created_at,
                            signature,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    for p in points.values() {
        writeln!(out, "{}", json(p)?).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(events)
}
