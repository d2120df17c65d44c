use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coffer_crypto::RootKey;
use zeroize::Zeroizing;

use crate::{Seal, SealError, SealKind};

/// The dev-mode seal: the root key in a file only its owner can read.
///
/// This exists so a developer can start Coffer with one command. Anyone who can read the
/// file can read every secret; production uses Shamir shares or an HSM/KMS.
#[derive(Debug)]
pub struct DevKeyFile {
    path: PathBuf,
}

impl DevKeyFile {
    /// Open an existing key file (for a database initialised with it: a new key could not
    /// open anything there).
    pub fn open(path: &Path) -> Result<Self, SealError> {
        let seal = Self {
            path: path.to_owned(),
        };
        seal.root_key()?;
        Ok(seal)
    }

    /// Open the key file, creating it with a fresh key (mode 0600, never overwritten) when
    /// it does not exist. Returns whether it was created.
    pub fn open_or_create(path: &Path) -> Result<(Self, bool), SealError> {
        let io = |source| SealError::Io {
            path: path.to_owned(),
            source,
        };
        let created = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                let key = RootKey::generate();
                f.write_all(key.expose_secret()).map_err(io)?;
                f.sync_all().map_err(io)?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(e)),
        };
        let seal = Self {
            path: path.to_owned(),
        };
        // Read once now so that a broken file fails at start, not at first use.
        seal.root_key()?;
        Ok((seal, created))
    }
}

#[async_trait::async_trait]
impl Seal for DevKeyFile {
    fn kind(&self) -> SealKind {
        SealKind::DevFile
    }

    /// The file holds the key itself and is not rewritten: only its own key is accepted.
    async fn seal_root(&self, root: &RootKey) -> Result<Option<Vec<u8>>, SealError> {
        let current = self.root_key()?;
        if current.same_key(root) {
            Ok(None)
        } else {
            Err(SealError::Unsupported(
                "the dev key file seal cannot take a new root key",
            ))
        }
    }

    async fn auto_unseal(&self, _sealed: Option<&[u8]>) -> Result<Option<RootKey>, SealError> {
        self.root_key().map(Some)
    }
}

impl DevKeyFile {
    pub fn root_key(&self) -> Result<RootKey, SealError> {
        let io = |source| SealError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&self.path).map_err(io)?;
        let mode = f.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SealError::Permissions(self.path.clone()));
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(33));
        f.read_to_end(&mut buf).map_err(io)?;
        RootKey::from_bytes(&buf).map_err(|_| SealError::BadKeyFile(self.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_then_reuses_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        let (a, created) = DevKeyFile::open_or_create(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = DevKeyFile::open_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(
            a.root_key().unwrap().expose_secret(),
            b.root_key().unwrap().expose_secret()
        );
    }

    #[test]
    fn refuses_a_world_readable_or_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        DevKeyFile::open_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            DevKeyFile::open_or_create(&p),
            Err(SealError::Permissions(_))
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            DevKeyFile::open_or_create(&p),
            Err(SealError::BadKeyFile(_))
        ));
    }
}
