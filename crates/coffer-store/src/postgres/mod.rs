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

crate::keys::impl_key_store!(
    PgStore,
    pool,
    "SELECT id FROM orgs WHERE id = $1 FOR UPDATE",
    set_org,
    "BYTEA",
    "BIGINT",
    // Walk the (org_id, credential_id) index in order. Without statistics (a bulk load
    // before autovacuum, or autovacuum off) PostgreSQL plans a bitmap scan of the whole
    // organisation and a sort for every batch: 1.7 s per 2,000 values at 1M values.
    Some("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
);

crate::identity::impl_identity_store!(
    PgStore,
    pool,
    pool,
    "SELECT id FROM orgs WHERE id = $1 FOR UPDATE"
);

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

async fn set_org(conn: &mut PgConnection, org_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('coffer.org_id', $1, true)")
        .bind(org_id.simple().to_string())
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

    /// A transaction in which row-level security lets this organisation's rows through.
    async fn scoped(
        &self,
        org_id: Uuid,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        set_org(&mut tx, org_id).await?;
        Ok(tx)
    }

    /// A transaction on `pool` scoped to `scope`.
    async fn tx(
        &self,
        pool: &PgPool,
        scope: crate::Scope<'_>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let mut tx = pool.begin().await?;
        set_scope(&mut tx, scope).await?;
        Ok(tx)
    }

    async fn set_scope(
        &self,
        conn: &mut PgConnection,
        scope: crate::Scope<'_>,
    ) -> Result<(), StoreError> {
        set_scope(conn, scope).await
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

    /// PostgreSQL removes dead rows at its next VACUUM and recycles WAL segments by itself
    /// (see docs/crypto.md for what that means for backups and archives).
    async fn after_shredding(&self) -> Result<(), StoreError> {
        Ok(())
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

macro_rules! pg_value_select {
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

#[async_trait]
impl Store for PgStore {
    async fn close(&self) {
        PgStore::close(self).await;
    }

    async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, shares, threshold, root_check, created_at, sealed_root FROM seal_config WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SealConfigRow {
                kind: r.text("kind")?,
                shares: u8::try_from(r.int("shares")?).map_err(|_| StoreError::Corrupt)?,
                threshold: u8::try_from(r.int("threshold")?).map_err(|_| StoreError::Corrupt)?,
                root_check: RootKeyCheck::from_stored_bytes(r.bytes("root_check")?),
                created_at: r.int("created_at")?,
                sealed_root: r.opt_bytes("sealed_root")?,
            })
        })
        .transpose()
    }

    async fn init_seal_config(&self, c: &SealConfigRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO seal_config (id, kind, shares, threshold, root_check, created_at, sealed_root) VALUES (1, $1, $2, $3, $4, $5, $6)")
            .bind(&c.kind)
            .bind(i64::from(c.shares))
            .bind(i64::from(c.threshold))
            .bind(c.root_check.as_bytes())
            .bind(c.created_at)
            .bind(c.sealed_root.as_deref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_org(&self, org: &OrgRow, key: &TenantKeyRow) -> Result<(), StoreError> {
        let mut tx = self.scoped(org.id).await?;
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(b(&org.id))
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&mut *tx)
            .await?;
        self.ensure_root(&mut tx).await?;
        sqlx::query(
            "INSERT INTO tenant_keys (org_id, term, wrapped, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(b(&key.org_id))
        .bind(i64::from(key.term.0))
        .bind(key.wrapped.as_bytes())
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn org(&self, org_id: Uuid) -> Result<Option<OrgRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = $1")
            .bind(b(&org_id))
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(org_row)
            .transpose();
        tx.commit().await?;
        out
    }

    async fn tenant_keys(&self, org_id: Uuid) -> Result<Vec<TenantKeyRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query("SELECT org_id, term, wrapped, created_at FROM tenant_keys WHERE org_id = $1 ORDER BY term")
            .bind(b(&org_id))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(crate::keys::tenant_key_row)
            .collect();
        tx.commit().await?;
        out
    }

    async fn create_project(&self, p: &ProjectRow) -> Result<(), StoreError> {
        let mut tx = self.scoped(p.org_id).await?;
        sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(b(&p.id))
            .bind(b(&p.org_id))
            .bind(&p.name)
            .bind(p.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn projects(&self, org_id: Uuid) -> Result<Vec<ProjectRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY name",
        )
        .bind(b(&org_id))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(project_row)
        .collect();
        tx.commit().await?;
        out
    }

    async fn project_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<ProjectRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query(
            "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 AND name = $2",
        )
        .bind(b(&org_id))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(project_row)
        .transpose();
        tx.commit().await?;
        out
    }

    async fn create_env(&self, e: &EnvRow) -> Result<(), StoreError> {
        let mut tx = self.scoped(e.org_id).await?;
        sqlx::query("INSERT INTO environments (id, org_id, project_id, parent_id, name, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(b(&e.id))
            .bind(b(&e.org_id))
            .bind(b(&e.project_id))
            .bind(e.parent_id.as_ref().map(|p| p.as_bytes().to_vec()))
            .bind(&e.name)
            .bind(e.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn envs(&self, org_id: Uuid, project_id: Uuid) -> Result<Vec<EnvRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query(
            "SELECT id, org_id, project_id, parent_id, name, created_at FROM environments \
             WHERE org_id = $1 AND project_id = $2 ORDER BY created_at, name",
        )
        .bind(b(&org_id))
        .bind(b(&project_id))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(env_row)
        .collect();
        tx.commit().await?;
        out
    }

    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query("SELECT id, org_id, env_id, name, current_version, deleted, updated_at FROM params WHERE org_id = $1 AND env_id = $2 AND name = $3")
            .bind(b(&org_id))
            .bind(b(&env_id))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(param_row)
            .transpose();
        tx.commit().await?;
        out
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
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query(pg_value_select!(
            "v.version = p.current_version",
            "p.org_id = $1 AND p.env_id = $2 AND p.name = $3 AND NOT p.deleted"
        ))
        .bind(b(&org_id))
        .bind(b(&env_id))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(param_value)
        .transpose();
        tx.commit().await?;
        out
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
        let mut tx = self.scoped(org_id).await?;
        let mut out = Vec::new();
        for env_id in env_ids {
            let rows = sqlx::query(pg_value_select!(
                "v.version = p.current_version",
                "p.org_id = $1 AND p.env_id = $2 AND NOT p.deleted ORDER BY p.name"
            ))
            .bind(b(&org_id))
            .bind(b(env_id))
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                out.push(param_value(r)?);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query(pg_value_select!(
            "v.version = $1",
            "p.org_id = $2 AND p.id = $3"
        ))
        .bind(i(version))
        .bind(b(&org_id))
        .bind(b(&param_id))
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(param_value)
        .transpose();
        tx.commit().await?;
        out
    }

    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError> {
        let mut tx = self.scoped(org_id).await?;
        let out = sqlx::query("SELECT param_id, version, is_secret, action, actor_id, created_at FROM param_versions WHERE org_id = $1 AND param_id = $2 ORDER BY version")
            .bind(b(&org_id))
            .bind(b(&param_id))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(version_row)
            .collect();
        tx.commit().await?;
        out
    }

    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError> {
        let outcome = append_version(&self.pool, w).await;
        // Forgotten whatever the outcome: a conflict means another writer changed it.
        self.values.forget(w.org_id, &w.name);
        outcome
    }

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
        let mut tx = self.pool.begin().await?;
        set_org(&mut tx, org_id).await?;
        let rows = sqlx::query(
            "SELECT org_id, seq, time, body, prev_hash, hash FROM audit_events WHERE org_id = $1 AND seq > $2 \
             AND ($3::BIGINT IS NULL OR time >= $3) AND ($4::BIGINT IS NULL OR time < $4) \
             AND ($5::TEXT IS NULL OR action = $5) AND ($6::BYTEA IS NULL OR actor_id = $6) \
             AND ($7::TEXT IS NULL OR outcome = $7) AND ($8::TEXT IS NULL OR left(target, length($8)) = $8) \
             ORDER BY seq LIMIT $9",
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
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let r = sqlx::query("SELECT seq, hash FROM audit_heads WHERE org_id = $1")
            .bind(b(&org_id))
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| Ok((u64_col(&r, "seq")?, hash_col(&r, "hash")?)))
            .transpose()
            .map(|h| h.filter(|(seq, _)| *seq > 0))
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        set_org(&mut tx, c.org_id).await?;
        sqlx::query("INSERT INTO audit_checkpoints (org_id, seq, hash, created_at, signature) VALUES ($1, $2, $3, $4, $5)")
            .bind(b(&c.org_id))
            .bind(i(c.seq))
            .bind(c.hash.as_slice())
            .bind(c.created_at)
            .bind(c.signature.as_slice())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE audit_heads SET checkpoint_seq = GREATEST(checkpoint_seq, $2) WHERE org_id = $1",
        )
        .bind(b(&c.org_id))
        .bind(i(c.seq))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        set_org(&mut tx, org_id).await?;
        let rows = sqlx::query("SELECT org_id, seq, hash, created_at, signature FROM audit_checkpoints WHERE org_id = $1 ORDER BY seq")
            .bind(b(&org_id))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(checkpoint_row).collect()
    }

    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError> {
        let r =
            sqlx::query("SELECT public_key, wrapped_key, created_at FROM audit_keys WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        r.map(|r| {
            Ok(AuditKeyRow {
                public_key: r.bytes("public_key")?,
                wrapped_key: r.bytes("wrapped_key")?,
                created_at: r.int("created_at")?,
            })
        })
        .transpose()
    }

    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.ensure_root(&mut tx).await?;
        sqlx::query("INSERT INTO audit_keys (id, public_key, wrapped_key, created_at) VALUES (1, $1, $2, $3)")
            .bind(k.public_key.as_slice())
            .bind(k.wrapped_key.as_slice())
            .bind(k.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    fn set_root_guard(&self, check: Option<RootKeyCheck>) {
        if let Ok(mut g) = self.root_guard.write() {
            *g = check.map_or(RootGuard::Sealed, RootGuard::Root);
        }
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

    async fn orgs_needing_checkpoint(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT org_id FROM audit_heads WHERE seq > checkpoint_seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| uuid_col(r, "org_id"))
            .collect()
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
