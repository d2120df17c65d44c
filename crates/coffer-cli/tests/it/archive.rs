//! `coffer audit archive | prune | verify --file | export --segments | status`, as an
//! operator runs them on the server's host, against the server's database (SQLite, or
//! PostgreSQL as the schema owner when the test backend says so).

use std::time::Duration;

use crate::*;

/// On PostgreSQL, the URL of the schema owner of the server's database (the server runs as
/// its runtime role, `<db>_app`).
fn owner_url(data: &Path) -> Option<String> {
    let url = database_for(data)?;
    let (head, name) = url.rsplit_once('/')?;
    let owner = head.replacen(&format!("://{name}_app@"), &format!("://{name}@"), 1);
    Some(format!("{owner}/{name}"))
}

/// A dev server on `data` and a CLI signed in to it as its bootstrap Owner.
fn signed_in(data: &Path, cfg: PathBuf, env: &[(&str, &str)]) -> (ServerProc, Cli) {
    let srv = start_server_env(data, true, &[], true, env);
    let cli = Cli::of(&srv, cfg);
    let password = srv.password.clone().unwrap();
    let o = cli.run_stdin(&["login", "-u", "admin", "--password-stdin"], &password);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (srv, cli)
}

/// The operator's command line: the server's data directory, and on PostgreSQL the owner's
/// URL (the server itself runs as the runtime role, which may not prune).
fn operator_cmd(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).args(["--dev", "--data-dir"]).arg(data);
    if let Some(url) = owner_url(data) {
        cmd.env("COFFER_DATABASE_URL", url)
            .env("COFFER_STORAGE__MIGRATE", "false");
    }
    cmd.env("COFFER_LOG", "warn");
    cmd
}

fn operator(data: &Path, args: &[&str]) -> Output {
    operator_cmd(data, args).output().unwrap()
}

fn operator_ok(data: &Path, args: &[&str]) -> String {
    let o = operator(data, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `coffer ARGS` with no server or database (offline verification).
fn offline(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The event lines of an export or segment file, by sequence number.
fn event_lines(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["type"] == "event").then(|| (v["seq"].as_u64().unwrap(), l.to_owned()))
        })
        .collect()
}

