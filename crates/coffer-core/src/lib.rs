//! The barrier and the domain.
//!
//! [`Coffer`] is the one entry point the HTTP edge calls: a thin front over one service per
//! area ([`Params`], [`Projects`], [`Identity`], [`Keys`], [`AuditLog`]), each holding the
//! repositories of its own area and the shared kernel (the seal state with the root key in
//! memory only, unwrapped tenant keys, and the audit recorder every operation records its
//! own event through). Every operation takes the caller's [`Principal`], whose organisation
//! comes from the authenticated session and nowhere else.

pub mod apikeys;
pub mod audit;
mod auth;
mod clock;
mod config;
mod error;
mod external;
mod flight;
mod identity;
mod kernel;
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

use coffer_store::{Invalidation, KeyRepo, SealRepo};

pub use audit::AuditLog;
pub use identity::Identity;
pub use keys::Keys;
pub use params::Params;
pub use projects::Projects;

/// The service: a thin front over the services of each area. The edge calls
/// [`Coffer::params`], [`Coffer::identity`], [`Coffer::keys`], [`Coffer::audit`] and
/// [`Coffer::projects`] for their operations; the front itself does what spans them all:
/// initialising, sealing and unsealing, root key rotation, deleting an organisation, and
/// following the other nodes' change notices. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Coffer {
    inner: Arc<Inner>,
}

struct Inner {
    k: Arc<kernel::Kernel>,
    /// The seal configuration and the root's check value.
    seal: Arc<dyn SealRepo>,
    /// Root rotation and an organisation's destruction.
    key_repo: Arc<dyn KeyRepo>,
    identity: Arc<Identity>,
    projects: Arc<Projects>,
    params: Arc<Params>,
    keys: Arc<Keys>,
    audit: Arc<AuditLog>,
    /// Held while following a rekey done on another node.
    root_watch: tokio::sync::Mutex<()>,
    /// Set by [`Coffer::close`]: nothing unseals again afterwards.
    closed: std::sync::atomic::AtomicBool,
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
        let invalidations = storage.cluster.invalidations();
        let store = storage.store;
        let k = Arc::new(kernel::Kernel::new(
            config,
            storage.cluster,
            store.clone(),
            store.clone(),
            sinks,
        ));
        let projects = Arc::new(Projects::new(k.clone(), store.clone()));
        let c = Self {
            inner: Arc::new(Inner {
                identity: Arc::new(Identity::new(
                    k.clone(),
                    store.clone(),
                    store.clone(),
                    store.clone(),
                    store.clone(),
                )?),
                params: Arc::new(Params {
                    k: k.clone(),
                    params: store.clone(),
                    projects: projects.clone(),
                    users: store.clone(),
                }),
                projects,
                keys: Arc::new(Keys::new(k.clone(), store.clone(), store.clone())),
                audit: Arc::new(AuditLog {
                    k: k.clone(),
                    audit: store.clone(),
                    archive: store.clone(),
                    archive_rate: Default::default(),
                }),
                seal: store.clone(),
                key_repo: store,
                k,
                root_watch: tokio::sync::Mutex::new(()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if let Some(rx) = invalidations {
            c.follow_invalidations(rx);
        }
        c.flush_key_uses_periodically();
        Ok(c)
    }

    /// Parameters: read, write, history, diff.
    pub fn params(&self) -> &Params {
        &self.inner.params
    }

    /// Projects and their environments.
    pub fn projects(&self) -> &Projects {
        &self.inner.projects
    }

    /// Accounts, logins, sessions, API keys, organisations and their members.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Tenant keys: status, rotation, organisations' own keys.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The audit log: listing, export, verification, checkpoints.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    fn k(&self) -> &kernel::Kernel {
        &self.inner.k
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
                inner.identity.flush_key_uses().await;
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
                    Invalidation::Access => inner.identity.sessions.clear(),
                    Invalidation::Meta(org) => inner.projects.meta.evict_org(org),
                    Invalidation::Keys(org) => {
                        inner.k.keyring.evict(Some(org));
                        // The leader's key job may have work now.
                        inner.keys.key_job.notify_one();
                    }
                    Invalidation::All => {
                        inner.identity.sessions.clear();
                        inner.projects.meta.clear();
                        inner.k.keyring.evict(None);
                        inner.keys.key_job.notify_one();
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
            let _stable = self.k().root_change.read().await;
            let Ok(Some(cfg)) = self.inner.seal.seal_config().await else {
                return;
            };
            self.k()
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
            let _exclusive = self.k().root_change.write().await;
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
        if let Err(e) = self.audit().sign_heads().await {
            tracing::warn!(error = %e, "could not sign the last audit chain heads");
        }
        let _ = self.seal();
        self.identity().flush_key_uses().await;
        self.k().cluster.close().await;
    }

    /// Whether this node is unsealed with the database's current root key.
    pub async fn root_check_matches(&self) -> bool {
        let Ok(Some(cfg)) = self.inner.seal.seal_config().await else {
            return false;
        };
        self.k()
            .keyring
            .with_root(|root| Ok(root.matches(&cfg.root_check)))
            .unwrap_or(false)
    }

    /// Periodic check (every node): has another node replaced the root key?
    pub async fn check_root(&self) {
        if !self.k().keyring.is_sealed() {
            self.seal_if_root_replaced().await;
        }
    }

    pub fn config(&self) -> &CoreConfig {
        self.k().config()
    }

    /// Record a request the edge rejected before it reached an operation (unauthenticated,
    /// malformed body, ...): the route's action with the rejection's code.
    pub async fn record_rejection(&self, cx: &audit::Cx, code: ErrorCode) -> Result<(), CoreError> {
        let Some(action) = cx.route_action() else {
            return Ok(());
        };
        let mut pending = self.k().begin(cx, action, cx.route_target());
        pending.failed(code);
        self.k()
            .conclude_with(pending, Ok(()), &*self.inner.params)
            .await
    }

    /// Use `seal` for the root key, and `services` for organisations' own keys. Call once,
    /// before [`Coffer::start_sealed`].
    pub fn configure_keys(&self, seal: Arc<dyn seal::Seal>, services: seal::KeyServices) {
        self.k().configure_keys(seal, services);
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}
