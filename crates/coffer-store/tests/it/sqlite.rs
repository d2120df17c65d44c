use coffer_store::sqlite::SqliteStore;

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("coffer.db"))
        .await
        .unwrap();
    (dir, store)
}

macro_rules! sqlite_suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, store) = fresh().await;
            crate::suite::$name(&store).await;
        }
    )*};
}

sqlite_suite!(
    seal_config_is_written_once,
    orgs_and_tenant_keys_roundtrip,
    users_are_unique_and_sessions_expire,
    projects_and_envs_are_scoped_by_org,
    param_versions_append_with_optimistic_concurrency,
    deletion_markers_hide_values,
    values_are_scoped_by_org,
    the_nearest_environment_defines_a_value,
    reads_see_every_committed_write,
    concurrent_writes_commit_independently,
    audit_chains_append_in_order_with_filters_and_checkpoints,
    login_attempts_are_claimed_atomically,
    the_last_owner_stays,
    totp_steps_and_recovery_codes_are_single_use,
    api_keys_invitations_identities_and_mail,
    key_rotation_rewrap_and_org_deletion,
    cached_reads_are_confirmed_when_audited,
    sign_out_and_account_changes,
);

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coffer.db");
    let s = SqliteStore::open(&path).await.unwrap();
    let org = crate::suite::org(&s, "keep").await;
    s.close().await;
    let s2 = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        coffer_store::TenantRepo::org(&s2, org)
            .await
            .unwrap()
            .unwrap()
            .name,
        "keep"
    );
}

/// A rewrap batch's multi-row UPDATE must seek each credential by id on the writer's
/// settings. The same statement on a connection with SQLite's defaults scans the whole
/// table (the control: it shows the plan check can fail).
#[tokio::test]
async fn rewrap_updates_seek_credentials_by_id() {
    use sqlx::{ConnectOptions, Row};
    let (dir, _store) = fresh().await;
    let base = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("coffer.db"));
    let sql = format!(
        "EXPLAIN QUERY PLAN {}",
        coffer_store::rewrap_update_sql(256, "BLOB", "INTEGER")
    );
    let plan = |mut conn: sqlx::SqliteConnection| {
        let sql = sql.clone();
        async move {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(2i64);
            for _ in 0..256 {
                q = q.bind(vec![1u8; 16]).bind(vec![2u8; 16]).bind(1i64);
            }
            q.fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(3))
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    let writer = plan(
        coffer_store::sqlite::writer_options(base.clone())
            .connect()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        writer.contains("SEARCH credentials USING INDEX") && !writer.contains("SCAN credentials"),
        "{writer}"
    );
    let default = plan(base.connect().await.unwrap()).await;
    assert!(default.contains("SCAN credentials"), "{default}");
}
