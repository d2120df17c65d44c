//! Coffer's cryptographic core.
//!
//! The safe surface is deliberately small: key types that wipe themselves, an envelope
//! format that binds every ciphertext to where it belongs, Shamir splitting of the root key,
//! and opaque bearer tokens. Raw primitives live in the crate-private [`hazmat`] module so
//! that no caller can pick a nonce, skip the AAD or reuse a data key.
//!
//! The key hierarchy and the byte formats are described in `docs/crypto.md` and in
//! `KEYS.md` beside this file.

pub mod audit;
mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hazmat;
mod keys;
pub mod offline;
mod secret;
pub mod shamir;
pub mod system;
pub mod token;

pub use envelope::{Ciphertext, FORMAT_VERSION, RecordContext, ValueScheme};
pub use error::CryptoError;
pub use keys::{ExternalWrap, KeyTerm, RootKey, RootKeyCheck, TenantKey, WrappedTenantKey};
pub use secret::SecretBytes;

/// Fill `buf` with bytes from the operating system's CSPRNG (through AWS-LC).
pub fn random_bytes(buf: &mut [u8]) {
    hazmat::fill_random(buf);
}

/// SHA-256 of `data` (a name for content, e.g. an interned audit text; not a MAC).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    hazmat::sha256(data)
}

/// SHA-256 over data that arrives in pieces (a file as it is written or read). Cloning
/// gives the digest of what was fed so far without ending the stream.
#[derive(Clone)]
pub struct Sha256(aws_lc_rs::digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

/// SHA-256 fingerprint of a certificate (DER), as colon-separated upper-case hex: the form
/// operators compare by eye.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hazmat::sha256(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod sha256_tests {
    #[test]
    fn pieces_hash_as_the_whole_and_a_clone_sees_the_prefix() {
        let mut h = super::Sha256::new();
        h.update(b"coffer/");
        let prefix = h.clone().finish();
        h.update(b"audit");
        assert_eq!(h.finish(), super::sha256(b"coffer/audit"));
        assert_eq!(prefix, super::sha256(b"coffer/"));
        // FIPS 180-2 example: SHA-256("abc").
        assert_eq!(
            hex::encode(super::sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
