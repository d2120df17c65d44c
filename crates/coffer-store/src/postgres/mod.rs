//! The PostgreSQL backend, for several server nodes on one database.
//!
//! Writes are plain transactions (PostgreSQL groups commits itself). Parameter writes use
//! the same optimistic version check as SQLite; audit appends lock their chain's head row
//! (`SELECT … FOR UPDATE`), which serialises appends to one chain across nodes. Values a
//! node caches are never trusted on their own: the audit append confirms them (`cache`).

mod cache;
mod notify;
mod reads;

use std::time::Duration;

use async_trait::async_trait;
use coffer_crypto::RootKeyCheck;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::rows::*;
use crate::sql::{Backend as _, Stmt, scoped};
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

    fn reads(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.pool)
    }

    fn writes(&self) -> Self::Pool<'_> {
        crate::sql::PoolExec(&self.pool)
    }

    async fn begin_bare(&self) -> Result<Self::Tx, StoreError> {
        Ok(self.pool.begin().await?)
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
    audit: mpsc::Sender<AuditJob>,
    /// While this node leads: the connection holding the session-level advisory lock. If the
    /// node dies, PostgreSQL ends the session and releases the lock for another node.
    leader: std::sync::Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    invalidations: tokio::sync::broadcast::Sender<Invalidation>,
    reads: reads::Reader,
    values: std::sync::Arc<cache::ValueCache>,
    root_guard: std::sync::Arc<std::sync::RwLock<RootGuard>>,
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

/// Advisory lock key for background-job leadership ("coffer" in ASCII).
const LEADER_LOCK: i64 = 0x636f_6666_6572;

type AuditReply = oneshot::Sender<Result<Option<(u64, [u8; 32])>, StoreError>>;
type AuditJob = (NewAuditEvent, Vec<ReadCheck>, AuditReply);

const AUDIT_BATCH: usize = 256;

/// Open the row-level security walls for `scope` for the rest of the transaction.
async fn set_scope(conn: &mut PgConnection, scope: crate::Scope<'_>) -> Result<(), StoreError> {
    let (name, value) = match scope {
        crate::Scope::Org(id) => ("coffer.org_id", id.simple().to_string()),
        crate::Scope::User(id) => ("coffer.user_id", id.simple().to_string()),
        crate::Scope::Token(hash) => ("coffer.token_hash", hex::encode(hash)),
        crate::Scope::System => ("coffer.system", "on".to_owned()),
    };
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn b(id: &Uuid) -> &[u8] {
    id.as_bytes().as_slice()
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
        let audit = spawn_audit_writer(pool.clone(), values.clone());
        let invalidations = notify::spawn_listener(pool.clone());
        let reads = reads::Reader::spawn(pool.clone());
        Ok(Self {
            pool,
            audit,
            leader: std::sync::Arc::default(),
            invalidations,
            reads,
            values,
            root_guard: std::sync::Arc::default(),
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

#[async_trait]
impl ParamRepo for PgStore {
    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param(&mut tx, org_id, env_id, name).await
        })
    }

    async fn param_state(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<(ParamRow, bool)>, StoreError> {
        sqlx::query("SELECT * FROM coffer_param_state($1, $2, $3)")
            .bind(b(&org_id))
            .bind(b(&env_id))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Ok((param_row(&r)?, r.flag("is_secret")?)))
            .transpose()
    }

    async fn current_value(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::current_value(&mut tx, org_id, env_id, name).await
        })
    }

    async fn nearest_value(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        let found = self.reads.nearest(org_id, env_chain, name).await?;
        self.values.put(org_id, env_chain, name, found.as_ref());
        Ok(found)
    }

    async fn nearest_value_cached(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<(Option<ParamValue>, Option<ReadCheck>), StoreError> {
        if let Some((value, check)) = self.values.get(org_id, env_chain, name) {
            return Ok((Some(value), Some(check)));
        }
        Ok((self.nearest_value(org_id, env_chain, name).await?, None))
    }

    async fn current_values(
        &self,
        org_id: Uuid,
        env_ids: &[Uuid],
    ) -> Result<Vec<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::current_values(&mut tx, org_id, env_ids).await
        })
    }

    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param_version(&mut tx, org_id, param_id, version).await
        })
    }

    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param_history(&mut tx, org_id, param_id).await
        })
    }

    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError> {
        let outcome = append_version(&self.pool, w).await;
        // Forgotten whatever the outcome: a conflict means another writer changed it.
        self.values.forget(w.org_id, &w.name);
        outcome
    }
}

