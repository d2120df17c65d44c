//! SQLite's audit writer: a thread with a connection of its own that appends batches of
//! audit events.
//!
//! Every audited request waits for its event. Through sqlx, each statement of a batch is a
//! round trip to the connection's worker thread, two thread wake-ups each; profiling reads
//! at one connection showed those wake-ups as most of the server's CPU per request. Here the
//! writer is the thread that runs SQLite: an event costs one hand-over to this thread and
//! one back, whatever the batch does. Events queued while a batch commits go into the next
//! one.
//!
//! Changes commit with their events on the other write connection (the sqlx pool's). The
//! database checks every append against its chain's head (migration 0006), so this writer's
//! cached heads are only a proposal: when one is stale the insert fails, and the writer reads
//! the heads again and retries once.
//!
//! A batch of nothing but [`Durability::Written`] events (operations that changed nothing:
//! reads, lists, denials) commits with `synchronous = NORMAL`: its log frames are written to
//! the operating system before anyone is answered, so they survive the process being killed,
//! but the commit does not wait for the disk. The log is then synced within
//! [`READ_SYNC_BOUND`] by a helper thread (a durable commit in between syncs it too).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;
use uuid::Uuid;

use std::sync::Mutex;

use crate::audit_pack::{Dictionary, Plan, lock};
use crate::chain::{Heads, Link};
use crate::{CheckpointRow, Durability, NewAuditEvent, READ_SYNC_BOUND, StoreError};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

pub(super) type Reply = oneshot::Sender<Result<(u64, [u8; 32]), StoreError>>;

// Appends are nearly every job: boxing the event to shrink the rare variants would cost an
// allocation per audited request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Append(NewAuditEvent, Durability, Reply),
    /// Keep these as their chains' signed heads. Here rather than on the pool's connection:
    /// SQLite has one write lock, and a writer that finds it taken sleeps in the busy
    /// handler's steps (1, 2, 5, 10 ms …) — every audited request of its batch with it.
    SignedHeads(Vec<CheckpointRow>, oneshot::Sender<Result<(), StoreError>>),
    /// Sync what is left, close the connection, answer, end the thread.
    Close(oneshot::Sender<()>),
}

/// Signed heads per transaction of the writer (see `SqliteStore::store_signed_heads`).
pub(super) const SIGNED_HEADS_PER_TX: usize = 128;

/// Rows per multi-row INSERT of audit events (9 parameters each, far below SQLite's limit).
pub(super) const ROWS_PER_INSERT: usize = 64;

/// The INSERT of `rows` events; the only SQL that appends to the chains (both SQLite
/// writers use it). Only placeholders are generated; every value is bound.
pub(super) fn insert_events_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_log (chain, seq, time, action, actor_id, outcome, target, hash, body) VALUES ",
    );
    sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", "));
    sql
}

// Interning (migration 0008), run by both writers in their append's transaction.
pub(super) const CHAIN_INSERT_SQL: &str =
    "INSERT INTO audit_chains (org_id) VALUES ($1) ON CONFLICT (org_id) DO NOTHING";
pub(super) const CHAIN_SQL: &str = "SELECT chain FROM audit_chains WHERE org_id = $1";
pub(super) const STRING_INSERT_SQL: &str = "INSERT INTO audit_strings (chain, digest, text) VALUES ($1, $2, $3) \
     ON CONFLICT (chain, digest) DO NOTHING";
pub(super) const STRING_SQL: &str = "SELECT id FROM audit_strings WHERE chain = $1 AND digest = $2";

pub(super) const HEAD_SQL: &str = "SELECT seq, hash FROM audit_heads WHERE org_id = ?";

