//! Batched reads of current values: the reads a node has under way share one statement.
//!
//! Each secret read would otherwise be its own round trip and statement. One reader task per
//! node takes every read queued while its previous call ran and answers them with one call
//! of `coffer_current_values`. A read is only ever answered by a call sent after it arrived,
//! so it sees every write acknowledged before it started, by any node: nothing is cached.

use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::rows::*;
use crate::{ParamValue, StoreError};

/// Reads answered by one call at most.
const BATCH: usize = 256;

/// (organisation, environment chain nearest first, parameter name).
type Read = (Uuid, Vec<Uuid>, String);
type Reply = oneshot::Sender<Result<Option<ParamValue>, StoreError>>;

#[derive(Debug, Clone)]
pub(super) struct Reader(mpsc::Sender<(Read, Reply)>);

impl Reader {
    pub(super) fn spawn(pool: PgPool) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Read, Reply)>(4096);
        tokio::spawn(async move {
            let mut batch: Vec<(Read, Reply)> = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                answer(&pool, &mut batch).await;
            }
        });
        Reader(tx)
    }

    pub(super) async fn nearest(
        &self,
        org: Uuid,
        chain: &[Uuid],
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(((org, chain.to_vec(), name.to_owned()), reply))
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?
    }
}

async fn answer(pool: &PgPool, batch: &mut Vec<(Read, Reply)>) {
    let reads: Vec<&Read> = batch.iter().map(|(r, _)| r).collect();
    match fetch(pool, &reads).await {
        Ok(found) => {
            for (read, reply) in batch.drain(..) {
                let _ = reply.send(Ok(nearest(&found, &read)));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "batched read failed");
            // Every read of the batch fails the same way; the error is not Clone, so each
            // gets its own of the same kind.
            let unavailable = matches!(e, StoreError::Unavailable(_));
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(if unavailable {
                    StoreError::Unavailable(sqlx::Error::PoolTimedOut)
                } else {
                    StoreError::CommitFailed
                }));
            }
        }
    }
}

/// The live value nearest to the start of the read's chain.
fn nearest(found: &[ParamValue], (org, chain, name): &Read) -> Option<ParamValue> {
    chain.iter().find_map(|env| {
        found
            .iter()
            .find(|v| v.param.org_id == *org && v.param.env_id == *env && v.param.name == *name)
            .cloned()
    })
}

/// One call per organisation of the batch (row-level security admits one at a time).
async fn fetch(pool: &PgPool, reads: &[&Read]) -> Result<Vec<ParamValue>, StoreError> {
    let mut orgs: Vec<Uuid> = reads.iter().map(|r| r.0).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let mut out = Vec::new();
    for org in orgs {
        let (mut envs, mut names): (Vec<&[u8]>, Vec<&str>) = (Vec::new(), Vec::new());
        for (_, chain, name) in reads.iter().filter(|r| r.0 == org) {
            envs.extend(chain.iter().map(|e| e.as_bytes().as_slice()));
            names.push(name.as_str());
        }
        envs.sort_unstable();
        envs.dedup();
        names.sort_unstable();
        names.dedup();
        let rows = sqlx::query("SELECT * FROM coffer_current_values($1, $2, $3)")
            .bind(org.as_bytes().as_slice())
            .bind(&envs)
            .bind(&names)
            .fetch_all(pool)
            .await?;
        for r in &rows {
            out.push(param_value(r)?);
        }
    }
    Ok(out)
}
