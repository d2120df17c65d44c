//! The identity service: accounts, logins and second factors, sessions and API keys,
//! organisations and their members, invitations and the mail that tells people about
//! changes to their accounts. Its code is in `auth`, `members`, `mfa`, `apikeys`, `oidc`,
//! `orgs` and `notify`; this is what it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coffer_store::{AccessRepo, MailRepo, TenantRepo, UserRepo};
use uuid::Uuid;

use crate::CoreError;
use crate::auth::SessionCache;
use crate::kernel::Kernel;

/// API key uses not written yet: the time of each key's last use, by (organisation, key).
pub(crate) type KeyUses = Mutex<HashMap<(Uuid, Uuid), i64>>;

pub struct Identity {
    pub(crate) k: Arc<Kernel>,
    pub(crate) users: Arc<dyn UserRepo>,
    pub(crate) access: Arc<dyn AccessRepo>,
    pub(crate) mail: Arc<dyn MailRepo>,
    pub(crate) tenants: Arc<dyn TenantRepo>,
    /// Verified principals, by token digest.
    pub(crate) sessions: SessionCache,
    /// A password hash no password matches, checked when a login names nobody (same work).
    pub(crate) dummy_hash: String,
    /// API key uses not written yet, by (organisation, key): see `Identity::note_key_use`.
    pub(crate) key_uses: Arc<KeyUses>,
}

impl Identity {
    pub(crate) fn new(
        k: Arc<Kernel>,
        users: Arc<dyn UserRepo>,
        access: Arc<dyn AccessRepo>,
        mail: Arc<dyn MailRepo>,
        tenants: Arc<dyn TenantRepo>,
    ) -> Result<Self, CoreError> {
        Ok(Self {
            k,
            users,
            access,
            mail,
            tenants,
            sessions: SessionCache::new(),
            dummy_hash: crate::auth::dummy_hash()?,
            key_uses: Arc::default(),
        })
    }
}

impl std::fmt::Debug for Identity {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}
