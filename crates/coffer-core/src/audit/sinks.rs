//! Copies of audit events besides the database: a JSON-lines file and/or stdout. The
//! database is the durable record; a failing copy does not fail requests but is reported in
//! health and counted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct AuditSinks {
    file: Option<(PathBuf, Mutex<std::fs::File>)>,
    stdout: bool,
    events: AtomicU64,
    store_failures: AtomicU64,
    file_failures: AtomicU64,
    file_ok: AtomicBool,
}

/// What `/v1/sys/health` and `/v1/sys/metrics` report about audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkHealth {
    pub events: u64,
    pub store_failures: u64,
    pub file: Option<bool>,
    pub file_failures: u64,
    pub stdout: bool,
}

impl AuditSinks {
    /// `file`: append-only JSON lines (created 0600). `stdout`: one JSON line per event.
    pub fn new(file: Option<PathBuf>, stdout: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match file {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&p)?;
                Some((p, Mutex::new(f)))
            }
            None => None,
        };
        Ok(Self {
            file,
            stdout,
            file_ok: AtomicBool::new(true),
            ..Self::default()
        })
    }

    pub(crate) fn write(&self, line: &str) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let Some((path, f)) = &self.file {
            let ok = f
                .lock()
                .map(|mut f| writeln!(f, "{line}").is_ok())
                .unwrap_or(false);
            if !ok {
                self.file_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), "could not write the audit file sink");
            }
            self.file_ok.store(ok, Ordering::Relaxed);
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }

    pub(crate) fn note_store_failure(&self) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn health(&self) -> SinkHealth {
        SinkHealth {
            events: self.events.load(Ordering::Relaxed),
            store_failures: self.store_failures.load(Ordering::Relaxed),
            file: self
                .file
                .as_ref()
                .map(|_| self.file_ok.load(Ordering::Relaxed)),
            file_failures: self.file_failures.load(Ordering::Relaxed),
            stdout: self.stdout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_file_copy_is_counted_and_reported() {
        // Writes to /dev/full fail with ENOSPC, like a full log disk.
        let s = AuditSinks::new(Some(PathBuf::from("/dev/full")), false).unwrap();
        assert_eq!(s.health().file, Some(true));
        s.write("{\"a\":1}");
        let h = s.health();
        assert_eq!((h.file, h.file_failures, h.events), (Some(false), 1, 1));
    }

    #[test]
    fn the_file_copy_gets_one_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let s = AuditSinks::new(Some(p.clone()), false).unwrap();
        s.write("{\"a\":1}");
        s.write("{\"a\":2}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            s.health(),
            SinkHealth {
                events: 2,
                store_failures: 0,
                file: Some(true),
                file_failures: 0,
                stdout: false
            }
        );
    }
}
