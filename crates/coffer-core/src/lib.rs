//! The barrier and the domain.
//!
//! [`Coffer`] is the one entry point the HTTP edge calls. It holds the seal state (the root
//! key, in memory only), unwraps and caches tenant keys, authenticates bearer tokens, and
//! implements projects, environments and parameters. Every operation takes the caller's
//! [`Principal`], whose organisation comes from the authenticated session and nowhere else.

pub mod apikeys;
pub mod audit;
mod auth;
mod clock;
mod config;
mod error;
mod external;
mod flight;
mod keyring;
mod keys;
pub mod members;
pub mod mfa;
pub mod names;
pub mod notify;
pub mod oidc;
mod orgs;
mod params;
mod projects;
mod rekey;
mod roles;
mod sys;

use std::sync::Arc;

pub use auth::{
    AuthMethod, LoginOutcome, LoginResult, Principal, Scope, SessionView, normalize_username,
};
pub use coffer_crypto::token::BearerToken;
pub use coffer_crypto::{SecretBytes, ValueScheme, fingerprint_sha256, random_bytes};
pub use coffer_store::Storage;
pub use config::CoreConfig;
/// Seals and key services, for the binary that wires them in.
pub mod seal {
    pub use coffer_seal::{
        EncryptionContext, ExternalKey, ExternalSeal, KeyProvider, KeyServices, Seal, SealError,
        SealKind, ShamirSeal,
    };
}
pub use error::{CoreError, ErrorCode};

/// Every operation's audit action, by area (each defined next to its operations).
pub mod actions {
    pub use crate::apikeys::action as apikeys;
    pub use crate::audit::action as audit;
    pub use crate::auth::action as auth;
    pub use crate::keys::action as keys;
    pub use crate::members::action as members;
    pub use crate::mfa::action as mfa;
    pub use crate::orgs::action as orgs;
    pub use crate::params::action as params;
    pub use crate::projects::action as projects;
    pub use crate::sys::action as sys;
}
pub use keys::{KeyStatus, RotationView, TermView};
pub use params::{DiffEntry, DiffKind, ParamHistoryEntry, ParamView, SetParam};
pub use projects::{EnvView, ProjectView};
pub use rekey::RekeyResult;
pub use roles::Role;
pub use sys::{Bootstrap, InitResult, SealStatus, StartState, UnsealOutcome};

use coffer_store::{
    AccessRepo, AuditRepo, Cluster, Invalidation, KeyRepo, MailRepo, ParamRepo, SealRepo,
    TenantRepo, UserRepo,
};

/// The storage, one handle per area: each part of the domain names the repositories it
/// uses (`self.repos().params`), and a new feature adds its own.
#[derive(Clone)]
pub(crate) struct Repos {
    pub seal: Arc<dyn SealRepo>,
    pub tenants: Arc<dyn TenantRepo>,
    pub params: Arc<dyn ParamRepo>,
    pub audit: Arc<dyn AuditRepo>,
    pub users: Arc<dyn UserRepo>,
    pub access: Arc<dyn AccessRepo>,
    pub mail: Arc<dyn MailRepo>,
    pub keys: Arc<dyn KeyRepo>,
}

impl Repos {
    fn new(store: Arc<dyn coffer_store::Store>) -> Self {
        Self {
            seal: store.clone(),
            tenants: store.clone(),
            params: store.clone(),
            audit: store.clone(),
            users: store.clone(),
            access: store.clone(),
            mail: store.clone(),
            keys: store,
        }
    }
}

impl std::fmt::Debug for Repos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repos").finish_non_exhaustive()
    }
}

/// The service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Coffer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    repos: Repos,
    /// Leadership, invalidation notices and the root guard, shared with the other nodes.
    cluster: Arc<dyn Cluster>,
    config: CoreConfig,
    keyring: keyring::Keyring,
    sessions: auth::SessionCache,
    meta: projects::MetaCache,
    sinks: audit::AuditSinks,
    /// The chain heads this node appended, for signing and online verification.
    known_heads: audit::KnownHeads,
    /// Reads answered from the node's cache: confirmed, and found stale when audited.
    cached_reads: [std::sync::atomic::AtomicU64; 2],
    dummy_hash: String,
    /// Wakes the key maintenance job (a rotation was requested).
    key_job: tokio::sync::Notify,
    /// One key maintenance run at a time on this node (the background job and an explicit
    /// call would otherwise rewrap the same batches twice).
    key_maintenance: tokio::sync::Mutex<()>,
    /// Held while following a rekey done on another node.
    root_watch: tokio::sync::Mutex<()>,
    /// Set by [`Coffer::close`]: nothing unseals again afterwards.
    closed: std::sync::atomic::AtomicBool,
    /// API key uses not written yet, by (organisation, key): see `Coffer::note_key_use`.
    key_uses: std::sync::Mutex<std::collections::HashMap<(uuid::Uuid, uuid::Uuid), i64>>,
    /// Organisations whose own key this node last found unusable.
    keys_unavailable: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Write-locked while the root key is replaced (see `Coffer::root_stable`).
    root_change: tokio::sync::RwLock<()>,
    /// The seal this server is configured with, and the KMS/HSM organisations may use for
    /// their own keys (set once at start by [`Coffer::configure_keys`]).
    keys: std::sync::RwLock<external::KeyConfig>,
}

impl Coffer {
    /// The service over an open database (`Storage::open`, chosen by the binary's wiring).
    pub fn new(storage: Storage, config: CoreConfig) -> Result<Self, CoreError> {
        Self::with_sinks(storage, config, audit::AuditSinks::default())
    }

