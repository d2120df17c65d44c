//! Parameters: versioned values in an environment, each version's ciphertext stored once.
//!
//! The read and write paths are where the backends differ most (SQLite: an exact
//! ciphertext cache and a group-commit writer; PostgreSQL: batched reads, a per-node value
//! cache confirmed by the audit append, and writes as one plpgsql call), so each backend
//! implements this repository itself.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Exec, Stmt};

/// Versioned parameters and their ciphertexts.
#[async_trait]
pub trait ParamRepo: Send + Sync {
    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError>;
    /// What a write needs first: the parameter's row in `env_id` (deleted or not) and
    /// whether its current version is a secret (false when deleted). One round trip where
    /// the backend can.
    async fn param_state(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<(ParamRow, bool)>, StoreError> {
        let Some(row) = self.param(org_id, env_id, name).await? else {
            return Ok(None);
        };
        let secret = !row.deleted
            && self
                .param_version(org_id, row.id, row.current_version)
                .await?
                .is_some_and(|v| v.version.is_secret);
        Ok(Some((row, secret)))
    }
    /// The current version and ciphertext of one live parameter.
    async fn current_value(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError>;
    /// The live parameter `name` as seen from the first environment of `env_chain` (an
    /// environment followed by its ancestors): the nearest environment that defines it wins.
    async fn nearest_value(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        for env_id in env_chain {
            if let Some(v) = self.current_value(org_id, *env_id, name).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
    /// Like [`ParamRepo::nearest_value`], but the answer may come from this node's cache; it then
    /// comes with the [`ReadCheck`] that the request's audit append must confirm. Backends
    /// whose cache is exact (or that have none) answer like `nearest_value`, with no check.
    async fn nearest_value_cached(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<(Option<ParamValue>, Option<ReadCheck>), StoreError> {
        Ok((self.nearest_value(org_id, env_chain, name).await?, None))
    }
    /// The current version and its ciphertext of every live parameter in these environments.
    async fn current_values(
        &self,
        org_id: Uuid,
        env_ids: &[Uuid],
    ) -> Result<Vec<ParamValue>, StoreError>;
    /// One version of one parameter, with its ciphertext (None for a deletion marker).
    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError>;
    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError>;
    /// Append a version. `expected_current` is the version the caller based its write on
    /// (0 for a new parameter); a concurrent writer makes this fail with Conflict.
    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError>;
}

// Statements both backends run as they are, each on an executor the backend chooses
// (SQLite: its read pool; PostgreSQL: a transaction scoped to the organisation).

/// A parameter joined with one of its versions and that version's ciphertext.
macro_rules! value_select {
    ($join_version:literal, $where:literal) => {
        concat!(
            "SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at, \
             v.param_id, v.version, v.is_secret, v.action, v.actor_id, v.created_at, c.ciphertext \
             FROM params p JOIN param_versions v ON v.param_id = p.id AND ",
            $join_version,
            " LEFT JOIN credentials c ON c.id = v.credential_id WHERE ",
            $where
        )
    };
}

pub(crate) async fn param<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    env_id: Uuid,
    name: &str,
) -> Result<Option<ParamRow>, StoreError> {
    Stmt::new(
        "SELECT id, org_id, env_id, name, current_version, deleted, updated_at FROM params \
         WHERE org_id = $1 AND env_id = $2 AND name = $3",
    )
    .bind(org_id)
    .bind(env_id)
    .bind(name)
    .fetch_optional(e)
    .await?
    .as_ref()
    .map(param_row)
    .transpose()
}

/// The current version of one live parameter, from the database (no cache).
pub(crate) async fn current_value<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    env_id: Uuid,
    name: &str,
) -> Result<Option<ParamValue>, StoreError> {
    Stmt::new(value_select!(
        "v.version = p.current_version",
        "p.org_id = $1 AND p.env_id = $2 AND p.name = $3 AND NOT p.deleted"
    ))
    .bind(org_id)
    .bind(env_id)
    .bind(name)
    .fetch_optional(e)
    .await?
    .as_ref()
    .map(param_value)
    .transpose()
}

pub(crate) async fn current_values<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    env_ids: &[Uuid],
) -> Result<Vec<ParamValue>, StoreError> {
    let mut out = Vec::new();
    // Environment chains are short (a handful of levels); one static statement per level
    // keeps every statement a compile-time constant.
    for env_id in env_ids {
        let rows = Stmt::new(value_select!(
            "v.version = p.current_version",
            "p.org_id = $1 AND p.env_id = $2 AND NOT p.deleted ORDER BY p.name"
        ))
        .bind(org_id)
        .bind(*env_id)
        .fetch_all(e)
        .await?;
        for r in &rows {
            out.push(param_value(r)?);
        }
    }
    Ok(out)
}

pub(crate) async fn param_version<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    param_id: Uuid,
    version: u64,
) -> Result<Option<ParamValue>, StoreError> {
    Stmt::new(value_select!(
        "v.version = $1",
        "p.org_id = $2 AND p.id = $3"
    ))
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(org_id)
    .bind(param_id)
    .fetch_optional(e)
    .await?
    .as_ref()
    .map(param_value)
    .transpose()
}

pub(crate) async fn param_history<E: Exec>(
    e: &mut E,
    org_id: Uuid,
    param_id: Uuid,
) -> Result<Vec<ParamVersionRow>, StoreError> {
    Stmt::new(
        "SELECT param_id, version, is_secret, action, actor_id, created_at FROM param_versions \
         WHERE org_id = $1 AND param_id = $2 ORDER BY version",
    )
    .bind(org_id)
    .bind(param_id)
    .fetch_all(e)
    .await?
    .iter()
    .map(version_row)
    .collect()
}
