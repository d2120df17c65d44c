//! The embedded default backend: SQLite in WAL mode.
//!
//! Two pools: one connection for writes (SQLite has one writer; a single connection avoids
//! lock-upgrade deadlocks between deferred transactions) and several read-only connections
//! that WAL lets run beside it. `synchronous = FULL` makes every acknowledged write durable.

mod cache;
mod sql;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coffer_crypto::{KeyTerm, RootKeyCheck};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::rows::*;
use crate::*;
use sql::*;

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
];

// SQLite's single writer connection serialises transactions, so no row lock is needed.
crate::identity::impl_identity_store!(
    SqliteStore,
    read,
    write,
    "SELECT id FROM orgs WHERE id = $1"
);

crate::keys::impl_key_store!(
    SqliteStore,
    write,
    "SELECT id FROM orgs WHERE id = $1",
    no_scope,
    "BLOB",
    "INTEGER",
    None
);

impl SqliteStore {
    /// A transaction on `pool`. SQLite has no row-level security: every query scopes itself.
    async fn tx(
        &self,
        pool: &SqlitePool,
        _scope: crate::Scope<'_>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(pool.begin().await?)
    }

    async fn set_scope(
        &self,
        _conn: &mut sqlx::SqliteConnection,
        _scope: crate::Scope<'_>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// One process owns an SQLite file, and it holds the root key lock while rekeying: no
    /// other writer can have a stale root key.
    async fn ensure_root(&self, _conn: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
        Ok(())
    }
}

/// SQLite has no row-level security: every query is scoped by its own WHERE clause.
async fn no_scope(_: &mut SqliteConnection, _: Uuid) -> Result<(), StoreError> {
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    writer: tokio::sync::mpsc::Sender<writer::Job>,
    cache: Arc<cache::ValueCache>,
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
        let writer = writer::spawn(write.clone(), cache.clone());
        Ok(Self {
            write,
            read,
            writer,
            cache,
        })
    }

    /// Ciphertexts changed outside the writer (rewrap, deletion): drop every cached one.
    fn key_material_changed(&self) {
        self.cache.clear();
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

fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt)
}

impl SqliteStore {
    async fn submit(&self, work: writer::Work) -> Result<writer::Done, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send((work, reply))
            .await
            .map_err(|_| StoreError::CommitFailed)?;
        answer.await.map_err(|_| StoreError::CommitFailed)?
    }
}

