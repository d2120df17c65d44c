//! The embedded default backend: SQLite in WAL mode.
//!
//! Two pools: one connection for writes and several read-only connections that WAL lets run
//! beside it; and the audit writer's own connection on its own thread (`audit_writer`).
//! Write transactions take the write lock at BEGIN (`writer::BEGIN`), so the two writing
//! connections queue for it instead of failing to upgrade. `synchronous = FULL` makes every
//! acknowledged change durable.

mod audit_writer;
mod cache;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coffer_crypto::KeyTerm;
use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use uuid::Uuid;

use crate::rows::*;
use crate::sql::{Backend as _, DbId, db_int};
use crate::*;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/sqlite/0002_audit.sql"),
    ),
    (
        3,
        "identity",
        include_str!("../../migrations/sqlite/0003_identity.sql"),
    ),
    (
        4,
        "keys",
        include_str!("../../migrations/sqlite/0004_keys.sql"),
    ),
    (
        5,
        "external_keys",
        include_str!("../../migrations/sqlite/0005_external_keys.sql"),
    ),
    (
        6,
        "audit_links",
        include_str!("../../migrations/sqlite/0006_audit_links.sql"),
    ),
    (
        7,
        "signed_heads",
        include_str!("../../migrations/sqlite/0007_signed_heads.sql"),
    ),
    (
        8,
        "compact_audit",
        include_str!("../../migrations/sqlite/0008_compact_audit.sql"),
    ),
    (
        9,
        "audit_archive",
        include_str!("../../migrations/sqlite/0009_audit_archive.sql"),
    ),
    (
        10,
        "segment_files",
        include_str!("../../migrations/sqlite/0010_segment_files.sql"),
    ),
];

#[async_trait]
impl crate::sql::Backend for SqliteStore {
    type Row = sqlx::sqlite::SqliteRow;
    type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;
    type Pool<'a> = crate::sql::PoolExec<'a, sqlx::Sqlite>;

    // The single writer connection serialises transactions: reading the row is enough.
    const LOCK_ORG: &'static str = "SELECT id FROM orgs WHERE id = $1";
    const BLOB: &'static str = "BLOB";
    const INT: &'static str = "INTEGER";
    const REWRAP_WALK_HINT: Option<&'static str> = None;
    const SCOPED_READS: bool = false;
    // The file's pages in use: sizing one table would take a scan of it (no dbstat here).
    const AUDIT_BYTES_SQL: &'static str = "SELECT (p.page_count - f.freelist_count) * s.page_size AS bytes \
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s";

    fn reads(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.read)
    }

    fn writes(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.write)
    }

    async fn begin_bare(&self) -> Result<Self::Tx, StoreError> {
        Ok(self.write.begin_with(writer::BEGIN).await?)
    }

    async fn begin_read(&self, _scope: Scope<'_>) -> Result<Self::Tx, StoreError> {
        Ok(self.read.begin().await?)
    }

    /// SQLite has no row-level security: every query scopes itself.
    async fn rescope(&self, _tx: &mut Self::Tx, _scope: Scope<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    /// One process owns an SQLite file, and it holds the root key lock while rekeying: no
    /// other writer can have a stale root key.
    async fn ensure_root(&self, _tx: &mut Self::Tx) -> Result<(), StoreError> {
        Ok(())
    }

    /// In `tx`, which holds the write lock (see [`writer::BEGIN`]).
    async fn append_in(
        &self,
        tx: &mut Self::Tx,
        event: &NewAuditEvent,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        writer::append_events(&mut *tx, &[event], &self.dict)
            .await
            .and_then(|at| at.first().copied().ok_or(StoreError::CommitFailed))
            .map_err(|e| {
                tracing::error!(error = %e, "audit append failed; the change is rolled back");
                StoreError::AuditFailed
            })
    }

    fn key_material_changed(&self) {
        self.cache.clear();
    }

    async fn after_shredding(&self) -> Result<(), StoreError> {
        SqliteStore::after_shredding(self).await
    }
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    writer: tokio::sync::mpsc::Sender<writer::Job>,
    audit: flume::Sender<audit_writer::Job>,
    cache: Arc<cache::ValueCache>,
    /// Ids of audit chains and interned texts, shared by both writers.
    dict: Arc<std::sync::Mutex<crate::audit_pack::Dictionary>>,
}

