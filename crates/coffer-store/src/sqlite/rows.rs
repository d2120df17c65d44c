//! Row decoding shared by the SQLite queries.

use coffer_crypto::Ciphertext;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::*;

/// Columns of a parameter joined with one of its versions and that version's ciphertext.
macro_rules! value_columns {
    () => {
        "SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at, \
         v.param_id, v.version, v.is_secret, v.action, v.actor_id, v.created_at, c.ciphertext \
         FROM params p "
    };
}
/// Current version of each parameter.
macro_rules! value_select {
    () => {
        concat!(
            value_columns!(),
            "JOIN param_versions v ON v.param_id = p.id AND v.version = p.current_version \
             LEFT JOIN credentials c ON c.id = v.credential_id"
        )
    };
}
/// A chosen version (first bind parameter).
macro_rules! value_select_at {
    () => {
        concat!(
            value_columns!(),
            "JOIN param_versions v ON v.param_id = p.id AND v.version = ? \
             LEFT JOIN credentials c ON c.id = v.credential_id"
        )
    };
}
pub(super) use {value_columns, value_select, value_select_at};

pub(super) fn uuid_col(r: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    let v: Vec<u8> = r.try_get(col)?;
    Uuid::from_slice(&v).map_err(|_| StoreError::Corrupt)
}

fn u64_col(r: &SqliteRow, col: &str) -> Result<u64, StoreError> {
    u64::try_from(r.try_get::<i64, _>(col)?).map_err(|_| StoreError::Corrupt)
}

pub(super) fn org_row(r: &SqliteRow) -> Result<OrgRow, StoreError> {
    Ok(OrgRow {
        id: uuid_col(r, "id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn user_row(r: &SqliteRow) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: uuid_col(r, "id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn project_row(r: &SqliteRow) -> Result<ProjectRow, StoreError> {
    Ok(ProjectRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn env_row(r: &SqliteRow) -> Result<EnvRow, StoreError> {
    let parent: Option<Vec<u8>> = r.try_get("parent_id")?;
    Ok(EnvRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        project_id: uuid_col(r, "project_id")?,
        parent_id: parent
            .map(|p| Uuid::from_slice(&p).map_err(|_| StoreError::Corrupt))
            .transpose()?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn param_row(r: &SqliteRow) -> Result<ParamRow, StoreError> {
    Ok(ParamRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        env_id: uuid_col(r, "env_id")?,
        name: r.try_get("name")?,
        current_version: u64_col(r, "current_version")?,
        deleted: r.try_get("deleted")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(super) fn version_row(r: &SqliteRow) -> Result<ParamVersionRow, StoreError> {
    let action: String = r.try_get("action")?;
    Ok(ParamVersionRow {
        param_id: uuid_col(r, "param_id")?,
        version: u64_col(r, "version")?,
        is_secret: r.try_get("is_secret")?,
        action: VersionAction::parse(&action).ok_or(StoreError::Corrupt)?,
        actor_id: uuid_col(r, "actor_id")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn param_value(r: &SqliteRow) -> Result<ParamValue, StoreError> {
    let ct: Option<Vec<u8>> = r.try_get("ciphertext")?;
    Ok(ParamValue {
        param: param_row(r)?,
        version: version_row(r)?,
        ciphertext: ct
            .map(|c| Ciphertext::from_stored_bytes(c).map_err(|_| StoreError::Corrupt))
            .transpose()?,
    })
}

pub(super) fn audit_row(r: &SqliteRow) -> Result<AuditRow, StoreError> {
    let hash = |c: &str| -> Result<[u8; 32], StoreError> {
        r.try_get::<Vec<u8>, _>(c)?
            .try_into()
            .map_err(|_| StoreError::Corrupt)
    };
    Ok(AuditRow {
        org_id: uuid_col(r, "org_id")?,
        seq: u64_col(r, "seq")?,
        time: r.try_get("time")?,
        body: r.try_get("body")?,
        prev_hash: hash("prev_hash")?,
        hash: hash("hash")?,
    })
}
