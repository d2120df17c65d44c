//! Starting a server: data directory, database, seal, TLS, socket.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use coffer_core::{Bootstrap, Coffer, CoreConfig};

use crate::tls::{self, TlsFiles};
use crate::{AppState, router};

/// Everything the server needs to start; built and validated by the `coffer` binary.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Dev mode: root key in a file, auto-unseal, bootstrap account.
    pub dev: bool,
    /// Operator-supplied certificate chain and key; an internal CA is generated otherwise.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub core: CoreConfig,
    /// Copy audit events to this JSON-lines file (created 0600) besides the database.
    pub audit_file: Option<PathBuf>,
    /// Copy audit events to standard output.
    pub audit_stdout: bool,
    /// How often chains that grew are checkpointed (their signed heads kept for good).
    pub checkpoint_interval: Duration,
    /// How soon the heads this node appended are signed (`audit.sign_interval`).
    pub sign_interval: Duration,
    /// Login attempts allowed per client address and minute.
    pub login_rate_per_minute: u32,
    /// Cap on a request's line and headers together, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Where each configured OpenID issuer's signing keys are (by issuer).
    pub jwks: std::collections::HashMap<String, crate::jwks::JwksLocation>,
    /// Mail server for notifications; without one, mail stays queued.
    pub smtp: Option<crate::mail::SmtpConfig>,
    /// How often the leader checks key rotation policy and unfinished rewrap jobs (a
    /// rotation requested on any node wakes it at once).
    pub key_check_interval: Duration,
    /// Where the root key comes from (default Shamir). KMS and HSM seals unseal at start.
    pub seal: std::sync::Arc<dyn coffer_core::seal::Seal>,
    /// The KMS and HSM organisations may attach their own keys from.
    pub key_services: coffer_core::seal::KeyServices,
    /// Scheduled archiving and pruning of the audit log (`audit.archive`, `audit.retain_live`).
    pub audit_archive: coffer_core::audit::ArchiveSettings,
    /// The service the scheduled archive runs on, when it needs other database rights than
    /// the server's (PostgreSQL's runtime role may not prune); the server's own otherwise.
    pub audit_archiver: Option<Coffer>,
}

/// A database URL that may carry a password: Debug and Display hide it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