/// The one writer connection: a 64 MiB page cache (the default is 2 MiB), because rewrap
/// batches and group commits touch many pages per transaction; and no automatic indexes.
/// Without statistics, SQLite 3.51 plans a rewrap batch's `UPDATE … FROM (VALUES …)` of a
/// few hundred rows as a full scan of `credentials` against a temporary index on the
/// VALUES, once per statement: the rewrap then slows down with the size of the table.
/// Without automatic indexes it walks the VALUES and seeks each credential by id.
/// Deleted content is overwritten with zeros (`secure_delete`), so a deleted organisation's
/// wrapped keys do not linger in free pages of the file.
pub fn writer_options(base: SqliteConnectOptions) -> SqliteConnectOptions {
    base.create_if_missing(true)
        .pragma("cache_size", "-65536")
        .pragma("automatic_index", "false")
        .pragma("secure_delete", "true")
}

impl SqliteStore {
    /// Open (creating if missing) the database file and run pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(writer_options(base.clone()))
            .await?;
        crate::migrator(MIGRATIONS)
            .run(&write)
            .await
            .map_err(StoreError::Migrate)?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.read_only(true))
            .await?;
        let cache = Arc::new(cache::ValueCache::default());
        let dict = Arc::default();
        let writer = writer::spawn(write.clone(), cache.clone(), Arc::clone(&dict));
        let audit = audit_writer::spawn(path, Arc::clone(&dict))?;
        Ok(Self {
            write,
            read,
            writer,
            audit,
            cache,
            dict,
        })
    }

    /// After an organisation's keys were deleted: copy the zeroed pages into the database
    /// file and empty the write-ahead log, whose older frames still hold the deleted rows.
    /// A reader still using an older snapshot keeps the log from being emptied: then try
    /// again a few times. The deletion itself has committed either way, so this never fails
    /// it; if the log stays, the next successful checkpoint overwrites it.
    async fn after_shredding(&self) -> Result<(), StoreError> {
        for attempt in 0..10u32 {
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.write)
                .await
            {
                Ok((0, _, _)) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not empty the write-ahead log after a deletion");
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
        }
        tracing::warn!(
            "readers kept the write-ahead log from being emptied after a deletion; it holds the deleted rows until the next checkpoint"
        );
        Ok(())
    }

    pub async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        if self
            .audit
            .send_async(audit_writer::Job::Close(done))
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
        self.read.close().await;
        self.write.close().await;
    }
}

/// Create the database file readable by its owner only. SQLite gives its -wal and -shm
/// files the same permissions as the database file.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(sqlx::Error::Io(e))),
    }
}

impl SqliteStore {
    async fn append_event(
        &self,
        e: &NewAuditEvent,
        durability: Durability,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.audit
            .send_async(audit_writer::Job::Append(e.clone(), durability, reply))
            .await
            .map_err(|_| StoreError::CommitFailed)?;
        answer.await.map_err(|_| StoreError::CommitFailed)?
    }
}

// The read pool answers outside a transaction: SQLite has no row-level security, and each
// statement filters by organisation itself.
#[async_trait]
impl ParamRepo for SqliteStore {
    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError> {
        params::param(&mut self.reads(), org_id, env_id, name).await
    }

    /// Through the exact ciphertext cache, which the writer keeps current.
    async fn current_value(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        if let Some(hit) = self.cache.get(org_id, env_id, name) {
            return Ok(hit);
        }
        let generation = self.cache.generation();
        let v = params::current_value(&mut self.reads(), org_id, env_id, name).await?;
        self.cache
            .insert(generation, org_id, env_id, name, v.clone());
        Ok(v)
    }

    async fn current_values(
        &self,
        org_id: Uuid,
        env_ids: &[Uuid],
    ) -> Result<Vec<ParamValue>, StoreError> {
        params::current_values(&mut self.reads(), org_id, env_ids).await
    }

    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError> {
        params::param_version(&mut self.reads(), org_id, param_id, version).await
    }

    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError> {
        params::param_history(&mut self.reads(), org_id, param_id).await
    }

    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send((w.clone(), reply))
            .await
            .map_err(|_| StoreError::CommitFailed)?;
        answer.await.map_err(|_| StoreError::CommitFailed)?
    }
}

#[async_trait]
impl AuditRepo for SqliteStore {
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError> {
        self.append_event(e, Durability::Stable).await
    }