/// Open the writer's connection on `path` (already created and migrated) and start its
/// thread.
pub(super) fn spawn(
    path: &Path,
    dict: Arc<Mutex<Dictionary>>,
) -> Result<flume::Sender<Job>, StoreError> {
    let conn = open(path).map_err(|e| {
        tracing::error!(error = %e, "could not open the audit writer's connection");
        StoreError::CommitFailed
    })?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let sync = LogSync::start(path, wal.clone()).map_err(|e| {
        tracing::error!(error = %e, "could not start the log sync thread");
        StoreError::CommitFailed
    })?;
    let (tx, rx) = flume::bounded(QUEUE);
    std::thread::Builder::new()
        .name("coffer-sqlite-audit".into())
        .spawn(move || run(conn, dict, wal, rx, sync))
        .map_err(|e| {
            tracing::error!(error = %e, "could not start the audit writer");
            StoreError::CommitFailed
        })?;
    Ok(tx)
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Checkpoints are the helper thread's (see `LogSync`): run here, one commit in a few
    // hundred waited for one, and so did every request in its batch.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Every chunk size of a batch has its own statement.
    conn.set_prepared_statement_cache_capacity(ROWS_PER_INSERT + 8);
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(conn)
}

fn run(
    conn: Connection,
    dict: Arc<Mutex<Dictionary>>,
    wal: PathBuf,
    rx: flume::Receiver<Job>,
    mut sync: LogSync,
) {
    let mut w = Writer {
        conn,
        heads: Heads::new(),
        dict,
        relaxed: false,
    };
    let mut batch: Vec<(NewAuditEvent, Durability, Reply)> = Vec::with_capacity(MAX_BATCH);
    let mut signed_heads = Vec::new();
    let mut closing = None;
    loop {
        let first = match sync.due() {
            None => rx.recv().map_err(|_| flume::RecvTimeoutError::Disconnected),
            Some(due) => rx.recv_deadline(due),
        };
        let first = match first {
            Ok(job) => job,
            Err(flume::RecvTimeoutError::Timeout) => {
                sync.request();
                continue;
            }
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                Job::Append(e, d, reply) => batch.push((e, d, reply)),
                Job::SignedHeads(rows, reply) => signed_heads.push((rows, reply)),
                Job::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                job = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let relaxed = !sync.failed() && batch.iter().all(|(_, d, _)| *d == Durability::Written);
            let events: Vec<&NewAuditEvent> = batch.iter().map(|(e, _, _)| e).collect();
            match w.append(&events, relaxed) {
                Ok(links) => {
                    sync.committed(relaxed);
                    for ((_, _, reply), (seq, _, hash)) in batch.drain(..).zip(links) {
                        // The caller may have gone away; the event stands regardless.
                        let _ = reply.send(Ok((seq, hash)));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit append failed");
                    for (_, _, reply) in batch.drain(..) {
                        let _ = reply.send(Err(StoreError::CommitFailed));
                    }
                }
            }
        }
        // After the events: the heads they signed are already committed.
        for (rows, reply) in signed_heads.drain(..) {
            // Synced as the reads' events are, within the same bound: a power cut can lose
            // the newest signatures, and the node that made them with it.
            let relaxed = !sync.failed();
            let r = w.store_signed_heads(&rows, relaxed);
            if r.is_ok() {
                sync.committed(relaxed);
            }
            let _ = reply.send(r.map_err(|e| {
                tracing::error!(error = %e, "could not store signed audit heads");
                StoreError::CommitFailed
            }));
        }
        if sync.due().is_some_and(|due| Instant::now() >= due) {
            sync.request();
        }
        if closing.is_some() {
            break;
        }
    }
    // Nothing committed here is left unsynced when the store closes.
    if sync.due().is_some() && sync_log(&wal).is_err() {
        tracing::error!("could not sync the write-ahead log at close");
    }
    drop(w);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

struct Writer {
    conn: Connection,
    /// Where this writer believes each chain ends (checked by the database on insert).
    heads: Heads,
    /// Ids of chains and interned texts, shared with the other writer.
    dict: Arc<Mutex<Dictionary>>,
    /// Whether the connection now commits with `synchronous = NORMAL`.
    relaxed: bool,
}

impl Writer {
    /// Append a batch in one transaction; on failure read the heads again and try once
    /// more (the other writer may have appended, or the database may have been busy).
    fn append(&mut self, events: &[&NewAuditEvent], relaxed: bool) -> rusqlite::Result<Vec<Link>> {
        self.set_relaxed(relaxed)?;
        // Checked and hashed before the write lock is taken, once for both tries.
        let plan = Plan::new(events);
        match self.try_append(events, &plan) {
            Ok(links) => Ok(links),
            Err(first) => {
                self.heads.clear();
                lock(&self.dict).clear();
                tracing::debug!(error = %first, "audit append retried with the heads read again");
                let r = self.try_append(events, &plan);
                if r.is_err() {
                    self.heads.clear();
                }
                r
            }
        }
    }

    fn set_relaxed(&mut self, relaxed: bool) -> rusqlite::Result<()> {
        if self.relaxed != relaxed {
            let mode = if relaxed { "NORMAL" } else { "FULL" };
            self.conn.pragma_update(None, "synchronous", mode)?;
            self.relaxed = relaxed;
        }
        Ok(())
    }

    /// Keep `rows` as their chains' signed heads, in one transaction.
    fn store_signed_heads(
        &mut self,
        rows: &[CheckpointRow],
        relaxed: bool,
    ) -> rusqlite::Result<()> {
        self.set_relaxed(relaxed)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(crate::audit::STORE_SIGNED_HEAD_SQL)?;
            for r in rows {
                stmt.execute(rusqlite::params![
                    r.org_id.as_bytes().as_slice(),
                    crate::sql::db_int(r.seq),
                    r.hash.as_slice(),
                    r.created_at,
                    r.signature.as_slice(),
                ])?;
            }
        }
        tx.commit()
    }

    fn try_append(
        &mut self,
        events: &[&NewAuditEvent],
        plan: &Plan<'_>,
    ) -> rusqlite::Result<Vec<Link>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Advanced in place: on any failure the caller forgets them all.
        let heads = &mut self.heads;
        for org in crate::chain::orgs(events) {
            if let std::collections::hash_map::Entry::Vacant(slot) = heads.entry(org) {
                slot.insert(load_head(&tx, org)?);
            }
        }
        let links =
            crate::chain::assign(events, heads).map_err(|_| rusqlite::Error::InvalidQuery)?;
        let mut learned = Dictionary::default();
        let needs = plan.needs(&lock(&self.dict), &learned);
        for (org, n) in needs.orgs {
            let chain = match lock(&self.dict).chain(org) {
                Some(c) => c,
                None => {
                    let c = intern_chain(&tx, org)?;
                    learned.learn_chain(org, c);
                    c
                }
            };
            for (digest, text) in n.texts {
                let id = intern_string(&tx, chain, &digest, &text)?;
                learned.learn_string(org, digest, id);
            }
        }
        let packed = plan
            .pack(&lock(&self.dict), &learned)
            .map_err(|_| rusqlite::Error::InvalidQuery)?;
        for ((chunk, chunk_links), chunk_packed) in events
            .chunks(ROWS_PER_INSERT)
            .zip(links.chunks(ROWS_PER_INSERT))
            .zip(packed.chunks(ROWS_PER_INSERT))
        {
            let mut stmt = tx.prepare_cached(&insert_events_sql(chunk.len()))?;
            let values = chunk
                .iter()
                .zip(chunk_links)
                .zip(chunk_packed)
                .flat_map(|((e, link), packed)| row_values(e, link, packed));
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
        tx.commit()?;
        // Committed: the ids are the texts' for good.
        lock(&self.dict).merge(learned);
        Ok(links)
    }
}

fn intern_chain(conn: &Connection, org: Uuid) -> rusqlite::Result<i64> {
    let org = org.as_bytes().as_slice();
    conn.prepare_cached(CHAIN_INSERT_SQL)?.execute([org])?;
    conn.prepare_cached(CHAIN_SQL)?
        .query_row([org], |r| r.get(0))
}

fn intern_string(
    conn: &Connection,
    chain: i64,
    digest: &[u8; 32],
    text: &str,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(STRING_INSERT_SQL)?
        .execute(rusqlite::params![chain, digest.as_slice(), text])?;
    conn.prepare_cached(STRING_SQL)?
        .query_row(rusqlite::params![chain, digest.as_slice()], |r| r.get(0))
}

/// Put the write-ahead log's committed frames on stable storage (an fsync covers the file,
/// whichever descriptor asks).
fn sync_log(wal: &Path) -> std::io::Result<()> {
    std::fs::File::open(wal)?.sync_data()
}

fn load_head(conn: &Connection, org: Uuid) -> rusqlite::Result<(u64, [u8; 32])> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(HEAD_SQL)?
        .query_row([org.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((seq, hash)) => Ok((
            u64::try_from(seq).map_err(|_| rusqlite::Error::InvalidQuery)?,
            hash.try_into().map_err(|_| rusqlite::Error::InvalidQuery)?,
        )),
        None => Ok((0, coffer_crypto::audit::GENESIS)),
    }
}

/// One event's columns, in the order of [`insert_events_sql`], as sqlx binds them on the
/// other connection (ids as 16-byte blobs).
fn row_values(
    e: &NewAuditEvent,
    (seq, _, hash): &Link,
    (chain, body): &(i64, Vec<u8>),
) -> [Value; 9] {
    [
        Value::Integer(*chain),
        Value::Integer(crate::sql::db_int(*seq)),
        Value::Integer(e.time),
        Value::Text(e.action.clone()),
        e.actor_id
            .map_or(Value::Null, |a| Value::Blob(a.as_bytes().to_vec())),
        Value::Text(e.outcome.clone()),
        Value::Text(e.target.clone()),
        Value::Blob(hash.to_vec()),
        Value::Blob(body.clone()),
    ]
}

/// The log's upkeep on a helper thread, so the writer goes on with its next batches
/// meanwhile: the sync of the write-ahead log for commits made without one (a sync covers
/// everything written before it began), and checkpoints (copying the log into the database
/// file, after which the log starts over), which the writer's own connection does not run.
struct LogSync {
    /// When the oldest commit not yet covered by a requested sync was made.
    unsynced: Option<Instant>,
    /// Commits since the helper last looked after the log.
    commits: u32,
    requests: flume::Sender<()>,
    /// A sync failed: the log may have lost what it held, and the writer no longer trusts
    /// these syncs; every batch commits with `synchronous = FULL` from then on.
    failed: Arc<AtomicBool>,
}

impl LogSync {
    /// Commits after which the helper looks after the log even if no sync is due.
    const TEND_EVERY: u32 = 256;
    /// A log larger than this is checkpointed.
    const CHECKPOINT_AT: u64 = 4 << 20;

    fn start(db: &Path, wal: PathBuf) -> std::io::Result<Self> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(std::io::Error::other)?;
        // Another checkpoint under way (the write pool's connection runs its own) is waited for.
        conn.busy_timeout(Duration::from_secs(1))
            .map_err(std::io::Error::other)?;
        // One request waiting is enough: it has not begun, so it covers what comes before.
        let (requests, rx) = flume::bounded::<()>(1);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("coffer-sqlite-sync".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = sync_log(&wal) {
                        tracing::error!(error = %e, "could not sync the write-ahead log: audit events of reads committed in the last moments may not be on stable storage; from now on every commit waits for its own sync");
                        flag.store(true, Ordering::SeqCst);
                    }
                    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    if size > Self::CHECKPOINT_AT {
                        // PASSIVE: copies what no reader still needs, never waits for them.
                        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "could not checkpoint the write-ahead log");
                        }
                    }
                }
            })?;
        Ok(Self {
            unsynced: None,
            commits: 0,
            requests,
            failed,
        })
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn due(&self) -> Option<Instant> {
        self.unsynced.map(|t| t + READ_SYNC_BOUND)
    }

    fn committed(&mut self, relaxed: bool) {
        if relaxed {
            self.unsynced.get_or_insert_with(Instant::now);
        } else {
            // `synchronous = FULL` synced the whole log with this commit.
            self.unsynced = None;
        }
        self.commits += 1;
        if self.commits >= Self::TEND_EVERY {
            self.request();
        }
    }

    fn request(&mut self) {
        // Full: a sync that has not begun yet is waiting, and covers these commits too.
        let _ = self.requests.try_send(());
        self.unsynced = None;
        self.commits = 0;
    }
}
