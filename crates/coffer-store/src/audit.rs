//! The audit log: per-organisation hash chains, their signed checkpoints and the signing
//! key. The chain format itself lives in `coffer_crypto::audit`; appends are the backends'
//! own (SQLite's group-commit writer, PostgreSQL's batched plpgsql append that also confirms
//! cached reads), so each backend implements this repository itself.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
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

pub(crate) async fn audit_events<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    f: &AuditFilter,
) -> Result<Vec<AuditRow>, StoreError> {
    // Every filter is typed by its bound value, so `$n IS NULL` needs no cast.
    Stmt::new(
        "SELECT org_id, seq, time, body, prev_hash, hash FROM audit_events \
         WHERE org_id = $1 AND seq > $2 \
         AND ($3 IS NULL OR time >= $3) AND ($4 IS NULL OR time < $4) \
         AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR actor_id = $6) \
         AND ($7 IS NULL OR outcome = $7) \
         AND ($8 IS NULL OR substr(target, 1, length($8)) = $8) ORDER BY seq LIMIT $9",
    )
    .bind(org_id)
    .bind(i64::try_from(f.after_seq).unwrap_or(i64::MAX))
    .bind(f.from)
    .bind(f.to)
    .bind(f.action.as_deref())
    .bind(f.actor_id)
    .bind(f.outcome.as_deref())
    .bind(f.target.as_deref())
    .bind(i64::from(f.limit))
    .fetch_all(e)
    .await?
    .iter()
    .map(audit_row)
    .collect()
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
