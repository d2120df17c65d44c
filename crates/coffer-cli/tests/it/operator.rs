//! Operating a production server: init, unseal, restart, configuration checks, rekey,
//! organisation deletion, and a KMS seal.

use crate::*;

#[test]
fn production_server_init_unseal_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (shares, password) = {
        let srv = start_server(&data, false, &[]);
        let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
    // An unknown read durability is refused, from the file and from the environment.
    std::fs::write(&cfg, "[audit]\nread_sync = \"sometimes\"\n").unwrap();
    let o = Command::new(BIN)
        .arg("server")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("audit.read_sync"));
    let o = Command::new(BIN)
        .args(["server", "--dev", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("COFFER_AUDIT__READ_SYNC", "never")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("audit.read_sync"));
    let o = Command::new(BIN)
        .args(["server", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// `coffer operator rekey` replaces the root key: new shares unseal, old ones no longer;
/// `coffer org delete` removes an organisation for good.
#[test]
fn rekey_and_organisation_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start_server(&data, false, &[]);
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
        let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
    assert_eq!(cli.json(&["operator", "status"])["sealed"], false);
    assert!(
        cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password)
            .status
            .success()
    );
    assert_eq!(cli.ok(&["param", "get", "A", "-p", "p"]), "alpha");
}
