//! The stored format of one encrypted value version.
//!
//! ```text
//! header   8 bytes   "CF" | format u8 | scheme u8 | key term u32 (big endian)
//! dek     60 bytes   nonce(12) | AEAD(tenant key, data key)(32) | tag(16)
//! data     28+n      nonce(12) | AEAD(data key, value)(n) | tag(16)
//! ```
//!
//! The data key is fresh for every value version and never stored in clear. Both layers are
//! authenticated with AAD that binds the organisation, the record id and the version, so a
//! ciphertext moved to another row, version or organisation fails to open. The wrapped data
//! key's AAD also binds the whole header (term included); the data layer's AAD leaves out
//! the term so that rotation can rewrap the data key without touching the value.
//!
//! The header names the scheme (the AEAD of both layers) and the format version of every
//! ciphertext, and reading dispatches on them: a new scheme or format can become the one
//! new values are written with while every stored value keeps opening with the scheme it
//! was written with. Scheme 1 is AES-256-GCM, scheme 2 AES-256-GCM-SIV (RFC 8452).

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::hazmat::{self, Aead, GCM_NONCE_LEN, KEY_LEN, TAG_LEN};
use crate::keys::KeyTerm;
use crate::{CryptoError, SecretBytes};

/// Current ciphertext format version.
pub const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 2] = b"CF";
const HEADER_LEN: usize = 8;
const WRAPPED_DEK_LEN: usize = GCM_NONCE_LEN + KEY_LEN + TAG_LEN;
const MIN_LEN: usize = HEADER_LEN + WRAPPED_DEK_LEN + GCM_NONCE_LEN + TAG_LEN;

/// How a value version is encrypted: the AEAD of both envelope layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ValueScheme {
    /// AES-256-GCM with random nonces (scheme 1, the default).
    #[default]
    Aes256Gcm,
    /// AES-256-GCM-SIV (scheme 2): nonce-misuse resistant.
    Aes256GcmSiv,
}

impl ValueScheme {
    const fn id(self) -> u8 {
        match self {
            ValueScheme::Aes256Gcm => 1,
            ValueScheme::Aes256GcmSiv => 2,
        }
    }

    const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(ValueScheme::Aes256Gcm),
            2 => Some(ValueScheme::Aes256GcmSiv),
            _ => None,
        }
    }

    fn aead(self) -> Aead {
        match self {
            ValueScheme::Aes256Gcm => Aead::Aes256Gcm,
            ValueScheme::Aes256GcmSiv => Aead::Aes256GcmSiv,
        }
    }

    /// The configuration name: `aes-256-gcm` or `aes-256-gcm-siv`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueScheme::Aes256Gcm => "aes-256-gcm",
            ValueScheme::Aes256GcmSiv => "aes-256-gcm-siv",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ValueScheme::Aes256Gcm, ValueScheme::Aes256GcmSiv]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

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
        let known = bytes.len() >= MIN_LEN
            && &bytes[..2] == MAGIC
            && match bytes[2] {
                1 => ValueScheme::from_id(bytes[3]).is_some(),
                _ => false,
            };
        if known {
            Ok(Self(bytes))
        } else {
            Err(CryptoError::Decrypt)
        }
    }

    /// The scheme this value was written with.
    pub fn scheme(&self) -> ValueScheme {
        // from_stored_bytes and seal only ever build known schemes.
        ValueScheme::from_id(self.0[3]).unwrap_or_default()
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

fn header(scheme: ValueScheme, term: KeyTerm) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(MAGIC);
    h[2] = FORMAT_VERSION;
    h[3] = scheme.id();
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
    scheme: ValueScheme,
    kek: &[u8; KEY_LEN],
    term: KeyTerm,
    ctx: &RecordContext,
    plaintext: &[u8],
) -> Result<Ciphertext, CryptoError> {
    let h = header(scheme, term);
    let aead = scheme.aead();
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    hazmat::fill_random(&mut *dek);
    let wrapped = hazmat::seal_with(aead, kek, &dek_aad(ctx, &h), &*dek)?;
    let data = hazmat::seal_with(aead, &dek, &data_aad(ctx, &h), plaintext)?;
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
    aead: Aead,
    kek: &[u8; KEY_LEN],
    ctx: &RecordContext,
    h: &[u8],
    w: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let dek = hazmat::open_with(aead, kek, &dek_aad(ctx, h), w)?;
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
    let aead = ct.scheme().aead();
    let dek = unwrap_dek(aead, kek, ctx, h, w)?;
    hazmat::open_with(aead, &dek, &data_aad(ctx, h), d).map(SecretBytes::from)
}

