//! End to end: the real `coffer` binary as a server process on 127.0.0.1 and as the CLI.
//! This file holds the helpers (a server process, a CLI with its own home); each command
//! area has its own module.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive;
mod audit;
mod bench;
mod crash;
mod identity;
mod keys;
mod newcomer;
mod operator;
mod postgres;
mod tour;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coffer");

/// A `coffer server` child process, killed on drop.
struct ServerProc {
    child: Child,
    addr: String,
    ca: PathBuf,
    password: Option<String>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data: &Path, dev: bool, extra: &[&str]) -> ServerProc {
    start_server_with(data, dev, extra, dev)
}

/// `bootstrap`: wait for the bootstrap account, printed on a dev server's first start only.
fn start_server_with(data: &Path, dev: bool, extra: &[&str], bootstrap: bool) -> ServerProc {
    start_server_env(data, dev, extra, bootstrap, &[])
}

/// With `COFFER_TEST_BACKEND=postgres`, the PostgreSQL database of the server on `data`:
/// made on its first start, the same on restarts.
fn database_for(data: &Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    if !coffer_testkit::postgres_backend() {
        return None;
    }
    static DBS: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut dbs = DBS.get_or_init(Default::default).lock().unwrap();
    let url = dbs.entry(data.to_owned()).or_insert_with(|| {
        // Its own thread and runtime: some callers already run inside one.
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(coffer_testkit::pg_runtime_database())
                .expect("COFFER_TEST_BACKEND=postgres needs PostgreSQL")
        })
        .join()
        .unwrap()
    });
    Some(url.clone())
}

/// `coffer server` on `data`, on PostgreSQL when the test backend says so (then as the
/// runtime role, on a database its owner migrated).
fn server_cmd(data: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    if let Some(url) = database_for(data) {
        cmd.env("COFFER_DATABASE_URL", url)
            .env("COFFER_STORAGE__MIGRATE", "false");
    }
    cmd.arg("server");
    cmd
}

fn start_server_env(
    data: &Path,
    dev: bool,
    extra: &[&str],
    bootstrap: bool,
    env: &[(&str, &str)],
) -> ServerProc {
    let mut cmd = server_cmd(data);
    cmd.envs(env.iter().copied());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra);
    if dev {
        cmd.arg("--dev");
    }
    let mut child = cmd
        .env("COFFER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut ca, mut password) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Internal CA:") {
            ca = Some(PathBuf::from(rest.trim()));
        } else if let Some(rest) = line.trim().strip_prefix("password:") {
            password = Some(rest.trim().to_owned());
        }
        if line.starts_with("Clients:") && (!bootstrap || password.is_some()) {
            break;
        }
        if bootstrap && password.is_some() {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServerProc {
        child,
        addr: addr.expect("server address"),
        ca: ca.expect("CA path"),
        password,
    }
}

struct Cli {
    cfg: PathBuf,
    addr: String,
    ca: PathBuf,
}

impl Cli {
    /// A CLI with its own configuration directory `cfg`, pointed at `srv`.
    fn of(srv: &ServerProc, cfg: PathBuf) -> Self {
        Cli {
            cfg,
            addr: srv.addr.clone(),
            ca: srv.ca.clone(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("COFFER_CONFIG_DIR", &self.cfg)
            .env("COFFER_ADDR", &self.addr)
            .env("COFFER_CACERT", &self.ca);
        for v in ["COFFER_TOKEN", "COFFER_PROJECT", "COFFER_ENV"] {
            c.env_remove(v);
        }
        c
    }

    fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8(o.stderr).unwrap()
    }
}
