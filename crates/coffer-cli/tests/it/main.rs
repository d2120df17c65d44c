//! End to end: the real `coffer` binary as a server process on 127.0.0.1 and as the CLI.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[test]
fn dev_server_cli_tour() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };

    assert!(cli.fails(&["whoami"]).contains("not logged in"));
    let bad = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], "wrong\n");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid username or password"));
    // After a failure the next attempt must wait (1 s by default); sooner is refused alike.
    let early = cli.run_stdin(
        &["login", "-u", "admin", "--password-stdin"],
        &format!("{}\n", srv.password.as_deref().unwrap()),
    );
    assert!(!early.status.success());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let o = cli.run_stdin(
        &["login", "-u", "admin", "--password-stdin"],
        &format!("{}\n", srv.password.as_deref().unwrap()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let session = cli.cfg.join("session.json");
    assert_eq!(
        std::fs::metadata(&session).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(cli.json(&["whoami"])["role"], "owner");

    cli.ok(&["project", "create", "web"]);
    cli.ok(&["env", "create", "production", "-p", "web"]);
    cli.ok(&[
        "env",
        "create",
        "production-eu",
        "-p",
        "web",
        "--parent",
        "production",
    ]);
    let envs = cli.json(&["env", "list", "-p", "web"]);
    assert_eq!(envs.as_array().unwrap().len(), 3);

    cli.ok(&[
        "param",
        "set",
        "LOG_LEVEL",
        "info",
        "-p",
        "web",
        "-e",
        "default",
    ]);
    // Value from stdin, and from a file.
    let o = cli.run_stdin(
        &[
            "param",
            "set",
            "API_TOKEN",
            "-p",
            "web",
            "-e",
            "production",
            "--secret",
        ],
        "tok-from-stdin",
    );
    assert!(o.status.success());
    let f = tmp.path().join("cert.pem");
    std::fs::write(&f, "line1\nline2 \"quoted\" $HOME\n").unwrap();
    cli.ok(&[
        "param",
        "set",
        "CERT",
        &format!("@{}", f.display()),
        "-p",
        "web",
        "-e",
        "production-eu",
    ]);

    assert_eq!(
        cli.ok(&[
            "param",
            "get",
            "API_TOKEN",
            "-p",
            "web",
            "-e",
            "production-eu"
        ]),
        "tok-from-stdin\n"
    );
    let list = cli.json(&["param", "list", "-p", "web", "-e", "production-eu"]);
    let token = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "API_TOKEN")
        .unwrap();
    assert_eq!(
        (
            token["masked"].as_bool(),
            token["value"].is_null(),
            token["env"].as_str()
        ),
        (Some(true), true, Some("production"))
    );
    let table = cli.ok(&["param", "list", "-p", "web", "-e", "production-eu"]);
    assert!(table.contains("********") && !table.contains("tok-from-stdin"));
    let revealed = cli.json(&[
        "param",
        "list",
        "-p",
        "web",
        "-e",
        "production-eu",
        "--reveal",
    ]);
    assert!(revealed.to_string().contains("tok-from-stdin"));

    cli.ok(&[
        "param",
        "set",
        "LOG_LEVEL",
        "debug",
        "-p",
        "web",
        "-e",
        "default",
    ]);
    let hist = cli.json(&[
        "param",
        "history",
        "LOG_LEVEL",
        "-p",
        "web",
        "-e",
        "default",
    ]);
    assert_eq!(hist.as_array().unwrap().len(), 2);
    cli.ok(&[
        "param",
        "rollback",
        "LOG_LEVEL",
        "--to",
        "1",
        "-p",
        "web",
        "-e",
        "default",
    ]);
    assert_eq!(
        cli.ok(&["param", "get", "LOG_LEVEL", "-p", "web"]),
        "info\n"
    );

    let diff = cli.json(&[
        "param",
        "diff",
        "-p",
        "web",
        "--env",
        "default",
        "--env",
        "production-eu",
    ]);
    let names: Vec<&str> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["API_TOKEN", "CERT"]);
    assert!(
        !diff.to_string().contains("tok-from-stdin"),
        "diff masks secrets without --reveal"
    );

    // run: the child sees the values; exit code passes through.
    let out = cli.ok(&[
        "run",
        "-p",
        "web",
        "-e",
        "production-eu",
        "--",
        "sh",
        "-c",
        "printf '%s|%s|%s' \"$API_TOKEN\" \"$LOG_LEVEL\" \"$CERT\"",
    ]);
    assert_eq!(out, "tok-from-stdin|info|line1\nline2 \"quoted\" $HOME\n");
    let o = cli.run(&["run", "-p", "web", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));

    // export: every format parses back to the same values.
    let j: Value = serde_json::from_str(&cli.ok(&[
        "export",
        "-p",
        "web",
        "-e",
        "production-eu",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(j["CERT"], "line1\nline2 \"quoted\" $HOME\n");
    let dotenv = cli.ok(&[
        "export",
        "-p",
        "web",
        "-e",
        "production-eu",
        "--format",
        "dotenv",
    ]);
    let sourced = Command::new("sh")
        .arg("-c")
        .arg(format!("set -a; {dotenv}\nprintf '%s' \"$CERT\""))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(sourced.stdout).unwrap(),
        "line1\nline2 \"quoted\" $HOME\n",
        "dotenv is safe to source"
    );
    let k8s = cli.ok(&[
        "export",
        "-p",
        "web",
        "-e",
        "production-eu",
        "--format",
        "k8s-secret",
    ]);
    assert!(k8s.contains("kind: Secret") && k8s.contains("name: \"web-production-eu\""));
    assert!(
        cli.ok(&["export", "-p", "web", "--format", "yaml"])
            .contains("\"LOG_LEVEL\": \"info\"")
    );

    cli.ok(&[
        "param",
        "delete",
        "CERT",
        "-p",
        "web",
        "-e",
        "production-eu",
    ]);
    assert!(
        cli.fails(&["param", "get", "CERT", "-p", "web", "-e", "production-eu"])
            .contains("not found")
    );
    assert!(
        cli.fails(&["param", "set", "../x", "v", "-p", "web"])
            .contains("invalid parameter name")
    );
    assert!(
        cli.fails(&["param", "get", "X", "-p", "nope"])
            .contains("project 'nope' not found")
    );

    cli.ok(&["logout"]);
    assert!(cli.fails(&["whoami"]).contains("not logged in"));
}

#[test]
fn production_server_init_unseal_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (shares, password) = {
        let srv = start_server(&data, false, &[]);
        let cli = Cli {
            cfg: tmp.path().join("cfg"),
            addr: srv.addr.clone(),
            ca: srv.ca.clone(),
        };
        assert_eq!(cli.json(&["operator", "status"])["initialized"], false);
        let init = cli.json(&["operator", "init", "--shares", "3", "--threshold", "2"]);
        let shares: Vec<String> = init["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(shares.len(), 3);
        assert!(
            cli.fails(&["operator", "unseal", "bogus"])
                .contains("malformed")
        );
        assert_eq!(cli.json(&["operator", "unseal", &shares[0]])["progress"], 1);
        assert_eq!(
            cli.json(&["operator", "unseal", &shares[2]])["sealed"],
            false
        );
        (
            shares,
            init["bootstrap"]["password"].as_str().unwrap().to_owned(),
        )
    };
    // After a restart the server is sealed again, and the shares still work.
    let srv = start_server(&data, false, &[]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    assert_eq!(cli.json(&["operator", "status"])["sealed"], true);
    let o = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password);
    assert!(String::from_utf8_lossy(&o.stderr).contains("sealed"));
    cli.ok(&["operator", "unseal", &shares[1]]);
    cli.ok(&["operator", "unseal", &shares[0]]);
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password)
            .status
            .success()
    );
    cli.ok(&["project", "create", "p"]);
    assert_eq!(cli.json(&["operator", "seal"])["sealed"], true);
    assert!(cli.fails(&["project", "list"]).contains("sealed"));
    // A dev start on a production directory is refused.
    drop(srv);
    let o = server_cmd(&data)
        .args(["--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("initialised for production"));
}

#[test]
fn bad_server_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("coffer.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let o = Command::new(BIN)
        .arg("server")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"));
    std::fs::write(&cfg, "[session]\nttl = \"5s\"\n").unwrap();
    let o = Command::new(BIN)
        .arg("server")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("session.ttl"));
    let o = Command::new(BIN)
        .args(["server", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn audit_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    let o = cli.run_stdin(
        &["login", "-u", "admin", "--password-stdin"],
        srv.password.as_deref().unwrap(),
    );
    assert!(o.status.success());
    cli.ok(&["project", "create", "web"]);
    cli.ok(&[
        "audit",
        "log",
        "--action",
        "release.approved",
        "--detail",
        r#"{"ticket":"CHG-7"}"#,
    ]);
    assert!(
        cli.fails(&["audit", "log", "--action", "x", "--detail", "not json"])
            .contains("--detail must be JSON")
    );
    let events = cli.json(&["audit", "list", "--all", "--limit", "2"]);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"project.create") && actions.contains(&"customer.release.approved"),
        "{actions:?}"
    );
    let filtered = cli.json(&["audit", "list", "--action", "project.create"]);
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    assert!(cli.ok(&["audit", "list"]).contains("project.create"));
    cli.ok(&["audit", "checkpoint"]);
    assert!(cli.ok(&["audit", "verify"]).starts_with("OK:"));

    let file = tmp.path().join("audit.ndjson");
    cli.ok(&["audit", "export", "-o", file.to_str().unwrap()]);
    let v = cli.json(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "{v}");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("project.create", "project.delete")).unwrap();
    let o = cli.run(&["audit", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a tampered export fails verification"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("TAMPERED"));
}

#[tokio::test]
async fn migrate_command_and_a_server_that_only_verifies_the_schema() {
    let Some(url) = coffer_testkit::pg_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = |migrate: &str| {
        Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("COFFER_DATABASE_URL", &url)
            .env("COFFER_STORAGE__MIGRATE", migrate)
            .env("COFFER_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A runtime node does not touch the schema: on an empty database it refuses to start.
    let out = server("false").wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("coffer migrate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same settings from a configuration file (on SQLite it would have started).
    let config = tmp.path().join("coffer.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\n[storage]\nurl = \"{url}\"\nmigrate = false\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(tmp.path().join("data-from-file"))
        .arg("--config")
        .arg(&config)
        .env_remove("COFFER_DATABASE_URL")
        .env_remove("COFFER_STORAGE__MIGRATE")
        .env("COFFER_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("coffer migrate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let o = Command::new(BIN)
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Migrations applied"));
    }
    let bad = Command::new(BIN)
        .args(["migrate", "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // Now it starts.
    let mut child = server("false");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("listening on https://127.0.0.1:"), "{first}");
    let _ = child.kill();
    let _ = child.wait();
    coffer_testkit::drop_pg_database(&url).await;
}

#[test]
fn identity_commands_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    let pw = format!("{}\n", srv.password.as_deref().unwrap());
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &pw)
            .status
            .success()
    );

    // Invite (no mail server: the token is printed), accept without a login, log in.
    let out = cli.ok(&["org", "invite", "bob@example.com", "--role", "contributor"]);
    let token: String = out[out.find("cfi_").unwrap()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let bob = Cli {
        cfg: tmp.path().join("cfg-bob"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    let o = bob.run_stdin(
        &["org", "accept", &token, "-u", "bob", "--password-stdin"],
        "bob's long password\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bob.run_stdin(
        &["login", "-u", "BOB@example.com", "--password-stdin"],
        "bob's long password\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(bob.json(&["whoami"])["role"], "contributor");
    assert!(bob.fails(&["org", "members"]).contains("forbidden"));

    let members = cli.json(&["org", "members"]);
    assert_eq!(members.as_array().unwrap().len(), 2);
    cli.ok(&["org", "set-role", "bob", "viewer"]);
    assert_eq!(bob.json(&["whoami"])["role"], "viewer");
    assert!(
        cli.fails(&["org", "set-role", "admin", "viewer"])
            .contains("at least one Owner")
    );

    // A second organisation and switching between them.
    cli.ok(&["org", "create", "team-two"]);
    let orgs = cli.json(&["org", "list"]);
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    cli.ok(&["org", "switch", "team-two"]);
    assert_eq!(cli.json(&["whoami"])["org"], "team-two");

    // API keys: printed once, usable as COFFER_TOKEN, revocable.
    let key = cli.ok(&[
        "apikey",
        "create",
        "deploy",
        "--role",
        "viewer",
        "--expires-in",
        "1d",
    ]);
    let key = key.trim().to_owned();
    assert!(key.starts_with("cfr_"));
    let who = cli
        .cmd(&["--json", "whoami"])
        .env("COFFER_TOKEN", &key)
        .output()
        .unwrap();
    assert!(who.status.success());
    let who: Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(
        (who["role"].as_str(), who["org"].as_str()),
        (Some("viewer"), Some("team-two"))
    );
    let keys = cli.json(&["apikey", "list"]);
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    assert!(!keys.to_string().contains(&key));
    cli.ok(&["apikey", "revoke", &id]);
    let after = cli
        .cmd(&["whoami"])
        .env("COFFER_TOKEN", &key)
        .output()
        .unwrap();
    assert!(!after.status.success());

    // Sessions: listed without tokens, one is current.
    let sessions = cli.json(&["session", "list"]);
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["current"] == true)
    );
    assert!(!sessions.to_string().contains("cfs_"));
    cli.ok(&["logout"]);
}

/// `coffer key rotate`: the rewrap survives `kill -9` of the server in the middle and
/// finishes after a restart, and every value still reads; `--wait` draws the progress.
#[test]
fn key_rotation_survives_kill_9_mid_rewrap() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("coffer.toml");
    // Small, slow batches keep the job running long enough to be killed in the middle.
    std::fs::write(
        &config,
        "[keys]\nrewrap_batch = 3\nrewrap_pause = \"100ms\"\ncheck_interval = \"200ms\"\ncache_ttl = \"200ms\"\n",
    )
    .unwrap();
    let cfg_arg = config.to_str().unwrap();
    let srv = start_server(&data, true, &["--config", cfg_arg]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    let o = cli.run_stdin(
        &["login", "-u", "admin", "--password-stdin"],
        srv.password.as_deref().unwrap(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cli.ok(&["project", "create", "app"]);
    const N: usize = 45;
    let names: Vec<usize> = (0..N).collect();
    std::thread::scope(|s| {
        for chunk in names.chunks(9) {
            let cli = &cli;
            s.spawn(move || {
                for i in chunk {
                    cli.ok(&[
                        "param",
                        "set",
                        &format!("K{i:02}"),
                        &format!("v{i}"),
                        "-p",
                        "app",
                        "--secret",
                    ]);
                }
            });
        }
    });
    let st = cli.json(&["key", "status"]);
    assert_eq!(st["active_term"], 1);
    assert_eq!(st["terms"][0]["values"], N as u64);

    let r = cli.json(&["key", "rotate"]);
    assert_eq!(r["active_term"], 2);
    // Wait until some batches, but not all, are committed; then kill -9.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let done = loop {
        let d = cli.json(&["key", "status"])["rotation"]["done"]
            .as_u64()
            .unwrap();
        if d > 0 {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rewrap job never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(srv); // SIGKILL
    assert!(done < N as u64, "killed too late to prove anything: {done}");

    let srv = start_server_with(&data, true, &["--config", cfg_arg], false);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    let after = cli.json(&["key", "status"])["rotation"]["done"]
        .as_u64()
        .unwrap();
    assert!(
        after >= done,
        "progress survives the crash: {after} < {done}"
    );
    // The interrupted job itself carries on to the end: no new rotation is asked for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let st = loop {
        let st = cli.json(&["key", "status"]);
        if !st["rotation"]["finished_at"].is_null() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed rewrap never finished: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(st["rotation"]["target_term"], 2, "the same job: {st}");
    assert_eq!(st["rotation"]["done"], N as u64);
    let under: Vec<(u64, u64)> = st["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["term"].as_u64().unwrap(), t["values"].as_u64().unwrap()))
        .filter(|t| t.1 > 0)
        .collect();
    assert_eq!(under, vec![(2, N as u64)], "every value under term 2: {st}");
    for i in 0..N {
        assert_eq!(
            cli.ok(&["param", "get", &format!("K{i:02}"), "-p", "app"])
                .trim(),
            format!("v{i}")
        );
    }

    // And `--wait` follows a rotation to its end.
    let out = cli.ok(&["key", "rotate", "--wait"]);
    assert!(out.contains("Every stored value is under term 3"), "{out}");
    let st = cli.json(&["key", "status"]);
    assert_eq!(st["rotation"]["done"], N as u64);
    assert_eq!(st["rotation"]["target_term"], 3);
    let active: Vec<&Value> = st["terms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["values"].as_u64().unwrap() > 0)
        .collect();
    assert_eq!(active.len(), 1, "all values under one term: {st}");
    assert_eq!(active[0]["term"], 3);
    for i in 0..N {
        assert_eq!(
            cli.ok(&["param", "get", &format!("K{i:02}"), "-p", "app"])
                .trim(),
            format!("v{i}")
        );
    }
}

/// `coffer operator rekey` replaces the root key: new shares unseal, old ones no longer;
/// `coffer org delete` removes an organisation for good.
#[test]
fn rekey_and_organisation_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start_server(&data, false, &[]);
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    // The server process runs without core dumps.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let init = cli.json(&["operator", "init", "--shares", "3", "--threshold", "2"]);
    let old: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    cli.ok(&["operator", "unseal", &old[0]]);
    cli.ok(&["operator", "unseal", &old[1]]);
    let pw = init["bootstrap"]["password"].as_str().unwrap().to_owned();
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &pw)
            .status
            .success()
    );
    cli.ok(&["project", "create", "p"]);
    cli.ok(&["param", "set", "K", "v", "-p", "p", "--secret"]);

    let bad = cli.run_stdin(
        &[
            "operator",
            "rekey",
            "--shares",
            "4",
            "--threshold",
            "3",
            "--shares-stdin",
        ],
        &format!("{}\n", old[0]),
    );
    assert!(!bad.status.success(), "one share is not a quorum");
    let o = cli.run_stdin(
        &[
            "--json",
            "operator",
            "rekey",
            "--shares",
            "4",
            "--threshold",
            "3",
            "--shares-stdin",
        ],
        &format!("{}\n{}\n", old[2], old[0]),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new: Vec<String> = serde_json::from_slice::<Value>(&o.stdout).unwrap()["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new.len(), 4);
    assert_eq!(cli.ok(&["param", "get", "K", "-p", "p"]).trim(), "v");

    assert_eq!(cli.json(&["operator", "seal"])["sealed"], true);
    cli.ok(&["operator", "unseal", &old[0]]);
    cli.ok(&["operator", "unseal", &old[1]]);
    assert!(
        cli.fails(&["operator", "unseal", &old[2]])
            .contains("do not reconstruct the root key"),
        "old shares are dead"
    );
    for s in &new[1..4] {
        cli.ok(&["operator", "unseal", s]);
    }
    assert_eq!(cli.json(&["operator", "status"])["sealed"], false);
    assert_eq!(cli.ok(&["param", "get", "K", "-p", "p"]).trim(), "v");

    cli.ok(&["org", "create", "acme"]);
    cli.ok(&["org", "switch", "acme"]);
    cli.ok(&["project", "create", "doomed"]);
    assert!(
        cli.fails(&["org", "delete", "--confirm", "default"])
            .contains("name")
    );
    let out = cli.ok(&["org", "delete", "--confirm", "acme"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &pw)
            .status
            .success()
    );
    let orgs = cli.json(&["org", "list"]);
    assert_eq!(orgs.as_array().unwrap().len(), 1, "{orgs}");
    assert_eq!(cli.ok(&["param", "get", "K", "-p", "p"]).trim(), "v");
}

/// A production server on an AWS KMS seal (moto_server): `operator init` hands out recovery
/// shares and the server unseals itself, also after a restart; an Owner attaches the
/// organisation's own KMS key from the CLI.
#[tokio::test]
async fn kms_seal_and_own_key_from_the_cli() {
    let moto = coffer_testkit::MotoKms::start();
    let seal_key = moto.create_key().await;
    let org_key = moto.create_key().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("coffer.toml");
    std::fs::write(
        &config,
        format!(
            "[seal]\ntype = \"awskms\"\nkey = \"{seal_key}\"\n\n[kms]\nregion = \"us-east-1\"\nendpoint = \"{}\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
        ("AWS_SECRET_ACCESS_KEY", "test-secret"),
    ];
    let cfg_arg = config.to_str().unwrap();
    let start = || start_server_env(&data, false, &["--config", cfg_arg], false, &env);
    let password = {
        let srv = start();
        let cli = Cli {
            cfg: tmp.path().join("cfg"),
            addr: srv.addr.clone(),
            ca: srv.ca.clone(),
        };
        let init = cli.ok(&["operator", "init", "--shares", "3", "--threshold", "2"]);
        assert!(init.contains("Recovery share 1:"), "{init}");
        assert!(init.contains("The server is unsealed"), "{init}");
        let st = cli.json(&["operator", "status"]);
        assert_eq!(
            (st["sealed"].as_bool(), st["seal_type"].as_str()),
            (Some(false), Some("awskms"))
        );
        let password = init
            .lines()
            .find_map(|l| l.trim().strip_prefix("password:"))
            .unwrap()
            .trim()
            .to_owned();
        assert!(
            cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password)
                .status
                .success()
        );
        cli.ok(&["project", "create", "p"]);
        cli.ok(&["param", "set", "A", "alpha", "-p", "p"]);
        let out = cli.ok(&[
            "key",
            "attach-external",
            &format!("awskms:{org_key}"),
            "--wait",
        ]);
        // Recorded by its ARN, which ends with the key id.
        assert!(out.contains("wrapped by awskms:arn:aws:kms:"), "{out}");
        assert!(out.contains(&format!("{org_key})")), "{out}");
        let st = cli.json(&["key", "status"]);
        let recorded = st["external_key"].as_str().unwrap();
        assert!(
            recorded.starts_with("awskms:arn:") && recorded.ends_with(org_key.as_str()),
            "{st}"
        );
        password
    };
    // A restart unseals through KMS; no operator is needed.
    let srv = start();
    let cli = Cli {
        cfg: tmp.path().join("cfg"),
        addr: srv.addr.clone(),
        ca: srv.ca.clone(),
    };
    assert_eq!(cli.json(&["operator", "status"])["sealed"], false);
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password)
            .status
            .success()
    );
    assert_eq!(cli.ok(&["param", "get", "A", "-p", "p"]), "alpha\n");
}

/// Background jobs run on one node at a time, the holder of a PostgreSQL advisory lock. A
/// node killed without a chance to say goodbye (SIGKILL) loses the lock with its database
/// sessions, and another node takes the jobs over: here, the audit checkpoints.
#[tokio::test]
async fn a_killed_job_leader_hands_its_jobs_to_another_node() {
    use sqlx::Connection;
    // As in production: the runtime role, on a database its owner migrated.
    let Some(url) = coffer_testkit::pg_runtime_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("COFFER_DATABASE_URL", url.as_str()),
        ("COFFER_STORAGE__MIGRATE", "false"),
        ("COFFER_AUDIT__CHECKPOINT_INTERVAL", "1s"),
    ];
    // As the administrative role: row-level security hides every organisation's rows from a
    // session that has not set one. The nil organisation is the system chain.
    let mut admin = sqlx::PgConnection::connect(&coffer_testkit::pg_admin_url_for(&url))
        .await
        .unwrap();
    let head_sql = "SELECT coalesce(max(seq), 0) FROM audit_heads \
                    WHERE org_id <> '\\x00000000000000000000000000000000'";
    let checkpoint_sql = "SELECT coalesce(max(seq), 0) FROM audit_checkpoints \
                          WHERE org_id <> '\\x00000000000000000000000000000000'";
    async fn scalar(conn: &mut sqlx::PgConnection, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
    }
    async fn wait_for_checkpoint_past(conn: &mut sqlx::PgConnection, sql: &'static str, seq: i64) {
        for _ in 0..100 {
            if scalar(conn, sql).await > seq {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!("no checkpoint past seq {seq} within 20 s");
    }

    // Node A starts alone, so it is the leader once it has checkpointed a login.
    let mut a = start_server_env(&tmp.path().join("a"), true, &[], true, &env);
    let password = a.password.clone().unwrap();
    let login = |srv: &ServerProc| {
        let cli = Cli {
            cfg: tmp.path().join("cfg"),
            addr: srv.addr.clone(),
            ca: srv.ca.clone(),
        };
        let o = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    login(&a);
    wait_for_checkpoint_past(&mut admin, checkpoint_sql, 0).await;
    // Node B shares the database and the dev root key.
    std::fs::create_dir_all(tmp.path().join("b")).unwrap();
    std::fs::copy(
        tmp.path().join("a/dev-root.key"),
        tmp.path().join("b/dev-root.key"),
    )
    .unwrap();
    let b = start_server_env(&tmp.path().join("b"), true, &[], false, &env);

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // A login on B appends to the organisation's chain after A is gone: only a new leader
    // can checkpoint that.
    let head = scalar(&mut admin, head_sql).await;
    login(&b);
    assert!(
        scalar(&mut admin, head_sql).await > head,
        "the login was audited"
    );
    wait_for_checkpoint_past(&mut admin, checkpoint_sql, head).await;
    drop(b);
    drop(admin);
    coffer_testkit::drop_pg_database(&url).await;
}
