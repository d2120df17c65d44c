//! Group commit of parameter writes: concurrent writes share one durable transaction.
//!
//! SQLite has one writer at a time and every commit costs an fsync. The writer task takes the
//! first pending write, drains whatever else is queued (up to a batch limit), applies each
//! inside its own SAVEPOINT — so one conflicting write does not fail its neighbours — and
//! commits once. Every caller is answered only after that commit, so an acknowledged write is
//! durable. A write's audit event is appended in the write's savepoint: both or neither.
//! (Audit events of everything else have their own writer: `audit_writer`.)

use std::sync::Arc;

use sqlx::{Acquire, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::cache::ValueCache;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::append_version;
use super::audit_writer::{
    CHAIN_INSERT_SQL, CHAIN_SQL, HEAD_SQL, ROWS_PER_INSERT, STRING_INSERT_SQL, STRING_SQL,
    insert_events_sql,
};
use crate::audit_pack::{Dictionary, Plan, lock};
use crate::sql::{DbId, db_int};
use crate::{NewAuditEvent, ParamWrite, StoreError};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;
pub(super) type Job = (ParamWrite, Reply);

/// The write pool's transactions take the write lock at BEGIN: the audit writer's connection
/// writes beside them, and a deferred transaction that read first could not upgrade to a
/// writer after one of its commits (SQLITE_BUSY_SNAPSHOT, without waiting).
pub(super) const BEGIN: &str = "BEGIN IMMEDIATE";

pub(super) fn spawn(
    pool: SqlitePool,
    cache: Arc<ValueCache>,
    dict: Arc<std::sync::Mutex<Dictionary>>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Waits for one, then takes whatever else is queued, up to the limit.
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let results = commit_batch(&pool, &batch, &dict).await;
            for ((w, reply), result) in batch.drain(..).zip(results) {
                let result = result.map(|at| {
                    cache.invalidate(w.org_id, w.env_id, &w.name);
                    if let Some(e) = &w.event {
                        e.mark_committed(at);
                    }
                });
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
        }
    });
    tx
}

/// Append events in the caller's transaction, which holds the write lock (see [`BEGIN`]):
/// the heads read here are exact, and the database checks each link anyway. Texts not in
/// `dict` are interned in the transaction; their ids are not kept, since whether it commits
/// is the caller's to decide (changes are few; reads' events go through the audit writer).
pub(super) async fn append_events(
    conn: &mut SqliteConnection,
    events: &[&NewAuditEvent],
    dict: &std::sync::Mutex<Dictionary>,
) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
    let mut heads = crate::chain::Heads::new();
    for org in crate::chain::orgs(events) {
        heads.insert(org, load_head(&mut *conn, org).await?);
    }
    let assigned = crate::chain::assign(events, &mut heads)?;
    let plan = Plan::new(events);
    let mut learned = Dictionary::default();
    let needs = plan.needs(&lock(dict), &learned);
    for (org, n) in needs.orgs {
        let known = lock(dict).chain(org);
        let chain = match known {
            Some(c) => c,
            None => {
                sqlx::query(CHAIN_INSERT_SQL)
                    .bind(DbId(org))
                    .execute(&mut *conn)
                    .await?;
                let c: i64 = sqlx::query_scalar(CHAIN_SQL)
                    .bind(DbId(org))
                    .fetch_one(&mut *conn)
                    .await?;
                learned.learn_chain(org, c);
                c
            }
        };
        for (digest, text) in n.texts {
            sqlx::query(STRING_INSERT_SQL)
                .bind(chain)
                .bind(digest.to_vec())
                .bind(text)
                .execute(&mut *conn)
                .await?;
            let id: i64 = sqlx::query_scalar(STRING_SQL)
                .bind(chain)
                .bind(digest.to_vec())
                .fetch_one(&mut *conn)
                .await?;
            learned.learn_string(org, digest, id);
        }
    }
    let packed = plan.pack(&lock(dict), &learned)?;
    for ((chunk_events, chunk_assigned), chunk_packed) in events
        .chunks(ROWS_PER_INSERT)
        .zip(assigned.chunks(ROWS_PER_INSERT))
        .zip(packed.chunks(ROWS_PER_INSERT))
    {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_events_sql(chunk_events.len())));
        for ((e, (seq, _, hash)), (chain, body)) in
            chunk_events.iter().zip(chunk_assigned).zip(chunk_packed)
        {
            q = q
                .bind(*chain)
                .bind(db_int(*seq))
                .bind(e.time)
                .bind(e.action.clone())
                .bind(e.actor_id.map(DbId))
                .bind(e.outcome.clone())
                .bind(e.target.clone())
                .bind(hash.to_vec())
                .bind(body.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(assigned
        .into_iter()
        .map(|(seq, _, hash)| (seq, hash))
        .collect())
}

async fn load_head(conn: &mut SqliteConnection, org: Uuid) -> Result<(u64, [u8; 32]), StoreError> {
    use sqlx::Row;
    let r = sqlx::query(HEAD_SQL)
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

/// Each write's outcome: applied (with its event's place in its chain, if it has one) or
/// the error.
type Outcome = Result<Option<(u64, [u8; 32])>, StoreError>;

fn failed(n: usize) -> Vec<Outcome> {
    (0..n).map(|_| Err(StoreError::CommitFailed)).collect()
}

async fn commit_batch(
    pool: &SqlitePool,
    batch: &[Job],
    dict: &std::sync::Mutex<Dictionary>,
) -> Vec<Outcome> {
    let mut tx = match pool.begin_with(BEGIN).await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "could not begin a write transaction");
            return failed(batch.len());
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for (w, _) in batch {
        let r = async {
            let mut sp = (&mut tx).begin().await?;
            let applied = match append_version(&mut sp, w).await {
                Ok(()) => match &w.event {
                    // The write's event, in the write's savepoint: both or neither.
                    Some(e) => append_events(&mut sp, &[&e.event], dict)
                        .await
                        .map(|at| at.first().copied())
                        .map_err(|e| {
                            tracing::error!(error = %e, "audit append failed; the write is rolled back");
                            StoreError::AuditFailed
                        }),
                    None => Ok(None),
                },
                Err(e) => Err(e),
            };
            match applied {
                Ok(at) => {
                    sp.commit().await?;
                    Ok(at)
                }
                Err(e) => {
                    sp.rollback().await?;
                    Err(e)
                }
            }
        }
        .await;
        results.push(r);
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => {
            tracing::error!(error = %e, "write transaction failed to commit");
            failed(batch.len())
        }
    }
}
