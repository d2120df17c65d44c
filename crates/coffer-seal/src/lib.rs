//! Where the root key comes from, and the external keys that can protect keys.
//!
//! Every seal implements [`Seal`]:
//! - Shamir: the key is split at initialisation and rebuilt in memory from a quorum of
//!   shares typed by operators ([`ShamirProgress`]).
//! - Dev key file: the key sits in a 0600 file next to the data, for `coffer server --dev`.
//! - AWS KMS and PKCS#11 ([`ExternalSeal`]): the root key is stored in the database wrapped by
//!   a key that never leaves the KMS or HSM, and the server unseals itself at start. The
//!   services themselves ([`KeyProvider`]) live in `coffer-extkeys`, so that this crate and
//!   the domain above it stay free of HTTP and of C libraries.
//!
//! The same [`ExternalKey`]s let an organisation wrap its own tenant keys with a key it
//! controls (bring your own key).

mod devfile;
mod external;
mod shamir;

pub use devfile::DevKeyFile;
pub use external::{
    EncryptionContext, ExternalKey, ExternalSeal, KeyProvider, KeyServices, ShamirSeal, probe,
};
pub use shamir::{ShamirProgress, SubmitError, SubmitOutcome};

use coffer_crypto::RootKey;

/// Kinds of seal, as recorded in the database when the server is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealKind {
    Shamir,
    DevFile,
    AwsKms,
    Pkcs11,
}

impl SealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SealKind::Shamir => "shamir",
            SealKind::DevFile => "dev-file",
            SealKind::AwsKms => "awskms",
            SealKind::Pkcs11 => "pkcs11",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shamir" => Some(SealKind::Shamir),
            "dev-file" => Some(SealKind::DevFile),
            "awskms" => Some(SealKind::AwsKms),
            "pkcs11" => Some(SealKind::Pkcs11),
            _ => None,
        }
    }
    /// Whether the server unseals itself at start (operators then hold recovery shares).
    pub fn is_auto(self) -> bool {
        !matches!(self, SealKind::Shamir)
    }
}

/// A source of the root key.
#[async_trait::async_trait]
pub trait Seal: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> SealKind;

    /// Protect a new root key. `Some(blob)` is stored in the database and given back to
    /// [`Seal::auto_unseal`]; `None` when the key is kept elsewhere (shares, the dev file).
    async fn seal_root(&self, root: &RootKey) -> Result<Option<Vec<u8>>, SealError>;

    /// A new root key and what to store for it. By default generated here and protected by
    /// [`Seal::seal_root`]; a KMS seal has the KMS generate it (GenerateDataKey).
    async fn new_root(&self) -> Result<(RootKey, Option<Vec<u8>>), SealError> {
        let root = RootKey::generate();
        let sealed = self.seal_root(&root).await?;
        Ok((root, sealed))
    }

    /// The root key without operators, from what `seal_root` stored; `None` when operators
    /// must submit shares.
    async fn auto_unseal(&self, sealed_root: Option<&[u8]>) -> Result<Option<RootKey>, SealError>;

    /// The KMS or HSM key behind the seal, if any.
    fn external_key(&self) -> Option<&dyn ExternalKey> {
        None
    }
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
    /// The external key refused: disabled, deleted, denied, or not the key of this data.
    #[error("the external key {key} is unavailable ({reason})")]
    KeyUnavailable { key: String, reason: String },
    #[error("the key service could not be reached: {0}")]
    Unreachable(String),
    #[error("the key service failed: {0}")]
    Service(String),
    #[error("seal configuration: {0}")]
    Config(String),
    /// A key names a service (KMS, HSM) this server is not configured with.
    #[error("{0}")]
    NoService(String),
    #[error("{0}")]
    Unsupported(&'static str),
}
