//! What a newcomer tripped on (issue 19), each as it was reported: values read from standard
//! input, refused secrets in `run`, `--json` everywhere, prompts without a terminal, members
//! by e-mail, addresses without a scheme, empty diffs, audit paging.

use crate::*;

/// A dev server and a CLI logged in as its bootstrap Owner, with project `web`.
fn owner(tmp: &Path) -> (ServerProc, Cli) {
    let srv = start_server(&tmp.join("data"), true, &[]);
    let cli = Cli::of(&srv, tmp.join("cfg"));
    let password = srv.password.clone().unwrap();
    let o = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cli.ok(&["project", "create", "web"]);
    (srv, cli)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn values_from_standard_input_lose_one_trailing_newline_and_files_keep_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, cli) = owner(tmp.path());
    let set = |name: &str, stdin: &str, extra: &[&str]| {
        let mut args = vec!["param", "set", name, "-p", "web", "--secret"];
        args.extend_from_slice(extra);
        let o = cli.run_stdin(&args, stdin);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // `echo sk_live_123 > api-key.txt; coffer param set API_KEY --secret < api-key.txt`
    set("API_KEY", "sk_live_123\n", &[]);
    set("CRLF", "from-windows\r\n", &[]);
    set("TWO", "kept\n\n", &[]);
    set("RAW", "exact\n", &["--raw"]);
    let get = |name: &str| cli.ok(&["param", "get", name, "-p", "web"]);
    // Into a pipe, `get` prints the value byte for byte, with no newline of its own.
    assert_eq!(get("API_KEY"), "sk_live_123");
    assert_eq!(get("CRLF"), "from-windows");
    assert_eq!(get("TWO"), "kept\n");
    assert_eq!(get("RAW"), "exact\n");
    // `@file` stores the file as it is.
    let pem = tmp.path().join("cert.pem");
    std::fs::write(&pem, "-----BEGIN X-----\nAAAA\n-----END X-----\n").unwrap();
    cli.ok(&[
        "param",
        "set",
        "CERT",
        &format!("@{}", pem.display()),
        "-p",
        "web",
    ]);
    assert_eq!(get("CERT"), "-----BEGIN X-----\nAAAA\n-----END X-----\n");
    // `run` and exports carry the value as stored.
    let out = cli.ok(&["run", "-p", "web", "--", "printenv", "API_KEY"]);
    assert_eq!(out, "sk_live_123\n");
    let env = cli.ok(&["export", "-p", "web"]);
    assert!(env.contains("API_KEY=\"sk_live_123\"\n"), "{env}");
    // History names who made each version.
    let history = cli.ok(&["param", "history", "API_KEY", "-p", "web"]);
    assert!(history.contains("admin"), "{history}");
    // A table shows the first line of a multi-line value.
    let table = cli.ok(&["param", "list", "-p", "web", "--reveal"]);
    assert!(table.contains("-----BEGIN X----- … (+2 lines)"), "{table}");
}

#[test]
fn run_names_the_secrets_a_viewer_key_cannot_read_and_a_read_only_contributor_key_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, cli) = owner(tmp.path());
    for (name, value) in [("DB_PASSWORD", "pw"), ("API_KEY", "k")] {
        cli.ok(&["param", "set", name, value, "-p", "web", "--secret"]);
    }
    cli.ok(&["param", "set", "LOG_LEVEL", "info", "-p", "web"]);
    let key = |role: &str| {
        let v = cli.json(&[
            "apikey",
            "create",
            role,
            "--role",
            role,
            "--read-only",
            "--expires-in",
            "1d",
        ]);
        v["key"].as_str().unwrap().to_owned()
    };
    let viewer = key("viewer");
    let o = cli
        .cmd(&["run", "-p", "web", "--", "true"])
        .env("COFFER_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("2 secrets")
            && e.contains("API_KEY, DB_PASSWORD")
            && e.contains("--role contributor --read-only"),
        "{e}"
    );
    // The README's example: a Contributor key that cannot write.
    let contributor = key("contributor");
    let o = cli
        .cmd(&["run", "-p", "web", "--", "printenv", "DB_PASSWORD"])
        .env("COFFER_TOKEN", &contributor)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "pw\n");
    let o = cli
        .cmd(&["param", "set", "X", "1", "-p", "web"])
        .env("COFFER_TOKEN", &contributor)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a read-only key wrote");
}

