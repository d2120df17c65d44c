//! Where the root key comes from.
//!
//! Shamir: the key is split at initialisation and rebuilt in memory from a quorum of shares
//! typed by operators ([`ShamirProgress`]). Dev key file: the key sits in a 0600 file next to
//! the data, for `coffer server --dev` only. Hardware and cloud seals (PKCS#11, AWS KMS)
//! implement [`AutoUnseal`] as well.

mod devfile;
mod shamir;

pub use devfile::DevKeyFile;
pub use shamir::{ShamirProgress, SubmitError, SubmitOutcome};

use coffer_crypto::RootKey;

/// Kinds of seal, as recorded in the database when the server is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealKind {
    Shamir,
    DevFile,
}

impl SealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SealKind::Shamir => "shamir",
            SealKind::DevFile => "dev-file",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shamir" => Some(SealKind::Shamir),
            "dev-file" => Some(SealKind::DevFile),
            _ => None,
        }
    }
}

/// A seal that can produce the root key without operators (dev file, HSM, KMS).
pub trait AutoUnseal: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> SealKind;
    fn root_key(&self) -> Result<RootKey, SealError>;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("could not access the key file {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {0} is readable by group or others; refusing to use it (chmod 600)")]
    Permissions(std::path::PathBuf),
    #[error("the key file {0} does not hold a 256-bit key")]
    BadKeyFile(std::path::PathBuf),
}
