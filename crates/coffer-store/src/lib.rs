//! Storage for Coffer.
//!
//! Storage is untrusted: everything secret arrives here already encrypted. The traits take
//! [`Ciphertext`] and [`WrappedTenantKey`] — types that only `coffer-crypto` produces — for
//! anything secret, so plaintext cannot reach a database by construction. Names of
//! organisations, projects, environments and parameters are metadata and stored in clear.
//!
//! Every query that touches tenant data is scoped by organisation id as well as by its own
//! key, so a bug in a caller cannot read across tenants.

mod archive;
mod audit;
pub mod audit_codec;
mod audit_pack;
mod chain;
mod cluster;
mod error;
mod identity;
mod keys;
mod models;
mod params;
pub mod postgres;
mod rows;
mod seal;
mod sql;
pub mod sqlite;
mod tenants;
mod wiring;

use uuid::Uuid;

pub use archive::ArchiveRepo;
pub use audit::AuditRepo;
pub use audit_pack::compact_fallbacks;
pub use cluster::{Cluster, Invalidation};
pub use coffer_crypto::{Ciphertext, WrappedTenantKey};
pub use error::StoreError;
pub use identity::{AccessRepo, CredentialChange, MailRepo, UserRepo};
pub use keys::KeyRepo;
/// The SQL of one multi-row rewrap UPDATE (for the planner tests).
#[doc(hidden)]
pub use keys::rewrap_update_sql;
pub use models::*;
pub use params::ParamRepo;
pub use seal::SealRepo;
pub use tenants::TenantRepo;
pub use wiring::{Location, Storage, migrate};

/// Every repository trait and [`Cluster`], for code that calls them on a concrete store.
pub mod prelude {
    pub use crate::{
        AccessRepo, ArchiveRepo, AuditRepo, Cluster, KeyRepo, MailRepo, ParamRepo, SealRepo, Store,
        TenantRepo, UserRepo,
    };
}

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

/// Every repository of one database: what the service front hands to the core's services,
/// each of which keeps only the repositories it uses. Implemented by both backends.
pub trait Store:
    SealRepo
    + TenantRepo
    + ParamRepo
    + AuditRepo
    + ArchiveRepo
    + UserRepo
    + AccessRepo
    + MailRepo
    + KeyRepo
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: SealRepo
        + TenantRepo
        + ParamRepo
        + AuditRepo
        + ArchiveRepo
        + UserRepo
        + AccessRepo
        + MailRepo
        + KeyRepo
        + std::fmt::Debug
{
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
