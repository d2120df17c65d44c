//! Server configuration: defaults, then a TOML file, then `COFFER_*` environment variables
//! (`__` separates nesting levels), then command-line flags. Validated before start.
//!
//! | variable | file key | default |
//! |---|---|---|
//! | COFFER_LISTEN | listen | 127.0.0.1:8200 |
//! | COFFER_DATA_DIR | data_dir | ./coffer-data (./.coffer-dev with --dev) |
//! | COFFER_TLS__CERT_FILE | tls.cert_file | internal CA |
//! | COFFER_TLS__KEY_FILE | tls.key_file | internal CA |
//! | COFFER_SESSION__TTL | session.ttl | 12h |
//! | COFFER_SESSION__IDLE_TIMEOUT | session.idle_timeout | 30m |
//! | COFFER_AUTH__MAX_FAILED_ATTEMPTS | auth.max_failed_attempts | 3 |
//! | COFFER_AUTH__LOCKOUT | auth.lockout | 30m |
//! | COFFER_AUTH__DELAY_STEP | auth.delay_step | 1s |
//! | COFFER_AUTH__LOGIN_RATE_PER_MINUTE | auth.login_rate_per_minute | 60 |
//! | COFFER_AUTH__ACCESS_TOKEN_TTL | auth.access_token_ttl | 15m |
//! | COFFER_HTTP__MAX_HEADER_BYTES | http.max_header_bytes | 16384 (4096 – 1048576) |
//! | COFFER_SMTP__HOST / __PORT / __SECURITY / __USERNAME / __PASSWORD / __FROM | smtp.* | no mail (queued) |
//! | (file only) | [[oidc]] issuer, audience, algorithms, jwks_url or jwks_file, jit, jit_org, jit_role, leeway | none |
//! | COFFER_DATABASE_URL | storage.url | SQLite in the data directory |
//! | COFFER_STORAGE__MIGRATE | storage.migrate | true (false: only verify the schema) |
//! | COFFER_AUDIT__FILE | audit.file | none |
//! | COFFER_AUDIT__STDOUT | audit.stdout | false |
//! | COFFER_AUDIT__CHECKPOINT_INTERVAL | audit.checkpoint_interval | 5m |
//! | COFFER_AUDIT__SIGN_INTERVAL | audit.sign_interval | 1s (100ms – 60s) |
//! | COFFER_AUDIT__READ_SYNC | audit.read_sync | batched (or always) |
//! | COFFER_AUDIT__ARCHIVE__AFTER | audit.archive.after | none (no scheduled archiving) |
//! | COFFER_AUDIT__ARCHIVE__DIR | audit.archive.dir | audit-archive in the data directory |
//! | COFFER_AUDIT__ARCHIVE__DATABASE_URL | audit.archive.database_url | none (PostgreSQL: the owner role that may prune) |
//! | COFFER_AUDIT__ARCHIVE__RATE | audit.archive.rate | none (events per second the job writes at most) |
//! | COFFER_AUDIT__RETAIN_LIVE | audit.retain_live | none (archived events are not pruned) |
//! | COFFER_BACKUP__RECIPIENTS | backup.recipients (comma-separated in the variable) | none (archive segments in plaintext) |
//! | COFFER_BACKUP__RECIPIENTS_FILE | backup.recipients_file | none |
//! | COFFER_KEYS__CACHE_TTL | keys.cache_ttl | 60s |
//! | COFFER_KEYS__ROTATE_AFTER | keys.rotate_after | 365d |
//! | COFFER_KEYS__ROTATE_AFTER_ENCRYPTIONS | keys.rotate_after_encryptions | 268435456 (2^28) |
//! | COFFER_KEYS__CHECK_INTERVAL | keys.check_interval | 60s |
//! | COFFER_KEYS__REWRAP_BATCH | keys.rewrap_batch | 2000 |
//! | COFFER_KEYS__REWRAP_PAUSE | keys.rewrap_pause | 0s |
//! | COFFER_KEYS__VALUE_SCHEME | keys.value_scheme | aes-256-gcm (or aes-256-gcm-siv); stored values keep the scheme they were written with |
//! | COFFER_SEAL__*, COFFER_KMS__*, COFFER_PKCS11__* | [seal], [kms], [pkcs11] | see seal_config.rs |
//! | COFFER_LOG | (none) | info |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use coffer_core::CoreConfig;
use coffer_server::ServerConfig;
use serde::Deserialize;

