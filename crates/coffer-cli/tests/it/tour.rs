//! A newcomer's tour of a dev server: projects, environments, parameters, run, export.

use crate::*;

#[test]
fn dev_server_cli_tour() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli::of(&srv, tmp.path().join("cfg"));

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
        "tok-from-stdin"
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
    assert_eq!(cli.ok(&["param", "get", "LOG_LEVEL", "-p", "web"]), "info");

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