#[async_trait]
impl AuditRepo for PgStore {
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError> {
        self.append_audit_checked(e, &[])
            .await?
            .ok_or(StoreError::CommitFailed)
    }

    async fn append_audit_checked(
        &self,
        e: &NewAuditEvent,
        checks: &[ReadCheck],
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.audit
            .send((e.clone(), checks.to_vec(), reply))
            .await
            .map_err(|_| StoreError::CommitFailed)?;
        answer.await.map_err(|_| StoreError::CommitFailed)?
    }

    async fn audit_events(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            audit::audit_events(&mut tx, org_id, f).await
        })
    }

    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        audit::audit_head(&mut self.reads(), org_id).await
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        scoped!(self.begin(Scope::Org(c.org_id)), |tx| {
            audit::insert_checkpoint(&mut tx, c).await?;
            // Which chains still need a checkpoint is read from the head row.
            Stmt::new(
                "UPDATE audit_heads SET checkpoint_seq = GREATEST(checkpoint_seq, $2) WHERE org_id = $1",
            )
            .bind(c.org_id)
            .bind(i(c.seq))
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            audit::checkpoints(&mut tx, org_id).await
        })
    }

    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError> {
        audit::audit_key(&mut self.reads()).await
    }

    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        self.ensure_root(&mut tx).await?;
        audit::init_audit_key(&mut tx, k).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn orgs_needing_checkpoint(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT org_id FROM audit_heads WHERE seq > checkpoint_seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| uuid_col(r, "org_id"))
            .collect()
    }
}

#[async_trait]
impl Cluster for PgStore {
    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(true);
            }
            // The session (and with it the lock) is gone: compete again.
            *held = None;
        }
        let mut conn = self.pool.acquire().await?.detach();
        let won: (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if won.0 {
            *held = Some(conn);
        }
        Ok(won.0)
    }

    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        Some(self.invalidations.subscribe())
    }

    async fn publish_invalidation(&self, what: Invalidation) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(notify::encode(&what))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn set_root_guard(&self, check: Option<RootKeyCheck>) {
        if let Ok(mut g) = self.root_guard.write() {
            *g = check.map_or(RootGuard::Sealed, RootGuard::Root);
        }
    }

    async fn close(&self) {
        PgStore::close(self).await;
    }
}

/// One call of `coffer_append_version` (migration 0011): the whole write, one round trip,
/// its own transaction. The value must be sealed under the organisation's newest term; the
/// function checks that under a share lock on the organisation row, which orders the write
/// against a rotation (which takes it exclusively): a write either commits before the new
/// term exists (and the rewrap job sees it) or sees it.
async fn append_version(pool: &PgPool, w: &ParamWrite) -> Result<(), StoreError> {
    let v = &w.version;
    let outcome: String = sqlx::query_scalar(
        "SELECT coffer_append_version($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(b(&w.org_id))
    .bind(b(&w.env_id))
    .bind(b(&w.param_id))
    .bind(&w.name)
    .bind(i(w.expected_current))
    .bind(i(v.version))
    .bind(v.action == VersionAction::Delete)
    .bind(v.created_at)
    .bind(b(&w.credential_id))
    .bind(w.ciphertext.as_ref().map(|ct| ct.as_bytes()))
    .bind(w.ciphertext.as_ref().map(|ct| i64::from(ct.key_term().0)))
    .bind(v.is_secret)
    .bind(v.action.as_str())
    .bind(b(&v.actor_id))
    .fetch_one(pool)
    .await?;
    match outcome.as_str() {
        "ok" => Ok(()),
        "conflict" => Err(StoreError::Conflict),
        "stale_term" => Err(StoreError::StaleKeyTerm),
        _ => Err(StoreError::Corrupt),
    }
}

/// This node's audit writer: events queued while a batch commits go into the next batch,
/// so one statement (one round trip, one WAL flush) covers many requests. The database
/// confirms the batch's cached reads, then numbers and chains the events under each chain's
/// row lock (`coffer_append_audit_checked`), so writers on several nodes queue on a shared
/// chain instead of racing for it. (Two writers, each with a batch under way, were measured
/// slower: the second waits for the first's lock anyway, and both batches are smaller.)
///
/// (Committing without waiting for the WAL flush, and answering after a second connection's
/// synchronous commit had flushed it, so the next batch could be appended during the
/// flush, was measured ~13% slower on one node: more, smaller batches and a second round
/// trip each. With two nodes on one chain it was +8 to +35% faster, but is only correct if
/// the second connection provably outlived no crash since the batch committed: see
/// docs/benchmarks.md.)
///
/// The writer keeps a connection of its own rather than taking one from the pool: the pool
/// hands out its connections in turn, so consecutive appends would each run in a different
/// server process, none with its caches warm.
fn spawn_audit_writer(
    pool: PgPool,
    values: std::sync::Arc<cache::ValueCache>,
) -> mpsc::Sender<AuditJob> {
    let (tx, mut rx) = mpsc::channel::<AuditJob>(4096);
    let writer = async move {
        let mut conn: Option<PgConnection> = None;
        // The last (seq, hash) this writer appended to each chain: with it the writer
        // proposes the next events' hashes, which the database stores as they are if no
        // other node appended in between (only ever a proposal: the database checks the
        // head under its lock).
        let mut heads = crate::chain::Heads::new();
        while let Some(first) = rx.recv().await {
            let mut batch: Vec<AuditJob> = Vec::with_capacity(AUDIT_BATCH);
            batch.push(first);
            while batch.len() < AUDIT_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            append_batch(&pool, &mut conn, &mut heads, &values, batch).await;
        }
        if let Some(c) = conn {
            let _ = sqlx::Connection::close(c).await;
        }
    };
    // Every request waits for this loop, so it runs on a thread of its own: as a task among
    // the request tasks, each database answer waited in the runtime's queue behind them
    // before the next batch could start (measured: ~10% more reads/s at 16 connections on
    // one node with the thread). The thread ends when the store is dropped.
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            std::thread::Builder::new()
                .name("coffer-audit".into())
                .spawn(move || rt.block_on(writer))
        });
    if let Err(e) = started {
        // Without a writer every append fails (closed channel): the service fails closed.
        tracing::error!(error = %e, "could not start the audit writer");
    }
    tx
}

