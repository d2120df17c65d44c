use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::cli::ServerArgs;

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a file or a log collector.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // Before any key exists in this process.
    coffer_server::harden_process();
    let (mut cfg, storage) = crate::server_config::load(&args)?;
    let dev = cfg.dev;
    let data_dir = cfg.data_dir.clone();
    if let Some(url) = &storage.archive_url {
        let owner = crate::storage::open(
            &crate::storage::StorageSettings {
                url: Some(url.clone()),
                migrate: false,
                archive_url: None,
            },
            &data_dir,
        )
        .await?;
        cfg.audit_archiver = Some(coffer_core::Coffer::new(owner, cfg.core.clone())?);
    }
    let storage = crate::storage::open(&storage, &data_dir).await?;
    let server = coffer_server::start(cfg, storage)
        .await
        .context("start the server")?;
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);

    if dev {
        eprintln!();
        eprintln!(
            "WARNING: DEV MODE. The root key is in {} (0600).",
            server
                .dev_key
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        );
        eprintln!(
            "WARNING: anyone who can read that file can read every secret. Never use --dev in production."
        );
    }
    println!(
        "Coffer {} listening on https://{}",
        env!("CARGO_PKG_VERSION"),
        server.addr
    );
    println!("Data directory: {}", data_dir.display());
    if let (Some(ca), Some(fp)) = (&server.tls.ca, &server.ca_fingerprint) {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        println!("Internal CA:    {}", ca.display());
        println!("CA SHA-256:     {fp}");
        println!(
            "Clients:        export COFFER_ADDR=https://{} COFFER_CACERT={}",
            server.addr,
            ca.display()
        );
    }
    if let Some(b) = &server.bootstrap {
        println!();
        println!("Bootstrap owner (shown once, not stored in clear anywhere):");
        println!("  organisation: {}", b.org_name);
        println!("  username:     {}", b.username);
        println!("  password:     {}", b.password.expose_secret());
        println!("  log in with:  coffer login --username {}", b.username);
    }
    if !dev {
        let st = server.coffer.seal_status().await?;
        if !st.initialized {
            println!("Not initialised: run `coffer operator init`.");
        } else if st.sealed {
            println!(
                "Sealed: run `coffer operator unseal` with {} of {} shares.",
                st.threshold, st.shares
            );
        }
    }
    server.run_until_signal().await
}

pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let shown = coffer_server::DatabaseUrl::new(url.to_owned())?;
    coffer_store::migrate(url)
        .await
        .with_context(|| format!("migrate {shown}"))?;
    println!("Migrations applied to {shown}.");
    Ok(())
}
