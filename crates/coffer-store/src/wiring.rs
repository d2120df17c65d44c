//! Opening a database: the one place that names the backends. The binary (and the test
//! kit) choose a [`Location`]; the core receives the resulting [`Storage`] and never knows
//! which database it is.

use std::path::PathBuf;
use std::sync::Arc;

use crate::postgres::{PgStore, Schema};
use crate::sqlite::SqliteStore;
use crate::{Cluster, Store, StoreError};

/// Where the data lives.
#[derive(Clone)]
pub enum Location {
    /// The embedded default: one SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`). With `migrate` pending migrations are applied
    /// (the role must own the schema); without, the schema must already be current.
    Postgres { url: String, migrate: bool },
}

impl std::fmt::Debug for Location {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Postgres { migrate, .. } => f
                .debug_struct("Postgres")
                .field("migrate", migrate)
                .finish_non_exhaustive(),
        }
    }
}

/// An open database: its repositories, and how its nodes coordinate.
#[derive(Debug, Clone)]
pub struct Storage {
    pub store: Arc<dyn Store>,
    pub cluster: Arc<dyn Cluster>,
}

impl Storage {
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        Ok(match location {
            Location::Sqlite(path) => Self::from(SqliteStore::open(path).await?),
            Location::Postgres { url, migrate } => {
                let schema = if *migrate {
                    Schema::Migrate
                } else {
                    Schema::Verify
                };
                Self::from(PgStore::connect_with(url, schema).await?)
            }
        })
    }
}

impl From<SqliteStore> for Storage {
    fn from(s: SqliteStore) -> Self {
        let s = Arc::new(s);
        Self {
            store: s.clone(),
            cluster: s,
        }
    }
}

impl From<PgStore> for Storage {
    fn from(s: PgStore) -> Self {
        let s = Arc::new(s);
        Self {
            store: s.clone(),
            cluster: s,
        }
    }
}

/// Apply pending PostgreSQL migrations as the schema owner (`coffer migrate`).
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    crate::postgres::migrate(url).await
}
