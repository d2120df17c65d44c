//! The stored format of one encrypted value version.
//!
//! ```text
//! header   8 bytes   "CF" | format u8 | algorithm u8 | key term u32 (big endian)
//! dek     60 bytes   nonce(12) | AES-256-GCM(tenant key, data key)(32) | tag(16)
//! data     28+n      nonce(12) | AES-256-GCM(data key, value)(n) | tag(16)
//! ```
//!
//! The data key is fresh for every value version and never stored in clear. Both layers are
//! authenticated with AAD that binds the organisation, the record id and the version, so a
//! ciphertext moved to another row, version or organisation fails to open. The wrapped data
//! key's AAD also binds the whole header (term included); the data layer's AAD leaves out
//! the term so that rotation can rewrap the data key without touching the value.

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::hazmat::{self, GCM_NONCE_LEN, KEY_LEN, TAG_LEN};
use crate::keys::KeyTerm;
use crate::{CryptoError, SecretBytes};

/// Current ciphertext format version.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 2] = b"CF";
const ALG_A256GCM_ENVELOPE: u8 = 1;
const HEADER_LEN: usize = 8;
const WRAPPED_DEK_LEN: usize = GCM_NONCE_LEN + KEY_LEN + TAG_LEN;
const MIN_LEN: usize = HEADER_LEN + WRAPPED_DEK_LEN + GCM_NONCE_LEN + TAG_LEN;

/// Where a ciphertext belongs. Part of the AAD: change any field and decryption fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordContext {
    pub org_id: Uuid,
    pub record_id: Uuid,
    pub version: u64,
}

/// An encrypted value as it is stored. It can only be made by sealing, or by loading bytes
/// that carry a well-formed header; the store accepts nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(Vec<u8>);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ciphertext(term={}, {} bytes)",
            self.key_term().0,
            self.0.len()
        )
    }
}

impl Ciphertext {
    /// Rebuild a ciphertext read back from storage. Rejects anything without a valid
    /// header, so arbitrary bytes cannot be passed off as a ciphertext by mistake.
    pub fn from_stored_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        if bytes.len() < MIN_LEN
            || &bytes[..2] != MAGIC
            || bytes[2] != FORMAT_VERSION
            || bytes[3] != ALG_A256GCM_ENVELOPE
        {
            return Err(CryptoError::Decrypt);
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The tenant key term that wraps this value's data key.
    pub fn key_term(&self) -> KeyTerm {
        let mut t = [0u8; 4];
        t.copy_from_slice(&self.0[4..8]);
        KeyTerm(u32::from_be_bytes(t))
    }
}

fn header(term: KeyTerm) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(MAGIC);
    h[2] = FORMAT_VERSION;
    h[3] = ALG_A256GCM_ENVELOPE;
    h[4..].copy_from_slice(&term.0.to_be_bytes());
    h
}

/// Frozen serialisation: label | org id (16) | record id (16) | version (u64 BE) | extra.
fn aad(label: &[u8], ctx: &RecordContext, extra: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(label.len() + 40 + extra.len());
    a.extend_from_slice(label);
    a.extend_from_slice(ctx.org_id.as_bytes());
    a.extend_from_slice(ctx.record_id.as_bytes());
    a.extend_from_slice(&ctx.version.to_be_bytes());
    a.extend_from_slice(extra);
    a
}

fn dek_aad(ctx: &RecordContext, header: &[u8]) -> Vec<u8> {
    aad(b"coffer/dek/v1", ctx, header)
}

fn data_aad(ctx: &RecordContext, header: &[u8]) -> Vec<u8> {
    // Format and algorithm, not the term: see the module docs.
    aad(b"coffer/data/v1", ctx, &header[..4])
}

pub(crate) fn seal(
    kek: &[u8; KEY_LEN],
    term: KeyTerm,
    ctx: &RecordContext,
    plaintext: &[u8],
) -> Result<Ciphertext, CryptoError> {
    let h = header(term);
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    hazmat::fill_random(&mut *dek);
    let wrapped = hazmat::seal(kek, &dek_aad(ctx, &h), &*dek)?;
    let data = hazmat::seal(&dek, &data_aad(ctx, &h), plaintext)?;
    let mut out = Vec::with_capacity(HEADER_LEN + wrapped.len() + data.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&data);
    Ok(Ciphertext(out))
}

fn split(ct: &Ciphertext) -> (&[u8], &[u8], &[u8]) {
    let (h, rest) = ct.0.split_at(HEADER_LEN);
    let (w, d) = rest.split_at(WRAPPED_DEK_LEN);
    (h, w, d)
}

