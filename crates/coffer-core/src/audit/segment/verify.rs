//! Offline verification of a series of archive segments, and of live exports that
//! continue them: streaming, with the public key only (docs/audit.md, "Verifying across
//! segments").

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use coffer_crypto::Sha256;
use coffer_crypto::audit::GENESIS;
use coffer_crypto::offline::Identities;
use coffer_store::CheckpointRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{SEGMENT_FORMAT, SegmentLine, file_name, h32, open_lines, read_header};
use crate::audit::verify::{EXPORT_FORMAT, ExportLine, Verifier};

/// A problem found in a series of segments, named by the file it is in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentProblem {
    /// The segment's (or export's) file name.
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `missing`, `altered`, `truncated`, `broken_link`, `bad_checkpoint`, `foreign`,
    /// `duplicate`, `malformed`.
    pub kind: String,
    pub message: String,
}

/// One segment as verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifiedSegment {
    pub file: String,
    pub number: u64,
    pub name: String,
    pub cut_ms: i64,
    pub events: u64,
    pub sha256: String,
    pub chains: Vec<VerifiedRange>,
}

/// The range of one chain a segment holds, ending at its anchor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifiedRange {
    pub org_id: Uuid,
    pub from_seq: u64,
    pub to_seq: u64,
    pub to_hash: String,
    #[serde(skip)]
    pub anchor: Option<CheckpointRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentsReport {
    pub ok: bool,
    pub segments: Vec<VerifiedSegment>,
    /// Live exports checked against the segments' ends.
    pub exports: u64,
    pub events: u64,
    pub first_problem: Option<SegmentProblem>,
}

/// A checkpoint (or anchor) line's fields, decoded.
fn point(
    org_id: Uuid,
    seq: u64,
    hash: &str,
    created_at: i64,
    signature: &str,
) -> Option<CheckpointRow> {
    Some(CheckpointRow {
        org_id,
        seq,
        hash: h32(hash)?,
        created_at,
        signature: hex::decode(signature).ok()?,
    })
}

/// Where each chain stands after the segments read so far: (seq, hash) of its last event.
type Carry = BTreeMap<Uuid, (u64, [u8; 32])>;

/// Verify segment files as one series (sorted by their numbers) and live exports that
/// continue them (`coffer-audit-export/v1`, any order). `pinned_key` (hex) overrides the
/// key the files name. Streaming: memory holds one line and each chain's position.
pub fn verify_segments(
    files: &[PathBuf],
    pinned_key: Option<&str>,
    ids: &Identities,
) -> Result<SegmentsReport, String> {
    let mut segments = Vec::new();
    let mut exports = Vec::new();
    for p in files {
        match read_header(p, ids)? {
            Some(h) => segments.push((h, p.clone())),
            None => exports.push(p.clone()),
        }
    }
    segments.sort_by_key(|(h, _)| h.number);
    let mut report = SegmentsReport {
        ok: false,
        segments: Vec::new(),
        exports: 0,
        events: 0,
        first_problem: None,
    };
    let mut carry = Carry::new();
    // A series from segment 1 holds every chain from its first event; one verified from
    // the middle (its first segment names a predecessor) cannot say where a chain it has
    // not seen yet began.
    let from_start = segments.first().is_some_and(|(h, _)| h.previous.is_none());
    let mut prev: Option<(u64, String, String, String)> = None; // number, name, sha256, file
    for (h, path) in &segments {
        let file = file_name(path);
        let problem = |kind: &str, message: String| SegmentProblem {
            file: file.clone(),
            org_id: None,
            seq: None,
            kind: kind.into(),
            message,
        };
        let key = pinned_key.map_or_else(|| h.public_key.clone(), str::to_owned);
        if let Some((pnum, pname, psha, pfile)) = &prev {
            if h.number == *pnum {
                report.first_problem = Some(problem(
                    "duplicate",
                    format!("{file} and {pfile} are both segment {:06}", h.number),
                ));
                return Ok(report);
            }
            if h.number > pnum + 1 {
                let gap = if h.number == pnum + 2 {
                    format!("segment {:06} is", pnum + 1)
                } else {
                    format!("segments {:06} to {:06} are", pnum + 1, h.number - 1)
                };
                report.first_problem = Some(problem(
                    "missing",
                    format!("{gap} missing between {pname} and {}", h.name),
                ));
                return Ok(report);
            }
            let follows = h.previous.as_ref().is_some_and(|p| {
                p.number == *pnum && p.name == *pname && p.sha256.eq_ignore_ascii_case(psha)
            });
            if !follows {
                report.first_problem = Some(problem(
                    "broken_link",
                    format!(
                        "{} does not follow {pname} (reordered, swapped, or {pname} was altered)",
                        h.name
                    ),
                ));
                return Ok(report);
            }
        }
        match verify_one(open_lines(path, ids)?, &file, &key, &mut carry, from_start)? {
            Ok(seg) => {
                report.events += seg.events;
                prev = Some((seg.number, seg.name.clone(), seg.sha256.clone(), file));
                report.segments.push(seg);
            }
            Err(p) => {
                report.first_problem = Some(p);
                return Ok(report);
            }
        }
    }
    for path in &exports {
        match check_export_link(path, &carry, pinned_key, ids)? {
            Ok(events) => {
                report.exports += 1;
                report.events += events;
            }
            Err(p) => {
                report.first_problem = Some(p);
                return Ok(report);
            }
        }
    }
    report.ok = true;
    Ok(report)
}

