use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_crypto::RootKey;
use zeroize::Zeroizing;

use crate::{Seal, SealError, SealKind};

/// Names and values bound to a wrapped key (a KMS encryption context; GCM additional data
/// on an HSM). Unwrapping needs exactly the same context.
pub type EncryptionContext = BTreeMap<String, String>;

/// A key held by a KMS or an HSM. It never leaves the device: Coffer asks it to wrap and
/// unwrap key material. Implemented in `coffer-extkeys`.
#[async_trait::async_trait]
pub trait ExternalKey: Send + Sync + std::fmt::Debug {
    /// A name that is safe to store: `awskms:<key id, ARN or alias>`, `pkcs11:<label>`.
    fn reference(&self) -> String;

    /// The reference that names this key however it was given (a KMS key's ARN rather
    /// than an alias or a bare id), for telling whether two references are one key. Checks
    /// that the key exists.
    async fn canonical(&self) -> Result<String, SealError> {
        Ok(self.reference())
    }

    /// Encrypt `plaintext` (a key) under this key, bound to `context`.
    async fn wrap(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, SealError>;

    /// Decrypt what [`ExternalKey::wrap`] made for the same `context`. Fails with
    /// [`SealError::KeyUnavailable`] when the key is disabled, gone or not this data's key.
    async fn unwrap(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, SealError>;

    /// A new 256-bit key made by the service, in the clear and wrapped, for services that
    /// generate keys themselves (KMS GenerateDataKey). `None`: generate locally and wrap.
    async fn generate(
        &self,
        _context: &EncryptionContext,
    ) -> Result<Option<(Zeroizing<Vec<u8>>, Vec<u8>)>, SealError> {
        Ok(None)
    }
}

/// Check that a key exists and can be used, by a wrap and unwrap round trip.
pub async fn probe(key: &dyn ExternalKey, context: &EncryptionContext) -> Result<(), SealError> {
    let probe = b"coffer external key probe";
    let blob = key.wrap(probe, context).await?;
    let back = key.unwrap(&blob, context).await?;
    if back.as_slice() == probe {
        Ok(())
    } else {
        Err(SealError::Service(
            "the key service returned the wrong plaintext".into(),
        ))
    }
}

/// A service that holds keys (one KMS account and region, one HSM token).
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// The reference prefix: `awskms`, `pkcs11`.
    fn scheme(&self) -> &'static str;
    /// The key called `name` in this service (not contacted yet).
    fn key(&self, name: &str) -> Result<Arc<dyn ExternalKey>, SealError>;
}

/// The key services this server is configured with, for organisations' own keys.
#[derive(Debug, Clone, Default)]
pub struct KeyServices {
    providers: Vec<Arc<dyn KeyProvider>>,
}

impl KeyServices {
    pub fn new(providers: Vec<Arc<dyn KeyProvider>>) -> Self {
        Self { providers }
    }

    /// The key a stored reference names, if this server has the service it lives in.
    pub fn resolve(&self, reference: &str) -> Result<Arc<dyn ExternalKey>, SealError> {
        let (scheme, name) = reference
            .split_once(':')
            .filter(|(scheme, name)| matches!(*scheme, "awskms" | "pkcs11") && valid_name(name))
            .ok_or_else(|| {
                SealError::Config(
                    "an external key is awskms:<key id, ARN or alias> or pkcs11:<label>".into(),
                )
            })?;
        self.providers
            .iter()
            .find(|p| p.scheme() == scheme)
            .ok_or_else(|| {
                SealError::NoService(format!(
                    "this server has no {scheme} key service (see docs/crypto.md to configure one)"
                ))
            })?
            .key(name)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/:.".contains(c))
}

fn root_context() -> EncryptionContext {
    EncryptionContext::from([("coffer:purpose".to_owned(), "root-key".to_owned())])
}

/// A seal whose root key is stored wrapped by a KMS or HSM key: the server unseals itself.
#[derive(Debug, Clone)]
pub struct ExternalSeal {
    kind: SealKind,
    key: Arc<dyn ExternalKey>,
}

impl ExternalSeal {
    pub fn new(key: Arc<dyn ExternalKey>) -> Result<Self, SealError> {
        let kind = match key.reference().split_once(':') {
            Some(("awskms", _)) => SealKind::AwsKms,
            Some(("pkcs11", _)) => SealKind::Pkcs11,
            _ => return Err(SealError::Config("unknown seal key service".into())),
        };
        Ok(Self { kind, key })
    }
}

#[async_trait::async_trait]
impl Seal for ExternalSeal {
    fn kind(&self) -> SealKind {
        self.kind
    }

    fn external_key(&self) -> Option<&dyn ExternalKey> {
        Some(&*self.key)
    }

    async fn seal_root(&self, root: &RootKey) -> Result<Option<Vec<u8>>, SealError> {
        self.key
            .wrap(root.expose_secret(), &root_context())
            .await
            .map(Some)
    }

    async fn new_root(&self) -> Result<(RootKey, Option<Vec<u8>>), SealError> {
        match self.key.generate(&root_context()).await? {
            Some((plain, blob)) => {
                let root = RootKey::from_bytes(&plain).map_err(|_| {
                    SealError::Service("the generated key has the wrong length".into())
                })?;
                Ok((root, Some(blob)))
            }
            None => {
                let root = RootKey::generate();
                let sealed = self.seal_root(&root).await?;
                Ok((root, sealed))
            }
        }
    }

    async fn auto_unseal(&self, sealed_root: Option<&[u8]>) -> Result<Option<RootKey>, SealError> {
        let blob = sealed_root.ok_or(SealError::Unsupported(
            "the database holds no root key wrapped for this seal",
        ))?;
        let pt = self.key.unwrap(blob, &root_context()).await?;
        RootKey::from_bytes(&pt)
            .map(Some)
            .map_err(|_| SealError::Service("the unwrapped root key has the wrong length".into()))
    }
}

/// The Shamir seal: the root key exists only as shares held by operators.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShamirSeal;

#[async_trait::async_trait]
impl Seal for ShamirSeal {
    fn kind(&self) -> SealKind {
        SealKind::Shamir
    }
    async fn seal_root(&self, _root: &RootKey) -> Result<Option<Vec<u8>>, SealError> {
        Ok(None)
    }
    async fn auto_unseal(&self, _sealed: Option<&[u8]>) -> Result<Option<RootKey>, SealError> {
        Ok(None)
    }
}
