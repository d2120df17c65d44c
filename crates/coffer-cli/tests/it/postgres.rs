//! Servers on PostgreSQL: `coffer migrate`, verify-only start, and job leadership across
//! nodes.

use crate::*;

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
        let cli = Cli::of(srv, tmp.path().join("cfg"));
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
