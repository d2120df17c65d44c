//! External keys: the configured seal (where the root key comes from) and organisations'
//! own keys (bring your own key).
//!
//! An organisation that attaches its own KMS or HSM key has every new tenant key term
//! wrapped by that key instead of the root key; attaching and detaching are rotations, so
//! the rewrap job moves all values to a term wrapped the new way and the old terms are then
//! destroyed. Revoking the key (disabling it in the KMS or HSM) makes the organisation's
//! data undecryptable once every node's key cache has expired (`keys.cache_ttl`); enabling
//! it again restores access. Other organisations do not depend on it.

use std::sync::Arc;

use coffer_crypto::{KeyTerm, TenantKey, WrappedTenantKey};
use coffer_seal::{EncryptionContext, ExternalKey, KeyServices, Seal, SealError, ShamirSeal};
use coffer_store::TenantKeyRow;
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx};
use crate::kernel::Kernel;
use crate::keys::Keys;
use crate::{CoreError, Principal, Role};

#[derive(Debug, Clone)]
pub(crate) struct KeyConfig {
    pub(crate) seal: Arc<dyn Seal>,
    pub(crate) services: KeyServices,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            seal: Arc::new(ShamirSeal),
            services: KeyServices::default(),
        }
    }
}

fn tenant_context(org_id: Uuid, term: KeyTerm) -> EncryptionContext {
    EncryptionContext::from([
        ("coffer:purpose".to_owned(), "tenant-key".to_owned()),
        ("coffer:org".to_owned(), org_id.to_string()),
        ("coffer:term".to_owned(), term.0.to_string()),
    ])
}

impl Kernel {
    /// Use `seal` for the root key, and `services` for organisations' own keys.
    pub(crate) fn configure_keys(&self, seal: Arc<dyn Seal>, services: KeyServices) {
        if let Ok(mut k) = self.key_services.write() {
            *k = KeyConfig { seal, services };
        }
    }

    pub(crate) fn key_config(&self) -> Result<KeyConfig, CoreError> {
        self.key_services
            .read()
            .map(|k| k.clone())
            .map_err(|_| CoreError::Internal("key configuration lock poisoned"))
    }

    /// Wrap a new term of an organisation's key: with `target`'s external key, or with
    /// the root key.
    pub(crate) async fn wrap_new_term(
        &self,
        org_id: Uuid,
        key: &TenantKey,
        target: &WrapTarget,
    ) -> Result<WrappedTenantKey, CoreError> {
        let reference = match target {
            WrapTarget::Current => self.key_rows.external_key(org_id).await?,
            WrapTarget::External(r) => Some(r.clone()),
            WrapTarget::Root => None,
        };
        match reference {
            Some(reference) => {
                let ext = self.resolve_external(&reference)?;
                let blob = ext
                    .wrap(key.expose_secret(), &tenant_context(org_id, key.term()))
                    .await
                    .map_err(|e| unavailable(org_id, &e))?;
                WrappedTenantKey::external(key.term(), &reference, &blob)
                    .map_err(|_| CoreError::Internal("external key reference too long"))
            }
            None => self.keyring.with_root(|root| {
                root.wrap_tenant_key(org_id, key)
                    .map_err(|_| CoreError::Internal("wrap tenant key"))
            }),
        }
    }

    /// Unwrap the terms that an external key protects. Any refusal — key disabled, deleted,
    /// access denied, service unreachable — is `TenantKeyUnavailable`.
    pub(crate) async fn unwrap_external_terms(
        &self,
        org_id: Uuid,
        rows: &[TenantKeyRow],
    ) -> Result<Vec<TenantKey>, CoreError> {
        let mut out = Vec::new();
        for row in rows {
            let Some(w) = row.wrapped.external_blob() else {
                continue;
            };
            if w.term != row.term {
                return Err(CoreError::Integrity);
            }
            let ext = self.resolve_external(w.reference)?;
            let plain = ext
                .unwrap(w.blob, &tenant_context(org_id, w.term))
                .await
                .map_err(|e| unavailable(org_id, &e))?;
            out.push(TenantKey::from_external(w.term, &plain).map_err(|_| CoreError::Integrity)?);
        }
        Ok(out)
    }

    pub(crate) fn resolve_external(
        &self,
        reference: &str,
    ) -> Result<Arc<dyn ExternalKey>, CoreError> {
        self.key_config()?
            .services
            .resolve(reference)
            .map_err(|e| match e {
                SealError::NoService(msg) => CoreError::NotConfigured(msg),
                SealError::Config(msg) => CoreError::invalid("key", msg),
                other => CoreError::Seal(other.to_string()),
            })
    }
}

