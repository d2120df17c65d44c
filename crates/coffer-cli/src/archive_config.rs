//! `[audit.archive]`, `audit.retain_live` and `[backup]`: the scheduled archive job, and the
//! age recipients that what leaves the server for offline storage is encrypted to
//! (docs/audit.md, "Archive segments"; the variables are listed in server_config.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::server_config::env;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Archive events older than this (off when unset).
    pub after: Option<String>,
    /// Where the segments go (default: audit-archive in the data directory).
    pub dir: Option<PathBuf>,
    /// PostgreSQL: the role that records segments and prunes (the schema owner), when the
    /// server runs as a least-privilege runtime role.
    pub database_url: Option<String>,
    /// Events per second the job writes at most (unlimited when unset).
    pub rate: Option<u32>,
}

/// What leaves the server for offline storage is encrypted to these age public keys,
/// whose private keys stay offline: archive segments today.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    pub recipients: Option<Vec<String>>,
    /// One public key per line (`age -R`'s format).
    pub recipients_file: Option<PathBuf>,
}

/// The `COFFER_AUDIT__ARCHIVE__*` and `COFFER_BACKUP__*` variables over the file's values.
pub fn apply_env(a: &mut ArchiveSection, b: &mut BackupSection) -> anyhow::Result<()> {
    if let Some(v) = env("COFFER_AUDIT__ARCHIVE__AFTER") {
        a.after = Some(v);
    }
    if let Some(v) = env("COFFER_AUDIT__ARCHIVE__DIR") {
        a.dir = Some(v.into());
    }
    if let Some(v) = env("COFFER_AUDIT__ARCHIVE__DATABASE_URL") {
        a.database_url = Some(v);
    }
    if let Some(v) = env("COFFER_BACKUP__RECIPIENTS") {
        b.recipients = Some(v.split(',').map(str::to_owned).collect());
    }
    if let Some(v) = env("COFFER_BACKUP__RECIPIENTS_FILE") {
        b.recipients_file = Some(v.into());
    }
    if let Some(v) = env("COFFER_AUDIT__ARCHIVE__RATE") {
        a.rate =
            Some(v.parse().context(
                "COFFER_AUDIT__ARCHIVE__RATE must be a whole number of events per second",
            )?);
    }
    Ok(())
}

/// The archive job's settings, checked: `retain_live` needs `after` and is at least it.
pub fn settings(
    retain_live: Option<&str>,
    a: &ArchiveSection,
    b: &BackupSection,
    data_dir: &Path,
) -> anyhow::Result<coffer_core::audit::ArchiveSettings> {
    let duration = |key: &str, v: Option<&str>| -> anyhow::Result<Option<Duration>> {
        v.map(|v| {
            let d = humantime::parse_duration(v)
                .with_context(|| format!("{key} must be a duration like 30d"))?;
            anyhow::ensure!(d >= Duration::from_secs(1), "{key} must be at least 1s");
            Ok(d)
        })
        .transpose()
    };
    let after = duration("audit.archive.after", a.after.as_deref())?;
    let retain_live = duration("audit.retain_live", retain_live)?;
    if let Some(r) = retain_live {
        let Some(archive_after) = after else {
            anyhow::bail!(
                "audit.retain_live needs audit.archive.after: only archived events are pruned"
            );
        };
        anyhow::ensure!(
            r >= archive_after,
            "audit.retain_live must be at least audit.archive.after (events are archived before they are pruned)"
        );
    }
    Ok(coffer_core::audit::ArchiveSettings {
        after,
        dir: after.map(|_| {
            a.dir
                .clone()
                .unwrap_or_else(|| data_dir.join("audit-archive"))
        }),
        retain_live,
        rate: a.rate.filter(|r| *r > 0),
        recipients: backup_recipients(b)?,
    })
}

/// `backup.recipients` and `backup.recipients_file`, parsed now so that a bad key stops
/// the start rather than the first archive run.
fn backup_recipients(b: &BackupSection) -> anyhow::Result<Option<coffer_core::audit::Recipients>> {
    recipients(
        b.recipients.as_deref(),
        b.recipients_file.as_deref(),
        "backup.recipients",
    )
}

/// Age recipients given as keys and/or a file of them (one per line, `age -R`'s format);
/// None when neither is given. `what` names the setting or flag in errors.
pub fn recipients(
    keys: Option<&[String]>,
    file: Option<&Path>,
    what: &str,
) -> anyhow::Result<Option<coffer_core::audit::Recipients>> {
    if keys.is_none() && file.is_none() {
        return Ok(None);
    }
    let mut all = keys.unwrap_or_default().to_vec();
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("{what}: read {}", f.display()))?;
        all.extend(text.lines().map(str::to_owned));
    }
    coffer_core::audit::Recipients::parse(&all)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}
