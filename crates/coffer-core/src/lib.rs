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
mod keyring;
pub mod members;
pub mod mfa;
pub mod names;
pub mod notify;
pub mod oidc;
mod orgs;
mod params;
mod projects;
mod roles;
mod sys;

use std::sync::Arc;

pub use auth::{
    AuthMethod, LoginOutcome, LoginResult, Principal, Scope, SessionView, normalize_username,
};
pub use coffer_crypto::token::BearerToken;
pub use coffer_crypto::{SecretBytes, fingerprint_sha256, random_bytes};
pub use config::CoreConfig;
pub use error::CoreError;
pub use params::{DiffEntry, DiffKind, ParamHistoryEntry, ParamView, SetParam};
pub use projects::{EnvView, ProjectView};
pub use roles::Role;
pub use sys::{Bootstrap, InitResult, SealStatus, UnsealOutcome};

use coffer_store::Store;

/// The service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Coffer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    config: CoreConfig,
    keyring: keyring::Keyring,
    sessions: auth::SessionCache,
    meta: projects::MetaCache,
    sinks: audit::AuditSinks,
    dummy_hash: String,
}

impl Coffer {
    pub fn new(store: Arc<dyn Store>, config: CoreConfig) -> Result<Self, CoreError> {
        Self::with_sinks(store, config, audit::AuditSinks::default())
    }

    pub fn with_sinks(
        store: Arc<dyn Store>,
        config: CoreConfig,
        sinks: audit::AuditSinks,
    ) -> Result<Self, CoreError> {
        let dummy_hash = auth::dummy_hash()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                keyring: keyring::Keyring::default(),
                sessions: auth::SessionCache::new(config.session_cache_ttl),
                meta: projects::MetaCache::default(),
                sinks,
                config,
                dummy_hash,
            }),
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    fn store(&self) -> &dyn Store {
        &*self.inner.store
    }
}