fn unwrap_dek(
    kek: &[u8; KEY_LEN],
    ctx: &RecordContext,
    h: &[u8],
    w: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let dek = hazmat::open(kek, &dek_aad(ctx, h), w)?;
    let arr: [u8; KEY_LEN] = dek
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(Zeroizing::new(arr))
}

pub(crate) fn open(
    kek: &[u8; KEY_LEN],
    ctx: &RecordContext,
    ct: &Ciphertext,
) -> Result<SecretBytes, CryptoError> {
    let (h, w, d) = split(ct);
    let dek = unwrap_dek(kek, ctx, h, w)?;
    hazmat::open(&dek, &data_aad(ctx, h), d).map(SecretBytes::from)
}

pub(crate) fn rewrap(
    old: &[u8; KEY_LEN],
    new: &[u8; KEY_LEN],
    new_term: KeyTerm,
    ctx: &RecordContext,
    ct: &Ciphertext,
) -> Result<Ciphertext, CryptoError> {
    let (h, w, d) = split(ct);
    let dek = unwrap_dek(old, ctx, h, w)?;
    let nh = header(new_term);
    let wrapped = hazmat::seal(new, &dek_aad(ctx, &nh), &*dek)?;
    let mut out = Vec::with_capacity(ct.0.len());
    out.extend_from_slice(&nh);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(d);
    Ok(Ciphertext(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantKey;

    fn ctx() -> RecordContext {
        RecordContext {
            org_id: Uuid::new_v4(),
            record_id: Uuid::new_v4(),
            version: 1,
        }
    }

    #[test]
    fn roundtrip() {
        let k = TenantKey::generate(KeyTerm(1));
        let c = ctx();
        let ct = k.seal(&c, b"s3cr3t").unwrap();
        assert_eq!(k.open(&c, &ct).unwrap().expose_secret(), b"s3cr3t");
        assert_eq!(ct.key_term(), KeyTerm(1));
        assert!(!ct.as_bytes().windows(6).any(|w| w == b"s3cr3t"));
    }

    #[test]
    fn moving_a_ciphertext_fails_uniformly() {
        let k = TenantKey::generate(KeyTerm(1));
        let c = ctx();
        let ct = k.seal(&c, b"value").unwrap();
        let other_record = RecordContext {
            record_id: Uuid::new_v4(),
            ..c
        };
        let other_version = RecordContext { version: 2, ..c };
        let other_org = RecordContext {
            org_id: Uuid::new_v4(),
            ..c
        };
        for wrong in [other_record, other_version, other_org] {
            assert_eq!(k.open(&wrong, &ct).err(), Some(CryptoError::Decrypt));
        }
        // Another organisation's key (same term number) fails too.
        let k2 = TenantKey::generate(KeyTerm(1));
        assert_eq!(k2.open(&c, &ct).err(), Some(CryptoError::Decrypt));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let k = TenantKey::generate(KeyTerm(1));
        let c = ctx();
        let ct = k.seal(&c, b"abc").unwrap();
        let bytes = ct.as_bytes().to_vec();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let res = Ciphertext::from_stored_bytes(b).and_then(|t| k.open(&c, &t));
                assert_eq!(res.err(), Some(CryptoError::Decrypt), "byte {i} bit {bit}");
            }
        }
        // Truncation and extension as well.
        for len in [0, 8, MIN_LEN - 1, bytes.len() - 1] {
            let res =
                Ciphertext::from_stored_bytes(bytes[..len].to_vec()).and_then(|t| k.open(&c, &t));
            assert_eq!(res.err(), Some(CryptoError::Decrypt), "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let res = Ciphertext::from_stored_bytes(longer).and_then(|t| k.open(&c, &t));
        assert_eq!(res.err(), Some(CryptoError::Decrypt));
    }

    #[test]
    fn rewrap_changes_only_the_key_layer() {
        let old = TenantKey::generate(KeyTerm(1));
        let new = TenantKey::generate(KeyTerm(2));
        let c = ctx();
        let ct = old.seal(&c, b"payload").unwrap();
        let moved = old.rewrap(&new, &c, &ct).unwrap();
        assert_eq!(moved.key_term(), KeyTerm(2));
        let data_start = HEADER_LEN + WRAPPED_DEK_LEN;
        assert_eq!(
            &moved.as_bytes()[data_start..],
            &ct.as_bytes()[data_start..]
        );
        assert_eq!(new.open(&c, &moved).unwrap().expose_secret(), b"payload");
        assert!(old.open(&c, &moved).is_err());
        // Rewrapping for the wrong context fails and produces nothing.
        assert!(
            old.rewrap(&new, &RecordContext { version: 9, ..c }, &ct)
                .is_err()
        );
    }
}
