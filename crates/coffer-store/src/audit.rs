//! The audit log: per-organisation hash chains, their signed checkpoints and the signing
//! key. The chain format itself lives in `coffer_crypto::audit`; appends are the backends'
//! own (SQLite's group-commit writer, PostgreSQL's batched plpgsql append that also confirms
//! cached reads), so each backend implements this repository itself.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::audit_codec;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Exec, Stmt};

/// Appending to and reading the audit chains.
#[async_trait]
pub trait AuditRepo: Send + Sync {
    /// Durably append one event to its organisation's chain; returns its (seq, hash). Concurrent
    /// appends are committed together.
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError>;
    /// Append like [`AuditRepo::append_audit`] if every check still holds, in the same
    /// transaction; otherwise append nothing and return None (the request that read those
    /// values must be answered again). `durability`: how far the event must have gone
    /// before this returns. Without checks, and `Stable`, this is `append_audit`.
    async fn append_audit_checked(
        &self,
        e: &NewAuditEvent,
        checks: &[ReadCheck],
        durability: Durability,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let _ = durability;
        if checks.is_empty() {
            // Stable is always at least as far as asked.
            self.append_audit(e).await.map(Some)
        } else {
            // A backend that hands out no checks cannot confirm any.
            Ok(None)
        }
    }
    async fn audit_events(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// The last (seq, hash) of an organisation's chain.
    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError>;
    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError>;
    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError>;
    /// Fails with Conflict if a key exists already.
    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError>;
    /// Organisations whose chain has grown since its last checkpoint.
    async fn orgs_needing_checkpoint(&self) -> Result<Vec<Uuid>, StoreError>;
    /// Keep each as its chain's latest signed head, in one transaction; a chain whose
    /// stored signed head is at a later entry keeps it.
    async fn store_signed_heads(&self, heads: &[CheckpointRow]) -> Result<(), StoreError>;
    /// A chain's latest signed head.
    async fn signed_head(&self, org_id: Uuid) -> Result<Option<CheckpointRow>, StoreError>;
}

// Statements both backends run as they are, each on an executor the backend chooses.

/// The filters of `audit_events` as placeholders $2..$9 (every one typed by its bound value,
/// so `$n IS NULL` needs no cast); the table's columns carry the same names in both tables.
macro_rules! audit_filter_sql {
    ($alias:literal) => {
        concat!(
            $alias,
            ".seq > $2 AND ($3 IS NULL OR ",
            $alias,
            ".time >= $3) AND ($4 IS NULL OR ",
            $alias,
            ".time < $4) AND ($5 IS NULL OR ",
            $alias,
            ".action = $5) AND ($6 IS NULL OR ",
            $alias,
            ".actor_id = $6) AND ($7 IS NULL OR ",
            $alias,
            ".outcome = $7) AND ($8 IS NULL OR substr(",
            $alias,
            ".target, 1, length($8)) = $8) ORDER BY ",
            $alias,
            ".seq LIMIT $9"
        )
    };
}

/// Events written before migration 0008 (SQLite) / 0014 (PostgreSQL), stored as JSON.
const LEGACY_EVENTS_SQL: &str = concat!(
    "SELECT e.org_id, e.seq, e.time, e.body, e.prev_hash, e.hash FROM audit_events e \
     WHERE e.org_id = $1 AND ",
    audit_filter_sql!("e")
);

/// Events in their stored form. The chain is resolved first (one value), so that both
/// planners walk the primary key (chain, seq) in order and stop at the limit; joined, the
/// PostgreSQL planner sorted every event after the cursor for each page. The predecessor's
/// hash is not stored: see [`predecessor_hashes`].
const EVENTS_SQL: &str = concat!(
    "SELECT l.seq, l.time, l.body, l.hash \
     FROM audit_log l WHERE l.chain = (SELECT c.chain FROM audit_chains c WHERE c.org_id = $1) AND ",
    audit_filter_sql!("l")
);

/// Interned texts fetched per statement when rendering a page of events.
const STRINGS_PER_FETCH: usize = 64;

fn filtered<'a>(sql: &'static str, org_id: Uuid, f: &'a AuditFilter) -> Stmt<'a> {
    Stmt::new(sql)
        .bind(org_id)
        .bind(i64::try_from(f.after_seq).unwrap_or(i64::MAX))
        .bind(f.from)
        .bind(f.to)
        .bind(f.action.as_deref())
        .bind(f.actor_id)
        .bind(f.outcome.as_deref())
        .bind(f.target.as_deref())
        .bind(i64::from(f.limit))
}

pub(crate) async fn audit_events<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    f: &AuditFilter,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut rows: Vec<AuditRow> = filtered(LEGACY_EVENTS_SQL, org_id, f)
        .fetch_all(e)
        .await?
        .iter()
        .map(audit_row)
        .collect::<Result<_, _>>()?;
    let stored = filtered(EVENTS_SQL, org_id, f).fetch_all(e).await?;
    if !stored.is_empty() {
        let mut stored = stored
            .iter()
            .map(|r| {
                Ok(StoredRow {
                    seq: u64_col(r, "seq")?,
                    time: r.int("time")?,
                    body: r.bytes("body")?,
                    hash: hash_col(r, "hash")?,
                    prev_hash: None,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        predecessor_hashes(e, org_id, &mut stored).await?;
        let texts = interned_texts(e, org_id, &stored).await?;
        for s in stored {
            rows.push(s.render(org_id, &texts)?);
        }
        // Both tables may hold a chain's events (a node of the previous release appending
        // to the legacy table during a rolling upgrade): one order, one limit.
        rows.sort_by_key(|r| r.seq);
        rows.truncate(usize::try_from(f.limit).unwrap_or(usize::MAX));
    }
    Ok(rows)
}

/// Fill each row's predecessor hash: the row before it in the page when that is its
/// predecessor, else the hash of entry `seq - 1` wherever it is (this table, the legacy
/// one, or the chain's anchor once the entries before were pruned), read by sequence
/// number in one statement per 64. Not a correlated subquery per row: under row-level
/// security PostgreSQL cannot use the index for `seq = l.seq - 1` (the subtraction is not
/// leakproof) and scanned the whole chain for every row (20 s a page at 100,000 events).
async fn predecessor_hashes<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    rows: &mut [StoredRow],
) -> Result<(), StoreError> {
    let mut wanted = Vec::new();
    let mut before: Option<(u64, [u8; 32])> = None;
    for r in rows.iter_mut() {
        match before {
            Some((seq, hash)) if seq + 1 == r.seq => r.prev_hash = Some(hash.to_vec()),
            _ if r.seq > 1 => wanted.push(r.seq - 1),
            _ => {}
        }
        before = Some((r.seq, r.hash));
    }
    let mut found: HashMap<u64, Vec<u8>> = HashMap::new();
    for chunk in wanted.chunks(STRINGS_PER_FETCH) {
        let stmt = with_id_list(org_id, chunk, |list| {
            format!(
                "SELECT p.seq, p.hash FROM audit_log p \
                 WHERE p.chain = (SELECT c.chain FROM audit_chains c WHERE c.org_id = $1) AND p.seq IN ({list}) \
                 UNION ALL SELECT p.seq, p.hash FROM audit_events p WHERE p.org_id = $1 AND p.seq IN ({list}) \
                 UNION ALL SELECT a.seq, a.hash FROM audit_anchors a WHERE a.org_id = $1 AND a.seq IN ({list})"
            )
        })?;
        for r in stmt.fetch_all(e).await? {
            found.insert(u64_col(&r, "seq")?, r.bytes("hash")?);
        }
    }
    for r in rows.iter_mut() {
        if r.prev_hash.is_none() && r.seq > 1 {
            r.prev_hash = found.get(&(r.seq - 1)).cloned();
        }
    }
    Ok(())
}

/// One row of audit_log as read, before rendering.
struct StoredRow {
    seq: u64,
    time: i64,
    body: Vec<u8>,
    hash: [u8; 32],
    prev_hash: Option<Vec<u8>>,
}

impl StoredRow {
    fn render(self, org_id: Uuid, texts: &HashMap<u64, String>) -> Result<AuditRow, StoreError> {
        let prev_hash = match self.prev_hash {
            Some(p) => p.try_into().map_err(|_| StoreError::Corrupt)?,
            // The chain's first event links to GENESIS; so does one whose predecessor is gone,
            // a gap that verification reports by its sequence numbers.
            None => coffer_crypto::audit::GENESIS,
        };
        let body = audit_codec::render_body(&self.body, self.time, &|id| texts.get(&id).cloned())
            .map_err(|e| {
            tracing::error!(seq = self.seq, error = %e, "an audit event cannot be rendered");
            StoreError::Corrupt
        })?;
        Ok(AuditRow {
            org_id,
            seq: self.seq,
            time: self.time,
            body,
            prev_hash,
            hash: self.hash,
        })
    }
}

/// The texts the compact rows of a page refer to, read afresh (never from a cache, so that
/// verification sees what is stored), and only from the organisation's own chain.
async fn interned_texts<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    rows: &[StoredRow],
) -> Result<HashMap<u64, String>, StoreError> {
    let mut texts = HashMap::new();
    // Templates first: where a program's references are depends on its template.
    let templates: BTreeSet<u64> = rows
        .iter()
        .filter(|r| r.body.first() == Some(&audit_codec::FORMAT_COMPACT))
        .filter_map(|r| audit_codec::template_id(&r.body).ok())
        .collect();
    fetch_texts(e, org_id, templates, &mut texts).await?;
    let refs = std::cell::RefCell::new(BTreeSet::new());
    for r in rows {
        let Some(template) = audit_codec::template_id(&r.body)
            .ok()
            .and_then(|id| texts.get(&id))
        else {
            continue;
        };
        // A rendering with every reference empty lists the references.
        let _ = audit_codec::render(&r.body, template, r.time, &|id| {
            refs.borrow_mut().insert(id);
            Some(String::new())
        });
    }
    let refs = refs.into_inner();
    let refs = refs
        .into_iter()
        .filter(|id| !texts.contains_key(id))
        .collect();
    fetch_texts(e, org_id, refs, &mut texts).await?;
    Ok(texts)
}

async fn fetch_texts<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    ids: BTreeSet<u64>,
    into: &mut HashMap<u64, String>,
) -> Result<(), StoreError> {
    let ids: Vec<u64> = ids.into_iter().collect();
    for chunk in ids.chunks(STRINGS_PER_FETCH) {
        let stmt = with_id_list(org_id, chunk, |list| {
            format!(
                "SELECT s.id, s.text FROM audit_strings s JOIN audit_chains c ON c.chain = s.chain \
                 WHERE c.org_id = $1 AND s.id IN ({list})"
            )
        })?;
        for r in stmt.fetch_all(e).await? {
            let id = u64::try_from(r.int("id")?).map_err(|_| StoreError::Corrupt)?;
            into.insert(id, r.text("text")?);
        }
    }
    Ok(())
}

/// The statement `make(list)` makes, where `list` is the placeholders of `ids` ($2, $3, …),
/// with `org_id` bound as $1 and the ids after it.
fn with_id_list(
    org_id: Uuid,
    ids: &[u64],
    make: impl FnOnce(&str) -> String,
) -> Result<Stmt<'static>, StoreError> {
    let list = (0..ids.len())
        .map(|i| format!("${}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = Stmt::generated(make(&list)).bind(org_id);
    for id in ids {
        stmt = stmt.bind(i64::try_from(*id).map_err(|_| StoreError::Corrupt)?);
    }
    Ok(stmt)
}

/// The last (seq, hash) of an organisation's chain (none before its first event).
pub(crate) async fn audit_head<E: Exec>(
    e: &mut E,
    org_id: Uuid,
) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    Stmt::new("SELECT seq, hash FROM audit_heads WHERE org_id = $1 AND seq > 0")
        .bind(org_id)
        .fetch_optional(e)
        .await?
        .map(|r| Ok((u64_col(&r, "seq")?, hash_col(&r, "hash")?)))
        .transpose()
}

pub(crate) async fn insert_checkpoint<E: Exec>(
    e: &mut E,
    c: &CheckpointRow,
) -> Result<(), StoreError> {
    checkpoint_stmt(
        "INSERT INTO audit_checkpoints (org_id, seq, hash, created_at, signature) \
         VALUES ($1, $2, $3, $4, $5)",
        c,
    )
    .execute(e)
    .await?;
    Ok(())
}

/// Keep a chain's signed head unless a newer one is there. SQLite's audit writer runs it on
/// its own connection too (`sqlite::audit_writer`), with the same placeholders.
pub(crate) const STORE_SIGNED_HEAD_SQL: &str = "INSERT INTO audit_signed_heads (org_id, seq, hash, created_at, signature) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
     created_at = excluded.created_at, signature = excluded.signature \
     WHERE audit_signed_heads.seq < excluded.seq";

pub(crate) async fn store_signed_head<E: Exec>(
    e: &mut E,
    c: &CheckpointRow,
) -> Result<(), StoreError> {
    checkpoint_stmt(STORE_SIGNED_HEAD_SQL, c).execute(e).await?;
    Ok(())
}

/// `sql` with a checkpoint's columns bound as $1..$5 (org, seq, hash, time, signature).
fn checkpoint_stmt<'a>(sql: &'static str, c: &'a CheckpointRow) -> Stmt<'a> {
    Stmt::new(sql)
        .bind(c.org_id)
        .bind(i64::try_from(c.seq).unwrap_or(i64::MAX))
        .bind(c.hash.as_slice())
        .bind(c.created_at)
        .bind(c.signature.as_slice())
}

/// Keep each of `heads` as its chain's signed head, in one transaction on `store`.
pub(crate) async fn store_signed_heads<B: crate::sql::Backend>(
    store: &B,
    heads: &[CheckpointRow],
) -> Result<(), StoreError> {
    let mut tx = store.begin_bare().await?;
    for h in heads {
        store_signed_head(&mut tx, h).await?;
    }
    crate::sql::Tx::commit(tx).await?;
    Ok(())
}

pub(crate) async fn signed_head<E: Exec>(
    e: &mut E,
    org_id: Uuid,
) -> Result<Option<CheckpointRow>, StoreError> {
    Stmt::new(
        "SELECT org_id, seq, hash, created_at, signature FROM audit_signed_heads \
         WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(e)
    .await?
    .as_ref()
    .map(checkpoint_row)
    .transpose()
}

pub(crate) async fn checkpoints<E: Exec>(
    e: &mut E,
    org_id: Uuid,
) -> Result<Vec<CheckpointRow>, StoreError> {
    Stmt::new(
        "SELECT org_id, seq, hash, created_at, signature FROM audit_checkpoints \
         WHERE org_id = $1 ORDER BY seq",
    )
    .bind(org_id)
    .fetch_all(e)
    .await?
    .iter()
    .map(checkpoint_row)
    .collect()
}

pub(crate) async fn audit_key<E: Exec>(e: &mut E) -> Result<Option<AuditKeyRow>, StoreError> {
    Stmt::new("SELECT public_key, wrapped_key, created_at FROM audit_keys WHERE id = 1")
        .fetch_optional(e)
        .await?
        .map(|r| {
            Ok(AuditKeyRow {
                public_key: r.bytes("public_key")?,
                wrapped_key: r.bytes("wrapped_key")?,
                created_at: r.int("created_at")?,
            })
        })
        .transpose()
}

pub(crate) async fn init_audit_key<E: Exec>(e: &mut E, k: &AuditKeyRow) -> Result<(), StoreError> {
    Stmt::new(
        "INSERT INTO audit_keys (id, public_key, wrapped_key, created_at) VALUES (1, $1, $2, $3)",
    )
    .bind(k.public_key.as_slice())
    .bind(k.wrapped_key.as_slice())
    .bind(k.created_at)
    .execute(e)
    .await?;
    Ok(())
}
