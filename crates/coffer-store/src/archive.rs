//! What archiving and pruning the audit log keep in the database: the segments written, the
//! range of each chain they hold, each chain's anchor, and the deletion of events at or
//! below it (migrations SQLite 0009 / PostgreSQL 0015; docs/audit.md, "Archive segments").
//! The triggers refuse deleting an event above its chain's anchor and moving an anchor
//! anywhere but forward to the end of a recorded segment's range; on PostgreSQL the
//! runtime role has no right to do either (docs/postgres-runtime-role.sql).

use async_trait::async_trait;
use uuid::Uuid;

use crate::Scope;
use crate::error::StoreError;
use crate::models::{
    AnchorRow, AuditStorage, ChainHead, CheckpointRow, SegmentChainRow, SegmentRow,
};
use crate::rows::{RowRead, hash_col, u64_col, uuid_col};
use crate::sql::{Backend, Stmt, Tx, db_int};

#[async_trait]
pub trait ArchiveRepo: Send + Sync {
    /// Every chain's newest event (the system chain has the nil id), by organisation id.
    async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError>;
    /// Segments recorded, oldest first.
    async fn segments(&self) -> Result<Vec<SegmentRow>, StoreError>;
    /// The ranges of chains that segment `number` holds.
    async fn segment_chains(&self, number: u64) -> Result<Vec<SegmentChainRow>, StoreError>;
    /// Each chain's last archived range (from the newest segment that holds the chain).
    async fn archived_ends(&self) -> Result<Vec<SegmentChainRow>, StoreError>;
    /// Record a written and verified segment with its ranges, in one transaction. Conflict
    /// if its number or name is taken.
    async fn record_segment(
        &self,
        s: &SegmentRow,
        chains: &[SegmentChainRow],
    ) -> Result<(), StoreError>;
    /// Every chain's anchor.
    async fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError>;
    async fn anchor(&self, org_id: Uuid) -> Result<Option<AnchorRow>, StoreError>;
    /// Move a chain's anchor forward to the end of a recorded segment's range of it.
    async fn set_anchor(&self, a: &AnchorRow) -> Result<(), StoreError>;
    /// Delete up to `limit` of the chain's oldest events at or below `through_seq` (which
    /// must not pass its anchor), in one short transaction; returns how many went.
    async fn prune_events(
        &self,
        org_id: Uuid,
        through_seq: u64,
        limit: u32,
    ) -> Result<u64, StoreError>;
    async fn audit_storage(&self) -> Result<AuditStorage, StoreError>;
}

const ANCHOR_COLUMNS: &str = "org_id, seq, hash, created_at, signature, segment";
const SEGMENT_COLUMNS: &str =
    "number, name, cut_ms, created_at, events, bytes, sha256, location, verified_at, file_sha256";

fn segment_row<R: RowRead>(r: &R) -> Result<SegmentRow, StoreError> {
    Ok(SegmentRow {
        number: u64_col(r, "number")?,
        name: r.text("name")?,
        cut_ms: r.int("cut_ms")?,
        created_at: r.int("created_at")?,
        events: u64_col(r, "events")?,
        bytes: u64_col(r, "bytes")?,
        sha256: hash_col(r, "sha256")?,
        location: r.opt_text("location")?,
        verified_at: r.int("verified_at")?,
        file_sha256: r
            .opt_bytes("file_sha256")?
            .map(|b| b.try_into().map_err(|_| StoreError::Corrupt))
            .transpose()?,
    })
}

const SEGMENT_CHAIN_COLUMNS: &str =
    "number, org_id, from_seq, to_seq, to_hash, anchor_created_at, anchor_signature";

fn segment_chain_row<R: RowRead>(r: &R) -> Result<SegmentChainRow, StoreError> {
    let org_id = uuid_col(r, "org_id")?;
    let to_seq = u64_col(r, "to_seq")?;
    let to_hash = hash_col(r, "to_hash")?;
    let anchor = match (
        r.opt_int("anchor_created_at")?,
        r.opt_bytes("anchor_signature")?,
    ) {
        (Some(created_at), Some(signature)) => Some(CheckpointRow {
            org_id,
            seq: to_seq,
            hash: to_hash,
            created_at,
            signature,
        }),
        _ => None,
    };
    Ok(SegmentChainRow {
        number: u64_col(r, "number")?,
        org_id,
        from_seq: u64_col(r, "from_seq")?,
        to_seq,
        to_hash,
        anchor,
    })
}

fn anchor_row<R: RowRead>(r: &R) -> Result<AnchorRow, StoreError> {
    Ok(AnchorRow {
        checkpoint: CheckpointRow {
            org_id: uuid_col(r, "org_id")?,
            seq: u64_col(r, "seq")?,
            hash: hash_col(r, "hash")?,
            created_at: r.int("created_at")?,
            signature: r.bytes("signature")?,
        },
        segment: u64_col(r, "segment")?,
    })
}

/// Events of one chain at or below `$2`, oldest first, at most `$3`: a subquery, because
/// neither database deletes with a LIMIT of its own.
const PRUNE_LOG_SQL: &str = "DELETE FROM audit_log \
     WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = $1) AND seq IN \
     (SELECT seq FROM audit_log WHERE chain = (SELECT chain FROM audit_chains WHERE org_id = $1) \
      AND seq <= $2 ORDER BY seq LIMIT $3)";
const PRUNE_LEGACY_SQL: &str = "DELETE FROM audit_events WHERE org_id = $1 AND seq IN \
     (SELECT seq FROM audit_events WHERE org_id = $1 AND seq <= $2 ORDER BY seq LIMIT $3)";

