//! What every service of the core shares: the seal state and the keys in memory, the
//! configuration, the cluster, and the audit recorder each operation records its own event
//! through. The services (`Params`, `Projects`, `Identity`, `Keys`, `AuditLog`) each hold
//! the kernel and the repositories of their own area, and nothing else.
//!
//! The kernel's own repositories are the narrowest it can work with: the audit log it
//! appends to, and the organisations' key rows it unwraps tenant keys from.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use coffer_store::{AuditRepo, Cluster, Invalidation, TenantRepo};
use uuid::Uuid;

use crate::audit::{AuditSinks, KnownHeads};
use crate::external::KeyConfig;
use crate::keyring::Keyring;
use crate::{CoreConfig, CoreError};

pub(crate) struct Kernel {
    pub(crate) config: CoreConfig,
    /// Leadership, invalidation notices and the root guard, shared with the other nodes.
    pub(crate) cluster: Arc<dyn Cluster>,
    pub(crate) keyring: Keyring,
    /// Write-locked while the root key is replaced (see [`Kernel::root_stable`]).
    pub(crate) root_change: tokio::sync::RwLock<()>,
    /// The seal this server is configured with, and the KMS/HSM organisations may use for
    /// their own keys (set once at start by `Coffer::configure_keys`).
    pub(crate) key_services: RwLock<KeyConfig>,
    /// Organisations whose own key this node last found unusable.
    pub(crate) keys_unavailable: Mutex<HashSet<Uuid>>,
    /// Where tenant key rows (and an organisation's external key reference) are read.
    pub(crate) key_rows: Arc<dyn TenantRepo>,
    /// The audit log every operation's event is appended to.
    pub(crate) audit: Arc<dyn AuditRepo>,
    pub(crate) sinks: AuditSinks,
    /// The chain heads this node appended, for signing and online verification.
    pub(crate) known_heads: KnownHeads,
    /// Reads answered from the node's cache: confirmed, and found stale when audited.
    pub(crate) cached_reads: [AtomicU64; 2],
}

impl Kernel {
    pub(crate) fn new(
        config: CoreConfig,
        cluster: Arc<dyn Cluster>,
        key_rows: Arc<dyn TenantRepo>,
        audit: Arc<dyn AuditRepo>,
        sinks: AuditSinks,
    ) -> Self {
        Self {
            config,
            cluster,
            keyring: Keyring::default(),
            root_change: tokio::sync::RwLock::new(()),
            key_services: RwLock::new(KeyConfig::default()),
            keys_unavailable: Mutex::default(),
            key_rows,
            audit,
            sinks,
            known_heads: KnownHeads::default(),
            cached_reads: Default::default(),
        }
    }

    pub(crate) fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub(crate) fn cluster(&self) -> &dyn Cluster {
        &*self.cluster
    }

    /// Tell the other nodes (best effort; their caches also expire on their own).
    pub(crate) fn publish(&self, what: Invalidation) {
        let cluster = self.cluster.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = cluster.publish_invalidation(what).await {
                    tracing::debug!(error = %e, "could not publish a cache invalidation");
                }
            });
        }
    }

    pub(crate) fn ensure_unsealed(&self) -> Result<(), CoreError> {
        if self.keyring.is_sealed() {
            Err(CoreError::Sealed)
        } else {
            Ok(())
        }
    }

    /// Held while sealing something with the root key (or a key derived from it) and storing
    /// it, or while unwrapping stored keys: a root rotation waits for these and blocks them,
    /// so nothing is sealed under a root key that is being replaced.
    pub(crate) async fn root_stable(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.root_change.read().await
    }
}

impl std::fmt::Debug for Kernel {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").finish_non_exhaustive()
    }
}
