//! Shamir splitting of the root key over GF(256) (vsss-rs), with a typo-detecting encoding.
//!
//! A share as typed by an operator is `base64url(share || sha256(share)[..4])`. The checksum
//! lets the server tell a mistyped share (rejected at once, nothing counted) from a share of
//! another split (detected only when the combined key fails the root key check).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use vsss_rs::Gf256;
use zeroize::{Zeroize, Zeroizing};

use crate::hazmat::{self, KEY_LEN, SystemRng};
use crate::{CryptoError, RootKey};

const CHECKSUM_LEN: usize = 4;
/// Identifier byte plus one byte per secret byte.
const SHARE_LEN: usize = 1 + KEY_LEN;

/// One decoded share. Wiped on drop.
#[derive(Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Share(Vec<u8>);

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Share([REDACTED])")
    }
}

impl Share {
    /// Parse the operator-facing text form. Whitespace around it is ignored.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|_| CryptoError::MalformedShare)?,
        );
        if raw.len() != SHARE_LEN + CHECKSUM_LEN {
            return Err(CryptoError::MalformedShare);
        }
        let (body, sum) = raw.split_at(SHARE_LEN);
        if !hazmat::ct_eq(&hazmat::sha256(body)[..CHECKSUM_LEN], sum) || body[0] == 0 {
            return Err(CryptoError::MalformedShare);
        }
        Ok(Self(body.to_vec()))
    }

    /// The share's identifier (x coordinate); not secret, used to spot duplicates.
    pub fn id(&self) -> u8 {
        self.0[0]
    }

    /// Text form, shown to the operator once.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut buf = Zeroizing::new(Vec::with_capacity(SHARE_LEN + CHECKSUM_LEN));
        buf.extend_from_slice(&self.0);
        buf.extend_from_slice(&hazmat::sha256(&self.0)[..CHECKSUM_LEN]);
        Zeroizing::new(URL_SAFE_NO_PAD.encode(&*buf))
    }
}

/// Split the root key into `shares` parts of which any `threshold` rebuild it.
pub fn split(root: &RootKey, shares: u8, threshold: u8) -> Result<Vec<Share>, CryptoError> {
    if threshold < 2 || threshold > shares {
        return Err(CryptoError::InvalidSplit);
    }
    let parts = Gf256::split_array(
        threshold.into(),
        shares.into(),
        root.expose_secret(),
        SystemRng,
    )
    .map_err(|_| CryptoError::InvalidSplit)?;
    Ok(parts.into_iter().map(Share).collect())
}

/// Rebuild a key from shares. Distinct ids are required. With shares of another split, or
/// too few, the result is a wrong key: callers must verify it against the stored check.
pub fn combine(shares: &[Share]) -> Result<RootKey, CryptoError> {
    if shares.len() < 2 {
        return Err(CryptoError::Combine);
    }
    let mut ids: Vec<u8> = shares.iter().map(Share::id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != shares.len() {
        return Err(CryptoError::Combine);
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.0.clone()).collect();
    let raw = Zeroizing::new(raw);
    let secret = Zeroizing::new(Gf256::combine_array(&*raw).map_err(|_| CryptoError::Combine)?);
    RootKey::from_bytes(&secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &[Share]) -> Vec<String> {
        s.iter().map(|x| x.to_text().to_string()).collect()
    }

    #[test]
    fn any_threshold_subset_rebuilds_the_key() {
        let root = RootKey::generate();
        let check = root.check_value().unwrap();
        let t = texts(&split(&root, 5, 3).unwrap());
        assert_eq!(t.len(), 5);
        for combo in [[0, 1, 2], [2, 3, 4], [0, 2, 4], [4, 1, 3]] {
            let parsed: Vec<Share> = combo
                .iter()
                .map(|&i| Share::parse(&t[i]).unwrap())
                .collect();
            assert!(combine(&parsed).unwrap().matches(&check), "{combo:?}");
        }
        // Two of three needed shares give a different key.
        let two: Vec<Share> = t[..2].iter().map(|s| Share::parse(s).unwrap()).collect();
        assert!(!combine(&two).unwrap().matches(&check));
    }

    #[test]
    fn typos_and_duplicates_are_rejected() {
        let root = RootKey::generate();
        let t = texts(&split(&root, 3, 2).unwrap());
        let mut typo = t[0].clone().into_bytes();
        typo[5] = if typo[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            Share::parse(std::str::from_utf8(&typo).unwrap()).err(),
            Some(CryptoError::MalformedShare)
        );
        assert_eq!(
            Share::parse("not a share").err(),
            Some(CryptoError::MalformedShare)
        );
        assert_eq!(Share::parse("").err(), Some(CryptoError::MalformedShare));
        let dup = vec![Share::parse(&t[0]).unwrap(), Share::parse(&t[0]).unwrap()];
        assert_eq!(combine(&dup).err(), Some(CryptoError::Combine));
        assert!(Share::parse(&format!("  {}\n", t[1])).is_ok());
    }

    #[test]
    fn split_parameters_are_checked() {
        let root = RootKey::generate();
        assert_eq!(split(&root, 3, 4).err(), Some(CryptoError::InvalidSplit));
        assert_eq!(split(&root, 3, 1).err(), Some(CryptoError::InvalidSplit));
    }
}
