//! The conformance suite on PostgreSQL: a fresh database per test, dropped afterwards.
//! Without a reachable server the tests fail when `CI` is set, and are skipped (with a
//! message) otherwise.

use coffer_store::postgres::PgStore;
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("COFFER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    name: String,
    pub store: PgStore,
}

/// A new empty database with Coffer's migrations applied, or None when PostgreSQL is not
/// there (and this is not CI).
pub async fn fresh() -> Option<TestDb> {
    let admin = admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL is required in CI but unreachable at {admin}: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL unreachable at {admin} ({e}); set COFFER_TEST_PG_URL or start it"
            );
            return None;
        }
    };
    let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("COFFER_TEST_PG_URL must end with /database"),
    };
    let store = PgStore::connect(&url).await.unwrap();
    Some(TestDb { name, store })
}

impl TestDb {
    pub fn url(&self) -> String {
        match admin_url().rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => panic!("COFFER_TEST_PG_URL must end with /database"),
        }
    }

    pub async fn drop_db(self) {
        self.store.close().await;
        let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

macro_rules! pg_suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(db) = fresh().await else { return };
            crate::suite::$name(&db.store).await;
            db.drop_db().await;
        }
    )*};
}

pg_suite!(
    seal_config_is_written_once,
    orgs_and_tenant_keys_roundtrip,
    users_are_unique_and_sessions_expire,
    projects_and_envs_are_scoped_by_org,
    param_versions_append_with_optimistic_concurrency,
    deletion_markers_hide_values,
    values_are_scoped_by_org,
    reads_see_every_committed_write,
    concurrent_writes_commit_independently,
    audit_chains_append_in_order_with_filters_and_checkpoints,
);

#[tokio::test]
async fn audit_rows_refuse_update_and_delete() {
    use coffer_store::{NewAuditEvent, Store};
    let Some(db) = fresh().await else { return };
    let e = NewAuditEvent {
        org_id: uuid::Uuid::nil(),
        id: uuid::Uuid::new_v4(),
        time: 1,
        action: "a".into(),
        actor_id: None,
        outcome: "success".into(),
        target: String::new(),
        body: "{}".into(),
    };
    db.store.append_audit(&e).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
    ] {
        assert!(
            sqlx::query(sql).execute(&mut conn).await.is_err(),
            "{sql} must be refused"
        );
    }
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n.0, 1);
    conn.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn one_node_leads_background_jobs_and_another_takes_over() {
    use coffer_store::Store;
    let Some(db) = fresh().await else { return };
    let a = PgStore::connect(&db.url()).await.unwrap();
    let b = PgStore::connect(&db.url()).await.unwrap();
    assert!(a.try_lead().await.unwrap(), "the first node to ask leads");
    assert!(a.try_lead().await.unwrap(), "and keeps leading");
    assert!(!b.try_lead().await.unwrap(), "a second node does not");
    // The leader goes away (its sessions end): the other node takes over.
    a.close().await;
    let mut took_over = false;
    for _ in 0..50 {
        if b.try_lead().await.unwrap() {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(took_over, "leadership must pass to the surviving node");
    b.close().await;
    db.drop_db().await;
}