/// Read one line (bytes up to and including '\n'); None at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    buf.clear();
    Ok((r.read_until(b'\n', buf)? > 0).then_some(()))
}

/// Verify one segment against where each chain stands (`carry`, updated). `strict`: a
/// chain not seen yet must start at its first event.
fn verify_one(
    mut r: Box<dyn BufRead>,
    file: &str,
    key_hex: &str,
    carry: &mut Carry,
    strict: bool,
) -> Result<Result<VerifiedSegment, SegmentProblem>, String> {
    let key = hex::decode(key_hex).map_err(|_| "the public key is not hex".to_string())?;
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    let fail = |org: Option<Uuid>, seq: Option<u64>, kind: &str, message: String| {
        Ok(Err(SegmentProblem {
            file: file.to_owned(),
            org_id: org,
            seq,
            kind: kind.into(),
            message,
        }))
    };
    let misplaced = |lineno: u64| {
        fail(
            None,
            None,
            "malformed",
            format!("{file}: line {lineno} is out of place"),
        )
    };
    let mut seg: Option<VerifiedSegment> = None;
    let mut declared = (0u64, 0u64); // chains, events from the header
    // The section being read: its range, verifier and checkpoints.
    struct Section {
        org_id: Uuid,
        from_seq: u64,
        to_seq: u64,
        start: (u64, [u8; 32]),
        checkpoints: Vec<CheckpointRow>,
        anchor: Option<CheckpointRow>,
        verifier: Option<Verifier>,
        last: Option<(u64, [u8; 32])>,
    }
    let mut section: Option<Section> = None;
    let mut chains = 0u64;
    let mut events = 0u64;
    let mut ended = false;
    // Close a section: its events must reach its anchor, signed, with no problem.
    let close = |s: Section, seg: &mut VerifiedSegment, carry: &mut Carry| {
        let Some(anchor) = s.anchor.clone() else {
            return Err((
                s.org_id,
                s.to_seq,
                "bad_checkpoint".to_owned(),
                "has no anchor".to_owned(),
            ));
        };
        let v = match s.verifier {
            Some(v) => v,
            None => Verifier::new(s.org_id, None, Vec::new(), Some(s.start)),
        };
        let r = v.finish(None);
        if let Some(p) = r.first_problem {
            return Err((s.org_id, p.seq, p.kind, p.message));
        }
        match s.last {
            Some((seq, h)) if seq == s.to_seq && h == anchor.hash => {}
            Some((seq, _)) if seq < s.to_seq => {
                return Err((
                    s.org_id,
                    seq + 1,
                    "truncated".to_owned(),
                    format!("ends at entry {seq}, not {}", s.to_seq),
                ));
            }
            _ => {
                return Err((
                    s.org_id,
                    s.to_seq,
                    "altered".to_owned(),
                    "does not end at its anchor".to_owned(),
                ));
            }
        }
        carry.insert(s.org_id, (s.to_seq, anchor.hash));
        seg.chains.push(VerifiedRange {
            org_id: s.org_id,
            from_seq: s.from_seq,
            to_seq: s.to_seq,
            to_hash: hex::encode(anchor.hash),
            anchor: Some(anchor),
        });
        Ok(())
    };
    // The section being read ends (at the next chain or at the end line).
    let end_section =
        |section: Option<Section>, seg: Option<&mut VerifiedSegment>, carry: &mut Carry| {
            let (s, sg) = (section?, seg?);
            let (org, seq, kind, m) = close(s, sg, carry).err()?;
            Some(fail(
                Some(org),
                Some(seq),
                &kind,
                format!("{file}: chain {org} {m}"),
            ))
        };
    let mut lineno = 0u64;
    loop {
        match next_line(&mut r, &mut buf) {
            Ok(Some(())) => {}
            Ok(None) => break,
            // An encrypted file fails here when a byte of it changed.
            Err(e) => return fail(None, None, "unreadable", format!("{file}: {e}")),
        }
        lineno += 1;
        if ended {
            return fail(
                None,
                None,
                "altered",
                format!("{file} has lines after its end"),
            );
        }
        let before = hash.clone();
        hash.update(&buf);
        if buf.last() != Some(&b'\n') {
            return fail(
                None,
                None,
                "truncated",
                format!("{file} is truncated (its last line is cut off)"),
            );
        }
        let line = match serde_json::from_slice::<SegmentLine>(&buf) {
            Ok(l) => l,
            Err(e) => {
                return fail(
                    None,
                    None,
                    "malformed",
                    format!("{file}: line {lineno} is not a segment line: {e}"),
                );
            }
        };
        match line {
            SegmentLine::Segment {
                format,
                number,
                name,
                cut_ms,
                chains: c,
                events: e,
                ..
            } if lineno == 1 && format == SEGMENT_FORMAT => {
                declared = (c, e);
                seg = Some(VerifiedSegment {
                    file: file.to_owned(),
                    number,
                    name,
                    cut_ms,
                    events: 0,
                    sha256: String::new(),
                    chains: Vec::new(),
                });
            }
            SegmentLine::Chain {
                org_id,
                from_seq,
                prev_hash,
                to_seq,
            } if seg.is_some() => {
                if let Some(problem) = end_section(section.take(), seg.as_mut(), carry) {
                    return problem;
                }
                chains += 1;
                let Some(prev) = h32(&prev_hash) else {
                    return fail(
                        Some(org_id),
                        None,
                        "malformed",
                        format!("{file}: bad prev_hash"),
                    );
                };
                if from_seq == 0 || to_seq < from_seq {
                    return fail(
                        Some(org_id),
                        None,
                        "malformed",
                        format!("{file}: chain {org_id} has an empty range"),
                    );
                }
                let start = (from_seq - 1, prev);
                match carry.get(&org_id) {
                    Some(&(seq, h)) if (seq, h) != start => {
                        return fail(
                            Some(org_id),
                            Some(from_seq),
                            if from_seq > seq + 1 {
                                "missing"
                            } else {
                                "broken_link"
                            },
                            format!(
                                "{file}: chain {org_id} starts at entry {from_seq} but the segments before end at {seq}{}",
                                if from_seq == seq + 1 {
                                    " with another hash"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                    None if strict && (from_seq != 1 || prev != GENESIS) => {
                        return fail(
                            Some(org_id),
                            Some(1),
                            "missing",
                            format!(
                                "{file}: chain {org_id} starts at entry {from_seq}; the entries before are in no segment given"
                            ),
                        );
                    }
                    _ => {}
                }
                section = Some(Section {
                    org_id,
                    from_seq,
                    to_seq,
                    start,
                    checkpoints: Vec::new(),
                    anchor: None,
                    verifier: None,
                    last: None,
                });
            }
            SegmentLine::Checkpoint {
                seq,
                hash: h,
                created_at,
                signature,
            } if section.as_ref().is_some_and(|s| s.verifier.is_none()) => {
                let Some(s) = section.as_mut() else {
                    return misplaced(lineno);
                };
                let Some(c) = point(s.org_id, seq, &h, created_at, &signature) else {
                    return fail(
                        Some(s.org_id),
                        Some(seq),
                        "malformed",
                        format!("{file}: bad checkpoint"),
                    );
                };
                s.checkpoints.push(c);
            }
            SegmentLine::Anchor {
                org_id,
                seq,
                hash: h,
                created_at,
                signature,
            } if section
                .as_ref()
                .is_some_and(|s| s.verifier.is_none() && s.anchor.is_none()) =>
            {
                let Some(s) = section.as_mut() else {
                    return misplaced(lineno);
                };
                let Some(anchor) = point(org_id, seq, &h, created_at, &signature) else {
                    return fail(
                        Some(s.org_id),
                        Some(seq),
                        "malformed",
                        format!("{file}: bad anchor"),
                    );
                };
                if org_id != s.org_id || seq != s.to_seq {
                    return fail(
                        Some(s.org_id),
                        Some(seq),
                        "altered",
                        format!(
                            "{file}: chain {} has an anchor that is not at its last entry",
                            s.org_id
                        ),
                    );
                }
                s.anchor = Some(anchor);
            }
            SegmentLine::Event {
                seq,
                prev_hash,
                hash: h,
                body,
            } if section.is_some() => {
                let Some(s) = section.as_mut() else {
                    return misplaced(lineno);
                };
                let (Some(p), Some(h)) = (h32(&prev_hash), h32(&h)) else {
                    return fail(
                        Some(s.org_id),
                        Some(seq),
                        "malformed",
                        format!("{file}: bad event hashes"),
                    );
                };
                if seq > s.to_seq {
                    return fail(
                        Some(s.org_id),
                        Some(seq),
                        "altered",
                        format!("{file}: chain {} has entry {seq} past its range", s.org_id),
                    );
                }
                let v = s.verifier.get_or_insert_with(|| {
                    let mut points = s.checkpoints.clone();
                    points.extend(s.anchor.clone());
                    Verifier::new(s.org_id, Some(key.clone()), points, Some(s.start))
                });
                v.push(seq, &p, &h, &body);
                if let Some(problem) = v.problem() {
                    return fail(
                        Some(s.org_id),
                        Some(problem.seq),
                        &problem.kind,
                        format!("{file}: chain {}: {}", s.org_id, problem.message),
                    );
                }
                s.last = Some((seq, h));
                events += 1;
            }
            SegmentLine::End {
                chains: c,
                events: e,
                sha256,
            } if seg.is_some() => {
                if let Some(problem) = end_section(section.take(), seg.as_mut(), carry) {
                    return problem;
                }
                if !hex::encode(before.finish()).eq_ignore_ascii_case(&sha256) {
                    return fail(
                        None,
                        None,
                        "altered",
                        format!("{file} was altered (its content does not match its end line)"),
                    );
                }
                if (c, e) != (chains, events) || declared != (chains, events) {
                    return fail(
                        None,
                        None,
                        "altered",
                        format!(
                            "{file} holds {chains} chains and {events} events, not what it declares"
                        ),
                    );
                }
                ended = true;
            }
            _ => {
                return fail(
                    None,
                    None,
                    "malformed",
                    format!("{file}: line {lineno} is out of place"),
                );
            }
        }
    }
    let Some(mut seg) = seg else {
        return fail(
            None,
            None,
            "malformed",
            format!("{file} is not a {SEGMENT_FORMAT} file"),
        );
    };
    if !ended {
        return fail(
            None,
            None,
            "truncated",
            format!("{file} is truncated (it has no end line)"),
        );
    }
    seg.events = events;
    seg.sha256 = hex::encode(hash.finish());
    Ok(Ok(seg))
}

/// A live export must continue its chain where the segments end, and verify.
fn check_export_link(
    path: &Path,
    carry: &Carry,
    pinned_key: Option<&str>,
    ids: &Identities,
) -> Result<Result<u64, SegmentProblem>, String> {
    let file = file_name(path);
    let mut lines = open_lines(path, ids)?.lines();
    let problem =
        |org: Option<Uuid>, seq: Option<u64>, kind: &str, message: String| SegmentProblem {
            file: file.clone(),
            org_id: org,
            seq,
            kind: kind.into(),
            message,
        };
    let header = lines.next().transpose().map_err(|e| e.to_string())?;
    let org_id = match header.as_deref().map(serde_json::from_str::<ExportLine>) {
        Some(Ok(ExportLine::Header { format, org_id, .. })) if format == EXPORT_FORMAT => org_id,
        _ => {
            return Ok(Err(problem(
                None,
                None,
                "malformed",
                format!("{file} is neither a segment nor an export"),
            )));
        }
    };
    let first = lines.find_map(
        |l| match l.ok().map(|l| serde_json::from_str::<ExportLine>(&l)) {
            Some(Ok(ExportLine::Event { seq, prev_hash, .. })) => Some((seq, prev_hash)),
            _ => None,
        },
    );
    if let (Some((seq, prev)), Some(&(cseq, chash))) = (first, carry.get(&org_id))
        && (seq != cseq + 1 || h32(&prev) != Some(chash))
    {
        return Ok(Err(problem(
            Some(org_id),
            Some(seq),
            if seq > cseq + 1 {
                "missing"
            } else {
                "broken_link"
            },
            format!(
                "{file} starts at entry {seq} but the segments end at entry {cseq} of its chain"
            ),
        )));
    }
    let report = crate::audit::verify::verify_export(open_lines(path, ids)?, pinned_key)?;
    Ok(match report.first_problem {
        None => Ok(report.events),
        Some(p) => Err(problem(
            Some(org_id),
            Some(p.seq),
            &p.kind,
            format!("{file}: {}", p.message),
        )),
    })
}