fn b(id: &Uuid) -> &[u8] {
    id.as_bytes().as_slice()
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, shares, threshold, root_check, created_at, sealed_root FROM seal_config WHERE id = 1",
        )
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(SealConfigRow {
                kind: r.try_get("kind")?,
                shares: u8::try_from(r.try_get::<i64, _>("shares")?)
                    .map_err(|_| StoreError::Corrupt)?,
                threshold: u8::try_from(r.try_get::<i64, _>("threshold")?)
                    .map_err(|_| StoreError::Corrupt)?,
                root_check: RootKeyCheck::from_stored_bytes(r.try_get("root_check")?),
                created_at: r.try_get("created_at")?,
                sealed_root: r.try_get("sealed_root")?,
            })
        })
        .transpose()
    }

    async fn init_seal_config(&self, c: &SealConfigRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO seal_config (id, kind, shares, threshold, root_check, created_at, sealed_root) VALUES (1, ?, ?, ?, ?, ?, ?)")
            .bind(&c.kind)
            .bind(i64::from(c.shares))
            .bind(i64::from(c.threshold))
            .bind(c.root_check.as_bytes())
            .bind(c.created_at)
            .bind(c.sealed_root.as_deref())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn create_org(&self, org: &OrgRow, key: &TenantKeyRow) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)")
            .bind(b(&org.id))
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&mut *tx)
            .await?;
        insert_tenant_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn org(&self, org_id: Uuid) -> Result<Option<OrgRow>, StoreError> {
        sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = ?")
            .bind(b(&org_id))
            .fetch_optional(&self.read)
            .await?
            .map(|r| org_row(&r))
            .transpose()
    }

    async fn tenant_keys(&self, org_id: Uuid) -> Result<Vec<TenantKeyRow>, StoreError> {
        sqlx::query("SELECT org_id, term, wrapped, created_at FROM tenant_keys WHERE org_id = ? ORDER BY term")
            .bind(b(&org_id))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(crate::keys::tenant_key_row)
            .collect()
    }

    async fn create_project(&self, p: &ProjectRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES (?, ?, ?, ?)")
            .bind(b(&p.id))
            .bind(b(&p.org_id))
            .bind(&p.name)
            .bind(p.created_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn projects(&self, org_id: Uuid) -> Result<Vec<ProjectRow>, StoreError> {
        sqlx::query(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = ? ORDER BY name",
        )
        .bind(b(&org_id))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(project_row)
        .collect()
    }

    async fn project_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<ProjectRow>, StoreError> {
        sqlx::query(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = ? AND name = ?",
        )
        .bind(b(&org_id))
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(project_row)
        .transpose()
    }

    async fn create_env(&self, e: &EnvRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO environments (id, org_id, project_id, parent_id, name, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(b(&e.id))
            .bind(b(&e.org_id))
            .bind(b(&e.project_id))
            .bind(e.parent_id.as_ref().map(|p| p.as_bytes().to_vec()))
            .bind(&e.name)
            .bind(e.created_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn envs(&self, org_id: Uuid, project_id: Uuid) -> Result<Vec<EnvRow>, StoreError> {
        sqlx::query(
            "SELECT id, org_id, project_id, parent_id, name, created_at FROM environments \
             WHERE org_id = ? AND project_id = ? ORDER BY created_at, name",
        )
        .bind(b(&org_id))
        .bind(b(&project_id))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(env_row)
        .collect()
    }

    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError> {
        sqlx::query(
            "SELECT id, org_id, env_id, name, current_version, deleted, updated_at FROM params \
             WHERE org_id = ? AND env_id = ? AND name = ?",
        )
        .bind(b(&org_id))
        .bind(b(&env_id))
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(param_row)
        .transpose()
    }

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
        let v = sqlx::query(concat!(
            value_select!(),
            " WHERE p.org_id = ? AND p.env_id = ? AND p.name = ? AND p.deleted = 0"
        ))
        .bind(b(&org_id))
        .bind(b(&env_id))
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(param_value)
        .transpose()?;
        self.cache
            .insert(generation, org_id, env_id, name, v.clone());
        Ok(v)
    }

    async fn current_values(
        &self,
        org_id: Uuid,
        env_ids: &[Uuid],
    ) -> Result<Vec<ParamValue>, StoreError> {
        let mut out = Vec::new();
        // Environment chains are short (a handful of levels); one static query per level
        // keeps every statement a compile-time constant.
        for env_id in env_ids {
            let rows = sqlx::query(concat!(
                value_select!(),
                " WHERE p.org_id = ? AND p.env_id = ? AND p.deleted = 0 ORDER BY p.name"
            ))
            .bind(b(&org_id))
            .bind(b(env_id))
            .fetch_all(&self.read)
            .await?;
            for r in &rows {
                out.push(param_value(r)?);
            }
        }
        Ok(out)
    }

    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError> {
        sqlx::query(concat!(
            value_select_at!(),
            " WHERE p.org_id = ? AND p.id = ?"
        ))
        .bind(i(version))
        .bind(b(&org_id))
        .bind(b(&param_id))
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(param_value)
        .transpose()
    }

    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError> {
        sqlx::query(
            "SELECT param_id, version, is_secret, action, actor_id, created_at FROM param_versions \
             WHERE org_id = ? AND param_id = ? ORDER BY version",
        )
        .bind(b(&org_id))
        .bind(b(&param_id))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(version_row)
        .collect()
    }

    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError> {
        match self.submit(writer::Work::Param(w.clone())).await? {
            writer::Done::Param => Ok(()),
            writer::Done::Audit(..) => Err(StoreError::CommitFailed),
        }
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError> {
        match self.submit(writer::Work::Audit(e.clone())).await? {
            writer::Done::Audit(seq, hash) => Ok((seq, hash)),
            writer::Done::Param => Err(StoreError::CommitFailed),
        }
    }

    async fn audit_events(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        sqlx::query(
            "SELECT org_id, seq, time, body, prev_hash, hash FROM audit_events WHERE org_id = ?1 AND seq > ?2 \
             AND (?3 IS NULL OR time >= ?3) AND (?4 IS NULL OR time < ?4) AND (?5 IS NULL OR action = ?5) \
             AND (?6 IS NULL OR actor_id = ?6) AND (?7 IS NULL OR outcome = ?7) \
             AND (?8 IS NULL OR substr(target, 1, length(?8)) = ?8) ORDER BY seq LIMIT ?9",
        )
        .bind(b(&org_id))
        .bind(i(f.after_seq))
        .bind(f.from)
        .bind(f.to)
        .bind(f.action.as_deref())
        .bind(f.actor_id.as_ref().map(|a| a.as_bytes().to_vec()))
        .bind(f.outcome.as_deref())
        .bind(f.target.as_deref())
        .bind(i64::from(f.limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(audit_row)
        .collect()
    }

    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let r = sqlx::query("SELECT seq, hash FROM audit_heads WHERE org_id = ?")
            .bind(b(&org_id))
            .fetch_optional(&self.read)
            .await?;
        r.map(|r| {
            Ok((
                u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| StoreError::Corrupt)?,
                hash32(r.try_get("hash")?)?,
            ))
        })
        .transpose()
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_checkpoints (org_id, seq, hash, created_at, signature) VALUES (?, ?, ?, ?, ?)")
            .bind(b(&c.org_id))
            .bind(i(c.seq))
            .bind(c.hash.as_slice())
            .bind(c.created_at)
            .bind(c.signature.as_slice())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        sqlx::query("SELECT org_id, seq, hash, created_at, signature FROM audit_checkpoints WHERE org_id = ? ORDER BY seq")
            .bind(b(&org_id))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| {
                Ok(CheckpointRow {
                    org_id: uuid_col(r, "org_id")?,
                    seq: u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| StoreError::Corrupt)?,
                    hash: hash32(r.try_get("hash")?)?,
                    created_at: r.try_get("created_at")?,
                    signature: r.try_get("signature")?,
                })
            })
            .collect()
    }

    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError> {
        let r =
            sqlx::query("SELECT public_key, wrapped_key, created_at FROM audit_keys WHERE id = 1")
                .fetch_optional(&self.read)
                .await?;
        r.map(|r| {
            Ok(AuditKeyRow {
                public_key: r.try_get("public_key")?,
                wrapped_key: r.try_get("wrapped_key")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_keys (id, public_key, wrapped_key, created_at) VALUES (1, ?, ?, ?)",
        )
        .bind(k.public_key.as_slice())
        .bind(k.wrapped_key.as_slice())
        .bind(k.created_at)
        .execute(&self.write)
        .await?;
        Ok(())
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
}

async fn insert_tenant_key(
    conn: &mut SqliteConnection,
    key: &TenantKeyRow,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tenant_keys (org_id, term, wrapped, created_at) VALUES (?, ?, ?, ?)")
        .bind(b(&key.org_id))
        .bind(i64::from(key.term.0))
        .bind(key.wrapped.as_bytes())
        .bind(key.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

async fn append_version(conn: &mut SqliteConnection, w: &ParamWrite) -> Result<(), StoreError> {
    let v = &w.version;
    let deleted = v.action == VersionAction::Delete;
    if w.expected_current == 0 {
        sqlx::query(
            "INSERT INTO params (id, org_id, env_id, name, current_version, deleted, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(b(&w.param_id))
        .bind(b(&w.org_id))
        .bind(b(&w.env_id))
        .bind(&w.name)
        .bind(i(v.version))
        .bind(deleted)
        .bind(v.created_at)
        .execute(&mut *conn)
        .await?;
    } else {
        let r = sqlx::query(
            "UPDATE params SET current_version = ?, deleted = ?, updated_at = ? \
             WHERE id = ? AND org_id = ? AND env_id = ? AND current_version = ?",
        )
        .bind(i(v.version))
        .bind(deleted)
        .bind(v.created_at)
        .bind(b(&w.param_id))
        .bind(b(&w.org_id))
        .bind(b(&w.env_id))
        .bind(i(w.expected_current))
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
                .bind(b(&w.credential_id))
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
    .bind(b(&w.param_id))
    .bind(i(v.version))
    .bind(b(&w.org_id))
    .bind(credential_id)
    .bind(v.is_secret)
    .bind(v.action.as_str())
    .bind(b(&v.actor_id))
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
            .bind(b(&org_id))
            .fetch_one(&mut *conn)
            .await?;
    if newest == Some(i64::from(term.0)) {
        Ok(())
    } else {
        Err(StoreError::StaleKeyTerm)
    }
}

/// What the chain hash covers for one event: its sequence number and its JSON.
pub fn audit_entry(seq: u64, body: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body.as_bytes());
    v
}