impl Keys {
    /// Attach the caller's organisation's own key (`awskms:<key id, ARN or alias>` or
    /// `pkcs11:<label>`). Owners only, in person. The key is tried once (wrap and unwrap)
    /// before anything changes; then one rotation wraps a new term with it and records it
    /// as the organisation's key, in one transaction, and the rewrap job moves every value
    /// there. The key is recorded by its canonical name (a KMS key's ARN), so an alias and
    /// the key it names are the same key.
    pub async fn attach_external_key(
        &self,
        cx: &Cx,
        p: &Principal,
        reference: &str,
    ) -> Result<crate::KeyStatus, CoreError> {
        let mut pending = self.k.begin_for(
            cx,
            p,
            crate::keys::action::ATTACH_EXTERNAL,
            AuditTarget::default(),
        );
        let r: Result<crate::KeyStatus, CoreError> = async {
            ensure_owner(p)?;
            self.k.ensure_unsealed()?;
            let given = self.k.resolve_external(reference)?;
            let probe_failed = |e: SealError| {
                tracing::warn!(org_id = %p.org_id, error = %e, "external key probe failed");
                CoreError::invalid("key", format!("the key cannot be used: {e}"))
            };
            let canonical = given.canonical().await.map_err(probe_failed)?;
            if let Some(seal_key) = self.k.key_config()?.seal.external_key() {
                // Fail closed: if the seal key cannot be named, nothing is attached.
                let seal_name = seal_key.canonical().await.map_err(|e| {
                    tracing::warn!(error = %e, "could not name the seal key");
                    CoreError::Seal("the seal key could not be checked".into())
                })?;
                if seal_name == canonical || seal_key.reference() == given.reference() {
                    return Err(CoreError::invalid(
                        "key",
                        "this is the server's seal key; use a key of the organisation's own",
                    ));
                }
            }
            let ext = self.k.resolve_external(&canonical)?;
            coffer_seal::probe(&*ext, &tenant_context(p.org_id, KeyTerm(0)))
                .await
                .map_err(probe_failed)?;
            match self
                .rotate_org_key_to(
                    p.org_id,
                    "attach-external",
                    WrapTarget::External(canonical.clone()),
                    Some(&mut pending),
                )
                .await
            {
                Err(CoreError::Store(coffer_store::StoreError::KeyInUse)) => {
                    return Err(CoreError::AlreadyExists {
                        kind: "external key attachment",
                        name: canonical,
                    });
                }
                other => other?,
            };
            tracing::info!(org_id = %p.org_id, key = %canonical, "external key attached");
            self.org_key_status(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Go back to the root key: one rotation wraps a new term with it and forgets the
    /// external key, and the rewrap job moves every value there. The external key must
    /// still work until then.
    pub async fn detach_external_key(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<crate::KeyStatus, CoreError> {
        let mut pending = self.k.begin_for(
            cx,
            p,
            crate::keys::action::DETACH_EXTERNAL,
            AuditTarget::default(),
        );
        let r: Result<crate::KeyStatus, CoreError> = async {
            ensure_owner(p)?;
            self.k.ensure_unsealed()?;
            if self.tenants.external_key(p.org_id).await?.is_none() {
                return Err(CoreError::NoExternalKey);
            }
            self.rotate_org_key_to(
                p.org_id,
                "detach-external",
                WrapTarget::Root,
                Some(&mut pending),
            )
            .await?;
            tracing::info!(org_id = %p.org_id, "external key detached");
            self.org_key_status(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }
}

/// What wraps a new term.
#[derive(Debug, Clone)]
pub(crate) enum WrapTarget {
    /// Whatever wraps the organisation's newest term now.
    Current,
    /// This external key (its canonical reference).
    External(String),
    /// The root key.
    Root,
}

fn ensure_owner(p: &Principal) -> Result<(), CoreError> {
    p.ensure_person()?;
    if p.role != Role::Owner {
        return Err(CoreError::Forbidden(
            "only Owners attach or detach the organisation's key",
        ));
    }
    Ok(())
}

fn unavailable(org_id: Uuid, e: &SealError) -> CoreError {
    tracing::warn!(org_id = %org_id, error = %e, "tenant key unavailable");
    CoreError::TenantKeyUnavailable
}
