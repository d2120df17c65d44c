//! `coffer operator rekey`: a new root key and a new set of shares (unseal shares, or recovery
//! shares of a KMS or HSM seal; new
//! threshold allowed), authorised by a quorum of the current shares. The root key is always
//! replaced, not just re-split: shares of the same key would leave the old shares valid,
//! and a rekey usually happens because shares leaked or their holders left.
//!
//! It reseals only what the root key protects directly — tenant keys, the audit
//! signing key, TOTP seeds and undelivered mail — never a stored value. Afterwards the old
//! root key opens nothing in the live database, and database copies taken before hold only
//! material wrapped by the old key: this is what makes an organisation's deletion final for
//! those copies too.

use coffer_crypto::RootKey;
use coffer_crypto::audit::AuditSigningKey;
use coffer_crypto::shamir;
use coffer_crypto::system::{Purpose, SystemKey};
use coffer_store::{Invalidation, RootRotation, RootSecrets};
use zeroize::Zeroizing;

use crate::audit::{AuditTarget, Cx};
use crate::{Coffer, CoreError, Principal};

#[derive(Debug)]
pub struct RekeyResult {
    /// The new shares in text form; shown once, never stored.
    pub shares: Vec<Zeroizing<String>>,
    pub threshold: u8,
}

impl Coffer {
    /// Replace the root key and issue `shares` shares of the new one (any `threshold` of
    /// which unseal), after checking that `current` is a quorum of the present shares.
    /// Only an Owner (`p`) may.
    pub async fn rekey(
        &self,
        cx: &Cx,
        p: &Principal,
        current: &[String],
        shares: u8,
        threshold: u8,
    ) -> Result<RekeyResult, CoreError> {
        let mut pending =
            self.k()
                .begin_for(cx, p, crate::sys::action::REKEY, AuditTarget::default());
        let r: Result<RekeyResult, CoreError> = async {
            if !p.role.can_operate() {
                return Err(CoreError::Forbidden("only an Owner can rekey the server"));
            }
            // The server's state first (it decides whether any request can succeed), then
            // the request's own rule that the document cannot state.
            self.k().ensure_unsealed()?;
            let cfg = self.seal_config().await?;
            let seal = self.k().key_config()?.seal;
            if coffer_seal::SealKind::parse(&cfg.kind) != Some(seal.kind())
                || seal.kind() == coffer_seal::SealKind::DevFile
            {
                return Err(CoreError::WrongSealType);
            }
            if !(2..=255).contains(&threshold) || threshold > shares {
                return Err(CoreError::invalid(
                    "threshold",
                    "must be between 2 and the number of shares",
                ));
            }
            let old = self.root_from_quorum(&cfg, current)?;
            let _exclusive = self.k().root_change.write().await;
            // A KMS/HSM seal protects the new root key before anything changes: if it cannot,
            // the rotation does not happen.
            let (new, sealed_root) = seal.new_root().await.map_err(crate::sys::seal_error)?;
            let root_check = new
                .check_value()
                .map_err(|_| CoreError::Internal("root check"))?;
            let parts = shamir::split(&new, shares, threshold)
                .map_err(|_| CoreError::invalid("shares", "at most 255"))?;
            // Another node may seal something with the old root key between reading the root
            // secrets and the rotation's commit: the store then refuses the rotation, and it is
            // computed again from what is there now.
            let mut attempts = 0;
            loop {
                let previous = self.inner.key_repo.root_secrets().await?;
                let rotation = RootRotation {
                    previous_check: cfg.root_check.clone(),
                    sealed_root: sealed_root.clone(),
                    root_check: root_check.clone(),
                    shares,
                    threshold,
                    secrets: reseal(&old, &new, previous.clone())?,
                    previous,
                };
                match self.inner
                    .key_repo
                    .rotate_root(&rotation, Some(pending.change_event()?))
                    .await {
                    Ok(()) => break,
                    Err(coffer_store::StoreError::Conflict) if attempts < 5 => attempts += 1,
                    Err(e) => {
                        // The commit may have happened with its answer lost: then the new shares
                        // are the only ones that unseal, and must not be thrown away.
                        let committed = self
                            .inner
                            .seal
                            .seal_config()
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|cfg| new.matches(&cfg.root_check));
                        if committed {
                            tracing::warn!(error = %e, "the rekey committed although its answer was lost");
                            // Its event with it: appending it again could fail, and the
                            // new shares would then be lost.
                            pending.confirm_committed();
                            break;
                        }
                        return Err(e.into());
                    }
                }
            }
            self.k().cluster().set_root_guard(Some(root_check));
            self.k().keyring.replace_root(new)?;
            // Other nodes hold the old root key: they seal themselves, and unseal again with the
            // new shares (Shamir) or by themselves (KMS/HSM seal).
            self.k().publish(Invalidation::All);
            tracing::warn!(
                shares,
                threshold,
                "root key rotated and new shares issued; nodes with a Shamir seal must be unsealed with the new shares"
            );
            Ok(RekeyResult {
                shares: parts.iter().map(|p| p.to_text()).collect(),
                threshold,
            })
        }
        .await;
        self.k().conclude(pending, r).await
    }
}

/// Every root secret opened with `old` and sealed with `new`. Fails on the first one that
/// does not open: a partial rotation would lose data.
fn reseal(old: &RootKey, new: &RootKey, s: RootSecrets) -> Result<RootSecrets, CoreError> {
    let integrity = |_| CoreError::Integrity;
    let internal = |_| CoreError::Internal("reseal under the new root key");
    // Terms wrapped by an organisation's own key do not depend on the root key.
    let tenant_keys = s
        .tenant_keys
        .into_iter()
        .filter(|k| k.wrapped.external_blob().is_none())
        .map(|mut k| {
            let key = old
                .unwrap_tenant_key(k.org_id, &k.wrapped)
                .map_err(integrity)?;
            k.wrapped = new.wrap_tenant_key(k.org_id, &key).map_err(internal)?;
            Ok(k)
        })
        .collect::<Result<Vec<_>, CoreError>>()?;
    let audit_key = s
        .audit_key
        .map(|w| {
            AuditSigningKey::unwrap(old, &w)
                .map_err(integrity)?
                .wrap(new)
                .map_err(internal)
        })
        .transpose()?;
    let system = |purpose, rows: Vec<(uuid::Uuid, Vec<u8>)>| {
        let (from, to) = (
            SystemKey::derive(old, purpose).map_err(internal)?,
            SystemKey::derive(new, purpose).map_err(internal)?,
        );
        rows.into_iter()
            .map(|(id, sealed)| {
                let plain = from.open(id, &sealed).map_err(integrity)?;
                Ok((id, to.seal(id, plain.expose_secret()).map_err(internal)?))
            })
            .collect::<Result<Vec<_>, CoreError>>()
    };
    Ok(RootSecrets {
        tenant_keys,
        audit_key,
        mfa: system(Purpose::Totp, s.mfa)?,
        outbox: system(Purpose::Outbox, s.outbox)?,
    })
}
