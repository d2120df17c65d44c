//! `coffer audit`: list, export and verify.

use crate::*;

#[test]
fn audit_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_server(&tmp.path().join("data"), true, &[]);
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