/// The writer's own connection, opened again after a failure.
async fn writer_connection<'c>(
    pool: &PgPool,
    conn: &'c mut Option<PgConnection>,
) -> Result<&'c mut PgConnection, StoreError> {
    if conn.is_none() {
        let opts = pool.connect_options();
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            <PgConnection as sqlx::Connection>::connect_with(&*opts),
        )
        .await
        .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
        *conn = Some(c);
    }
    conn.as_mut()
        .ok_or(StoreError::Unavailable(sqlx::Error::PoolClosed))
}

/// Append one batch and answer each of its requests: one call per organisation, each its
/// own transaction holding only its own chain's lock.
async fn append_batch(
    pool: &PgPool,
    conn: &mut Option<PgConnection>,
    heads: &mut crate::chain::Heads,
    values: &cache::ValueCache,
    batch: Vec<AuditJob>,
) {
    let mut by_org: std::collections::BTreeMap<Uuid, Vec<AuditJob>> = Default::default();
    for job in batch {
        by_org.entry(job.0.org_id).or_default().push(job);
    }
    for (org, jobs) in by_org {
        // A read of another organisation cannot be confirmed in this one's transaction.
        let (jobs, foreign): (Vec<AuditJob>, Vec<AuditJob>) = jobs
            .into_iter()
            .partition(|(_, checks, _)| checks.iter().all(|c| c.org_id == org));
        for (_, _, reply) in foreign {
            let _ = reply.send(Ok(None));
        }
        let events: Vec<&NewAuditEvent> = jobs.iter().map(|(e, _, _)| e).collect();
        let checks: Vec<&[ReadCheck]> = jobs.iter().map(|(_, c, _)| c.as_slice()).collect();
        let head = heads.remove(&org);
        let appended = match writer_connection(pool, conn).await {
            Ok(c) => append_audit_batch(c, org, head, &events, &checks).await,
            Err(e) => Err(e),
        };
        if let Ok(assigned) = &appended
            && let Some(last) = assigned.iter().rev().flatten().next()
        {
            heads.insert(org, *last);
        }
        match appended {
            Ok(assigned) => {
                for ((_, checks, reply), r) in jobs.into_iter().zip(assigned) {
                    if r.is_none() {
                        // A cached read no longer holds: read it afresh next time.
                        for c in &checks {
                            values.forget(c.org_id, &c.name);
                        }
                    }
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed");
                // The connection may be broken (a database restart): open a new one next.
                *conn = None;
                for (_, _, reply) in jobs {
                    let _ = reply.send(Err(StoreError::CommitFailed));
                }
            }
        }
    }
}

/// Append one organisation's events in one statement; returns (seq, hash) per event, in
/// order, or None for an event whose checks failed (not appended).
async fn append_audit_batch(
    conn: &mut PgConnection,
    org: Uuid,
    head: Option<(u64, [u8; 32])>,
    events: &[&NewAuditEvent],
    checks: &[&[ReadCheck]],
) -> Result<Vec<Option<(u64, [u8; 32])>>, StoreError> {
    let cols = AuditColumns::of(events);
    let cc = CheckColumns::of(checks);
    // The links the events get if nobody appended since `head`, as verification computes them.
    let proposed = match head {
        Some(h) => Some((
            h,
            crate::chain::assign(events, &mut crate::chain::Heads::from([(org, h)]))?,
        )),
        None => None,
    };
    let assigned: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT coffer_append_audit_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17)",
    )
    .bind(b(&org))
    .bind(coffer_crypto::audit::GENESIS.as_slice())
    .bind(&cols.id)
    .bind(&cols.time)
    .bind(&cols.action)
    .bind(&cols.actor)
    .bind(&cols.outcome)
    .bind(&cols.target)
    .bind(&cols.body)
    .bind(&cc.event)
    .bind(&cc.env)
    .bind(&cc.name)
    .bind(&cc.param)
    .bind(&cc.version)
    .bind(proposed.as_ref().map(|((seq, _), _)| i(*seq)))
    .bind(proposed.as_ref().map(|((_, hash), _)| hash.as_slice()))
    .bind(proposed.as_ref().map(|(_, links)| {
        links
            .iter()
            .map(|(_, _, h)| h.as_slice())
            .collect::<Vec<_>>()
    }))
    .fetch_one(&mut *conn)
    .await?;
    if assigned.is_empty()
        && !events.is_empty()
        && let Some((_, links)) = proposed
    {
        // Stored as proposed.
        return Ok(links
            .into_iter()
            .map(|(seq, _, h)| Some((seq, h)))
            .collect());
    }
    if assigned.len() != events.len() {
        return Err(StoreError::CommitFailed);
    }
    assigned
        .into_iter()
        .map(|a| {
            a.map(|bytes| {
                let (seq, hash) = bytes.split_at_checked(8).ok_or(StoreError::Corrupt)?;
                let seq = i64::from_be_bytes(seq.try_into().map_err(|_| StoreError::Corrupt)?);
                Ok((
                    u64::try_from(seq).map_err(|_| StoreError::Corrupt)?,
                    <[u8; 32]>::try_from(hash).map_err(|_| StoreError::Corrupt)?,
                ))
            })
            .transpose()
        })
        .collect()
}

