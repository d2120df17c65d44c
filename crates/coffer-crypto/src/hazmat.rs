//! Raw primitives. Crate-private: everything here is easy to misuse.

use aws_lc_rs::aead::{
    AES_256_GCM, AES_256_GCM_SIV, Aad, Algorithm, NONCE_LEN, Nonce, RandomizedNonceKey,
};

use crate::CryptoError;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) use aws_lc_rs::aead::NONCE_LEN as GCM_NONCE_LEN;

/// Fill with CSPRNG output.
///
/// AWS-LC's `RAND_bytes` aborts the process itself if the entropy source fails, so an error
/// here cannot be observed in practice; if it ever were, continuing with predictable keys
/// would be far worse than stopping, hence the abort.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if aws_lc_rs::rand::fill(buf).is_err() {
        std::process::abort();
    }
}

/// The AEADs a stored format may name. Both take a 256-bit key and a 96-bit nonce and
/// append a 128-bit tag, so the framing below is the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aead {
    Aes256Gcm,
    /// RFC 8452: a repeated nonce reveals only whether two plaintexts are equal.
    Aes256GcmSiv,
}

impl Aead {
    fn algorithm(self) -> &'static Algorithm {
        match self {
            Aead::Aes256Gcm => &AES_256_GCM,
            Aead::Aes256GcmSiv => &AES_256_GCM_SIV,
        }
    }
}

/// AES-256-GCM with a fresh random 96-bit nonce. Output: `nonce || ciphertext || tag`.
pub(crate) fn seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_with(Aead::Aes256Gcm, key, aad, plaintext)
}

/// Opens what [`seal`] produced. Every failure is [`CryptoError::Decrypt`].
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    open_with(Aead::Aes256Gcm, key, aad, sealed)
}

/// [`seal`] with the given AEAD.
pub(crate) fn seal_with(
    aead: Aead,
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key =
        RandomizedNonceKey::new(aead.algorithm(), key).map_err(|_| CryptoError::InvalidKey)?;
    let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    buf.extend_from_slice(&[0u8; NONCE_LEN]);
    buf.extend_from_slice(plaintext);
    let mut body = buf.split_off(NONCE_LEN);
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad), &mut body)
        .map_err(|_| CryptoError::InvalidKey)?;
    buf.copy_from_slice(nonce.as_ref());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Opens what [`seal_with`] produced with the same AEAD.
pub(crate) fn open_with(
    aead: Aead,
    key: &[u8; KEY_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let key = RandomizedNonceKey::new(aead.algorithm(), key).map_err(|_| CryptoError::Decrypt)?;
    let mut buf = zeroize::Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// rand_core 0.10 adapter over AWS-LC's CSPRNG, for vsss-rs.
#[derive(Debug, Default)]
pub(crate) struct SystemRng;

impl rand_core::TryRng for SystemRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        fill_random(&mut b);
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        fill_random(dst);
        Ok(())
    }
}
impl rand_core::TryCryptoRng for SystemRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_nonce_is_fresh() {
        let key = [7u8; KEY_LEN];
        let a = seal(&key, b"aad", b"hello").unwrap();
        let b = seal(&key, b"aad", b"hello").unwrap();
        assert_ne!(
            a, b,
            "two seals of the same plaintext must differ (fresh nonce)"
        );
        assert_eq!(&open(&key, b"aad", &a).unwrap()[..], b"hello");
        assert_eq!(open(&key, b"other", &a), Err(CryptoError::Decrypt));
        assert_eq!(open(&[8u8; KEY_LEN], b"aad", &a), Err(CryptoError::Decrypt));
        assert_eq!(open(&key, b"aad", &a[..10]), Err(CryptoError::Decrypt));
    }
}
