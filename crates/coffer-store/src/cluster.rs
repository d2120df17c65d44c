//! What several nodes on one database need from each other: job leadership, cache
//! invalidation notices, the root-key guard, and an orderly shutdown. Not storage, so not a
//! repository: the core's services never see it, only the service front that wires them.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;

/// Coordination between the nodes sharing a database. A single-node backend (SQLite) uses
/// the defaults: always the leader, nothing to publish or follow.
#[async_trait]
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// Whether this node should run background jobs now. With several nodes on one database
    /// exactly one holds the leadership, and it passes to another node when its holder dies.
    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Changes published by any node (this one included), for clearing caches. None for a
    /// single-node backend.
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }

    /// Whether this node hears every change's notices now (see
    /// [`ChangeEvent::notices`](crate::ChangeEvent)): while it does, its caches may live long;
    /// while it does not (PostgreSQL: the listener is reconnecting), only briefly. A
    /// single-node backend hears everything: every change is made by this process.
    fn notices_live(&self) -> bool {
        true
    }

    /// Tell every node to drop cached state. Best effort, after the fact: changes that
    /// commit with an audit event carry their notices in their transaction instead.
    async fn publish_invalidation(&self, _what: Invalidation) -> Result<(), StoreError> {
        Ok(())
    }

    /// The check value of the root key this node holds (None while sealed). Writes of
    /// material sealed with the root key then fail with [`StoreError::RootReplaced`] once
    /// another node has replaced it, instead of storing what nobody can open. Only needed
    /// where several nodes share a database.
    fn set_root_guard(&self, _check: Option<coffer_crypto::RootKeyCheck>) {}

    /// Close the connections (and on PostgreSQL give up the job leadership).
    async fn close(&self) {}
}

/// What a node must forget when another node changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Everything (a listener reconnected, so messages may have been missed).
    All,
    /// Sessions, API keys, memberships or roles changed: re-check every principal.
    Access,
    /// An organisation's projects or environments changed.
    Meta(Uuid),
    /// An organisation's tenant keys changed (rotation, destruction, deletion).
    Keys(Uuid),
}