    pub fn with_sinks(
        storage: Storage,
        config: CoreConfig,
        sinks: audit::AuditSinks,
    ) -> Result<Self, CoreError> {
        let dummy_hash = auth::dummy_hash()?;
        let invalidations = storage.cluster.invalidations();
        let c = Self {
            inner: Arc::new(Inner {
                repos: Repos::new(storage.store),
                cluster: storage.cluster,
                keyring: keyring::Keyring::default(),
                sessions: auth::SessionCache::new(),
                meta: projects::MetaCache::default(),
                sinks,
                known_heads: audit::KnownHeads::default(),
                cached_reads: Default::default(),
                config,
                dummy_hash,
                key_job: tokio::sync::Notify::new(),
                root_change: tokio::sync::RwLock::new(()),
                keys_unavailable: std::sync::Mutex::default(),
                key_uses: std::sync::Mutex::default(),
                key_maintenance: tokio::sync::Mutex::new(()),
                root_watch: tokio::sync::Mutex::new(()),
                closed: std::sync::atomic::AtomicBool::new(false),
                keys: std::sync::RwLock::new(external::KeyConfig::default()),
            }),
        };
        if let Some(rx) = invalidations {
            c.follow_invalidations(rx);
        }
        c.flush_key_uses_periodically();
        Ok(c)
    }

    /// Write noted API key uses every few seconds. Holds only a weak reference, so the task
    /// ends with the service.
    fn flush_key_uses_periodically(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let Some(inner) = weak.upgrade() else { return };
                Coffer { inner }.flush_key_uses().await;
            }
        });
    }

    /// Clear caches when any node reports a change. Holds only a weak reference, so the
    /// task ends with the service.
    fn follow_invalidations(&self, mut rx: tokio::sync::broadcast::Receiver<Invalidation>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                let what = match rx.recv().await {
                    Ok(w) => w,
                    // Fell behind: some messages are gone, so forget everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Invalidation::All,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                match what {
                    Invalidation::Access => inner.sessions.clear(),
                    Invalidation::Meta(org) => inner.meta.evict_org(org),
                    Invalidation::Keys(org) => {
                        inner.keyring.evict(Some(org));
                        // The leader's key job may have work now.
                        inner.key_job.notify_one();
                    }
                    Invalidation::All => {
                        inner.sessions.clear();
                        inner.meta.clear();
                        inner.keyring.evict(None);
                        inner.key_job.notify_one();
                        // Not inline: a slow KMS/HSM unseal must not hold up invalidations.
                        tokio::spawn(async move { Coffer { inner }.seal_if_root_replaced().await });
                    }
                }
            }
        });
    }

    /// Another node may have rotated the root key (`operator rekey`): if the stored check
    /// value no longer matches the key in memory, seal rather than fail every request. A
    /// KMS or HSM seal then unseals again at once with the new root key; a Shamir seal waits
    /// for the new shares. Runs on every invalidation of everything and periodically
    /// ([`Coffer::check_root`]), so a missed notification delays this by one period at most.
    async fn seal_if_root_replaced(&self) {
        // The invalidation listener and the periodic check may both notice: one at a time.
        let _one = self.inner.root_watch.lock().await;
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let replaced = {
            // Not while this node rekeys: between its commit and taking the new key in
            // memory the two differ for a moment.
            let _stable = self.inner.root_change.read().await;
            let Ok(Some(cfg)) = self.repos().seal.seal_config().await else {
                return;
            };
            self.inner
                .keyring
                .with_root(|root| Ok(!root.matches(&cfg.root_check)))
                .unwrap_or(false)
        };
        if !replaced {
            return;
        }
        tracing::warn!("the root key was rotated on another node: sealing");
        {
            // Wait for everything that holds the old root key to finish (its writes then
            // fail the store's root check), and let nothing new take it meanwhile.
            let _exclusive = self.inner.root_change.write().await;
            let _ = self.seal();
        }
        match self.start_sealed().await {
            Ok(sys::StartState::Unsealed) => {
                tracing::info!("unsealed again with the new root key by the seal");
            }
            Ok(_) => tracing::warn!("sealed: unseal with the new shares"),
            Err(e) => tracing::error!(error = %e, "could not unseal with the new root key"),
        }
    }

    /// Shutting down: wipe the keys from memory and close the database connections.
    pub async fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // After any rekey follow-up under way, so it cannot unseal again behind this.
        let _one = self.inner.root_watch.lock().await;
        // What this node wrote last is signed before the key leaves memory.
        if let Err(e) = self.sign_heads().await {
            tracing::warn!(error = %e, "could not sign the last audit chain heads");
        }
        let _ = self.seal();
        self.flush_key_uses().await;
        self.inner.cluster.close().await;
    }

    /// Whether this node is unsealed with the database's current root key.
    pub async fn root_check_matches(&self) -> bool {
        let Ok(Some(cfg)) = self.repos().seal.seal_config().await else {
            return false;
        };
        self.inner
            .keyring
            .with_root(|root| Ok(root.matches(&cfg.root_check)))
            .unwrap_or(false)
    }

    /// Periodic check (every node): has another node replaced the root key?
    pub async fn check_root(&self) {
        if !self.inner.keyring.is_sealed() {
            self.seal_if_root_replaced().await;
        }
    }

    /// Tell the other nodes (best effort; their caches also expire on their own).
    pub(crate) fn publish(&self, what: Invalidation) {
        let cluster = self.inner.cluster.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = cluster.publish_invalidation(what).await {
                    tracing::debug!(error = %e, "could not publish a cache invalidation");
                }
            });
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    fn repos(&self) -> &Repos {
        &self.inner.repos
    }

    fn cluster(&self) -> &dyn Cluster {
        &*self.inner.cluster
    }
}