/// A batch's read checks as one array per column, one element per environment to check
/// (all of one organisation: the batch's).
#[derive(Default)]
struct CheckColumns<'a> {
    event: Vec<i32>,
    env: Vec<&'a [u8]>,
    name: Vec<&'a str>,
    param: Vec<Option<&'a [u8]>>,
    version: Vec<i64>,
}

impl<'a> CheckColumns<'a> {
    fn of(checks: &[&'a [ReadCheck]]) -> Self {
        let mut cc = CheckColumns::default();
        for (event, of_event) in checks.iter().enumerate() {
            let event = i32::try_from(event + 1).unwrap_or(i32::MAX);
            for c in *of_event {
                for (level, env) in c.envs.iter().enumerate() {
                    // Nearer environments must still not define the name; the last one
                    // must still hold this version.
                    let found = level + 1 == c.envs.len();
                    cc.event.push(event);
                    cc.env.push(b(env));
                    cc.name.push(&c.name);
                    cc.param.push(found.then(|| b(&c.param_id)));
                    cc.version.push(if found { i(c.version) } else { 0 });
                }
            }
        }
        cc
    }
}

/// A batch's events as one array per column, for `coffer_append_audit_checked`.
struct AuditColumns<'a> {
    id: Vec<&'a [u8]>,
    time: Vec<i64>,
    action: Vec<&'a str>,
    actor: Vec<Option<&'a [u8]>>,
    outcome: Vec<&'a str>,
    target: Vec<&'a str>,
    body: Vec<&'a str>,
}

impl<'a> AuditColumns<'a> {
    fn of(events: &[&'a NewAuditEvent]) -> Self {
        AuditColumns {
            id: events.iter().map(|e| b(&e.id)).collect(),
            time: events.iter().map(|e| e.time).collect(),
            action: events.iter().map(|e| e.action.as_str()).collect(),
            actor: events.iter().map(|e| e.actor_id.as_ref().map(b)).collect(),
            outcome: events.iter().map(|e| e.outcome.as_str()).collect(),
            target: events.iter().map(|e| e.target.as_str()).collect(),
            body: events.iter().map(|e| e.body.as_str()).collect(),
        }
    }
}
