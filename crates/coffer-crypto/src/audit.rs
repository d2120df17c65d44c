//! Audit log primitives: the hash chain, the checkpoint signing key, and per-organisation
//! HMAC keys for correlating values that must never be stored.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::hazmat::{self, KEY_LEN};
use crate::{CryptoError, RootKey};

pub const HASH_LEN: usize = 32;
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

/// The hash before an organisation's first event.
pub const GENESIS: [u8; HASH_LEN] = [0u8; HASH_LEN];

/// `SHA-256("coffer/audit/v1" || prev || entry)`: each event's hash covers its predecessor's.
pub fn chain_hash(prev: &[u8; HASH_LEN], entry: &[u8]) -> [u8; HASH_LEN] {
    let mut buf = Vec::with_capacity(15 + HASH_LEN + entry.len());
    buf.extend_from_slice(b"coffer/audit/v1");
    buf.extend_from_slice(prev);
    buf.extend_from_slice(entry);
    hazmat::sha256(&buf)
}

/// What the chain hash covers for one event: its sequence number (big-endian) and its JSON
/// body. A frozen format (vectors in `tests/vectors/audit_chain.json`); PostgreSQL's
/// plpgsql appends compute the same bytes and are checked against the same vectors.
pub fn chain_entry(seq: u64, body: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body.as_bytes());
    v
}

/// The hash of event `seq` with JSON `body` after the event whose hash is `prev`.
pub fn event_hash(prev: &[u8; HASH_LEN], seq: u64, body: &str) -> [u8; HASH_LEN] {
    chain_hash(prev, &chain_entry(seq, body))
}

/// What a checkpoint signs: the organisation, the last sequence number it covers, that
/// event's hash, and the time.
pub fn checkpoint_message(
    org_id: Uuid,
    seq: u64,
    hash: &[u8; HASH_LEN],
    created_at: i64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(26 + 16 + 8 + HASH_LEN + 8);
    m.extend_from_slice(b"coffer/audit-checkpoint/v1");
    m.extend_from_slice(org_id.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&created_at.to_be_bytes());
    m
}

/// Ed25519 key that signs checkpoints. Its seed is stored only wrapped by the root key.
pub struct AuditSigningKey {
    seed: Zeroizing<[u8; KEY_LEN]>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl AuditSigningKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        hazmat::fill_random(&mut *seed);
        Self::from_seed(seed)
    }

    fn from_seed(seed: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, CryptoError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&*seed).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self { seed, pair })
    }

    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }

    /// The seed sealed under the root key, for storage.
    pub fn wrap(&self, root: &RootKey) -> Result<Vec<u8>, CryptoError> {
        hazmat::seal(root.expose_secret(), WRAP_AAD, &*self.seed)
    }

    pub fn unwrap(root: &RootKey, wrapped: &[u8]) -> Result<Self, CryptoError> {
        let seed = hazmat::open(root.expose_secret(), WRAP_AAD, wrapped)?;
        let arr: [u8; KEY_LEN] = seed
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Decrypt)?;
        Self::from_seed(Zeroizing::new(arr))
    }
}

const WRAP_AAD: &[u8] = b"coffer/audit-signing-key/v1";

/// Verify a checkpoint signature with a public key (works offline, without the root key).
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Per-organisation key for HMACs in audit events, derived from the root key with HKDF so
/// it needs no storage: values can be correlated ("the same token", "the same value") without
/// being stored.
pub struct AuditHmacKey(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for AuditHmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditHmacKey([REDACTED])")
    }
}

impl AuditHmacKey {
    pub fn derive(root: &RootKey, org_id: Uuid) -> Result<Self, CryptoError> {
        use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
        let salt = Salt::new(HKDF_SHA256, b"coffer/audit-hmac/v1");
        let prk = salt.extract(root.expose_secret());
        let info = [org_id.as_bytes().as_slice()];
        let okm = prk
            .expand(&info, HKDF_SHA256)
            .map_err(|_| CryptoError::InvalidKey)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        okm.fill(&mut *key).map_err(|_| CryptoError::InvalidKey)?;
        // Keyed once (aws-lc keeps the keyed state and wipes it on drop), not per MAC.
        Ok(Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &*key,
        )))
    }

    /// Hex HMAC-SHA256 of `data`.
    pub fn mac_hex(&self, data: &[u8]) -> String {
        hex::encode(aws_lc_rs::hmac::sign(&self.0, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_predecessor_and_content() {
        let a = chain_hash(&GENESIS, b"one");
        assert_ne!(a, chain_hash(&GENESIS, b"two"));
        assert_ne!(chain_hash(&a, b"x"), chain_hash(&GENESIS, b"x"));
    }

    #[test]
    fn signing_key_roundtrips_under_the_root_key_and_signatures_verify() {
        let root = RootKey::generate();
        let k = AuditSigningKey::generate().unwrap();
        let w = k.wrap(&root).unwrap();
        let k2 = AuditSigningKey::unwrap(&root, &w).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        assert!(AuditSigningKey::unwrap(&RootKey::generate(), &w).is_err());
        let msg = checkpoint_message(Uuid::nil(), 7, &GENESIS, 1);
        let sig = k2.sign(&msg);
        assert!(verify_signature(&k.public_key(), &msg, &sig));
        let other = checkpoint_message(Uuid::nil(), 8, &GENESIS, 1);
        assert!(!verify_signature(&k.public_key(), &other, &sig));
    }

    #[test]
    fn hmac_keys_differ_per_org_and_root() {
        let root = RootKey::generate();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let ka = AuditHmacKey::derive(&root, a).unwrap();
        assert_eq!(
            ka.mac_hex(b"v"),
            AuditHmacKey::derive(&root, a).unwrap().mac_hex(b"v")
        );
        assert_ne!(
            ka.mac_hex(b"v"),
            AuditHmacKey::derive(&root, b).unwrap().mac_hex(b"v")
        );
        assert_ne!(
            ka.mac_hex(b"v"),
            AuditHmacKey::derive(&RootKey::generate(), a)
                .unwrap()
                .mac_hex(b"v")
        );
        assert_eq!(ka.mac_hex(b"v").len(), 64);
        // Lowercase hex of HMAC-SHA256 under the HKDF-derived key (the stored format).
        let key = {
            use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
            let prk = Salt::new(HKDF_SHA256, b"coffer/audit-hmac/v1").extract(root.expose_secret());
            let mut k = [0u8; KEY_LEN];
            prk.expand(&[a.as_bytes().as_slice()], HKDF_SHA256)
                .unwrap()
                .fill(&mut k)
                .unwrap();
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k)
        };
        let expected: String = aws_lc_rs::hmac::sign(&key, b"v")
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ka.mac_hex(b"v"), expected);
    }
}
