//! Accounts, organisations, invitations, MFA, sessions and API keys from the CLI.

use crate::*;

#[test]
fn identity_commands_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
    let bob = Cli::of(&srv, tmp.path().join("cfg-bob"));
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
