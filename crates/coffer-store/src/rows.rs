//! Row decoding shared by the backends. Both store ids as 16-byte blobs, times and counters
//! as 64-bit integers, so one decoder per model serves SQLite and PostgreSQL.

use coffer_crypto::Ciphertext;
use uuid::Uuid;

use crate::*;

/// The few column reads the decoders need, for any backend's row type.
pub(crate) trait RowRead {
    fn bytes(&self, c: &str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, c: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn int(&self, c: &str) -> Result<i64, StoreError>;
    fn text(&self, c: &str) -> Result<String, StoreError>;
    fn flag(&self, c: &str) -> Result<bool, StoreError>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError>;
}

macro_rules! row_read {
    ($row:ty) => {
        impl RowRead for $row {
            fn bytes(&self, c: &str) -> Result<Vec<u8>, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn opt_bytes(&self, c: &str) -> Result<Option<Vec<u8>>, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn int(&self, c: &str) -> Result<i64, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn text(&self, c: &str) -> Result<String, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn flag(&self, c: &str) -> Result<bool, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
            fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::Row::try_get(self, c)?)
            }
        }
    };
}
row_read!(sqlx::sqlite::SqliteRow);
row_read!(sqlx::postgres::PgRow);

/// The `id` column of every row.
pub(crate) fn ids<R: RowRead>(rows: &[R]) -> Result<Vec<Uuid>, StoreError> {
    rows.iter().map(|r| uuid_col(r, "id")).collect()
}

pub(crate) fn uuid_col<R: RowRead>(r: &R, col: &str) -> Result<Uuid, StoreError> {
    Uuid::from_slice(&r.bytes(col)?).map_err(|_| StoreError::Corrupt)
}

pub(crate) fn u64_col<R: RowRead>(r: &R, col: &str) -> Result<u64, StoreError> {
    u64::try_from(r.int(col)?).map_err(|_| StoreError::Corrupt)
}

pub(crate) fn hash_col<R: RowRead>(r: &R, col: &str) -> Result<[u8; 32], StoreError> {
    r.bytes(col)?.try_into().map_err(|_| StoreError::Corrupt)
}

pub(crate) fn org_row<R: RowRead>(r: &R) -> Result<OrgRow, StoreError> {
    Ok(OrgRow {
        id: uuid_col(r, "id")?,
        name: r.text("name")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn project_row<R: RowRead>(r: &R) -> Result<ProjectRow, StoreError> {
    Ok(ProjectRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        name: r.text("name")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn env_row<R: RowRead>(r: &R) -> Result<EnvRow, StoreError> {
    Ok(EnvRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        project_id: uuid_col(r, "project_id")?,
        parent_id: r
            .opt_bytes("parent_id")?
            .map(|p| Uuid::from_slice(&p).map_err(|_| StoreError::Corrupt))
            .transpose()?,
        name: r.text("name")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn param_row<R: RowRead>(r: &R) -> Result<ParamRow, StoreError> {
    Ok(ParamRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        env_id: uuid_col(r, "env_id")?,
        name: r.text("name")?,
        current_version: u64_col(r, "current_version")?,
        deleted: r.flag("deleted")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn version_row<R: RowRead>(r: &R) -> Result<ParamVersionRow, StoreError> {
    Ok(ParamVersionRow {
        param_id: uuid_col(r, "param_id")?,
        version: u64_col(r, "version")?,
        is_secret: r.flag("is_secret")?,
        action: VersionAction::parse(&r.text("action")?).ok_or(StoreError::Corrupt)?,
        actor_id: uuid_col(r, "actor_id")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn param_value<R: RowRead>(r: &R) -> Result<ParamValue, StoreError> {
    Ok(ParamValue {
        param: param_row(r)?,
        version: version_row(r)?,
        ciphertext: r
            .opt_bytes("ciphertext")?
            .map(|c| Ciphertext::from_stored_bytes(c).map_err(|_| StoreError::Corrupt))
            .transpose()?,
    })
}

pub(crate) fn audit_row<R: RowRead>(r: &R) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        org_id: uuid_col(r, "org_id")?,
        seq: u64_col(r, "seq")?,
        time: r.int("time")?,
        body: r.text("body")?,
        prev_hash: hash_col(r, "prev_hash")?,
        hash: hash_col(r, "hash")?,
    })
}

pub(crate) fn checkpoint_row<R: RowRead>(r: &R) -> Result<CheckpointRow, StoreError> {
    Ok(CheckpointRow {
        org_id: uuid_col(r, "org_id")?,
        seq: u64_col(r, "seq")?,
        hash: hash_col(r, "hash")?,
        created_at: r.int("created_at")?,
        signature: r.bytes("signature")?,
    })
}
