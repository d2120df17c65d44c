//! Group commit: concurrent parameter writes share one durable transaction.
//!
//! SQLite has one writer and every commit costs an fsync. The writer task takes the first
//! pending write, drains whatever else is queued (up to a batch limit), applies each inside
//! its own SAVEPOINT — so one conflicting write does not fail its neighbours — and commits
//! once. Every caller is answered only after that commit, so an acknowledged write is durable.

use std::sync::Arc;

use sqlx::{Acquire, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::append_version;
use super::cache::ValueCache;
use crate::{ParamWrite, StoreError};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;
pub(super) type Job = (ParamWrite, Reply);

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
            for ((w, reply), result) in batch.drain(..).zip(results) {
                if result.is_ok() {
                    cache.invalidate(w.org_id, w.env_id, &w.name);
                }
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
        }
    });
    tx
}

async fn commit_batch(pool: &SqlitePool, batch: &[Job]) -> Vec<Result<(), StoreError>> {
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
    for (w, _) in batch {
        let r = async {
            let mut sp = (&mut tx).begin().await?;
            match append_version(&mut sp, w).await {
                Ok(()) => sp.commit().await.map_err(StoreError::from),
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
