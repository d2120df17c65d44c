//! The segment file on disk: written under a temporary name, private, synced, renamed;
//! its bytes hashed as they go.

use std::io::Write;
use std::path::{Path, PathBuf};

use coffer_crypto::Sha256;
use coffer_crypto::offline::{Encrypting, Identities};
use coffer_store::SegmentRow;

use super::{io, refuse};
use crate::CoreError;
use crate::audit::segment::{is_encrypted, segment_in};

/// Replace an existing file only if it is a segment this run may redo (a crashed run's
/// renamed but unrecorded file); anything else, above all a recorded segment (whose events
/// may be pruned already), is refused.
pub(super) fn refuse_overwrite(path: &Path, recorded: &[SegmentRow]) -> Result<(), CoreError> {
    if !path.exists() {
        return Ok(());
    }
    if is_encrypted(path).map_err(refuse)? {
        return Err(refuse(format!(
            "{} exists and is an encrypted file; choose another path",
            path.display()
        )));
    }
    match segment_in(path, &Identities::none()).map_err(refuse)? {
        Some(name) if recorded.iter().any(|s| s.name == name) => Err(refuse(format!(
            "{} holds the recorded segment {name}: keep it, and choose another path",
            path.display()
        ))),
        Some(_) => Ok(()),
        None => Err(refuse(format!(
            "{} exists and is not an audit segment; choose another path",
            path.display()
        ))),
    }
}

pub(super) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Created new, readable by the owner only (audit events name people and resources).
pub(super) fn create_private(path: &Path) -> Result<std::fs::File, CoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(|e| io("create", path, e))
}

/// Make a rename durable: sync the directory that holds the file.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// SHA-256 of a file, read in pieces.
pub(super) fn file_digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut d = DiskDigest::new(std::io::sink());
    std::io::copy(&mut std::fs::File::open(path)?, &mut d)?;
    Ok(d.hash.finish())
}

/// The bytes that reach the file, hashed as they go: for an encrypted segment they are
/// not the plaintext that the segment writer hashes.
pub(super) struct DiskDigest<W: Write> {
    out: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> DiskDigest<W> {
    pub(super) fn new(out: W) -> Self {
        Self {
            out,
            hash: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for DiskDigest<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The digest and size of the bytes an encrypted segment put on disk.
pub(super) type OnDisk = ([u8; 32], u64);

/// A segment file being written: plaintext (which the segment writer hashes already), or
/// encrypted with age and its ciphertext hashed.
pub(super) enum SegmentOut<W: Write> {
    Plain(W),
    Age(Encrypting<DiskDigest<W>>),
}

impl<W: Write> SegmentOut<W> {
    /// End the file (age's last chunk); the inner writer and, for an encrypted file, the
    /// digest and size of the bytes written to it.
    pub(super) fn finish(self) -> std::io::Result<(W, Option<OnDisk>)> {
        match self {
            Self::Plain(mut w) => {
                w.flush()?;
                Ok((w, None))
            }
            Self::Age(e) => {
                let mut d = e.finish()?;
                d.flush()?;
                Ok((d.out, Some((d.hash.finish(), d.bytes))))
            }
        }
    }
}

impl<W: Write> Write for SegmentOut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(d) => d.write(buf),
            Self::Age(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(d) => d.flush(),
            Self::Age(e) => e.flush(),
        }
    }
}
