//! The PostgreSQL backend, for several server nodes on one database.
//!
//! Writes are plain transactions (PostgreSQL groups commits itself). Parameter writes use
//! the same optimistic version check as SQLite; audit appends lock their chain's head row
//! (`SELECT … FOR UPDATE`), which serialises appends to one chain across nodes. Values a
//! node caches are never trusted on their own: the audit append confirms them (`cache`).

mod audit_writer;
mod cache;
mod cluster;
mod notify;
mod param_writer;
mod reads;
mod repos;

use audit_writer::{Queued, spawn_audit_writer};

use std::time::Duration;

use async_trait::async_trait;
use coffer_crypto::RootKeyCheck;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::rows::*;
use crate::sql::{Backend as _, DbId, Stmt, db_int, scoped};
use crate::*;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/postgres/0002_audit.sql"),
    ),
    (
        3,
        "rls",
        include_str!("../../migrations/postgres/0003_rls.sql"),
    ),
    (
        4,
        "identity",
        include_str!("../../migrations/postgres/0004_identity.sql"),
    ),
    (
        5,
        "keys",
        include_str!("../../migrations/postgres/0005_keys.sql"),
    ),
    (
        6,
        "external_keys",
        include_str!("../../migrations/postgres/0006_external_keys.sql"),
    ),
    (
        7,
        "audit_rls",
        include_str!("../../migrations/postgres/0007_audit_rls.sql"),
    ),
    (
        8,
        "one_round_trip",
        include_str!("../../migrations/postgres/0008_one_round_trip.sql"),
    ),
    (
        9,
        "identity_rls",
        include_str!("../../migrations/postgres/0009_identity_rls.sql"),
    ),
    (
        10,
        "checked_audit",
        include_str!("../../migrations/postgres/0010_checked_audit.sql"),
    ),
    (
        11,
        "one_round_trip_writes",
        include_str!("../../migrations/postgres/0011_one_round_trip_writes.sql"),
    ),
    (
        12,
        "audited_writes",
        include_str!("../../migrations/postgres/0012_audited_writes.sql"),
    ),
    (
        13,
        "signed_heads",
        include_str!("../../migrations/postgres/0013_signed_heads.sql"),
    ),
    (
        14,
        "compact_audit",
        include_str!("../../migrations/postgres/0014_compact_audit.sql"),
    ),
    (
        15,
        "audit_archive",
        include_str!("../../migrations/postgres/0015_audit_archive.sql"),
    ),
    (
        16,
        "segment_files",
        include_str!("../../migrations/postgres/0016_segment_files.sql"),
    ),
];

#[async_trait]
impl crate::sql::Backend for PgStore {
    type Row = sqlx::postgres::PgRow;
    type Tx = sqlx::Transaction<'static, sqlx::Postgres>;
    type Pool<'a> = crate::sql::PoolExec<'a, sqlx::Postgres>;

    const LOCK_ORG: &'static str = "SELECT id FROM orgs WHERE id = $1 FOR UPDATE";
    const BLOB: &'static str = "BYTEA";
    const INT: &'static str = "BIGINT";
    // Walk the (org_id, credential_id) index in order. Without statistics (a bulk load
    // before autovacuum, or autovacuum off) PostgreSQL plans a bitmap scan of the whole
    // organisation and a sort for every batch: 1.7 s per 2,000 values at 1M values.
    const REWRAP_WALK_HINT: Option<&'static str> =
        Some("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off");
    const SCOPED_READS: bool = true;
    const AUDIT_BYTES_SQL: &'static str = "SELECT (pg_total_relation_size('audit_log') \
         + pg_total_relation_size('audit_events') + pg_total_relation_size('audit_strings'))::BIGINT AS bytes";

