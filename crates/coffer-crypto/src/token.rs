//! Opaque bearer tokens: 256 random bits, shown once, stored only as a SHA-256 digest.
//!
//! A fast hash is right here (unlike for passwords): the input has 256 bits of entropy, so
//! a stolen digest cannot be brute-forced, and the hot path of every request stays cheap.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::hazmat;

/// A bearer credential in clear. Wiped on drop; Debug prints nothing.
#[derive(Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn from_string(s: String) -> Self {
        Self(s)
    }
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

/// SHA-256 of a token; what the database keeps. Comparisons are constant time.
#[derive(Clone, Copy, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        hazmat::ct_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A new token `prefix` + 43 base64url characters, and its digest.
pub fn generate(prefix: &str) -> (BearerToken, TokenHash) {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    hazmat::fill_random(&mut *raw);
    let token = BearerToken(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(*raw)));
    let h = hash(token.expose_secret());
    (token, h)
}

pub fn hash(token: &str) -> TokenHash {
    TokenHash(hazmat::sha256(token.as_bytes()))
}

/// A random password for bootstrap accounts: 32 base64url characters (192 bits).
pub fn generate_password() -> BearerToken {
    let mut raw = zeroize::Zeroizing::new([0u8; 24]);
    hazmat::fill_random(&mut *raw);
    BearerToken(URL_SAFE_NO_PAD.encode(*raw))
}

/// Constant-time equality for secrets held as bytes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    hazmat::ct_eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_consistently() {
        let (a, ha) = generate("cfs_");
        let (b, hb) = generate("cfs_");
        assert!(a.expose_secret().starts_with("cfs_"));
        assert_eq!(a.expose_secret().len(), 4 + 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(ha, hb);
        assert_eq!(hash(a.expose_secret()), ha);
        assert!(!format!("{a:?}").contains(&a.expose_secret()[4..]));
    }
}