#[async_trait]
impl<B: Backend> ArchiveRepo for B {
    async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        Stmt::new("SELECT org_id, seq, hash FROM audit_heads WHERE seq > 0 ORDER BY org_id")
            .fetch_all(&mut self.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(ChainHead {
                    org_id: uuid_col(r, "org_id")?,
                    seq: u64_col(r, "seq")?,
                    hash: hash_col(r, "hash")?,
                })
            })
            .collect()
    }

    async fn segments(&self) -> Result<Vec<SegmentRow>, StoreError> {
        Stmt::generated(format!(
            "SELECT {SEGMENT_COLUMNS} FROM audit_segments ORDER BY number"
        ))
        .fetch_all(&mut self.reads())
        .await?
        .iter()
        .map(segment_row)
        .collect()
    }

    async fn segment_chains(&self, number: u64) -> Result<Vec<SegmentChainRow>, StoreError> {
        Stmt::generated(format!(
            "SELECT {SEGMENT_CHAIN_COLUMNS} FROM audit_segment_chains \
             WHERE number = $1 ORDER BY org_id"
        ))
        .bind(db_int(number))
        .fetch_all(&mut self.reads())
        .await?
        .iter()
        .map(segment_chain_row)
        .collect()
    }

    async fn archived_ends(&self) -> Result<Vec<SegmentChainRow>, StoreError> {
        Stmt::generated(format!(
            "SELECT {SEGMENT_CHAIN_COLUMNS} FROM audit_segment_chains s \
             WHERE s.number = (SELECT MAX(t.number) FROM audit_segment_chains t WHERE t.org_id = s.org_id) \
             ORDER BY s.org_id"
        ))
        .fetch_all(&mut self.reads())
        .await?
        .iter()
        .map(segment_chain_row)
        .collect()
    }

    async fn record_segment(
        &self,
        s: &SegmentRow,
        chains: &[SegmentChainRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        Stmt::generated(format!(
            "INSERT INTO audit_segments ({SEGMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(db_int(s.number))
        .bind(s.name.as_str())
        .bind(s.cut_ms)
        .bind(s.created_at)
        .bind(db_int(s.events))
        .bind(db_int(s.bytes))
        .bind(s.sha256.as_slice())
        .bind(s.location.as_deref())
        .bind(s.verified_at)
        .bind(s.file_sha256.as_ref().map(<[u8; 32]>::as_slice))
        .execute(&mut tx)
        .await?;
        for c in chains {
            Stmt::generated(format!(
                "INSERT INTO audit_segment_chains ({SEGMENT_CHAIN_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(db_int(c.number))
            .bind(c.org_id)
            .bind(db_int(c.from_seq))
            .bind(db_int(c.to_seq))
            .bind(c.to_hash.as_slice())
            .bind(c.anchor.as_ref().map(|a| a.created_at))
            .bind(c.anchor.as_ref().map(|a| a.signature.as_slice()))
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn anchors(&self) -> Result<Vec<AnchorRow>, StoreError> {
        Stmt::generated(format!(
            "SELECT {ANCHOR_COLUMNS} FROM audit_anchors ORDER BY org_id"
        ))
        .fetch_all(&mut self.reads())
        .await?
        .iter()
        .map(anchor_row)
        .collect()
    }

    async fn anchor(&self, org_id: Uuid) -> Result<Option<AnchorRow>, StoreError> {
        Stmt::generated(format!(
            "SELECT {ANCHOR_COLUMNS} FROM audit_anchors WHERE org_id = $1"
        ))
        .bind(org_id)
        .fetch_optional(&mut self.reads())
        .await?
        .as_ref()
        .map(anchor_row)
        .transpose()
    }

    async fn set_anchor(&self, a: &AnchorRow) -> Result<(), StoreError> {
        let c = &a.checkpoint;
        Stmt::generated(format!(
            "INSERT INTO audit_anchors ({ANCHOR_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             created_at = excluded.created_at, signature = excluded.signature, \
             segment = excluded.segment"
        ))
        .bind(c.org_id)
        .bind(db_int(c.seq))
        .bind(c.hash.as_slice())
        .bind(c.created_at)
        .bind(c.signature.as_slice())
        .bind(db_int(a.segment))
        .execute(&mut self.writes())
        .await?;
        Ok(())
    }

    async fn prune_events(
        &self,
        org_id: Uuid,
        through_seq: u64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin(Scope::Org(org_id)).await?;
        let mut deleted = 0;
        for sql in [PRUNE_LEGACY_SQL, PRUNE_LOG_SQL] {
            let left = i64::from(limit) - i64::try_from(deleted).unwrap_or(i64::MAX);
            if left <= 0 {
                break;
            }
            deleted += Stmt::new(sql)
                .bind(org_id)
                .bind(db_int(through_seq))
                .bind(left)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn audit_storage(&self) -> Result<AuditStorage, StoreError> {
        let live = Stmt::new(
            "SELECT CAST(COALESCE(SUM(h.seq - COALESCE(a.seq, 0)), 0) AS BIGINT) AS live \
             FROM audit_heads h LEFT JOIN audit_anchors a ON a.org_id = h.org_id",
        )
        .fetch_one(&mut self.reads())
        .await?;
        let bytes = Stmt::new(B::AUDIT_BYTES_SQL)
            .fetch_one(&mut self.reads())
            .await?;
        Ok(AuditStorage {
            live_events: u64_col(&live, "live")?,
            bytes: u64_col(&bytes, "bytes")?,
        })
    }
}
