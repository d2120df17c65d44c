//! Cache invalidation between nodes: PostgreSQL LISTEN/NOTIFY on one channel.
//!
//! A change of who may do what (logout, revocation, role change) or of an organisation's
//! metadata sends a message from inside its transaction (PostgreSQL delivers it when, and
//! only if, the transaction commits); every node (itself included) clears the matching
//! cache. A message can be missed only while a node's listener is not connected: the node
//! then knows it ([`listening`](super::PgStore) is false), trusts its caches for a short
//! time only, and flushes everything when it listens again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::Invalidation;

pub(super) const CHANNEL: &str = "coffer_invalidate";

pub(super) fn encode(i: &Invalidation) -> String {
    match i {
        Invalidation::All => "all".into(),
        Invalidation::Access => "access".into(),
        Invalidation::Meta(org) => format!("meta:{}", org.simple()),
        Invalidation::Keys(org) => format!("keys:{}", org.simple()),
    }
}

fn decode(s: &str) -> Invalidation {
    match s.split_once(':') {
        None if s == "access" => Invalidation::Access,
        Some(("meta", org)) => org
            .parse()
            .map(Invalidation::Meta)
            .unwrap_or(Invalidation::All),
        Some(("keys", org)) => org
            .parse()
            .map(Invalidation::Keys)
            .unwrap_or(Invalidation::All),
        _ => Invalidation::All,
    }
}

/// Listen on the channel for as long as the process lives, reconnecting after failures.
pub(super) fn spawn_listener(
    pool: PgPool,
    listening: Arc<AtomicBool>,
) -> broadcast::Sender<Invalidation> {
    let (tx, _) = broadcast::channel(1024);
    let out = tx.clone();
    tokio::spawn(async move {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => {
                    if l.listen(CHANNEL).await.is_ok() {
                        // Live from here; whatever happened while we were not listening is
                        // unknown, so everything cached before goes.
                        listening.store(true, Ordering::SeqCst);
                        let _ = out.send(Invalidation::All);
                        // Until the connection drops (or fails): then reconnect below, the
                        // one way a listener becomes live.
                        while let Ok(Some(n)) = l.try_recv().await {
                            let _ = out.send(decode(n.payload()));
                        }
                        listening.store(false, Ordering::SeqCst);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "invalidation listener cannot connect"),
            }
            if pool.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_roundtrip() {
        let org = uuid::Uuid::new_v4();
        for i in [
            Invalidation::All,
            Invalidation::Access,
            Invalidation::Meta(org),
            Invalidation::Keys(org),
        ] {
            assert_eq!(decode(&encode(&i)), i);
        }
        assert_eq!(decode("garbage"), Invalidation::All);
    }
}
