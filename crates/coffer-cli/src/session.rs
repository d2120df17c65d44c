//! The saved login: server address, CA path and bearer token, in a 0600 file in the user's
//! config directory (COFFER_CONFIG_DIR overrides it).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::Context;
use coffer_client::Client;
use serde::{Deserialize, Serialize};

use crate::cli::Global;

pub const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";

#[derive(Default, Serialize, Deserialize)]
pub struct Saved {
    pub addr: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("addr", &self.addr)
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("COFFER_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    let dirs = directories::ProjectDirs::from("", "", "coffer")
        .context("no home directory to keep the login in; set COFFER_CONFIG_DIR")?;
    Ok(dirs.config_dir().to_owned())
}

fn path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("session.json"))
}

pub fn load() -> anyhow::Result<Saved> {
    let p = path()?;
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("read {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

pub fn save(s: &Saved) -> anyhow::Result<()> {
    let dir = config_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let p = dir.join("session.json");
    let tmp = dir.join("session.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(s)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("write {}", p.display()))?;
    Ok(())
}

/// Address and CA from flags/environment, else from the saved login, else defaults.
pub fn endpoint(g: &Global, saved: &Saved) -> (String, Option<PathBuf>) {
    let addr = g
        .addr
        .clone()
        .or_else(|| saved.addr.clone())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let ca = g.ca_cert.clone().or_else(|| saved.ca_cert.clone());
    (addr, ca)
}

pub fn client_for(addr: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let pem = ca
        .map(|p| std::fs::read(p).with_context(|| format!("read CA certificate {}", p.display())))
        .transpose()?;
    Ok(Client::new(addr, pem.as_deref())?)
}

/// A client without credentials (operator commands, login).
pub fn anonymous(g: &Global) -> anyhow::Result<Client> {
    let saved = load()?;
    let (addr, ca) = endpoint(g, &saved);
    client_for(&addr, ca.as_deref())
}

/// A client with the token from COFFER_TOKEN or the saved login.
pub fn authed(g: &Global) -> anyhow::Result<Client> {
    let saved = load()?;
    let (addr, ca) = endpoint(g, &saved);
    let token = std::env::var("COFFER_TOKEN")
        .ok()
        .or(saved.token)
        .context("not logged in: run `coffer login` (or set COFFER_TOKEN)")?;
    Ok(client_for(&addr, ca.as_deref())?.with_token(token))
}
