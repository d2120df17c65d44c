//! Group commit: concurrent parameter writes and audit appends share one durable transaction.
//!
//! SQLite has one writer and every commit costs an fsync. The writer task takes the first
//! pending write, drains whatever else is queued (up to a batch limit), applies each inside
//! its own SAVEPOINT — so one conflicting write does not fail its neighbours — and commits
//! once. Every caller is answered only after that commit, so an acknowledged write is durable.
//!
//! A batch of nothing but audit events asked for [`Durability::Written`] (events of
//! operations that changed nothing: reads, lists, denials) commits with `synchronous =
//! NORMAL`: the log frames are written to the operating system before anyone is answered,
//! so they survive the process being killed, but the commit does not wait for the disk.
//! The writer then syncs the log itself within [`READ_SYNC_BOUND`] (sooner if a durable
//! batch commits first, whose sync covers the whole log).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sqlx::{Acquire, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::cache::ValueCache;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::append_version;
use crate::sql::{DbId, db_int};
use crate::{Durability, NewAuditEvent, ParamWrite, READ_SYNC_BOUND, StoreError};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

/// What the writer can do.
#[derive(Debug)]
pub(super) enum Work {
    Param(ParamWrite),
    Audit(NewAuditEvent, Durability),
}

#[derive(Debug)]
pub(super) enum Done {
    Param,
    Audit(u64, [u8; 32]),
}

pub(super) type Reply = oneshot::Sender<Result<Done, StoreError>>;
pub(super) type Job = (Work, Reply);

/// The chain ends the writer knows: exact, because every append holds the one write
/// connection. The writer takes them while it holds the connection and puts them back before
/// its commit releases it; an append outside the writer (a change's event, committed with
/// the change) drops its chain's entry while it holds the connection, and the writer reads
/// that head from the database next time. Cleared on any failure.
pub(super) type SharedHeads = Arc<std::sync::Mutex<crate::chain::Heads>>;

fn lock(heads: &SharedHeads) -> std::sync::MutexGuard<'_, crate::chain::Heads> {
    // The map is only a cache of the database: a poisoned one is emptied, not trusted.
    heads.lock().unwrap_or_else(|p| {
        let mut g = p.into_inner();
        g.clear();
        g
    })
}

pub(super) fn forget_head(heads: &SharedHeads, org: Uuid) {
    lock(heads).remove(&org);
}

pub(super) fn spawn(
    pool: SqlitePool,
    cache: Arc<ValueCache>,
    heads: SharedHeads,
    wal: PathBuf,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut sync = LogSync::new(wal);
        loop {
            let first = match sync.due() {
                None => rx.recv().await,
                Some(due) => match tokio::time::timeout_at(due.into(), rx.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        sync.start().await;
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let relaxed = !sync.failed
                && batch
                    .iter()
                    .all(|(w, _)| matches!(w, Work::Audit(_, Durability::Written)));
            let results = commit_batch(&pool, &batch, &heads, relaxed).await;
            if results.iter().any(Result::is_err) {
                lock(&heads).clear();
            }
            if results.iter().any(Result::is_ok) {
                // Something was committed: either left for the log sync, or synced with
                // the commit itself (`synchronous = FULL` syncs the whole log).
                sync.committed(relaxed);
            }
            for ((work, reply), result) in batch.drain(..).zip(results) {
                if let (Work::Param(w), Ok(_)) = (&work, &result) {
                    cache.invalidate(w.org_id, w.env_id, &w.name);
                    if let Some(e) = &w.event {
                        e.mark_committed();
                    }
                }
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
            if sync.due().is_some_and(|due| Instant::now() >= due) {
                sync.start().await;
            }
        }
        if sync.due().is_some() {
            sync.start().await;
        }
        sync.finish().await;
    });
    tx
}

/// The writer's own sync of the write-ahead log, for batches committed without one.
struct LogSync {
    wal: PathBuf,
    /// When the oldest commit not yet covered by a sync (finished or running) was made.
    unsynced: Option<Instant>,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// A sync failed: the log may have lost what it held, and the writer no longer trusts
    /// its own syncs; every batch commits with `synchronous = FULL` from then on.
    failed: bool,
}

impl LogSync {
    fn new(wal: PathBuf) -> Self {
        Self {
            wal,
            unsynced: None,
            running: None,
            failed: false,
        }
    }

    fn due(&self) -> Option<Instant> {
        self.unsynced.map(|t| t + READ_SYNC_BOUND)
    }

    fn committed(&mut self, relaxed: bool) {
        if relaxed {
            self.unsynced.get_or_insert_with(Instant::now);
        } else {
            self.unsynced = None;
        }
    }

    /// Sync what is committed so far, beside the writer's next batches (a sync covers what
    /// was written before it began, whatever comes after).
    async fn start(&mut self) {
        self.finish().await;
        self.unsynced = None;
        let wal = self.wal.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            std::fs::File::open(wal)?.sync_data()
        }));
    }

    async fn finish(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let failure = match running.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %failure, "could not sync the write-ahead log: audit events of reads committed in the last moments may not be on stable storage; from now on every commit waits for its own sync");
        self.failed = true;
    }
}

