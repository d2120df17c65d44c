//! Storage for Coffer.
//!
//! Storage is untrusted: everything secret arrives here already encrypted. The traits take
//! [`Ciphertext`] and [`WrappedTenantKey`] — types that only `coffer-crypto` produces — for
//! anything secret, so plaintext cannot reach a database by construction. Names of
//! organisations, projects, environments and parameters are metadata and stored in clear.
//!
//! Every query that touches tenant data is scoped by organisation id as well as by its own
//! key, so a bug in a caller cannot read across tenants.

mod chain;
mod error;
pub mod identity;
pub mod keys;
mod models;
pub mod postgres;
mod rows;
pub mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

pub use coffer_crypto::{Ciphertext, WrappedTenantKey};
pub use error::StoreError;
pub use identity::IdentityStore;
pub use keys::KeyStore;
pub use models::*;

/// Which rows a transaction may touch under PostgreSQL's row-level security (SQLite has
/// none: every query scopes itself). Without a scope a transaction sees no tenant or
/// identity row at all.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// One organisation's rows.
    Org(Uuid),
    /// One user's memberships and sessions across organisations (and the organisations
    /// they belong to).
    User(Uuid),
    /// The one session, API key or invitation with this token hash: the lookup that comes
    /// before the organisation is known.
    Token(&'a [u8; 32]),
    /// Identity rows of every organisation, for the few maintenance jobs that span them
    /// (purging expired sessions, listing organisations for key maintenance and rekey).
    /// Tenant data stays scoped by organisation even here.
    System,
}

/// Everything the domain needs from a database. Implemented for SQLite (embedded default)
/// and PostgreSQL. Methods that change several rows do so in one transaction.
#[async_trait]
pub trait Store: IdentityStore + KeyStore + Send + Sync + std::fmt::Debug {
    // --- seal ---
    async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError>;
    /// Fails with [`StoreError::Conflict`] if the server was already initialised.
    async fn init_seal_config(&self, cfg: &SealConfigRow) -> Result<(), StoreError>;

    // --- organisations and keys ---
    async fn create_org(&self, org: &OrgRow, key: &TenantKeyRow) -> Result<(), StoreError>;
    async fn org(&self, org_id: Uuid) -> Result<Option<OrgRow>, StoreError>;
    async fn tenant_keys(&self, org_id: Uuid) -> Result<Vec<TenantKeyRow>, StoreError>;

    // --- projects and environments ---
    async fn create_project(&self, p: &ProjectRow) -> Result<(), StoreError>;
    async fn projects(&self, org_id: Uuid) -> Result<Vec<ProjectRow>, StoreError>;
    async fn project_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<ProjectRow>, StoreError>;
    async fn create_env(&self, e: &EnvRow) -> Result<(), StoreError>;
    async fn envs(&self, org_id: Uuid, project_id: Uuid) -> Result<Vec<EnvRow>, StoreError>;

    // --- parameters ---
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
    /// Like [`Store::nearest_value`], but the answer may come from this node's cache; it then
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

    // --- audit ---
    /// Durably append one event to its organisation's chain; returns its (seq, hash). Concurrent
    /// appends are committed together.
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError>;
    /// Append like [`Store::append_audit`] if every check still holds, in the same
    /// transaction; otherwise append nothing and return None (the request that read those
    /// values must be answered again). Without checks this is `append_audit`.
    async fn append_audit_checked(
        &self,
        e: &NewAuditEvent,
        checks: &[ReadCheck],
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        if checks.is_empty() {
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

    // --- caches on several nodes ---
    /// Changes published by any node (this one included), for clearing caches. None for a
    /// single-node backend.
    /// The check value of the root key this node holds (None while sealed). Writes of
    /// material sealed with the root key then fail with [`StoreError::RootReplaced`] once
    /// another node has replaced it, instead of storing what nobody can open. Only needed
    /// where several nodes share a database.
    fn set_root_guard(&self, _check: Option<coffer_crypto::RootKeyCheck>) {}

    /// Close the connections (and on PostgreSQL give up the job leadership).
    async fn close(&self) {}

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }
    /// Tell every node to drop cached state. Best effort: caches also expire on their own.
    async fn publish_invalidation(&self, _what: Invalidation) -> Result<(), StoreError> {
        Ok(())
    }

    // --- background jobs ---
    /// Whether this node should run background jobs now. With several nodes on one database
    /// exactly one holds the leadership, and it passes to another node when its holder dies.
    /// A single-node backend is always the leader.
    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// What a node must forget when another node changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Everything (a listener reconnected, so messages may have been missed).
    All,
    /// Sessions, API keys, memberships or roles changed: re-check every principal.
    Access,
    /// An organisation's projects or environments changed.
    Meta(Uuid),
    /// An organisation's tenant keys changed (rotation, destruction, deletion).
    Keys(Uuid),
}

/// An embedded migrator over SQL files compiled into the binary (sqlx's `migrate!` macro
/// needs the `macros` feature, which we leave out).
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        files
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    std::borrow::Cow::Borrowed(*d),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect(),
    )
}
