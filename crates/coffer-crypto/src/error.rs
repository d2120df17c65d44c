use thiserror::Error;

/// Errors of the crypto layer.
///
/// Decryption has exactly one failure variant on purpose: a wrong key, a tampered byte, a
/// moved ciphertext and a truncated blob are indistinguishable to the caller, so an attacker
/// who can submit ciphertexts learns nothing from the error.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication of a ciphertext or wrapped key failed.
    #[error("decryption failed")]
    Decrypt,
    /// A Shamir share could not be parsed (typo, truncation, bad checksum).
    #[error("the share is malformed")]
    MalformedShare,
    /// The shares do not fit together (different split or wrong count).
    #[error("the shares could not be combined")]
    Combine,
    /// Split parameters out of range.
    #[error("invalid split: threshold must be 2..=shares and shares at most 255")]
    InvalidSplit,
    /// A key could not be set up (wrong length).
    #[error("invalid key material")]
    InvalidKey,
}