/// Whether a URL query parameter carries a password (hidden when printed).
fn is_password_param(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

impl DatabaseUrl {
    pub fn new(url: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "the database URL must start with postgres://"
        );
        // Not echoed: the URL may hold a password.
        let parsed = url::Url::parse(&url).map_err(|_| {
            anyhow::anyhow!(
                "the database URL is not a valid URL (percent-encode special characters in the password)"
            )
        })?;
        // The driver logs parameters it does not know, values included.
        if let Some((key, _)) = parsed
            .query_pairs()
            .find(|(k, _)| is_password_param(k) && k != "password")
        {
            anyhow::bail!("the database URL parameter {key} is not supported");
        }
        Ok(Self(url))
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`: the one in the user part, and any
    /// query parameter whose name mentions a password (`password=`).
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            // `new` refuses such URLs; never print one that could not be taken apart.
            return "postgres://(hidden)".to_owned();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_password_param(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub tls: TlsFiles,
    pub ca_fingerprint: Option<String>,
    /// Dev mode, first start: the bootstrap account (print it once).
    pub bootstrap: Option<Bootstrap>,
    /// Dev mode: where the root key file is.
    pub dev_key: Option<PathBuf>,
    pub coffer: Coffer,
    handle: Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Background jobs, stopped on shutdown.
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Serve until the process is asked to stop (Ctrl-C or SIGTERM), then drain.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        let served = self.task.await.context("server task")?.context("server");
        stop_jobs(&self.jobs, &self.coffer).await;
        served?;
        Ok(())
    }

    /// Drain requests, stop the background jobs and close the database connections. On
    /// PostgreSQL that also gives up the job leadership at once, so another node takes it
    /// over at its next tick instead of after this process has gone.
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = self.task.await;
        stop_jobs(&self.jobs, &self.coffer).await;
    }
}

async fn stop_jobs(jobs: &[tokio::task::JoinHandle<()>], coffer: &Coffer) {
    for j in jobs {
        j.abort();
    }
    coffer.close().await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Create the data directory (owner only) if it does not exist yet.
pub fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create data directory {}", dir.display()))
}

/// Serve `storage` (opened by the binary's wiring, which chooses the database) with `cfg`.
/// If the server cannot start, the storage is closed (on PostgreSQL that also gives up the
/// job leadership at once).
pub async fn start(
    cfg: ServerConfig,
    storage: coffer_core::Storage,
) -> anyhow::Result<RunningServer> {
    let cluster = storage.cluster.clone();
    let started = start_on(cfg, storage).await;
    if started.is_err() {
        cluster.close().await;
    }
    started
}

async fn start_on(
    cfg: ServerConfig,
    storage: coffer_core::Storage,
) -> anyhow::Result<RunningServer> {
    create_data_dir(&cfg.data_dir)?;
    let sinks = coffer_core::audit::AuditSinks::new(cfg.audit_file.clone(), cfg.audit_stdout)
        .with_context(|| {
            format!(
                "open the audit file {}",
                cfg.audit_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
    let coffer =
        Coffer::with_sinks(storage, cfg.core.clone(), sinks).context("start the service")?;

    coffer.configure_keys(cfg.seal.clone(), cfg.key_services.clone());
    let (bootstrap, dev_key) = if cfg.dev {
        let key_path = cfg.data_dir.join("dev-root.key");
        let b = coffer.start_dev(&key_path).await.map_err(|e| match e {
            coffer_core::CoreError::WrongSealType => {
                anyhow::anyhow!(
                    "{} was initialised for production (Shamir seal); start it without --dev",
                    cfg.data_dir.display()
                )
            }
            other => anyhow::Error::new(other).context("dev-mode unseal"),
        })?;
        (b, Some(key_path))
    } else {
        match coffer.start_sealed().await {
            Ok(state) => tracing::info!(?state, seal = cfg.seal.kind().as_str(), "seal"),
            Err(coffer_core::CoreError::WrongSealType) => anyhow::bail!(
                "{} was initialised in dev mode; start it with --dev or use a new data directory",
                cfg.data_dir.display()
            ),
            Err(e) => return Err(anyhow::Error::new(e).context("unseal with the configured seal")),
        }
        (None, None)
    };

    let files = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        },
        (None, None) => tls::ensure_internal_ca(&cfg.data_dir.join("tls"), &[])?,
        _ => anyhow::bail!("set both tls.cert_file and tls.key_file, or neither"),
    };
    let ca_fingerprint = files.ca.as_deref().map(tls::fingerprint).transpose()?;
    let tls_cfg = RustlsConfig::from_config(tls::server_config(&files)?);

    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("listen on {}", cfg.listen))?;
    listener
        .set_nonblocking(true)
        .context("set listener non-blocking")?;
    let addr = listener.local_addr().context("local address")?;
    let handle = Handle::new();
    let app = router(AppState {
        coffer: coffer.clone(),
        limiter: std::sync::Arc::new(crate::limits::LoginLimiter::new(cfg.login_rate_per_minute)),
        jwks: std::sync::Arc::new(crate::jwks::JwksCache::new(
            cfg.jwks.clone(),
            Duration::from_secs(300),
        )),
        max_header_bytes: cfg.max_header_bytes,
    });
    // Answers go out at once: no Nagle delay behind a previous small write.
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls_cfg)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let mut server = axum_server::from_tcp(listener)
        .context("TLS listener")?
        .acceptor(acceptor)
        .handle(handle.clone());
    // hyper's own read buffer bounds what a head may take in memory (it answers 431 without
    // a body past it); heads between the cap and that answer 431 with the JSON error.
    server
        .http_builder()
        .http1()
        .keep_alive(true)
        .max_buf_size(cfg.max_header_bytes.saturating_mul(4).max(16 * 1024));
    let task = tokio::spawn(server.serve(app.into_make_service_with_connect_info::<SocketAddr>()));

    let mut jobs = Vec::new();
    let purger = coffer.clone();
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            if !purger.audit().is_job_leader().await {
                continue;
            }
            if let Err(e) = purger.identity().purge_expired_sessions().await {
                tracing::warn!(error = %e, "purging expired sessions failed");
            }
        }
    }));

    if let Some(smtp) = &cfg.smtp {
        let sender = crate::mail::SmtpSender::new(smtp).context("mail settings")?;
        let mailer = coffer.clone();
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if mailer.seal_status().await.is_ok_and(|s| !s.sealed)
                    && mailer.audit().is_job_leader().await
                    && let Err(e) = mailer.identity().deliver_mail(&sender).await
                {
                    tracing::warn!(error = %e, "mail delivery job failed");
                }
            }
        }));
    }

    let keeper = coffer.clone();
    let every = cfg.key_check_interval.max(Duration::from_millis(100));
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = keeper.keys().key_job_requested() => {}
            }
            if keeper.seal_status().await.is_ok_and(|s| !s.sealed)
                && keeper.audit().is_job_leader().await
                && let Err(e) = keeper.keys().run_key_maintenance().await
            {
                tracing::warn!(error = %e, "key maintenance job failed");
            }
        }
    }));

    // Every node: notice a rekey done on another node even if its notification was lost.
    let watcher = coffer.clone();
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            watcher.check_root().await;
        }
    }));

    // Every node signs the chain heads it wrote (not only the leader: it signs what it
    // knows it wrote, never what the database says).
    let signer = coffer.clone();
    let every = cfg
        .sign_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = signer.audit().sign_heads().await {
                tracing::warn!(error = %e, "signing audit chain heads failed");
            }
        }
    }));

    let checkpointer = coffer.clone();
    let every = cfg.checkpoint_interval.max(Duration::from_secs(1));
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if checkpointer.seal_status().await.is_ok_and(|s| !s.sealed)
                && checkpointer.audit().is_job_leader().await
                && let Err(e) = checkpointer.audit().checkpoint_all().await
            {
                tracing::warn!(error = %e, "audit checkpoint failed");
            }
        }
    }));

    // The leader archives what is older than `audit.archive.after` and prunes archived
    // events older than `audit.retain_live` (docs/audit.md, "Archive segments").
    if let Some(after) = cfg.audit_archive.after {
        let leader = coffer.clone();
        let archiver = cfg.audit_archiver.clone().unwrap_or_else(|| coffer.clone());
        let settings = cfg.audit_archive.clone();
        archiver.audit().set_archive_rate(settings.rate);
        let every = settings.every().unwrap_or(after);
        jobs.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if leader.audit().is_job_leader().await
                    && let Err(e) = archiver.audit().run_archive_job(&settings).await
                {
                    tracing::warn!(error = %e, "audit archive job failed");
                }
                archiver.audit().note_next_run(every);
            }
        }));
    }

    Ok(RunningServer {
        addr,
        tls: files,
        ca_fingerprint,
        bootstrap,
        dev_key,
        coffer,
        handle,
        task,
        jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn database_passwords_never_print() {
        let u =
            DatabaseUrl::new("postgres://coffer:s3cr3t@db.internal:5432/coffer".into()).unwrap();
        assert_eq!(
            u.to_string(),
            "postgres://coffer:***@db.internal:5432/coffer"
        );
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert_eq!(
            DatabaseUrl::new("postgres://coffer@h/db".into())
                .unwrap()
                .to_string(),
            "postgres://coffer@h/db"
        );
        assert!(DatabaseUrl::new("mysql://x".into()).is_err());
        // A password parameter is hidden too; other parameters stay readable.
        let q =
            DatabaseUrl::new("postgres://coffer@h/db?sslmode=verify-full&password=s3cr3t".into())
                .unwrap();
        assert_eq!(
            q.to_string(),
            "postgres://coffer@h/db?sslmode=verify-full&password=***"
        );
        // Password parameters the driver does not know (it would log them) are refused,
        // without echoing the value.
        let refusal = |url: &str| {
            DatabaseUrl::new(url.into())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let err = refusal("postgres://coffer@h/db?sslpassword=k3y");
        assert!(
            err.contains("sslpassword is not supported") && !err.contains("k3y"),
            "{err}"
        );
        // A percent-encoded '@' in the password does not confuse the redaction.
        let at = DatabaseUrl::new("postgres://coffer:p%40ss@h:5432/db".into()).unwrap();
        assert_eq!(at.to_string(), "postgres://coffer:***@h:5432/db");
        // An unparseable URL is refused without echoing it.
        let err = refusal("postgres://coffer:s3cr3t@[bad/db");
        assert!(
            err.contains("not a valid URL") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}