#[test]
fn archive_prune_verify_and_export_from_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (_srv, cli) = signed_in(&data, tmp.path().join("cfg"), &[]);
    cli.ok(&["project", "create", "web"]);
    cli.run_stdin(
        &["param", "set", "TOKEN", "-p", "web", "--secret"],
        "s3cret",
    );
    for _ in 0..3 {
        cli.ok(&["param", "get", "TOKEN", "-p", "web"]);
    }
    let before = tmp.path().join("before.ndjson");
    cli.ok(&["audit", "export", "-o", before.to_str().unwrap()]);
    let org = serde_json::from_str::<Value>(
        std::fs::read_to_string(&before)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap()["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The server signs what it wrote within a second; the cut comes after.
    std::thread::sleep(Duration::from_millis(1500));
    let cut = now_rfc3339();

    let seg = tmp.path().join("seg1.ndjson");
    let out = operator_ok(
        &data,
        &[
            "audit",
            "archive",
            "--before",
            &cut,
            "--out",
            seg.to_str().unwrap(),
            "--prune",
        ],
    );
    assert!(out.contains("Archived") && out.contains("Pruned"), "{out}");
    assert!(!tmp.path().join(".seg1.ndjson.tmp").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&seg).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The live chain verifies from its anchor; the segment and a live export verify as
    // one series offline.
    assert!(cli.ok(&["audit", "verify"]).starts_with("OK:"));
    let after = tmp.path().join("after.ndjson");
    cli.ok(&["audit", "export", "-o", after.to_str().unwrap()]);
    let live = event_lines(&after);
    let archived = event_lines(&before);
    assert!(
        live.first().unwrap().0 > 1,
        "the archived events left the database"
    );
    let v = cli.ok(&[
        "audit",
        "verify",
        "--file",
        seg.to_str().unwrap(),
        "--file",
        after.to_str().unwrap(),
    ]);
    assert!(v.starts_with("OK: 1 segments"), "{v}");

    // An export of the archived range from the segment equals the export taken before.
    let from_seg = tmp.path().join("from-seg.ndjson");
    cli.ok(&[
        "audit",
        "export",
        "--segments",
        seg.to_str().unwrap(),
        "--org",
        &org,
        "-o",
        from_seg.to_str().unwrap(),
    ]);
    let segment_events = event_lines(&from_seg);
    let anchor = live.first().unwrap().0 - 1;
    assert_eq!(segment_events.len() as u64, anchor);
    assert_eq!(
        segment_events[..archived.len()],
        archived[..],
        "the segment holds the events exported before the prune, byte for byte"
    );

    // Status.
    let st: Value =
        serde_json::from_str(&operator_ok(&data, &["--json", "audit", "status"])).unwrap();
    assert_eq!(st["segments"], 1, "{st}");
    assert_eq!(st["chains_pending_prune"], 0, "{st}");
    assert!(st["live_events"].as_u64().unwrap() > 0, "{st}");

    // An edited segment is named, and pruning with it is refused.
    let edited = tmp.path().join("edited.ndjson");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&edited, text.replacen("param.get", "param.got", 1)).unwrap();
    let o = cli.run(&["audit", "verify", "--file", edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("TAMPERED: edited.ndjson"), "{said}");
    let o = operator(
        &data,
        &["audit", "prune", "--file", edited.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"));
    // Nothing new to archive before the same cut.
    let again = tmp.path().join("again.ndjson");
    let out = operator_ok(
        &data,
        &[
            "audit",
            "archive",
            "--before",
            &cut,
            "--out",
            again.to_str().unwrap(),
        ],
    );
    assert!(out.contains("Nothing to archive"), "{out}");
    assert!(!again.exists());
}

/// `kill -9` while an archive is being written, at different moments: the final path holds
/// nothing or a whole segment that verifies, no event leaves the database, and the next
/// run finishes the job.
#[test]
fn an_archive_killed_midway_leaves_no_partial_segment_and_prunes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (srv, cli) = signed_in(&data, tmp.path().join("cfg"), &[]);
    cli.ok(&["project", "create", "app"]);
    cli.run_stdin(&["param", "set", "K", "-p", "app"], "v");
    // Enough events that writing them takes a while.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pem = std::fs::read(&srv.ca).unwrap();
        let client = coffer_client::Client::new(&srv.addr, Some(&pem)).unwrap();
        let token = client
            .login("admin", srv.password.as_deref().unwrap())
            .await
            .unwrap()
            .token
            .unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap();
        let url = format!("{}/v1/projects/app/envs/default/params/K", srv.addr);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (http, url, token) = (http.clone(), url.clone(), token.clone());
                tokio::spawn(async move {
                    for _ in 0..400 {
                        assert!(
                            http.get(&url)
                                .bearer_auth(&token)
                                .send()
                                .await
                                .unwrap()
                                .status()
                                .is_success()
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let export = tmp.path().join("export.ndjson");
    cli.ok(&["audit", "export", "-o", export.to_str().unwrap()]);
    let events = event_lines(&export).len();
    assert!(events > 3000, "{events}");
    // The server signs its chains' heads within a second; nothing is written after that.
    std::thread::sleep(Duration::from_millis(1500));
    let cut = now_rfc3339();
    drop(srv);

    let seg = tmp.path().join("seg.ndjson");
    let mut killed_midway = 0;
    for round in 0..5u64 {
        let mut child = operator_cmd(
            &data,
            &[
                "audit",
                "archive",
                "--before",
                &cut,
                "--out",
                seg.to_str().unwrap(),
                "--prune",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(40 + 80 * round));
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(status.success(), "round {round}: {err}");
            break;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        killed_midway += 1;
        // Nothing at the final path, or a whole segment that verifies.
        if seg.exists() {
            let v = offline(&["audit", "verify", "--file", seg.to_str().unwrap()]);
            assert!(v.starts_with("OK:"), "round {round}: {v}");
        }
        let st: Value =
            serde_json::from_str(&operator_ok(&data, &["--json", "audit", "status"])).unwrap();
        if st["segments"] == 0 {
            // Not recorded: nothing may have been pruned.
            assert!(
                st["live_events"].as_u64().unwrap() >= events as u64,
                "round {round}: events left the database without a recorded segment: {st}"
            );
        }
    }
    assert!(
        killed_midway > 0,
        "the archive always finished before the kill"
    );
    // The next run completes (or finds the job done), and leaves no temporary file.
    let st: Value =
        serde_json::from_str(&operator_ok(&data, &["--json", "audit", "status"])).unwrap();
    if st["segments"] == 0 {
        let out = operator_ok(
            &data,
            &[
                "audit",
                "archive",
                "--before",
                &cut,
                "--out",
                seg.to_str().unwrap(),
                "--prune",
            ],
        );
        assert!(out.contains("Archived"), "{out} {st}");
    } else {
        operator_ok(&data, &["audit", "prune", "--file", seg.to_str().unwrap()]);
    }
    assert!(!tmp.path().join(".seg.ndjson.tmp").exists());
    let v = offline(&["audit", "verify", "--file", seg.to_str().unwrap()]);
    assert!(v.starts_with("OK:"), "{v}");
    let st: Value =
        serde_json::from_str(&operator_ok(&data, &["--json", "audit", "status"])).unwrap();
    assert_eq!(
        (st["segments"].as_u64(), st["chains_pending_prune"].as_u64()),
        (Some(1), Some(0)),
        "{st}"
    );
    // The live chain still verifies, on a server started again.
    let srv = start_server_with(&data, true, &[], false);
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
    assert!(cli.ok(&["audit", "verify"]).starts_with("OK:"));
}

/// A key pair made by the standard tool (`age-keygen`): the identity file and its public
/// key.
fn age_keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("key.txt");
    let o = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (Debian package age; scripts/test.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    (key, String::from_utf8(o.stdout).unwrap().trim().to_owned())
}

/// `--recipient`: the segment is an age file that the standard `age` decrypts to the
/// plaintext segment; verify and export need `--identity`; prune does not (it checks the
/// file is the one recorded).
#[test]
fn encrypted_segments_work_with_the_standard_age_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (key, public) = age_keygen(tmp.path());
    let key_s = key.to_str().unwrap();
    let (_srv, cli) = signed_in(&data, tmp.path().join("cfg"), &[]);
    cli.ok(&["project", "create", "web"]);
    std::thread::sleep(Duration::from_millis(1500));
    let cut = now_rfc3339();
    let seg = tmp.path().join("seg1.ndjson.age");
    let seg_s = seg.to_str().unwrap();
    let out = operator_ok(
        &data,
        &[
            "audit",
            "archive",
            "--before",
            &cut,
            "--out",
            seg_s,
            "--recipient",
            &public,
        ],
    );
    assert!(out.contains("Archived"), "{out}");
    let o = Command::new("age")
        .args(["-d", "-i", key_s, seg_s])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = String::from_utf8(o.stdout).unwrap();
    assert!(plain.starts_with("{\"type\":\"segment\""), "{plain:.80}");
    assert!(!String::from_utf8_lossy(&std::fs::read(&seg).unwrap()).contains("\"segment\""));

    let o = Command::new(BIN)
        .args(["audit", "verify", "--file", seg_s])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--identity"), "{e}");
    let v = offline(&["audit", "verify", "--file", seg_s, "--identity", key_s]);
    assert!(v.starts_with("OK: 1 segments"), "{v}");
    let org = cli.json(&["org", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exported = offline(&[
        "audit",
        "export",
        "--segments",
        seg_s,
        "--org",
        &org,
        "--identity",
        key_s,
    ]);
    assert!(exported.contains("project.create"), "{exported:.200}");

    let out = operator_ok(&data, &["audit", "prune", "--file", seg_s]);
    assert!(out.starts_with("Pruned"), "{out}");
    assert!(cli.ok(&["audit", "verify"]).starts_with("OK:"));
}

/// The scheduled form: with `audit.archive.after` and `audit.retain_live` set, the leader
/// writes segments into `audit.archive.dir`, encrypted to `backup.recipients`, and prunes
/// them once old enough (by their recorded digests: the server holds no identity); the
/// segments verify with the identity as one series with a live export, and the live chain
/// verifies.
#[test]
fn the_leader_archives_and_prunes_on_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = tmp.path().join("archive");
    let dir_s = dir.to_str().unwrap().to_owned();
    let (key, public) = age_keygen(tmp.path());
    let mut env = vec![
        ("COFFER_AUDIT__ARCHIVE__AFTER", "1s".to_owned()),
        ("COFFER_AUDIT__RETAIN_LIVE", "2s".to_owned()),
        ("COFFER_AUDIT__ARCHIVE__DIR", dir_s),
        ("COFFER_AUDIT__CHECKPOINT_INTERVAL", "1s".to_owned()),
        ("COFFER_BACKUP__RECIPIENTS", public),
    ];
    if let Some(url) = owner_url(&data) {
        // The server runs as the runtime role; the archive job as the owner.
        env.push(("COFFER_AUDIT__ARCHIVE__DATABASE_URL", url));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_srv, cli) = signed_in(&data, tmp.path().join("cfg"), &env);
    cli.ok(&["project", "create", "web"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut st: Value;
    loop {
        cli.ok(&["project", "list"]);
        st = serde_json::from_str(&operator_ok(&data, &["--json", "audit", "status"])).unwrap();
        let pruned =
            st["segments"].as_u64().unwrap() >= 2 && st["pruned_events"].as_u64().unwrap() > 0;
        if pruned || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(st["segments"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["archive_failures"], 0, "{st}");
    // Pruned: the organisation's live export starts after its anchor.
    let live = tmp.path().join("live.ndjson");
    cli.ok(&["audit", "export", "-o", live.to_str().unwrap()]);
    assert!(event_lines(&live).first().unwrap().0 > 1);
    assert!(cli.ok(&["audit", "verify"]).starts_with("OK:"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_owned())
        .filter(|p| p.ends_with(".ndjson.age"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["audit", "verify", "--identity", key.to_str().unwrap()];
    for f in &files {
        args.extend(["--file", f.as_str()]);
    }
    let v = offline(&args);
    assert!(v.starts_with("OK:"), "{v}");
}