    /// SQLite hands out no read checks (its value cache is kept exact by the writer).
    async fn append_audit_checked(
        &self,
        e: &NewAuditEvent,
        checks: &[ReadCheck],
        durability: Durability,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        if !checks.is_empty() {
            return Ok(None);
        }
        self.append_event(e, durability).await.map(Some)
    }

    async fn audit_events(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        audit::audit_events(&mut self.reads(), org_id, f).await
    }

    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        audit::audit_head(&mut self.reads(), org_id).await
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        audit::insert_checkpoint(&mut self.writes(), c).await
    }

    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        audit::checkpoints(&mut self.reads(), org_id).await
    }

    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError> {
        audit::audit_key(&mut self.reads()).await
    }

    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError> {
        audit::init_audit_key(&mut self.writes(), k).await
    }

    async fn orgs_needing_checkpoint(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query(
            "SELECT h.org_id FROM audit_heads h WHERE h.seq > \
             COALESCE((SELECT MAX(c.seq) FROM audit_checkpoints c WHERE c.org_id = h.org_id), 0)",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| uuid_col(r, "org_id"))
        .collect()
    }

    async fn store_signed_heads(&self, heads: &[CheckpointRow]) -> Result<(), StoreError> {
        // In pieces, each answered before the next is sent, so that the audit writer's event
        // batches go in between (a round may sign thousands of chains).
        for chunk in heads.chunks(audit_writer::SIGNED_HEADS_PER_TX) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.audit
                .send_async(audit_writer::Job::SignedHeads(chunk.to_vec(), reply))
                .await
                .map_err(|_| StoreError::CommitFailed)?;
            answer.await.map_err(|_| StoreError::CommitFailed)??;
        }
        Ok(())
    }

    async fn signed_head(&self, org_id: Uuid) -> Result<Option<CheckpointRow>, StoreError> {
        audit::signed_head(&mut self.reads(), org_id).await
    }
}

#[async_trait]
impl Cluster for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
    }
}

async fn append_version(conn: &mut SqliteConnection, w: &ParamWrite) -> Result<(), StoreError> {
    let v = &w.version;
    let deleted = v.action == VersionAction::Delete;
    if w.expected_current == 0 {
        sqlx::query(
            "INSERT INTO params (id, org_id, env_id, name, current_version, deleted, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(DbId(w.param_id))
        .bind(DbId(w.org_id))
        .bind(DbId(w.env_id))
        .bind(&w.name)
        .bind(db_int(v.version))
        .bind(deleted)
        .bind(v.created_at)
        .execute(&mut *conn)
        .await?;
    } else {
        let r = sqlx::query(
            "UPDATE params SET current_version = ?, deleted = ?, updated_at = ? \
             WHERE id = ? AND org_id = ? AND env_id = ? AND current_version = ?",
        )
        .bind(db_int(v.version))
        .bind(deleted)
        .bind(v.created_at)
        .bind(DbId(w.param_id))
        .bind(DbId(w.org_id))
        .bind(DbId(w.env_id))
        .bind(db_int(w.expected_current))
        .execute(&mut *conn)
        .await?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
    }
    let credential_id = match &w.ciphertext {
        Some(ct) => {
            ensure_newest_term(&mut *conn, w.org_id, ct.key_term()).await?;
            sqlx::query("INSERT INTO credentials (id, ciphertext, key_term) VALUES (?, ?, ?)")
                .bind(DbId(w.credential_id))
                .bind(ct.as_bytes())
                .bind(i64::from(ct.key_term().0))
                .execute(&mut *conn)
                .await?;
            Some(w.credential_id.as_bytes().to_vec())
        }
        None => None,
    };
    sqlx::query(
        "INSERT INTO param_versions (param_id, version, org_id, credential_id, is_secret, action, actor_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(DbId(w.param_id))
    .bind(db_int(v.version))
    .bind(DbId(w.org_id))
    .bind(credential_id)
    .bind(v.is_secret)
    .bind(v.action.as_str())
    .bind(DbId(v.actor_id))
    .bind(v.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A value must be sealed under the organisation's newest term: a rotation on this or
/// another node may have made the caller's cached term old.
async fn ensure_newest_term(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    term: KeyTerm,
) -> Result<(), StoreError> {
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(term) FROM tenant_keys WHERE org_id = ?")
            .bind(DbId(org_id))
            .fetch_one(&mut *conn)
            .await?;
    if newest == Some(i64::from(term.0)) {
        Ok(())
    } else {
        Err(StoreError::StaleKeyTerm)
    }
}
