//! Keys for the server's own small secrets (TOTP seeds, queued mail), derived from the root
//! key with HKDF so they need no storage and disappear with the root key.

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::hazmat::{self, KEY_LEN};
use crate::{CryptoError, RootKey, SecretBytes};

/// What a [`SystemKey`] protects. Each purpose gets its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// TOTP seeds of users.
    Totp,
    /// E-mail waiting in the outbox.
    Outbox,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Totp => b"coffer/system/totp/v1",
            Purpose::Outbox => b"coffer/system/outbox/v1",
        }
    }
}

pub struct SystemKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SystemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemKey([REDACTED])")
    }
}

impl SystemKey {
    pub fn derive(root: &RootKey, purpose: Purpose) -> Result<Self, CryptoError> {
        use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
        let prk = Salt::new(HKDF_SHA256, b"coffer/system-key").extract(root.expose_secret());
        let info = [purpose.label()];
        let okm = prk
            .expand(&info, HKDF_SHA256)
            .map_err(|_| CryptoError::InvalidKey)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        okm.fill(&mut *key).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self(key))
    }

    /// AES-256-GCM, bound to `owner` (the row the value belongs to), so a sealed value
    /// moved to another row does not open.
    pub fn seal(&self, owner: Uuid, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        hazmat::seal(&self.0, owner.as_bytes(), plaintext)
    }

    pub fn open(&self, owner: Uuid, sealed: &[u8]) -> Result<SecretBytes, CryptoError> {
        hazmat::open(&self.0, owner.as_bytes(), sealed).map(SecretBytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_purpose() {
        let root = RootKey::generate();
        let k = SystemKey::derive(&root, Purpose::Totp).unwrap();
        let owner = Uuid::new_v4();
        let sealed = k.seal(owner, b"seed").unwrap();
        assert_eq!(k.open(owner, &sealed).unwrap().expose_secret(), b"seed");
        assert!(k.open(Uuid::new_v4(), &sealed).is_err());
        let other = SystemKey::derive(&root, Purpose::Outbox).unwrap();
        assert!(other.open(owner, &sealed).is_err());
        let other_root = SystemKey::derive(&RootKey::generate(), Purpose::Totp).unwrap();
        assert!(other_root.open(owner, &sealed).is_err());
    }
}