pub(crate) fn rewrap(
    old: &[u8; KEY_LEN],
    new: &[u8; KEY_LEN],
    new_term: KeyTerm,
    ctx: &RecordContext,
    ct: &Ciphertext,
) -> Result<Ciphertext, CryptoError> {
    let (h, w, d) = split(ct);
    // The value layer stays as it is, so the scheme does too.
    let scheme = ct.scheme();
    let dek = unwrap_dek(scheme.aead(), old, ctx, h, w)?;
    let nh = header(scheme, new_term);
    let wrapped = hazmat::seal_with(scheme.aead(), new, &dek_aad(ctx, &nh), &*dek)?;
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

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Values written by an earlier build (these bytes were produced once and are frozen):
    /// they must open with every later build, whatever scheme it writes new values with.
    #[test]
    fn stored_values_of_every_scheme_still_open() {
        let k = TenantKey::from_external(KeyTerm(3), &[7u8; 32]).unwrap();
        let c = RecordContext {
            org_id: Uuid::from_u128(1),
            record_id: Uuid::from_u128(2),
            version: 5,
        };
        let stored = [
            (
                ValueScheme::Aes256Gcm,
                "434601010000000360ebfd22b04d6c739915932d0efd03d104b745cc519946cefb897a261b976eea7377cef9c6c2d31a7a10d1966aa5357477092831ce552e0397c8c975409046809e846306cf5ae972466dc57c64212f9a2a898c6c894bcfcec9d0018183c257687fc07d71894f9e5feff3ae48c045e3bd2e943967a4",
            ),
            (
                ValueScheme::Aes256GcmSiv,
                "43460102000000033cc23e0a6c631051d1acea3336b64f29353c2bd415ba20c54dc257e3d93a0193b7564c7ed9d420980d758bbb252ff38ea7dfa033ddc467170ea6d4f3b4dcb667cb9075d68d7e78c0f8ebb6b6cae0952eff2c093cb42ca8ab52dd0883224f3f74cea76c06328f84186a384a55a57a2eee5a0bcceaad",
            ),
        ];
        for (scheme, hex) in stored {
            let ct = Ciphertext::from_stored_bytes(unhex(hex)).unwrap();
            assert_eq!(ct.scheme(), scheme);
            assert_eq!(
                k.open(&c, &ct).unwrap().expose_secret(),
                b"written by an earlier release"
            );
        }
    }

    #[test]
    fn every_scheme_roundtrips_and_a_rewrap_keeps_it() {
        let old = TenantKey::generate(KeyTerm(1));
        let new = TenantKey::generate(KeyTerm(2));
        let c = ctx();
        for scheme in [ValueScheme::Aes256Gcm, ValueScheme::Aes256GcmSiv] {
            let ct = old.seal_with(scheme, &c, b"v").unwrap();
            assert_eq!(ct.scheme(), scheme);
            assert_eq!(old.open(&c, &ct).unwrap().expose_secret(), b"v");
            let moved = old.rewrap(&new, &c, &ct).unwrap();
            assert_eq!(moved.scheme(), scheme);
            assert_eq!(new.open(&c, &moved).unwrap().expose_secret(), b"v");
        }
        // The schemes really differ: relabelling one as the other does not open.
        let mut bytes = old
            .seal_with(ValueScheme::Aes256Gcm, &c, b"v")
            .unwrap()
            .into_bytes();
        bytes[3] = ValueScheme::Aes256GcmSiv.id();
        let relabelled = Ciphertext::from_stored_bytes(bytes).unwrap();
        assert_eq!(old.open(&c, &relabelled).err(), Some(CryptoError::Decrypt));
        // Unknown schemes and formats are refused when loaded.
        for (at, value) in [(3, 9u8), (2, 2u8)] {
            let mut b = old.seal(&c, b"v").unwrap().into_bytes();
            b[at] = value;
            assert!(Ciphertext::from_stored_bytes(b).is_err());
        }
        assert_eq!(
            ValueScheme::parse("aes-256-gcm-siv"),
            Some(ValueScheme::Aes256GcmSiv)
        );
        assert_eq!(ValueScheme::parse("rot13"), None);
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
