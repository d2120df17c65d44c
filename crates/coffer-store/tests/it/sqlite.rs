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
    compact_events_read_back_exactly,
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

/// Two connections append to the chains: the audit writer's own and the write pool's (a
/// change committed with its event). The database refuses an event that does not continue
/// its chain's head, and the audit writer, whose cached head the other connection made
/// stale, reads it again and appends after the other's event.
#[tokio::test]
async fn appends_continue_the_chain_head_across_connections() {
    use coffer_store::prelude::*;
    use coffer_store::{AuditFilter, NewAuditEvent};
    use sqlx::Connection;
    let (dir, s) = fresh().await;
    let org = uuid::Uuid::new_v4();
    let ev = |n: i64| NewAuditEvent {
        org_id: org,
        id: uuid::Uuid::new_v4(),
        time: n,
        action: format!("a.{n}"),
        actor_id: None,
        outcome: "success".into(),
        target: String::new(),
        body: format!("{{\"n\":{n}}}"),
        compact: None,
    };
    let (seq1, h1) = s.append_audit(&ev(1)).await.unwrap();
    assert_eq!(seq1, 1);

    let mut db = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("coffer.db").display()
    ))
    .await
    .unwrap();
    let insert = |seq: i64, prev: [u8; 32], body: String| {
        let hash = coffer_crypto::audit::event_hash(&prev, seq as u64, &body);
        (
            sqlx::query(
                "INSERT INTO audit_events (org_id, seq, id, time, action, outcome, target, body, prev_hash, hash) \
                 VALUES (?, ?, ?, 0, 'x', 'success', '', ?, ?, ?)",
            )
            .bind(org.as_bytes().to_vec())
            .bind(seq)
            .bind(uuid::Uuid::new_v4().as_bytes().to_vec())
            .bind(body)
            .bind(prev.to_vec())
            .bind(hash.to_vec()),
            hash,
        )
    };
    // The other connection continues the chain: accepted, and the head follows.
    let (q, h2) = insert(2, h1, "{\"n\":2}".into());
    q.execute(&mut db).await.unwrap();
    // A link that does not continue the head is refused: a repeated number, a gap, a
    // predecessor other than the head.
    for (seq, prev) in [
        (2, h1),
        (4, h2),
        (3, h1),
        (3, coffer_crypto::audit::GENESIS),
    ] {
        let (q, _) = insert(seq, prev, "{\"forged\":true}".into());
        let err = q.execute(&mut db).await.unwrap_err().to_string();
        assert!(
            err.contains("audit chain moved") || err.contains("UNIQUE"),
            "seq {seq}: {err}"
        );
    }
    // The audit writer still believes the chain ends at 1: it is refused, reads the head
    // again and appends at 3, after the other connection's event.
    let (seq3, _) = s.append_audit(&ev(3)).await.unwrap();
    assert_eq!(seq3, 3);
    let rows = s
        .audit_events(
            org,
            &AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|r| (r.seq, r.prev_hash, r.hash))
        .collect();
    rows.sort_by_key(|r| r.0);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].1, rows[0].2);
    assert_eq!(rows[2].1, rows[1].2);
    assert_eq!(s.audit_head(org).await.unwrap(), Some((3, rows[2].2)));
}
