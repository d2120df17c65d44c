//! The binary's wiring of storage: which database the server runs on. The core and the
//! HTTP edge receive an open [`Storage`] and never name a backend.

use std::path::Path;

use anyhow::Context;
use coffer_store::{Location, Storage};

/// `[storage]` in the configuration file (or `COFFER_STORAGE__*`).
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// PostgreSQL instead of the embedded SQLite database.
    pub url: Option<coffer_server::DatabaseUrl>,
    /// Apply pending PostgreSQL migrations at start (the role must own the schema); false
    /// for a least-privilege runtime role, with `coffer migrate` run separately.
    pub migrate: bool,
    /// `audit.archive.database_url`: where the scheduled audit archive records segments
    /// and prunes, as a role allowed to (the runtime role is not).
    pub archive_url: Option<coffer_server::DatabaseUrl>,
}

/// Open the configured database: PostgreSQL at `url`, else `coffer.db` in `data_dir`.
pub async fn open(s: &StorageSettings, data_dir: &Path) -> anyhow::Result<Storage> {
    match &s.url {
        Some(url) => Storage::open(&Location::Postgres {
            url: url.expose_secret().to_owned(),
            migrate: s.migrate,
        })
        .await
        .with_context(|| format!("connect to {url}")),
        None => {
            coffer_server::create_data_dir(data_dir)?;
            Storage::open(&Location::Sqlite(data_dir.join("coffer.db")))
                .await
                .context("open the database")
        }
    }
}
