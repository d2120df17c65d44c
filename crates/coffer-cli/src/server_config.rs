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
//! | COFFER_DATABASE_URL | storage.url | SQLite in the data directory |
//! | COFFER_STORAGE__MIGRATE | storage.migrate | true (false: only verify the schema) |
//! | COFFER_AUDIT__FILE | audit.file | none |
//! | COFFER_AUDIT__STDOUT | audit.stdout | false |
//! | COFFER_AUDIT__CHECKPOINT_INTERVAL | audit.checkpoint_interval | 5m |
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
    storage: StorageSection,
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
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn load(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
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
    Ok(ServerConfig {
        listen,
        data_dir,
        dev: args.dev,
        tls_cert: f.tls.cert_file,
        tls_key: f.tls.key_file,
        core,
        audit_file: f.audit.file,
        audit_stdout: f.audit.stdout.unwrap_or(false),
        checkpoint_interval,
        database_url: f
            .storage
            .url
            .map(coffer_server::DatabaseUrl::new)
            .transpose()?,
        migrate: f.storage.migrate.unwrap_or(true),
    })
}