    fn reads(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.pool)
    }

    fn writes(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.pool)
    }

    async fn begin_bare(&self) -> Result<Self::Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn begin(&self, scope: crate::Scope<'_>) -> Result<Self::Tx, StoreError> {
        let sql = begin_scoped_sql(scope)?;
        Ok(self.pool.begin_with(sqlx::AssertSqlSafe(sql)).await?)
    }

    async fn begin_read(&self, scope: crate::Scope<'_>) -> Result<Self::Tx, StoreError> {
        crate::sql::Backend::begin(self, scope).await
    }

    async fn rescope(&self, tx: &mut Self::Tx, scope: crate::Scope<'_>) -> Result<(), StoreError> {
        set_scope(tx, scope).await
    }

    async fn ensure_root(&self, tx: &mut Self::Tx) -> Result<(), StoreError> {
        PgStore::ensure_root(self, tx).await
    }

    /// The same plpgsql append as the audit writer's, in the change's transaction: the
    /// chain's head row stays locked until that transaction ends.
    async fn append_in(
        &self,
        tx: &mut Self::Tx,
        event: &NewAuditEvent,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        audit_writer::append_one(&mut *tx, &self.dict, event)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "audit append failed; the change is rolled back");
                StoreError::AuditFailed
            })
    }

    async fn notify_in(
        &self,
        tx: &mut Self::Tx,
        notices: &[Invalidation],
    ) -> Result<(), StoreError> {
        for n in notices {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(notify::CHANNEL)
                .bind(notify::encode(n))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn key_material_changed(&self) {
        PgStore::key_material_changed(self);
    }

    async fn after_shredding(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    audit: mpsc::Sender<Queued>,
    /// Parameter writes, committed in groups (`param_writer`).
    writes: mpsc::Sender<param_writer::ParamJob>,
    /// While this node leads: the connection holding the session-level advisory lock. If the
    /// node dies, PostgreSQL ends the session and releases the lock for another node.
    leader: std::sync::Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    invalidations: tokio::sync::broadcast::Sender<Invalidation>,
    /// Whether the invalidation listener is connected and listening (see
    /// [`Cluster::notices_live`]).
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reads: reads::Reader,
    values: std::sync::Arc<cache::ValueCache>,
    root_guard: std::sync::Arc<std::sync::RwLock<RootGuard>>,
    /// Ids of audit chains and interned texts, shared by this node's writers.
    dict: audit_writer::Dict,
}

/// What root-sealed writes are checked against.
#[derive(Debug, Clone, Default)]
enum RootGuard {
    /// No service has said (the store used on its own, by tools and tests): unchecked.
    #[default]
    Unset,
    /// The service holds no root key: refuse.
    Sealed,
    /// The service holds the root key with this check value.
    Root(RootKeyCheck),
}

/// What to do about the schema when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Apply pending migrations (the connecting role must own the schema).
    Migrate,
    /// Refuse to start unless every migration is applied; change nothing.
    Verify,
}

/// Apply pending migrations with `url` (the schema owner's role) and disconnect.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(url.parse::<PgConnectOptions>()?)
        .await?;
    let r = crate::migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(StoreError::Migrate);
    pool.close().await;
    r
}

async fn verify_schema(pool: &PgPool) -> Result<(), StoreError> {
    let want = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    // A missing table (never migrated) counts as version 0.
    let have: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    let have = have.and_then(|h| h.0).unwrap_or(0);
    if have == want {
        Ok(())
    } else {
        Err(StoreError::SchemaOutdated { have, want })
    }
}

/// Per-session TCP settings for the server's end of every connection.
const SERVER_KEEPALIVE: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "15000"),
];

/// The setting that opens the row-level security walls for `scope`, and its value: hex
/// digits or `on`, nothing else.
fn scope_setting(scope: crate::Scope<'_>) -> (&'static str, String) {
    match scope {
        crate::Scope::Org(id) => ("coffer.org_id", id.simple().to_string()),
        crate::Scope::User(id) => ("coffer.user_id", id.simple().to_string()),
        crate::Scope::Token(hash) => ("coffer.token_hash", hex::encode(hash)),
        crate::Scope::System => ("coffer.system", "on".to_owned()),
    }
}

/// `BEGIN` and the scope in one round trip (two statements in one simple query). The
/// value is written into the SQL, so it must be what [`scope_setting`] makes: checked here
/// again, failing closed.
fn begin_scoped_sql(scope: crate::Scope<'_>) -> Result<String, StoreError> {
    let (name, value) = scope_setting(scope);
    if !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StoreError::Corrupt);
    }
    Ok(format!(
        "BEGIN; SELECT set_config('{name}', '{value}', true)"
    ))
}