use crate::cli::ServerArgs;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    session: SessionSection,
    #[serde(default)]
    audit: AuditSection,
    #[serde(default)]
    backup: crate::archive_config::BackupSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    smtp: SmtpSection,
    #[serde(default)]
    oidc: Vec<OidcSection>,
    #[serde(default)]
    keys: KeysSection,
    #[serde(default)]
    seal: crate::seal_config::SealSection,
    #[serde(default)]
    kms: crate::seal_config::KmsSection,
    #[serde(default)]
    pkcs11: crate::seal_config::Pkcs11Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysSection {
    cache_ttl: Option<String>,
    rotate_after: Option<String>,
    rotate_after_encryptions: Option<u64>,
    check_interval: Option<String>,
    rewrap_batch: Option<u32>,
    rewrap_pause: Option<String>,
    value_scheme: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    max_failed_attempts: Option<u32>,
    lockout: Option<String>,
    delay_step: Option<String>,
    login_rate_per_minute: Option<u32>,
    access_token_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    max_header_bytes: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSection {
    host: Option<String>,
    port: Option<u16>,
    security: Option<String>,
    username: Option<String>,
    password: Option<String>,
    from: Option<String>,
}

impl std::fmt::Debug for SmtpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSection")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    issuer: String,
    audience: String,
    algorithms: Vec<String>,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jit: bool,
    jit_org: Option<String>,
    jit_role: Option<String>,
    leeway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    /// `postgres://user:password@host/db`; absent: SQLite in the data directory.
    url: Option<String>,
    /// Apply migrations at start (default). False for a runtime role without DDL rights.
    migrate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    file: Option<PathBuf>,
    stdout: Option<bool>,
    checkpoint_interval: Option<String>,
    sign_interval: Option<String>,
    /// "batched" (default) or "always": see `CoreConfig::read_sync_always`.
    read_sync: Option<String>,
    /// How long events stay in the database once archived (never pruned when unset).
    retain_live: Option<String>,
    #[serde(default)]
    archive: crate::archive_config::ArchiveSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionSection {
    ttl: Option<String>,
    idle_timeout: Option<String>,
}

fn duration(key: &str, v: &str, min: Duration, max: Duration) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(v)
        .with_context(|| format!("{key} must be a duration like 30m or 12h"))?;
    anyhow::ensure!(
        d >= min && d <= max,
        "{key} must be between {} and {}",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    Ok(d)
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The server's settings and where its data lives.
pub fn load(args: &ServerArgs) -> anyhow::Result<(ServerConfig, crate::storage::StorageSettings)> {
    let mut f = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str::<FileConfig>(&text).with_context(|| format!("parse {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    if let Some(v) = env("COFFER_LISTEN") {
        f.listen = Some(v);
    }
    if let Some(v) = env("COFFER_DATA_DIR") {
        f.data_dir = Some(v.into());
    }
    if let Some(v) = env("COFFER_TLS__CERT_FILE") {
        f.tls.cert_file = Some(v.into());
    }
    if let Some(v) = env("COFFER_TLS__KEY_FILE") {
        f.tls.key_file = Some(v.into());
    }
    if let Some(v) = env("COFFER_SESSION__TTL") {
        f.session.ttl = Some(v);
    }
    if let Some(v) = env("COFFER_SESSION__IDLE_TIMEOUT") {
        f.session.idle_timeout = Some(v);
    }
    if let Some(v) = env("COFFER_AUTH__MAX_FAILED_ATTEMPTS") {
        f.auth.max_failed_attempts = Some(v.parse().context("COFFER_AUTH__MAX_FAILED_ATTEMPTS")?);
    }
    if let Some(v) = env("COFFER_AUTH__LOCKOUT") {
        f.auth.lockout = Some(v);
    }
    if let Some(v) = env("COFFER_AUTH__DELAY_STEP") {
        f.auth.delay_step = Some(v);
    }
    if let Some(v) = env("COFFER_AUTH__LOGIN_RATE_PER_MINUTE") {
        f.auth.login_rate_per_minute =
            Some(v.parse().context("COFFER_AUTH__LOGIN_RATE_PER_MINUTE")?);
    }
    if let Some(v) = env("COFFER_AUTH__ACCESS_TOKEN_TTL") {
        f.auth.access_token_ttl = Some(v);
    }
    if let Some(v) = env("COFFER_HTTP__MAX_HEADER_BYTES") {
        f.http.max_header_bytes = Some(v.parse().context("COFFER_HTTP__MAX_HEADER_BYTES")?);
    }
    for (k, slot) in [
        ("COFFER_SMTP__HOST", &mut f.smtp.host),
        ("COFFER_SMTP__SECURITY", &mut f.smtp.security),
        ("COFFER_SMTP__USERNAME", &mut f.smtp.username),
        ("COFFER_SMTP__PASSWORD", &mut f.smtp.password),
        ("COFFER_SMTP__FROM", &mut f.smtp.from),
    ] {
        if let Some(v) = env(k) {
            *slot = Some(v);
        }
    }
    if let Some(v) = env("COFFER_SMTP__PORT") {
        f.smtp.port = Some(v.parse().context("COFFER_SMTP__PORT")?);
    }
    if let Some(v) = env("COFFER_DATABASE_URL") {
        f.storage.url = Some(v);
    }
    if let Some(v) = env("COFFER_STORAGE__MIGRATE") {
        f.storage.migrate = Some(matches!(v.as_str(), "1" | "true" | "yes"));
    }
    if let Some(v) = env("COFFER_AUDIT__FILE") {
        f.audit.file = Some(v.into());
    }
    if let Some(v) = env("COFFER_AUDIT__STDOUT") {
        f.audit.stdout = Some(matches!(v.as_str(), "1" | "true" | "yes"));
    }
    if let Some(v) = env("COFFER_AUDIT__CHECKPOINT_INTERVAL") {
        f.audit.checkpoint_interval = Some(v);
    }
    if let Some(v) = env("COFFER_AUDIT__SIGN_INTERVAL") {
        f.audit.sign_interval = Some(v);
    }
    if let Some(v) = env("COFFER_AUDIT__READ_SYNC") {
        f.audit.read_sync = Some(v);
    }
    if let Some(v) = env("COFFER_AUDIT__RETAIN_LIVE") {
        f.audit.retain_live = Some(v);
    }
    crate::archive_config::apply_env(&mut f.audit.archive, &mut f.backup)?;
    for (k, slot) in [
        ("COFFER_KEYS__CACHE_TTL", &mut f.keys.cache_ttl),
        ("COFFER_KEYS__ROTATE_AFTER", &mut f.keys.rotate_after),
        ("COFFER_KEYS__CHECK_INTERVAL", &mut f.keys.check_interval),
        ("COFFER_KEYS__REWRAP_PAUSE", &mut f.keys.rewrap_pause),
        ("COFFER_KEYS__VALUE_SCHEME", &mut f.keys.value_scheme),
    ] {
        if let Some(v) = env(k) {
            *slot = Some(v);
        }
    }
    if let Some(v) = env("COFFER_KEYS__ROTATE_AFTER_ENCRYPTIONS") {
        f.keys.rotate_after_encryptions =
            Some(v.parse().context("COFFER_KEYS__ROTATE_AFTER_ENCRYPTIONS")?);
    }
    if let Some(v) = env("COFFER_KEYS__REWRAP_BATCH") {
        f.keys.rewrap_batch = Some(v.parse().context("COFFER_KEYS__REWRAP_BATCH")?);
    }
    if let Some(v) = &args.listen {
        f.listen = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        f.data_dir = Some(v.clone());
    }

    let listen: SocketAddr = f
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8200")
        .parse()
        .context("listen must be an address like 127.0.0.1:8200")?;
    let data_dir = f.data_dir.unwrap_or_else(|| {
        PathBuf::from(if args.dev {
            ".coffer-dev"
        } else {
            "coffer-data"
        })
    });
    let mut core = CoreConfig::default();
    if let Some(ttl) = &f.session.ttl {
        let d: Duration = humantime::parse_duration(ttl)
            .context("session.ttl must be a duration like 12h or 30m")?;
        anyhow::ensure!(
            d >= Duration::from_secs(60) && d <= Duration::from_secs(30 * 86400),
            "session.ttl must be between 1m and 30d"
        );
        core.session_ttl = d;
    }
    if let Some(v) = &f.session.idle_timeout {
        core.idle_timeout = duration(
            "session.idle_timeout",
            v,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86400),
        )?;
    }
    if let Some(n) = f.auth.max_failed_attempts {
        anyhow::ensure!(
            (1..=100).contains(&n),
            "auth.max_failed_attempts must be 1-100"
        );
        core.max_failed_logins = n;
    }
    if let Some(v) = &f.auth.lockout {
        core.lockout = duration(
            "auth.lockout",
            v,
            Duration::from_secs(1),
            Duration::from_secs(30 * 86400),
        )?;
    }
    if let Some(v) = &f.auth.delay_step {
        core.login_delay_step = duration(
            "auth.delay_step",
            v,
            Duration::ZERO,
            Duration::from_secs(60),
        )?;
    }
    if let Some(v) = &f.auth.access_token_ttl {
        core.access_token_ttl = duration(
            "auth.access_token_ttl",
            v,
            Duration::from_secs(10),
            Duration::from_secs(86400),
        )?;
    }
    let smtp = match f.smtp.host.take() {
        None => None,
        Some(host) => Some(coffer_server::mail::SmtpConfig {
            port: f.smtp.port.unwrap_or(587),
            security: f.smtp.security.take().unwrap_or_else(|| "starttls".into()),
            username: f.smtp.username.take(),
            password: f.smtp.password.take(),
            from: f
                .smtp
                .from
                .take()
                .context("smtp.from is required with smtp.host")?,
            host,
        }),
    };
    core.mail_enabled = smtp.is_some();
    let mut jwks = std::collections::HashMap::new();
    for o in f.oidc {
        let algorithms = o
            .algorithms
            .iter()
            .map(|a| a.parse::<coffer_core::oidc::JwtAlgorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow::anyhow!("oidc {}: unknown algorithm", o.issuer))?;
        let issuer = coffer_core::oidc::OidcIssuer {
            issuer: o.issuer.clone(),
            audience: o.audience,
            algorithms,
            jit: o.jit,
            jit_org: o.jit_org,
            jit_role: match o.jit_role.as_deref() {
                None => coffer_core::Role::Viewer,
                Some(r) => coffer_core::Role::parse(r)
                    .with_context(|| format!("oidc {}: unknown jit_role", o.issuer))?,
            },
            leeway_secs: match &o.leeway {
                None => 60,
                Some(v) => {
                    duration("oidc.leeway", v, Duration::ZERO, Duration::from_secs(60))?.as_secs()
                }
            },
        };
        issuer.validate().map_err(anyhow::Error::msg)?;
        let loc = match (o.jwks_url, o.jwks_file) {
            (Some(u), None) => {
                let loopback_http = u.starts_with("http://127.0.0.1")
                    || u.starts_with("http://localhost")
                    || u.starts_with("http://[::1]");
                anyhow::ensure!(
                    u.starts_with("https://") || loopback_http,
                    "oidc {}: jwks_url must be https:// (plain http only on loopback)",
                    o.issuer
                );
                coffer_server::jwks::JwksLocation::Url(u)
            }
            (None, Some(p)) => coffer_server::jwks::JwksLocation::File(p),
            _ => anyhow::bail!(
                "oidc {}: set exactly one of jwks_url and jwks_file",
                o.issuer
            ),
        };
        jwks.insert(o.issuer, loc);
        core.oidc.push(issuer);
    }
    let key_check_interval = apply_keys(&f.keys, &mut core)?;
    f.seal.apply_env();
    f.kms.apply_env();
    f.pkcs11.apply_env();
    let (seal, key_services) = crate::seal_config::build(&f.seal, &f.kms, &f.pkcs11)?;
    core.read_sync_always = match f.audit.read_sync.as_deref() {
        None | Some("batched") => false,
        Some("always") => true,
        Some(other) => anyhow::bail!("audit.read_sync = {other:?}: use \"batched\" or \"always\""),
    };
    let checkpoint_interval = match &f.audit.checkpoint_interval {
        Some(v) => {
            let d = humantime::parse_duration(v)
                .context("audit.checkpoint_interval must be a duration like 5m")?;
            anyhow::ensure!(
                d >= Duration::from_secs(1),
                "audit.checkpoint_interval must be at least 1s"
            );
            d
        }
        None => Duration::from_secs(300),
    };
    let sign_interval = match &f.audit.sign_interval {
        Some(v) => {
            let d = humantime::parse_duration(v)
                .context("audit.sign_interval must be a duration like 1s")?;
            anyhow::ensure!(
                (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d),
                "audit.sign_interval must be between 100ms and 60s"
            );
            d
        }
        None => Duration::from_secs(1),
    };
    let audit_archive = crate::archive_config::settings(
        f.audit.retain_live.as_deref(),
        &f.audit.archive,
        &f.backup,
        &data_dir,
    )?;
    let storage = crate::storage::StorageSettings {
        url: f
            .storage
            .url
            .map(coffer_server::DatabaseUrl::new)
            .transpose()?,
        migrate: f.storage.migrate.unwrap_or(true),
        archive_url: f
            .audit
            .archive
            .database_url
            .map(coffer_server::DatabaseUrl::new)
            .transpose()?,
    };
    anyhow::ensure!(
        storage.archive_url.is_none() || storage.url.is_some(),
        "audit.archive.database_url is for PostgreSQL (storage.url)"
    );
    let max_header_bytes = f
        .http
        .max_header_bytes
        .unwrap_or(coffer_server::DEFAULT_MAX_HEADER_BYTES);
    anyhow::ensure!(
        (4096..=1 << 20).contains(&max_header_bytes),
        "http.max_header_bytes must be between 4096 and 1048576 (bytes)"
    );
    let cfg = ServerConfig {
        listen,
        data_dir,
        dev: args.dev,
        tls_cert: f.tls.cert_file,
        tls_key: f.tls.key_file,
        core,
        audit_file: f.audit.file,
        audit_stdout: f.audit.stdout.unwrap_or(false),
        checkpoint_interval,
        sign_interval,
        login_rate_per_minute: f.auth.login_rate_per_minute.unwrap_or(60),
        max_header_bytes,
        jwks,
        smtp,
        key_check_interval,
        audit_archive,
        audit_archiver: None,
        seal,
        key_services,
    };
    Ok((cfg, storage))
}

/// Key cache, rotation policy and rewrap settings; returns the key job's check interval.
fn apply_keys(k: &KeysSection, core: &mut CoreConfig) -> anyhow::Result<Duration> {
    const DAY: u64 = 86_400;
    if let Some(v) = &k.cache_ttl {
        core.key_cache_ttl = duration(
            "keys.cache_ttl",
            v,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
    }
    if let Some(v) = &k.rotate_after {
        core.key_rotate_after = duration(
            "keys.rotate_after",
            v,
            Duration::from_secs(1),
            Duration::from_secs(2 * 365 * DAY),
        )?;
    }
    if let Some(n) = k.rotate_after_encryptions {
        anyhow::ensure!(
            (1..=1u64 << 31).contains(&n),
            "keys.rotate_after_encryptions must be between 1 and 2^31"
        );
        core.key_rotate_after_encryptions = n;
    }
    if let Some(n) = k.rewrap_batch {
        anyhow::ensure!(
            (1..=50_000).contains(&n),
            "keys.rewrap_batch must be 1-50000"
        );
        core.rewrap_batch = n;
    }
    if let Some(v) = &k.value_scheme {
        core.value_scheme = coffer_core::ValueScheme::parse(v).with_context(|| {
            format!("keys.value_scheme = {v:?}: use \"aes-256-gcm\" or \"aes-256-gcm-siv\"")
        })?;
    }
    if let Some(v) = &k.rewrap_pause {
        core.rewrap_pause = duration(
            "keys.rewrap_pause",
            v,
            Duration::ZERO,
            Duration::from_secs(60),
        )?;
    }
    match &k.check_interval {
        Some(v) => duration(
            "keys.check_interval",
            v,
            Duration::from_millis(100),
            Duration::from_secs(DAY),
        ),
        None => Ok(Duration::from_secs(60)),
    }
}

/// The configuration file under arbitrary input (the property-test form of fuzzing it):
/// whatever a file holds, loading it returns settings or an error, never a panic, and the
/// documented bounds hold.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::load;
    use crate::cli::ServerArgs;

    fn load_text(text: &str) -> anyhow::Result<coffer_server::ServerConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("coffer.toml");
        std::fs::write(&path, text)?;
        load(&ServerArgs {
            dev: true,
            config: Some(path),
            listen: None,
            data_dir: Some(dir.path().join("data")),
        })
        .map(|(cfg, _)| cfg)
    }

    #[test]
    fn backup_recipients_encrypt_the_archive() {
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let cfg = load_text(&format!("[backup]\nrecipients = [\"{key}\"]\n")).unwrap();
        assert_eq!(
            cfg.audit_archive.recipients.map(|r| r.keys()),
            Some(vec![key.to_owned()])
        );
        assert!(load_text("").unwrap().audit_archive.recipients.is_none());
        let e = format!(
            "{:#}",
            load_text("[backup]\nrecipients = [\"age1nope\"]\n").unwrap_err()
        );
        assert!(
            e.contains("backup.recipients") && e.contains("not an age recipient"),
            "{e}"
        );
    }

    #[test]
    fn audit_archive_settings_are_checked() {
        let cfg = load_text("[audit]\nretain_live = \"90d\"\n[audit.archive]\nafter = \"30d\"\n")
            .unwrap();
        assert_eq!(
            (cfg.audit_archive.after, cfg.audit_archive.retain_live),
            (
                Some(std::time::Duration::from_secs(30 * 86_400)),
                Some(std::time::Duration::from_secs(90 * 86_400))
            )
        );
        // By default next to the database.
        assert!(
            cfg.audit_archive
                .dir
                .unwrap()
                .ends_with("data/audit-archive")
        );
        for (text, says) in [
            (
                "[audit]\nretain_live = \"90d\"\n",
                "needs audit.archive.after",
            ),
            (
                "[audit]\nretain_live = \"1d\"\n[audit.archive]\nafter = \"30d\"\n",
                "at least audit.archive.after",
            ),
            ("[audit.archive]\nafter = \"soon\"\n", "duration"),
            (
                "[audit.archive]\ndatabase_url = \"postgres://o@h/d\"\nafter = \"1d\"\n",
                "PostgreSQL",
            ),
        ] {
            let e = format!("{:#}", load_text(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
        // Off unless asked for.
        assert!(load_text("").unwrap().audit_archive.after.is_none());
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (0u64..2_000_000).prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-z0-9 ]{0,12}".prop_map(|s| format!("{s:?}")),
            prop_oneof![
                Just("1s"),
                Just("100ms"),
                Just("0s"),
                Just("61s"),
                Just("5m"),
                Just("x")
            ]
            .prop_map(|s| format!("{s:?}")),
        ]
    }

    const KEYS: [(&str, &str); 10] = [
        ("http", "max_header_bytes"),
        ("audit", "sign_interval"),
        ("audit", "checkpoint_interval"),
        ("audit", "read_sync"),
        ("auth", "max_failed_attempts"),
        ("auth", "login_rate_per_minute"),
        ("session", "ttl"),
        ("keys", "rewrap_batch"),
        ("keys", "cache_ttl"),
        ("storage", "migrate"),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_text_loads_or_is_refused(text in "\\PC{0,200}") {
            let _ = load_text(&text);
        }

        #[test]
        fn known_keys_with_any_values_load_or_are_refused_within_bounds(
            entries in proptest::collection::vec((0..KEYS.len(), value()), 1..6),
        ) {
            let mut sections = std::collections::BTreeMap::<&str, Vec<String>>::new();
            for (k, v) in &entries {
                let (section, key) = KEYS[*k];
                let lines = sections.entry(section).or_default();
                if !lines.iter().any(|l| l.starts_with(&format!("{key} ="))) {
                    lines.push(format!("{key} = {v}"));
                }
            }
            let text: String = sections
                .iter()
                .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
                .collect();
            if let Ok(cfg) = load_text(&text) {
                prop_assert!((4096..=1 << 20).contains(&cfg.max_header_bytes), "{}", text);
                prop_assert!(
                    (std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(60))
                        .contains(&cfg.sign_interval),
                    "{}",
                    text
                );
                prop_assert!(cfg.checkpoint_interval >= std::time::Duration::from_secs(1), "{}", text);
            }
        }
    }
}
