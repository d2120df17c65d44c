//! `coffer key`: rotation and its resumable rewrap.

use crate::*;

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
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
    let cli = Cli::of(&srv, tmp.path().join("cfg"));
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