/// Open the row-level security walls for `scope` for the rest of the transaction.
async fn set_scope(conn: &mut PgConnection, scope: crate::Scope<'_>) -> Result<(), StoreError> {
    let (name, value) = scope_setting(scope);
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl PgStore {
    /// Connect with `url` (`postgres://user@host/db`) and run pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Schema::Migrate).await
    }

    /// How a node connects to `url`: the database's side of each connection gives up on
    /// a vanished node as quickly as the node's side gives up on the database (see
    /// vendor/README.md). Otherwise a dead leader's session, and with it the job lock, would
    /// live on until the server's own TCP keepalive (2 h by default) ended it.
    pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
        Ok(url.parse::<PgConnectOptions>()?.options(SERVER_KEEPALIVE))
    }

    /// Connect; with [`Schema::Verify`] the schema is only checked, for a runtime role that
    /// may not change it (migrations then run separately, as the owner: [`PgStore::migrate`]).
    pub async fn connect_with(url: &str, schema: Schema) -> Result<Self, StoreError> {
        let opts = Self::connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            // No `SELECT 1` before every use: a broken connection fails its query (503) and
            // is dropped; the ping would double the round trips of a read.
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        // Audit chain hashes are computed in the database over the bodies' UTF-8 bytes,
        // exactly as verification computes them; another encoding would change the bytes.
        // And a response waits for its audit event's commit, which only makes the event
        // durable if commits wait for their WAL flush (fail closed on a server set otherwise).
        let (encoding, sync_commit): (String, String) = sqlx::query_as(
            "SELECT pg_encoding_to_char(encoding), current_setting('synchronous_commit') \
             FROM pg_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await?;
        if encoding != "UTF8" {
            return Err(StoreError::Encoding(encoding));
        }
        if sync_commit == "off" {
            return Err(StoreError::AsyncCommit);
        }
        match schema {
            Schema::Migrate => crate::migrator(MIGRATIONS)
                .run(&pool)
                .await
                .map_err(StoreError::Migrate)?,
            Schema::Verify => verify_schema(&pool).await?,
        }
        let values = std::sync::Arc::<cache::ValueCache>::default();
        let dict = audit_writer::Dict::default();
        let audit = spawn_audit_writer(pool.clone(), values.clone(), dict.clone());
        let writes = param_writer::spawn_param_writer(pool.clone(), dict.clone());
        let listening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let invalidations = notify::spawn_listener(pool.clone(), listening.clone());
        let reads = reads::Reader::spawn(pool.clone());
        Ok(Self {
            pool,
            audit,
            writes,
            leader: std::sync::Arc::default(),
            invalidations,
            listening,
            reads,
            values,
            root_guard: std::sync::Arc::default(),
            dict,
        })
    }

    /// Refuse (with [`StoreError::RootReplaced`]) to go on with a transaction that stores
    /// root-sealed material unless the database's root key is still the one this node
    /// holds. The share lock on the seal row makes a rekey (which updates that row) wait for
    /// this transaction, and this transaction wait for a rekey under way and then see its
    /// new check value.
    async fn ensure_root(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        // No root key known (sealed, or catching up with a rekey elsewhere): nothing sealed
        // with one may be stored now.
        let guard = self
            .root_guard
            .read()
            .map(|g| g.clone())
            .unwrap_or(RootGuard::Sealed);
        let check = match guard {
            RootGuard::Unset => return Ok(()),
            RootGuard::Sealed => return Err(StoreError::RootReplaced),
            RootGuard::Root(check) => check,
        };
        let same =
            sqlx::query("SELECT 1 FROM seal_config WHERE id = 1 AND root_check = $1 FOR SHARE")
                .bind(check.as_bytes())
                .fetch_optional(&mut *conn)
                .await?;
        same.map(|_| ()).ok_or(StoreError::RootReplaced)
    }

    /// Ciphertexts changed (rewrap, deletion): drop this node's cached values (other nodes'
    /// entries fail their checks or expire).
    fn key_material_changed(&self) {
        self.values.clear();
    }

    pub async fn close(&self) {
        if let Some(conn) = self.leader.lock().await.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
        self.pool.close().await;
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn a_scoped_begin_writes_only_hex_or_on_into_its_sql() {
        let org = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            begin_scoped_sql(crate::Scope::Org(org)).unwrap(),
            "BEGIN; SELECT set_config('coffer.org_id', '0123456789abcdef0123456789abcdef', true)"
        );
        assert_eq!(
            begin_scoped_sql(crate::Scope::Token(&[0xab; 32])).unwrap(),
            format!(
                "BEGIN; SELECT set_config('coffer.token_hash', '{}', true)",
                "ab".repeat(32)
            )
        );
        assert!(
            begin_scoped_sql(crate::Scope::System)
                .unwrap()
                .ends_with("set_config('coffer.system', 'on', true)")
        );
        let user = begin_scoped_sql(crate::Scope::User(Uuid::new_v4())).unwrap();
        let value = user.split('\'').nth(3).unwrap();
        assert!(value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