/// Every command that changes something answers one JSON document with --json.
#[test]
fn commands_that_change_things_answer_json_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, cli) = owner(tmp.path());
    let v = cli.json(&["org", "create", "team-two"]);
    assert!(v.is_object(), "{v}");
    assert_eq!(
        cli.json(&["org", "switch", "team-two"])["active"],
        "team-two"
    );
    assert_eq!(
        cli.json(&["org", "require-mfa", "off"])["require_mfa"],
        false
    );
    assert_eq!(
        cli.json(&["account", "email", "admin@example.com"])["email"],
        "admin@example.com"
    );
    let key = cli.json(&["apikey", "create", "ci", "--expires-in", "1d"]);
    let id = key["api_key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(cli.json(&["apikey", "revoke", &id])["revoked"], id.as_str());
    let sessions = cli.json(&["session", "list"]);
    assert!(
        sessions.as_array().is_some_and(|s| !s.is_empty()),
        "{sessions}"
    );
    let v = cli.json(&["logout"]);
    assert_eq!(v["logged_out"], true, "{v}");
}

#[test]
fn prompts_without_a_terminal_point_to_password_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, cli) = owner(tmp.path());
    let e = cli.fails(&["account", "password"]);
    assert!(e.contains("--password-stdin"), "{e}");
    let e = cli.fails(&["mfa", "disable", "--code", "123456"]);
    assert!(e.contains("--password-stdin"), "{e}");
    // With it, the password change works: current on the first line, new on the second.
    let new = "a brand new long password";
    let o = cli.run_stdin(
        &["account", "password", "--password-stdin"],
        &format!("{}\n{new}\n", srv.password.as_deref().unwrap()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli.run_stdin(
        &["login", "-u", "admin", "--password-stdin"],
        &format!("{new}\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn members_by_e_mail_addresses_without_a_scheme_and_empty_diffs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, cli) = owner(tmp.path());
    let inv = cli.json(&["org", "invite", "bob@example.com", "--role", "viewer"]);
    let token = inv["token"].as_str().unwrap().to_owned();
    let o = cli.run_stdin(
        &["org", "accept", &token, "--password-stdin"],
        "bob's long password\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        cli.json(&["org", "set-role", "bob@example.com", "contributor"])["role"],
        "contributor"
    );
    let members = cli.json(&["org", "members"]);
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["email"] == "bob@example.com" && m["role"] == "contributor"),
        "{members}"
    );
    cli.ok(&["org", "remove", "bob@example.com"]);

    // `COFFER_ADDR=127.0.0.1:8200` means https.
    let bare = cli.addr.trim_start_matches("https://").to_owned();
    let o = cli
        .cmd(&["whoami"])
        .env("COFFER_ADDR", &bare)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli
        .cmd(&["whoami"])
        .env("COFFER_ADDR", format!("http://{bare}"))
        .output()
        .unwrap();
    assert!(stderr(&o).contains("HTTPS only"), "{}", stderr(&o));

    cli.ok(&["env", "create", "staging", "-p", "web"]);
    let out = cli.ok(&[
        "param", "diff", "-p", "web", "--env", "default", "--env", "staging",
    ]);
    assert_eq!(out.trim(), "No differences between default and staging.");
}

#[test]
fn audit_list_rejects_unknown_outcomes_and_says_when_more_pages_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, cli) = owner(tmp.path());
    let e = cli.fails(&["audit", "list", "--outcome", "denyed"]);
    assert!(e.contains("success") && e.contains("denied"), "{e}");
    let o = cli.run(&["audit", "list", "--limit", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--cursor "), "{e}");
    let cursor = e
        .split("--cursor ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap()
        .to_owned();
    let first = cli.json(&["audit", "list", "--limit", "1"]);
    let next = cli.json(&["audit", "list", "--limit", "1", "--cursor", &cursor]);
    assert!(
        next[0]["seq"].as_u64().unwrap() > first[0]["seq"].as_u64().unwrap(),
        "{first} {next}"
    );
}

/// Shell completion and manual pages come from the command definitions.
#[test]
fn completion_scripts_and_manual_pages() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef coffer"),
        ("fish", "complete -c coffer"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = Command::new(BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains(marker), "{shell}: {text:.300}");
        assert!(text.contains("password-stdin"), "{shell}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    let o = Command::new(BIN)
        .args(["man", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(out.join("coffer-param-set.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "{page:.200}"
    );
    assert!(page.contains("trailing newline"), "{page:.2000}");
    assert!(out.join("coffer.1").exists());
}