/// Rows per multi-row INSERT of audit events (11 parameters each, far below SQLite's limit).
const AUDIT_ROWS_PER_INSERT: usize = 64;

/// Append every audit event of the batch: chain hashes computed here from the heads, one
/// multi-row INSERT per chunk, one head update per organisation. All or nothing.
pub(super) async fn append_audit_batch(
    conn: &mut SqliteConnection,
    events: &[&NewAuditEvent],
    heads: &mut crate::chain::Heads,
) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
    let touched = crate::chain::orgs(events);
    for org in &touched {
        if !heads.contains_key(org) {
            let head = load_head(&mut *conn, *org).await?;
            heads.insert(*org, head);
        }
    }
    let assigned = crate::chain::assign(events, heads)?;
    for (chunk_events, chunk_assigned) in events
        .chunks(AUDIT_ROWS_PER_INSERT)
        .zip(assigned.chunks(AUDIT_ROWS_PER_INSERT))
    {
        let mut sql = String::from(
            "INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target, body, prev_hash, hash) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk_events.len()].join(", "));
        // Only placeholders are generated; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (e, (seq, prev, hash)) in chunk_events.iter().zip(chunk_assigned) {
            q = q
                .bind(DbId(e.org_id))
                .bind(db_int(*seq))
                .bind(DbId(e.id))
                .bind(e.time)
                .bind(e.action.clone())
                .bind(e.actor_id.map(DbId))
                .bind(e.outcome.clone())
                .bind(e.target.clone())
                .bind(e.body.clone())
                .bind(prev.to_vec())
                .bind(hash.to_vec());
        }
        q.execute(&mut *conn).await?;
    }
    for org in touched {
        if let Some((seq, hash)) = heads.get(&org) {
            sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES (?, ?, ?) ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash")
                .bind(DbId(org))
                .bind(db_int(*seq))
                .bind(hash.to_vec())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(assigned
        .into_iter()
        .map(|(seq, _, hash)| (seq, hash))
        .collect())
}

async fn load_head(conn: &mut SqliteConnection, org: Uuid) -> Result<(u64, [u8; 32]), StoreError> {
    use sqlx::Row;
    let r = sqlx::query("SELECT seq, hash FROM audit_heads WHERE org_id = ?")
        .bind(DbId(org))
        .fetch_optional(&mut *conn)
        .await?;
    match r {
        Some(r) => {
            let seq =
                u64::try_from(r.try_get::<i64, _>("seq")?).map_err(|_| StoreError::Corrupt)?;
            let hash: Vec<u8> = r.try_get("hash")?;
            Ok((seq, hash.try_into().map_err(|_| StoreError::Corrupt)?))
        }
        None => Ok((0, coffer_crypto::audit::GENESIS)),
    }
}

fn failed(n: usize) -> Vec<Result<Done, StoreError>> {
    (0..n).map(|_| Err(StoreError::CommitFailed)).collect()
}

/// Commit one batch on the write connection; `relaxed`: without waiting for the disk (see
/// the module's comment). The connection is always handed back with `synchronous = FULL`,
/// or closed: the other users of the write pool count on it.
async fn commit_batch(
    pool: &SqlitePool,
    batch: &[Job],
    shared: &SharedHeads,
    relaxed: bool,
) -> Vec<Result<Done, StoreError>> {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not take the write connection");
            return failed(batch.len());
        }
    };
    if !relaxed {
        return commit_on(&mut conn, batch, shared).await;
    }
    if let Err(e) = sqlx::raw_sql("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await
    {
        tracing::error!(error = %e, "could not relax the commit of audit events");
        return commit_on(&mut conn, batch, shared).await;
    }
    let results = commit_on(&mut conn, batch, shared).await;
    if let Err(e) = sqlx::raw_sql("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await
    {
        tracing::error!(error = %e, "could not restore synchronous commits; closing the write connection");
        let _ = conn.close().await;
    }
    results
}

async fn commit_on(
    conn: &mut SqliteConnection,
    batch: &[Job],
    shared: &SharedHeads,
) -> Vec<Result<Done, StoreError>> {
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "could not begin a write transaction");
            return failed(batch.len());
        }
    };
    // Taken only now that this task holds the write connection (see `SharedHeads`).
    let mut heads = std::mem::take(&mut *lock(shared));
    let heads = &mut heads;
    let mut results: Vec<Option<Result<Done, StoreError>>> =
        (0..batch.len()).map(|_| None).collect();

    let audit: Vec<(usize, &NewAuditEvent)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, (w, _))| {
            if let Work::Audit(e, _) = w {
                Some((i, e))
            } else {
                None
            }
        })
        .collect();
    if !audit.is_empty() {
        let events: Vec<&NewAuditEvent> = audit.iter().map(|(_, e)| *e).collect();
        // A second try with the heads read again from the database: another process on the
        // same file (a second service in tests, an operator's tool) may have appended.
        let mut r = Err(StoreError::CommitFailed);
        for _ in 0..2 {
            r = async {
                let mut sp = (&mut tx).begin().await?;
                match append_audit_batch(&mut sp, &events, heads).await {
                    Ok(v) => {
                        sp.commit().await?;
                        Ok(v)
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        Err(e)
                    }
                }
            }
            .await;
            if r.is_ok() {
                break;
            }
            heads.clear();
        }
        match r {
            Ok(assigned) => {
                for ((i, _), (seq, hash)) in audit.iter().zip(assigned) {
                    results[*i] = Some(Ok(Done::Audit(seq, hash)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed");
                heads.clear();
                for (i, _) in &audit {
                    results[*i] = Some(Err(StoreError::CommitFailed));
                }
            }
        }
    }

    for (i, (work, _)) in batch.iter().enumerate() {
        let Work::Param(w) = work else { continue };
        let org = w.event.as_ref().map(|e| e.event.org_id);
        let head_before = org.and_then(|o| heads.get(&o).copied());
        let r = async {
            let mut sp = (&mut tx).begin().await?;
            let applied = match append_version(&mut sp, w).await {
                Ok(()) => match &w.event {
                    // The write's event, in the write's savepoint: both or neither.
                    Some(e) => append_audit_batch(&mut sp, &[&e.event], heads)
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            tracing::error!(error = %e, "audit append failed; the write is rolled back");
                            StoreError::AuditFailed
                        }),
                    None => Ok(()),
                },
                Err(e) => Err(e),
            };
            match applied {
                Ok(()) => {
                    sp.commit().await?;
                    Ok(Done::Param)
                }
                Err(e) => {
                    sp.rollback().await?;
                    Err(e)
                }
            }
        }
        .await;
        if r.is_err()
            && let Some(org) = org
        {
            // The savepoint's event is gone: the chain ends where it did before.
            match head_before {
                Some(h) => heads.insert(org, h),
                None => heads.remove(&org),
            };
        }
        results[i] = Some(r);
    }
    // Back before the commit releases the connection (see `SharedHeads`).
    *lock(shared) = std::mem::take(heads);
    match tx.commit().await {
        Ok(()) => results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::CommitFailed)))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "write transaction failed to commit");
            failed(batch.len())
        }
    }
}
