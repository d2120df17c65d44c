//! The barrier's key state: the root key while unsealed, and unwrapped tenant keys.
//!
//! Locks are `std::sync` and never held across an await: every critical section is a few
//! map operations or one AES-GCM unwrap.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coffer_crypto::audit::AuditHmacKey;
use coffer_crypto::{KeyTerm, RootKey, TenantKey};
use coffer_seal::ShamirProgress;
use coffer_store::TenantKeyRow;
use uuid::Uuid;

use crate::CoreError;

/// An organisation's unwrapped key-encryption keys, newest term last.
#[derive(Debug)]
pub(crate) struct OrgKeys {
    keys: Vec<TenantKey>,
    loaded: Instant,
}

impl OrgKeys {
    /// Whether every term in `terms` is here.
    pub(crate) fn covers(&self, mut terms: impl Iterator<Item = KeyTerm>) -> bool {
        terms.all(|t| self.term(t).is_ok())
    }
    pub(crate) fn active(&self) -> Result<&TenantKey, CoreError> {
        self.keys.last().ok_or(CoreError::Integrity)
    }
    pub(crate) fn term(&self, term: KeyTerm) -> Result<&TenantKey, CoreError> {
        self.keys
            .iter()
            .find(|k| k.term() == term)
            .ok_or(CoreError::Integrity)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Keyring {
    state: RwLock<State>,
    /// One load at a time per organisation: when its cached keys expire under load, one
    /// request unwraps them (a KMS or HSM call for its own key) and the others wait for
    /// that result instead of each calling the key service.
    loading: crate::flight::Flights<Uuid>,
}

#[derive(Debug)]
enum State {
    Sealed(ShamirProgress),
    Unsealed {
        root: RootKey,
        orgs: HashMap<Uuid, Arc<OrgKeys>>,
        /// Audit HMAC keys derived from this root, by organisation (derived once, not per
        /// request; gone with the root).
        audit_macs: HashMap<Uuid, Arc<AuditHmacKey>>,
    },
}

impl Default for State {
    fn default() -> Self {
        State::Sealed(ShamirProgress::default())
    }
}

/// Derived audit HMAC keys kept at most; past this one is dropped for each one derived.
const MAX_AUDIT_MACS: usize = 10_000;

/// Organisations whose unwrapped keys are kept at most; past this one is dropped for each
/// one loaded (it is unwrapped again on its next use), so memory stays bounded however many
/// organisations a node serves.
const MAX_ORGS: usize = 100_000;

fn poisoned<T>(_: T) -> CoreError {
    CoreError::Internal("keyring lock poisoned")
}

impl Keyring {
    pub(crate) fn is_sealed(&self) -> bool {
        self.state
            .read()
            .map(|s| matches!(*s, State::Sealed(_)))
            .unwrap_or(true)
    }

    pub(crate) fn unseal(&self, root: RootKey) -> Result<(), CoreError> {
        let mut s = self.state.write().map_err(poisoned)?;
        *s = State::Unsealed {
            root,
            orgs: HashMap::new(),
            audit_macs: HashMap::new(),
        };
        Ok(())
    }

    /// Drop the root key and every cached tenant key (all wipe themselves on drop).
    pub(crate) fn seal(&self) -> Result<(), CoreError> {
        let mut s = self.state.write().map_err(poisoned)?;
        *s = State::default();
        Ok(())
    }

    /// Run `f` on the unseal progress; fails if already unsealed.
    pub(crate) fn with_progress<R>(
        &self,
        f: impl FnOnce(&mut ShamirProgress) -> R,
    ) -> Result<R, CoreError> {
        let mut s = self.state.write().map_err(poisoned)?;
        match &mut *s {
            State::Sealed(p) => Ok(f(p)),
            State::Unsealed { .. } => Err(CoreError::AlreadyUnsealed),
        }
    }

    /// Swap in a rotated root key; every cached tenant key is unwrapped again from storage.
    pub(crate) fn replace_root(&self, root: RootKey) -> Result<(), CoreError> {
        let mut s = self.state.write().map_err(poisoned)?;
        match &mut *s {
            State::Unsealed { .. } => {
                *s = State::Unsealed {
                    root,
                    orgs: HashMap::new(),
                    audit_macs: HashMap::new(),
                };
                Ok(())
            }
            State::Sealed(_) => Err(CoreError::Sealed),
        }
    }

    pub(crate) fn progress(&self) -> usize {
        match self.state.read().as_deref() {
            Ok(State::Sealed(p)) => p.have(),
            _ => 0,
        }
    }

    pub(crate) fn with_root<R>(
        &self,
        f: impl FnOnce(&RootKey) -> Result<R, CoreError>,
    ) -> Result<R, CoreError> {
        let s = self.state.read().map_err(poisoned)?;
        match &*s {
            State::Unsealed { root, .. } => f(root),
            State::Sealed(_) => Err(CoreError::Sealed),
        }
    }

    /// The audit HMAC key of an organisation (nil: the system chain), derived from the root
    /// key on first use.
    pub(crate) fn audit_hmac_key(&self, org_id: Uuid) -> Result<Arc<AuditHmacKey>, CoreError> {
        if let State::Unsealed { audit_macs, .. } = &*self.state.read().map_err(poisoned)?
            && let Some(k) = audit_macs.get(&org_id)
        {
            return Ok(k.clone());
        }
        let mut s = self.state.write().map_err(poisoned)?;
        match &mut *s {
            State::Unsealed {
                root, audit_macs, ..
            } => {
                // One out for one in, as for tenant keys: starting over would derive them
                // all again at once.
                if audit_macs.len() >= MAX_AUDIT_MACS
                    && let Some(gone) = audit_macs.keys().next().copied()
                {
                    audit_macs.remove(&gone);
                }
                let key = Arc::new(
                    AuditHmacKey::derive(root, org_id)
                        .map_err(|_| CoreError::Internal("audit key"))?,
                );
                audit_macs.insert(org_id, key.clone());
                Ok(key)
            }
            State::Sealed(_) => Err(CoreError::Sealed),
        }
    }

    /// The organisation's keys if they were unwrapped less than `ttl` ago. The bound makes
    /// a change on another node (rotation, deletion) visible here within `ttl` even if its
    /// notification was lost.
    pub(crate) fn cached(
        &self,
        org_id: Uuid,
        ttl: Duration,
    ) -> Result<Option<Arc<OrgKeys>>, CoreError> {
        let s = self.state.read().map_err(poisoned)?;
        match &*s {
            State::Unsealed { orgs, .. } => Ok(orgs
                .get(&org_id)
                .filter(|k| k.loaded.elapsed() < ttl)
                .cloned()),
            State::Sealed(_) => Err(CoreError::Sealed),
        }
    }

    /// Forget one organisation's unwrapped keys (all organisations' with `None`).
    pub(crate) fn evict(&self, org_id: Option<Uuid>) {
        if let Ok(mut s) = self.state.write()
            && let State::Unsealed { orgs, .. } = &mut *s
        {
            match org_id {
                Some(org) => {
                    orgs.remove(&org);
                }
                None => orgs.clear(),
            }
        }
    }

    /// Unwrap an organisation's stored keys with the root key and cache them, together with
    /// the terms its external key unwrapped (`external`).
    pub(crate) fn load(
        &self,
        org_id: Uuid,
        rows: &[TenantKeyRow],
        external: Vec<TenantKey>,
    ) -> Result<Arc<OrgKeys>, CoreError> {
        let mut keys = self.with_root(|root| {
            rows.iter()
                .filter(|r| r.wrapped.external_blob().is_none())
                .map(|r| {
                    root.unwrap_tenant_key(org_id, &r.wrapped)
                        .map_err(|_| CoreError::Integrity)
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        keys.extend(external);
        if keys.is_empty() {
            return Err(CoreError::Integrity);
        }
        keys.sort_by_key(TenantKey::term);
        let ks = Arc::new(OrgKeys {
            keys,
            loaded: Instant::now(),
        });
        let mut s = self.state.write().map_err(poisoned)?;
        match &mut *s {
            State::Unsealed { orgs, .. } => {
                if orgs.len() >= MAX_ORGS
                    && !orgs.contains_key(&org_id)
                    && let Some(gone) = orgs.keys().next().copied()
                {
                    orgs.remove(&gone);
                }
                orgs.insert(org_id, ks.clone());
                Ok(ks)
            }
            State::Sealed(_) => Err(CoreError::Sealed),
        }
    }
}

impl crate::kernel::Kernel {
    /// The organisation's tenant keys, unwrapped on first use after unseal.
    pub(crate) async fn org_keys(&self, org_id: Uuid) -> Result<Arc<OrgKeys>, CoreError> {
        let ttl = self.config().key_cache_ttl;
        if let Some(k) = self.keyring.cached(org_id, ttl)? {
            return Ok(k);
        }
        let lock = self.keyring.loading.lock(org_id);
        let _loading = lock.lock().await;
        // Another request may have loaded them while this one waited.
        if let Some(k) = self.keyring.cached(org_id, ttl)? {
            return Ok(k);
        }
        let _root = self.root_stable().await;
        let rows = self.key_rows.tenant_keys(org_id).await?;
        let external = match self.unwrap_external_terms(org_id, &rows).await {
            Err(CoreError::TenantKeyUnavailable) => {
                self.key_availability(org_id, false).await;
                return Err(CoreError::TenantKeyUnavailable);
            }
            other => other?,
        };
        let keys = self.keyring.load(org_id, &rows, external)?;
        self.key_availability(org_id, true).await;
        Ok(keys)
    }

    /// Audit the moments an organisation's own key stops and starts working (as this node
    /// sees them), once each, not every refused request.
    async fn key_availability(&self, org_id: Uuid, available: bool) {
        let changed = self
            .keys_unavailable
            .lock()
            .map(|mut set| {
                if available {
                    set.remove(&org_id)
                } else {
                    set.insert(org_id)
                }
            })
            .unwrap_or(false);
        if changed {
            let (action, outcome) = if available {
                ("key.external_available", "success")
            } else {
                ("key.external_unavailable", "failure")
            };
            self.record_system(org_id, action, outcome, serde_json::json!({}))
                .await;
        }
    }

    /// The organisation's keys, reloaded once if they lack a term that `terms` needs (another
    /// node rotated and rewrapped meanwhile).
    pub(crate) async fn org_keys_covering(
        &self,
        org_id: Uuid,
        terms: impl Iterator<Item = KeyTerm>,
    ) -> Result<Arc<OrgKeys>, CoreError> {
        let keys = self.org_keys(org_id).await?;
        if keys.covers(terms) {
            return Ok(keys);
        }
        self.keyring.evict(Some(org_id));
        self.org_keys(org_id).await
    }
}
