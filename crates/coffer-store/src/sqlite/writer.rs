//! Group commit: concurrent parameter writes and audit appends share one durable transaction.
//!
//! SQLite has one writer and every commit costs an fsync. The writer task takes the first
//! pending write, drains whatever else is queued (up to a batch limit), applies each inside
//! its own SAVEPOINT — so one conflicting write does not fail its neighbours — and commits
//! once. Every caller is answered only after that commit, so an acknowledged write is durable.

use std::sync::Arc;

use sqlx::{Acquire, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::cache::ValueCache;
use super::{append_audit_event, append_version};
use crate::{NewAuditEvent, ParamWrite, StoreError};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

/// What the writer can do.
#[derive(Debug)]
pub(super) enum Work {
    Param(ParamWrite),
    Audit(NewAuditEvent),
}

#[derive(Debug)]
pub(super) enum Done {
    Param,
    Audit(u64, [u8; 32]),
}

pub(super) type Reply = oneshot::Sender<Result<Done, StoreError>>;
pub(super) type Job = (Work, Reply);

pub(super) fn spawn(pool: SqlitePool, cache: Arc<ValueCache>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let results = commit_batch(&pool, &batch).await;
            for ((work, reply), result) in batch.drain(..).zip(results) {
                if let (Work::Param(w), Ok(_)) = (&work, &result) {
                    cache.invalidate(w.org_id, w.env_id, &w.name);
                }
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
        }
    });
    tx
}

async fn commit_batch(pool: &SqlitePool, batch: &[Job]) -> Vec<Result<Done, StoreError>> {
    let failed = |n: usize| {
        (0..n)
            .map(|_| Err(StoreError::CommitFailed))
            .collect::<Vec<_>>()
    };
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "could not begin a write transaction");
            return failed(batch.len());
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for (work, _) in batch {
        let r = async {
            let mut sp = (&mut tx).begin().await?;
            let applied = match work {
                Work::Param(w) => append_version(&mut sp, w).await.map(|()| Done::Param),
                Work::Audit(e) => append_audit_event(&mut sp, e)
                    .await
                    .map(|(s, h)| Done::Audit(s, h)),
            };
            match applied {
                Ok(done) => {
                    sp.commit().await?;
                    Ok(done)
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
