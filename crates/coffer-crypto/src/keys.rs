use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::envelope::{self, Ciphertext, RecordContext, ValueScheme};
use crate::hazmat::{self, KEY_LEN};
use crate::{CryptoError, SecretBytes};

/// Version number ("term") of an organisation's key-encryption key. Terms only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyTerm(pub u32);

/// The 256-bit root key. Exists only in memory of an unsealed server; it wraps tenant keys
/// and nothing else.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RootKey([u8; KEY_LEN]);

/// An organisation's key-encryption key (KEK). Wraps data keys, never data.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct TenantKey {
    #[zeroize(skip)]
    term: KeyTerm,
    bytes: [u8; KEY_LEN],
}

/// A tenant key wrapped by the root key, as stored. Safe to persist.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedTenantKey(Vec<u8>);

/// The parts of a tenant key wrapped by an external key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalWrap<'a> {
    pub term: KeyTerm,
    pub reference: &'a str,
    pub blob: &'a [u8],
}

/// A value sealed under the root key that proves a reconstructed key is the right one
/// before the server starts using it.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKeyCheck(Vec<u8>);

const KEK_MAGIC: &[u8; 2] = b"CK";
const KEK_FORMAT: u8 = 1;
const KEK_ALG_A256GCM: u8 = 1;
/// Wrapped by an organisation's external key (KMS or HSM); the body is that service's blob.
const KEK_ALG_EXTERNAL: u8 = 2;
const KEK_HEADER_LEN: usize = 8;
const CHECK_AAD: &[u8] = b"coffer/root-check/v1";
const CHECK_PLAINTEXT: &[u8] = b"coffer root key check v1";

impl RootKey {
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        hazmat::fill_random(&mut k);
        Self(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self(arr))
    }

    /// The raw key, for a seal provider that must split or wrap it. Nothing else needs it.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Whether `other` is the same key (constant time).
    pub fn same_key(&self, other: &RootKey) -> bool {
        hazmat::ct_eq(&self.0, &other.0)
    }

    pub fn check_value(&self) -> Result<RootKeyCheck, CryptoError> {
        hazmat::seal(&self.0, CHECK_AAD, CHECK_PLAINTEXT).map(RootKeyCheck)
    }

    /// Constant-time on the parts that depend on the key.
    pub fn matches(&self, check: &RootKeyCheck) -> bool {
        match hazmat::open(&self.0, CHECK_AAD, &check.0) {
            Ok(pt) => hazmat::ct_eq(&pt, CHECK_PLAINTEXT),
            Err(_) => false,
        }
    }

    pub fn wrap_tenant_key(
        &self,
        org_id: Uuid,
        key: &TenantKey,
    ) -> Result<WrappedTenantKey, CryptoError> {
        let header = kek_header(key.term);
        let sealed = hazmat::seal(&self.0, &kek_aad(org_id, &header), &key.bytes)?;
        let mut out = Vec::with_capacity(KEK_HEADER_LEN + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        Ok(WrappedTenantKey(out))
    }

    pub fn unwrap_tenant_key(
        &self,
        org_id: Uuid,
        wrapped: &WrappedTenantKey,
    ) -> Result<TenantKey, CryptoError> {
        let (header, sealed) = wrapped
            .0
            .split_at_checked(KEK_HEADER_LEN)
            .ok_or(CryptoError::Decrypt)?;
        let term = parse_kek_header(header).ok_or(CryptoError::Decrypt)?;
        let pt = hazmat::open(&self.0, &kek_aad(org_id, header), sealed)?;
        let bytes: [u8; KEY_LEN] = pt.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
        Ok(TenantKey { term, bytes })
    }
}

fn kek_header(term: KeyTerm) -> [u8; KEK_HEADER_LEN] {
    kek_header_alg(term, KEK_ALG_A256GCM)
}

fn kek_header_alg(term: KeyTerm, alg: u8) -> [u8; KEK_HEADER_LEN] {
    let mut h = [0u8; KEK_HEADER_LEN];
    h[..2].copy_from_slice(KEK_MAGIC);
    h[2] = KEK_FORMAT;
    h[3] = alg;
    h[4..].copy_from_slice(&term.0.to_be_bytes());
    h
}

fn parse_kek_header(h: &[u8]) -> Option<KeyTerm> {
    if h.len() != KEK_HEADER_LEN
        || &h[..2] != KEK_MAGIC
        || h[2] != KEK_FORMAT
        || h[3] != KEK_ALG_A256GCM
    {
        return None;
    }
    Some(KeyTerm(u32::from_be_bytes(h[4..8].try_into().ok()?)))
}

fn kek_aad(org_id: Uuid, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(13 + 16 + KEK_HEADER_LEN);
    aad.extend_from_slice(b"coffer/kek/v1");
    aad.extend_from_slice(org_id.as_bytes());
    aad.extend_from_slice(header);
    aad
}

