//! Batched reads of current values: the reads a node has under way share one statement.
//!
//! Each secret read would otherwise be its own round trip and statement. One reader task per
//! node takes every read queued while its previous call ran and answers them with one call
//! of `coffer_current_values`. A read is only ever answered by a call sent after it arrived,
//! so it sees every write acknowledged before it started, by any node. (The node's value
//! cache, in front of this, answers only subject to confirmation: see `cache`.)

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
            // Waits for one, then takes whatever else is queued, up to the limit.
            while rx.recv_many(&mut batch, BATCH).await > 0 {
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

/// Organisations of one batch fetched at once at most (the pool serves everything else too).
pub(super) const CONCURRENT_ORGS: usize = 4;

/// Answer every read of the batch: one call per organisation, a few at once; each
/// organisation's reads are answered as soon as its own call is back, and only a failing
/// organisation's reads fail. The next batch starts once every call of this one is back,
/// so one slow call delays the node's other reads too: a call on a connection that died
/// silently ends within the sockets' user timeout (vendor/README.md).
async fn answer(pool: &PgPool, batch: &mut Vec<(Read, Reply)>) {
    let mut by_org: std::collections::HashMap<Uuid, Vec<(Read, Reply)>> =
        std::collections::HashMap::new();
    for (read, reply) in batch.drain(..) {
        by_org.entry(read.0).or_default().push((read, reply));
    }
    let mut waiting = by_org.into_iter();
    let mut calls = tokio::task::JoinSet::new();
    loop {
        while calls.len() < CONCURRENT_ORGS {
            let Some((org, reads)) = waiting.next() else {
                break;
            };
            let pool = pool.clone();
            calls.spawn(async move {
                let (mut envs, mut names): (Vec<Vec<u8>>, Vec<String>) = (Vec::new(), Vec::new());
                for ((_, chain, name), _) in &reads {
                    envs.extend(chain.iter().map(|e| e.as_bytes().to_vec()));
                    names.push(name.clone());
                }
                envs.sort_unstable();
                envs.dedup();
                names.sort_unstable();
                names.dedup();
                let found = fetch(&pool, org, &envs, &names).await;
                if let Err(e) = &found {
                    tracing::debug!(org_id = %org, error = %e, "batched read failed");
                }
                for (read, reply) in reads {
                    let _ = reply.send(match &found {
                        Ok(values) => Ok(nearest(values, &read)),
                        Err(e) => Err(like(e)),
                    });
                }
            });
        }
        if calls.join_next().await.is_none() {
            break;
        }
    }
}

/// The same kind of failure for each read of an organisation (errors are not Clone).
fn like(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(_) => StoreError::Unavailable(sqlx::Error::PoolTimedOut),
        StoreError::Conflict => StoreError::Conflict,
        StoreError::Corrupt => StoreError::Corrupt,
        other => StoreError::Database(sqlx::Error::Protocol(format!("batched read: {other}"))),
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

/// The live values among `envs` × `names` of one organisation.
async fn fetch(
    pool: &PgPool,
    org: Uuid,
    envs: &[Vec<u8>],
    names: &[String],
) -> Result<Vec<ParamValue>, StoreError> {
    sqlx::query("SELECT * FROM coffer_current_values($1, $2, $3)")
        .bind(org.as_bytes().as_slice())
        .bind(envs)
        .bind(names)
        .fetch_all(pool)
        .await?
        .iter()
        .map(param_value)
        .collect()
}