impl TenantKey {
    pub fn generate(term: KeyTerm) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        hazmat::fill_random(&mut bytes);
        Self { term, bytes }
    }

    pub fn term(&self) -> KeyTerm {
        self.term
    }

    /// The raw key, only to hand it to an organisation's external key for wrapping.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// A key unwrapped by an organisation's external key.
    pub fn from_external(term: KeyTerm, bytes: &[u8]) -> Result<Self, CryptoError> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self { term, bytes })
    }

    /// Envelope-encrypt one value version under a fresh data key, with the default scheme.
    pub fn seal(&self, ctx: &RecordContext, plaintext: &[u8]) -> Result<Ciphertext, CryptoError> {
        self.seal_with(ValueScheme::default(), ctx, plaintext)
    }

    /// [`TenantKey::seal`] with a chosen scheme. [`TenantKey::open`] reads every scheme.
    pub fn seal_with(
        &self,
        scheme: ValueScheme,
        ctx: &RecordContext,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        envelope::seal(scheme, &self.bytes, self.term, ctx, plaintext)
    }

    /// Open a value sealed by [`TenantKey::seal`] for exactly the same context.
    pub fn open(&self, ctx: &RecordContext, ct: &Ciphertext) -> Result<SecretBytes, CryptoError> {
        if ct.key_term() != self.term {
            return Err(CryptoError::Decrypt);
        }
        envelope::open(&self.bytes, ctx, ct)
    }

    /// Move a ciphertext from `self` to `new` without decrypting the value: only its data
    /// key is unwrapped and wrapped again.
    pub fn rewrap(
        &self,
        new: &TenantKey,
        ctx: &RecordContext,
        ct: &Ciphertext,
    ) -> Result<Ciphertext, CryptoError> {
        if ct.key_term() != self.term {
            return Err(CryptoError::Decrypt);
        }
        envelope::rewrap(&self.bytes, &new.bytes, new.term, ctx, ct)
    }
}

impl WrappedTenantKey {
    pub fn from_stored_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A tenant key of `term` wrapped by the external key `reference` (stored with it, so
    /// that every node knows where to unwrap it), which returned `blob`.
    pub fn external(term: KeyTerm, reference: &str, blob: &[u8]) -> Result<Self, CryptoError> {
        let len = u16::try_from(reference.len()).map_err(|_| CryptoError::InvalidKey)?;
        let mut out = kek_header_alg(term, KEK_ALG_EXTERNAL).to_vec();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(reference.as_bytes());
        out.extend_from_slice(blob);
        Ok(Self(out))
    }

    /// For a key wrapped by an external key: its term, the key's reference and the
    /// service's blob. The root key never opens these.
    pub fn external_blob(&self) -> Option<ExternalWrap<'_>> {
        let (h, rest) = self.0.split_at_checked(KEK_HEADER_LEN)?;
        if &h[..2] != KEK_MAGIC || h[2] != KEK_FORMAT || h[3] != KEK_ALG_EXTERNAL {
            return None;
        }
        let (len, rest) = rest.split_at_checked(2)?;
        let (reference, blob) =
            rest.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]])))?;
        Some(ExternalWrap {
            term: KeyTerm(u32::from_be_bytes(h[4..8].try_into().ok()?)),
            reference: std::str::from_utf8(reference).ok()?,
            blob,
        })
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl RootKeyCheck {
    pub fn from_stored_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "([REDACTED])"))
            }
        }
    )*};
}
redacted_debug!(RootKey, TenantKey, WrappedTenantKey, RootKeyCheck);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn externally_wrapped_keys_carry_their_term_and_never_open_with_the_root() {
        let org = Uuid::new_v4();
        let root = RootKey::generate();
        let w = WrappedTenantKey::external(KeyTerm(7), "awskms:alias/acme", b"kms-blob").unwrap();
        assert_eq!(
            w.external_blob(),
            Some(ExternalWrap {
                term: KeyTerm(7),
                reference: "awskms:alias/acme",
                blob: b"kms-blob"
            })
        );
        assert!(root.unwrap_tenant_key(org, &w).is_err());
        let k = TenantKey::generate(KeyTerm(1));
        let by_root = root.wrap_tenant_key(org, &k).unwrap();
        assert_eq!(by_root.external_blob(), None);
        let back = TenantKey::from_external(KeyTerm(1), k.expose_secret()).unwrap();
        assert_eq!(back.expose_secret(), k.expose_secret());
        assert!(TenantKey::from_external(KeyTerm(1), b"short").is_err());
    }

    #[test]
    fn root_check_accepts_only_its_key() {
        let k = RootKey::generate();
        let check = k.check_value().unwrap();
        assert!(k.matches(&check));
        assert!(!RootKey::generate().matches(&check));
    }

    #[test]
    fn tenant_key_wrap_is_bound_to_org_and_term() {
        let root = RootKey::generate();
        let org = Uuid::new_v4();
        let tk = TenantKey::generate(KeyTerm(3));
        let w = root.wrap_tenant_key(org, &tk).unwrap();
        let back = root.unwrap_tenant_key(org, &w).unwrap();
        assert_eq!(back.term(), KeyTerm(3));
        assert_eq!(back.bytes, tk.bytes);
        assert!(root.unwrap_tenant_key(Uuid::new_v4(), &w).is_err());
        assert!(RootKey::generate().unwrap_tenant_key(org, &w).is_err());
        // Relabelling the term in the header breaks authentication.
        let mut forged = w.as_bytes().to_vec();
        forged[7] ^= 1;
        assert_eq!(
            root.unwrap_tenant_key(org, &WrappedTenantKey::from_stored_bytes(forged))
                .err(),
            Some(CryptoError::Decrypt)
        );
    }

    #[test]
    fn debug_is_redacted() {
        let k = RootKey::from_bytes(&[0xab; 32]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }
}
