//! The conformance suite on PostgreSQL: a fresh database per test, dropped afterwards.
//! Without a reachable server the tests fail when `CI` is set, and are skipped (with a
//! message) otherwise.

use coffer_store::postgres::PgStore;
use coffer_store::prelude::*;
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("COFFER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    name: String,
    store: Option<PgStore>,
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
    // A non-superuser role owns and uses the database: superusers bypass row-level security.
    let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {name} LOGIN"),
        format!("CREATE DATABASE {name} OWNER {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut db = TestDb { name, store: None };
    db.store = Some(PgStore::connect(&db.url()).await.unwrap());
    Some(db)
}

impl TestDb {
    /// The test database, as its own (non-superuser) role.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let (base, _) = admin
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("COFFER_TEST_PG_URL must end with /database"));
        let (scheme, rest) = base
            .split_once("://")
            .unwrap_or_else(|| panic!("bad COFFER_TEST_PG_URL"));
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{}@{host}/{}", self.name, self.name)
    }

    pub fn store(&self) -> &PgStore {
        self.store
            .as_ref()
            .unwrap_or_else(|| panic!("store not connected"))
    }

    pub async fn drop_db(self) {
        if let Some(store) = &self.store {
            store.close().await;
        }
        let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.name),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

macro_rules! pg_suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(db) = fresh().await else { return };
            crate::suite::$name(db.store()).await;
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

/// Interned audit texts are an organisation's own: row-level security shows a chain's texts
/// and events only in its organisation's scope.
#[tokio::test]
async fn interned_audit_texts_are_scoped_by_organisation() {
    use coffer_store::NewAuditEvent;
    use coffer_store::audit_codec::{CompactEvent, Hole};
    let Some(db) = fresh().await else { return };
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (org, name) in [(a, "alice"), (b, "bob")] {
        let e = NewAuditEvent {
            org_id: org,
            id: uuid::Uuid::now_v7(),
            time: 5,
            action: "a".into(),
            actor_id: None,
            outcome: "success".into(),
            target: String::new(),
            body: format!("{{\"who\":\"{name}\",\"t\":5}}"),
            compact: Some(CompactEvent {
                template: "{\"who\":\u{7},\"t\":\u{4}}".into(),
                holes: vec![Hole::Ref(0), Hole::TimeMs],
                fragments: vec![format!("\"{name}\"")],
            }),
        };
        db.store().append_audit(&e).await.unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    async fn texts(conn: &mut sqlx::PgConnection) -> Vec<String> {
        sqlx::query_scalar("SELECT text FROM audit_strings ORDER BY text")
            .fetch_all(conn)
            .await
            .unwrap()
    }
    assert!(texts(&mut conn).await.is_empty(), "no scope, no texts");
    sqlx::query("SELECT set_config('coffer.org_id', $1, false)")
        .bind(b.simple().to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let seen = texts(&mut conn).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&"\"bob\"".to_owned()) && !seen.iter().any(|t: &String| t.contains("alice"))
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    conn.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn audit_rows_refuse_update_and_delete() {
    use coffer_store::NewAuditEvent;
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
        compact: None,
    };
    db.store().append_audit(&e).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    // Scoped to the event's (system) chain, so row-level security shows the row and only
    // the append-only rule stands in the way.
    sqlx::query("SELECT set_config('coffer.org_id', $1, false)")
        .bind(uuid::Uuid::nil().simple().to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "UPDATE audit_chains SET org_id = '\\x00'",
        "DELETE FROM audit_chains",
    ] {
        assert!(
            sqlx::query(sql).execute(&mut conn).await.is_err(),
            "{sql} must be refused"
        );
    }
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n.0, 1);
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// Both ends of a node's database connections notice a peer that vanished without a reset
/// within seconds: the node's sockets carry TCP keepalive (and a user timeout), and the
/// database's end of each session is told to do the same.
#[tokio::test]
async fn database_connections_detect_a_vanished_peer() {
    let Some(db) = fresh().await else { return };
    let opts = PgStore::connect_options(&db.url()).unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&opts).await.unwrap();
    for (setting, want) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "15000"),
    ] {
        let (got,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(got, want, "{setting}");
    }
    // This process's established TCP connections to PostgreSQL (the store's pool, the
    // connection above): an idle socket with keepalive has its keepalive timer running
    // (`tr` 2 in /proc/net/tcp), with data in flight the retransmit timer (1); without
    // keepalive an idle socket has none (0).
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let port = format!(":{:04X}", 5432);
    let timers: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, timer, inode) = (f.get(2)?, f.get(3)?, f.get(5)?, f.get(9)?);
            (remote.ends_with(&port) && *state == "01" && ours.contains(*inode))
                .then(|| timer.split(':').next().unwrap_or("").to_owned())
        })
        .collect();
    assert!(!timers.is_empty(), "no connection to PostgreSQL found");
    assert!(
        timers.iter().all(|t| t != "00"),
        "a connection without keepalive: {timers:?}"
    );
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// Failures a retry can cure are "unavailable" (503), not internal errors: no connection
/// slot left (while nodes reconnect), and a standby answering during a failover.
#[tokio::test]
async fn saturated_or_read_only_databases_are_unavailable() {
    use coffer_store::StoreError;
    let Some(db) = fresh().await else { return };
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::query("SET default_transaction_read_only = on")
        .execute(&mut conn)
        .await
        .unwrap();
    let read_only = sqlx::query("CREATE TEMP TABLE t (x INT)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(matches!(
        StoreError::from(read_only),
        StoreError::Unavailable(_)
    ));
    conn.close().await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE {} CONNECTION LIMIT 0",
        db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let full = sqlx::PgConnection::connect(&db.url()).await.unwrap_err();
    assert!(matches!(StoreError::from(full), StoreError::Unavailable(_)));
    admin.close().await.unwrap();
    db.drop_db().await;
}

/// A node refuses a database where commits do not wait for their WAL flush: it could
/// otherwise release a secret whose audit event a crash then loses.
#[tokio::test]
async fn a_node_refuses_to_run_without_synchronous_commit() {
    let Some(db) = fresh().await else { return };
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let set = |v: &str| {
        format!(
            "ALTER ROLE {0} IN DATABASE {0} SET synchronous_commit = {v}",
            db.name
        )
    };
    sqlx::query(sqlx::AssertSqlSafe(set("off")))
        .execute(&mut admin)
        .await
        .unwrap();
    let refused = PgStore::connect(&db.url()).await;
    assert!(
        matches!(refused, Err(coffer_store::StoreError::AsyncCommit)),
        "{refused:?}"
    );
    // Any setting that waits for the local flush (or more) is accepted.
    sqlx::query(sqlx::AssertSqlSafe(set("local")))
        .execute(&mut admin)
        .await
        .unwrap();
    let accepted = PgStore::connect(&db.url()).await.unwrap();
    accepted.close().await;
    admin.close().await.unwrap();
    db.drop_db().await;
}

/// Two nodes' audit writers append to the same two chains at the same time (batches that
/// span both chains, in both orders of arrival): both chains must come out gapless and
/// linked.
#[tokio::test]
async fn two_nodes_append_to_shared_audit_chains_without_gaps_or_forks() {
    use coffer_store::{AuditFilter, NewAuditEvent};
    let Some(db) = fresh().await else { return };
    let nodes = [
        PgStore::connect(&db.url()).await.unwrap(),
        PgStore::connect(&db.url()).await.unwrap(),
    ];
    let orgs = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for k in 0..200 {
            let node = node.clone();
            let org = orgs[(k + n) % 2];
            tasks.push(tokio::spawn(async move {
                let e = NewAuditEvent {
                    org_id: org,
                    id: uuid::Uuid::new_v4(),
                    time: k as i64,
                    action: format!("node{n}.{k}"),
                    actor_id: None,
                    outcome: "success".into(),
                    target: String::new(),
                    body: format!("{{\"node\":{n},\"k\":{k}}}"),
                    compact: None,
                };
                (org, node.append_audit(&e).await.unwrap().0)
            }));
        }
    }
    let mut seqs = [Vec::new(), Vec::new()];
    for t in tasks {
        let (org, seq) = t.await.unwrap();
        seqs[usize::from(org == orgs[1])].push(seq);
    }
    for (org, mut seqs) in orgs.into_iter().zip(seqs) {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=200).collect::<Vec<u64>>(),
            "one sequence, no gaps, no repeats"
        );
        let rows = nodes[0]
            .audit_events(
                org,
                &AuditFilter {
                    limit: 1000,
                    ..AuditFilter::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 200);
        let prev = crate::suite::assert_linked(&rows);
        assert_eq!(nodes[1].audit_head(org).await.unwrap(), Some((200, prev)));
    }
    for n in &nodes {
        n.close().await;
    }
    db.drop_db().await;
}

/// The audit append, called directly: the database numbers and chains a batch over two
/// chains exactly as `coffer_crypto::audit::chain_hash` does (verification recomputes it in
/// Rust), in input order; an event of a chain outside the batch is refused, not dropped.
#[tokio::test]
async fn audit_appends_chain_events_in_the_database_as_rust_verifies_them() {
    use coffer_store::NewAuditEvent;
    let Some(db) = fresh().await else { return };
    let mut orgs = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    orgs.sort_unstable();
    let first = db
        .store()
        .append_audit(&NewAuditEvent {
            org_id: orgs[1],
            id: uuid::Uuid::new_v4(),
            time: 1,
            action: "a".into(),
            actor_id: None,
            outcome: "success".into(),
            target: String::new(),
            body: "{\"n\":0}".into(),
            compact: None,
        })
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    // Interleaved: org 1, org 0, org 1, with a non-ASCII body.
    let event_orgs = [orgs[1], orgs[0], orgs[1]];
    let bodies = ["{\"n\":1}", "{\"name\":\"Zoë\"}", "{\"n\":2}"];
    let call = |extra: Option<uuid::Uuid>| {
        let mut e_org: Vec<Vec<u8>> = event_orgs.iter().map(|o| o.as_bytes().to_vec()).collect();
        let mut body: Vec<String> = bodies.iter().map(|b| (*b).to_owned()).collect();
        if let Some(x) = extra {
            e_org.push(x.as_bytes().to_vec());
            body.push("{}".into());
        }
        let n = e_org.len();
        sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT * FROM coffer_append_audit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(vec![
            orgs[0].as_bytes().to_vec(),
            orgs[1].as_bytes().to_vec(),
        ])
        .bind(coffer_crypto::audit::GENESIS.to_vec())
        .bind(e_org)
        .bind(
            (0..n)
                .map(|_| uuid::Uuid::new_v4().as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(vec![1i64; n])
        .bind(vec!["a".to_owned(); n])
        .bind(vec![None::<Vec<u8>>; n])
        .bind(vec!["success".to_owned(); n])
        .bind(vec![String::new(); n])
        .bind(body)
    };
    assert!(
        call(Some(uuid::Uuid::new_v4()))
            .fetch_all(&mut conn)
            .await
            .is_err(),
        "an event outside the batch's chains is refused"
    );
    assert_eq!(
        db.store().audit_head(orgs[1]).await.unwrap(),
        Some(first),
        "nothing written"
    );
    let got = call(None).fetch_all(&mut conn).await.unwrap();
    let link = |prev: &[u8; 32], seq: u64, body: &str| {
        coffer_crypto::audit::chain_hash(prev, &coffer_crypto::audit::chain_entry(seq, body))
    };
    let h1 = link(&first.1, 2, bodies[0]);
    let h0 = link(&coffer_crypto::audit::GENESIS, 1, bodies[1]);
    let h2 = link(&h1, 3, bodies[2]);
    assert_eq!(
        got,
        vec![(2, h1.to_vec()), (1, h0.to_vec()), (3, h2.to_vec())],
        "sequence numbers and hashes per event, in input order"
    );
    assert_eq!(db.store().audit_head(orgs[0]).await.unwrap(), Some((1, h0)));
    assert_eq!(db.store().audit_head(orgs[1]).await.unwrap(), Some((3, h2)));
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// One call appends one organisation's batch: events whose cached reads no longer hold are
/// left out (0 and NULL), the others are chained in input order as Rust verifies them, the
/// later ones linked past the gap.
#[tokio::test]
async fn checked_audit_appends_skip_stale_reads_and_chain_the_rest() {
    let Some(db) = fresh().await else { return };
    let s = db.store();
    let org = crate::suite::org(s, "o").await;
    let (_, env) = crate::suite::project_env(s, org).await;
    let key = coffer_crypto::TenantKey::generate(coffer_crypto::KeyTerm(1));
    let pid = uuid::Uuid::new_v4();
    s.append_param_version(&crate::suite::write(
        (org, env.id, pid),
        "K",
        0,
        coffer_store::VersionAction::Set,
        &key,
        b"v",
    ))
    .await
    .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let bodies = ["{\"n\":1}", "{\"n\":2}", "{\"name\":\"Zoë\"}"];
    let e = |v: Vec<u8>| v;
    // Event 2 read version 2 (stale: the live one is 1), event 3 read version 1 (holds),
    // both also checking that a nearer environment (a random id) defines nothing.
    let nearer = uuid::Uuid::new_v4();
    let got: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT coffer_append_audit_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, NULL, NULL, NULL)",
    )
    .bind(e(org.as_bytes().to_vec()))
    .bind(coffer_crypto::audit::GENESIS.to_vec())
    .bind(
        (0..3)
            .map(|_| uuid::Uuid::new_v4().as_bytes().to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(vec![1i64; 3])
    .bind(vec!["param.get".to_owned(); 3])
    .bind(vec![None::<Vec<u8>>; 3])
    .bind(vec!["success".to_owned(); 3])
    .bind(vec![String::new(); 3])
    .bind(bodies.iter().map(|b| (*b).to_owned()).collect::<Vec<_>>())
    .bind(vec![2i32, 2, 3, 3])
    .bind(vec![
        nearer.as_bytes().to_vec(),
        env.id.as_bytes().to_vec(),
        nearer.as_bytes().to_vec(),
        env.id.as_bytes().to_vec(),
    ])
    .bind(vec!["K".to_owned(); 4])
    .bind(vec![
        None,
        Some(pid.as_bytes().to_vec()),
        None,
        Some(pid.as_bytes().to_vec()),
    ])
    .bind(vec![0i64, 2, 0, 1])
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let link = |prev: &[u8; 32], seq: u64, body: &str| {
        coffer_crypto::audit::chain_hash(prev, &coffer_crypto::audit::chain_entry(seq, body))
    };
    let h1 = link(&coffer_crypto::audit::GENESIS, 1, bodies[0]);
    let h3 = link(&h1, 2, bodies[2]);
    let at = |seq: u64, h: [u8; 32]| Some([seq.to_be_bytes().as_slice(), &h].concat());
    assert_eq!(got, vec![at(1, h1), None, at(2, h3)]);
    assert_eq!(s.audit_head(org).await.unwrap(), Some((2, h3)));
    let rows = s
        .audit_events(
            org,
            &coffer_store::AuditFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(),
        vec![bodies[0], bodies[2]]
    );

    // A proposed chain is stored as proposed when its head is the chain's head (the result
    // is then empty), and ignored otherwise (the database chains the events itself).
    let append = |head: (i64, [u8; 32]), hashes: Vec<Vec<u8>>, body: &'static str| {
        sqlx::query_scalar::<_, Vec<Option<Vec<u8>>>>(
            "SELECT coffer_append_audit_checked($1, $2, $3, '{1}', '{a}', '{NULL}', '{success}', \
             '{\"\"}', $4, '{}', '{}', '{}', '{}', '{}', $5, $6, $7)",
        )
        .bind(org.as_bytes().to_vec())
        .bind(coffer_crypto::audit::GENESIS.to_vec())
        .bind(vec![uuid::Uuid::new_v4().as_bytes().to_vec()])
        .bind(vec![body.to_owned()])
        .bind(head.0)
        .bind(head.1.to_vec())
        .bind(hashes)
    };
    let h4 = link(&h3, 3, "{\"n\":4}");
    let got = append((2, h3), vec![h4.to_vec()], "{\"n\":4}")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(s.audit_head(org).await.unwrap(), Some((3, h4)));
    let h5 = link(&h4, 4, "{\"n\":5}");
    let got = append((2, h3), vec![[9u8; 32].to_vec()], "{\"n\":5}")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![at(4, h5)],
        "a stale head: chained by the database"
    );
    let rows = s
        .audit_events(
            org,
            &coffer_store::AuditFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.seq, r.prev_hash, r.hash))
            .collect::<Vec<_>>()[2..],
        [(3, h3, h4), (4, h4, h5)]
    );
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// A node answers repeated reads from its cache; each such answer is confirmed when its
/// audit event is appended. Writes on another node (a new version, a nearer environment
/// defining the name, a deletion) make the cached answer stale: its event is not
/// appended, and the node's next read goes to the database.
#[tokio::test]
async fn cached_answers_are_confirmed_against_writes_on_other_nodes() {
    use coffer_store::{EnvRow, NewAuditEvent, ReadCheck, VersionAction};
    let Some(db) = fresh().await else { return };
    let (a, b) = two_nodes(&db.url()).await;
    let org = crate::suite::org(&a, "o").await;
    let (project, base) = crate::suite::project_env(&a, org).await;
    let child = EnvRow {
        id: uuid::Uuid::new_v4(),
        org_id: org,
        project_id: project.id,
        parent_id: Some(base.id),
        name: "child".into(),
        created_at: 1,
    };
    a.create_env(&child, None).await.unwrap();
    let chain = [child.id, base.id];
    let key = coffer_crypto::TenantKey::generate(coffer_crypto::KeyTerm(1));
    let (in_base, in_child) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let set = |env: uuid::Uuid, pid: uuid::Uuid, expected: u64, action: VersionAction| {
        crate::suite::write((org, env, pid), "K", expected, action, &key, b"v")
    };
    let event = || NewAuditEvent {
        org_id: org,
        id: uuid::Uuid::new_v4(),
        time: 1,
        action: "param.get".into(),
        actor_id: None,
        outcome: "success".into(),
        target: "app/child/K".into(),
        body: "{}".into(),
        compact: None,
    };
    let read = || async {
        let (v, check) = a.nearest_value_cached(org, &chain, "K").await.unwrap();
        (v.map(|v| (v.param.id, v.version.version)), check)
    };
    let append = |check: Option<ReadCheck>| async {
        a.append_audit_checked(
            &event(),
            &[check.unwrap()],
            coffer_store::Durability::Written,
        )
        .await
        .unwrap()
        .map(|h| h.0)
    };

    b.append_param_version(&set(base.id, in_base, 0, VersionAction::Set))
        .await
        .unwrap();
    assert_eq!(
        read().await,
        (Some((in_base, 1)), None),
        "first read: the database"
    );
    let (v, check) = read().await;
    assert_eq!(v, Some((in_base, 1)), "then the cache");
    assert_eq!(check.as_ref().map(|c| c.envs.clone()), Some(chain.to_vec()));
    assert_eq!(append(check).await, Some(1), "confirmed");

    // A new version written on the other node.
    b.append_param_version(&set(base.id, in_base, 1, VersionAction::Set))
        .await
        .unwrap();
    let (v, check) = read().await;
    assert_eq!(v, Some((in_base, 1)), "this node cannot know yet");
    assert_eq!(append(check).await, None, "stale: nothing appended");
    assert_eq!(read().await, (Some((in_base, 2)), None), "read afresh");

    // The nearer environment now defines the name.
    let (_, check) = read().await;
    b.append_param_version(&set(child.id, in_child, 0, VersionAction::Set))
        .await
        .unwrap();
    assert_eq!(append(check).await, None);
    assert_eq!(read().await, (Some((in_child, 1)), None));

    // Deleted there again.
    let (_, check) = read().await;
    b.append_param_version(&set(child.id, in_child, 1, VersionAction::Delete))
        .await
        .unwrap();
    assert_eq!(append(check).await, None);
    assert_eq!(read().await, (Some((in_base, 2)), None));
    let (_, check) = read().await;
    assert_eq!(
        append(check).await,
        Some(2),
        "only confirmed reads were appended"
    );
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

/// Reads are batched per node; a write through another node must still be seen by the
/// very next read (no waiting for a notification or an expiry).
#[tokio::test]
async fn a_value_written_on_one_node_is_read_on_another_at_once() {
    use coffer_crypto::{KeyTerm, TenantKey};
    use coffer_store::VersionAction;
    let Some(db) = fresh().await else { return };
    let (a, b) = two_nodes(&db.url()).await;
    let org = crate::suite::org(&a, "o").await;
    let (_, env) = crate::suite::project_env(&a, org).await;
    let key = TenantKey::generate(KeyTerm(1));
    let pid = uuid::Uuid::new_v4();
    let at = (org, env.id, pid);
    let version = |v: Option<coffer_store::ParamValue>| v.map(|v| v.version.version);
    b.append_param_version(&crate::suite::write(
        at,
        "K",
        0,
        VersionAction::Set,
        &key,
        b"1",
    ))
    .await
    .unwrap();
    for expected in 1..=20u64 {
        assert_eq!(
            version(a.nearest_value(org, &[env.id], "K").await.unwrap()),
            Some(expected)
        );
        assert_eq!(
            version(a.nearest_value(org, &[env.id], "K").await.unwrap()),
            Some(expected)
        );
        b.append_param_version(&crate::suite::write(
            at,
            "K",
            expected,
            VersionAction::Set,
            &key,
            b"next",
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        version(a.nearest_value(org, &[env.id], "K").await.unwrap()),
        Some(21)
    );
    // Many concurrent reads share statements and all see the current version.
    let chain = [env.id];
    let reads = (0..64).map(|_| a.nearest_value(org, &chain, "K"));
    for r in crate::suite::join_all(reads.collect()).await {
        assert_eq!(version(r.unwrap()), Some(21));
    }
    b.append_param_version(&crate::suite::write(
        at,
        "K",
        21,
        VersionAction::Delete,
        &key,
        b"",
    ))
    .await
    .unwrap();
    assert!(
        a.nearest_value(org, &[env.id], "K")
            .await
            .unwrap()
            .is_none()
    );
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

/// A node whose root key was replaced by a rekey on another node must not store anything
/// sealed with its old key (nobody could open it): such writes fail, nothing is written.
#[tokio::test]
async fn writes_sealed_with_a_replaced_root_key_are_refused() {
    use coffer_crypto::RootKey;
    use coffer_store::{OutboxRow, RootRotation, SealConfigRow, StoreError};
    let Some(db) = fresh().await else { return };
    let (a, b) = two_nodes(&db.url()).await;
    let old = RootKey::generate().check_value().unwrap();
    a.init_seal_config(
        &SealConfigRow {
            kind: "shamir".into(),
            shares: 3,
            threshold: 2,
            root_check: old.clone(),
            created_at: 1,
            sealed_root: None,
        },
        None,
        None,
    )
    .await
    .unwrap();
    b.set_root_guard(Some(old.clone()));
    let mail = |n: u8| OutboxRow {
        id: uuid::Uuid::new_v4(),
        sealed: vec![n; 40],
        created_at: 1,
        attempts: 0,
        next_attempt_at: 1,
    };
    crate::suite::org(&b, "before").await;
    b.enqueue_mail(&mail(1)).await.unwrap();
    // A rekey on A.
    let previous = a.root_secrets().await.unwrap();
    let new = RootKey::generate().check_value().unwrap();
    a.rotate_root(
        &RootRotation {
            previous_check: old,
            previous: previous.clone(),
            root_check: new.clone(),
            shares: 3,
            threshold: 2,
            sealed_root: None,
            secrets: previous,
        },
        None,
    )
    .await
    .unwrap();
    let orgs = a.org_ids().await.unwrap().len();
    assert!(matches!(
        b.enqueue_mail(&mail(2)).await,
        Err(StoreError::RootReplaced)
    ));
    let org = coffer_store::OrgRow {
        id: uuid::Uuid::new_v4(),
        name: "after".into(),
        created_at: 2,
    };
    let key = coffer_store::TenantKeyRow {
        org_id: org.id,
        term: coffer_crypto::KeyTerm(1),
        wrapped: RootKey::generate()
            .wrap_tenant_key(
                org.id,
                &coffer_crypto::TenantKey::generate(coffer_crypto::KeyTerm(1)),
            )
            .unwrap(),
        created_at: 2,
    };
    assert!(matches!(
        b.create_org(&org, &key, None, None).await,
        Err(StoreError::RootReplaced)
    ));
    assert_eq!(a.org_ids().await.unwrap().len(), orgs, "nothing written");
    assert_eq!(a.pending_mail().await.unwrap(), 1);
    // A node that holds no root key writes nothing sealed with one either...
    b.set_root_guard(None);
    assert!(matches!(
        b.create_org(&org, &key, None, None).await,
        Err(StoreError::RootReplaced)
    ));
    // ...and one with the current key writes as before.
    a.set_root_guard(Some(new));
    assert!(a.create_org(&org, &key, None, None).await.is_ok());
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn one_node_leads_background_jobs_and_another_takes_over() {
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

/// One of everything an organisation owns, for the row-level security test; returns the
/// member's id and the token hashes of its session, API key and invitation.
async fn populate(s: &PgStore, org: uuid::Uuid, n: u8) -> (uuid::Uuid, [[u8; 32]; 3]) {
    use coffer_crypto::{KeyTerm, RootKey, TenantKey};
    use coffer_store::*;
    let (_, env) = crate::suite::project_env(s, org).await;
    let key = TenantKey::generate(KeyTerm(1));
    s.append_param_version(&crate::suite::write(
        (org, env.id, uuid::Uuid::new_v4()),
        "K",
        0,
        VersionAction::Set,
        &key,
        b"v",
    ))
    .await
    .unwrap();
    s.rotate_tenant_key(
        &TenantKeyRow {
            org_id: org,
            term: KeyTerm(2),
            wrapped: RootKey::generate()
                .wrap_tenant_key(org, &TenantKey::generate(KeyTerm(2)))
                .unwrap(),
            created_at: 2,
        },
        "manual",
        None,
    )
    .await
    .unwrap();
    let user = crate::suite::user(s, org, &format!("member{n}"), "owner").await;
    let tokens = [[n; 32], [n + 100; 32], [n + 200; 32]];
    s.create_session(&crate::suite::session(user, org, n, i64::MAX), None)
        .await
        .unwrap();
    s.create_api_key(
        &ApiKeyRow {
            id: uuid::Uuid::new_v4(),
            org_id: org,
            user_id: user,
            name: "ci".into(),
            role: "viewer".into(),
            key_hash: tokens[1],
            prefix: "cfr_x".into(),
            read_only: true,
            projects: vec![],
            envs: vec![],
            created_at: 1,
            expires_at: i64::MAX,
            last_used_at: None,
            revoked_at: None,
        },
        None,
    )
    .await
    .unwrap();
    s.create_invitation(
        &InvitationRow {
            id: uuid::Uuid::new_v4(),
            org_id: org,
            email: format!("new{n}@example.com"),
            role: "viewer".into(),
            token_hash: tokens[2],
            invited_by: user,
            created_at: 1,
            expires_at: i64::MAX,
            accepted_at: None,
        },
        None,
        None,
    )
    .await
    .unwrap();
    let ev = NewAuditEvent {
        org_id: org,
        id: uuid::Uuid::new_v4(),
        time: 1,
        action: "a.test".into(),
        actor_id: None,
        outcome: "success".into(),
        target: "t".into(),
        body: "{}".into(),
        compact: None,
    };
    let (seq, hash) = s.append_audit(&ev).await.unwrap();
    s.insert_checkpoint(&CheckpointRow {
        org_id: org,
        seq,
        hash,
        created_at: 1,
        signature: vec![0; 64],
    })
    .await
    .unwrap();
    (user, tokens)
}

/// Every table that belongs to an organisation is walled off by row-level security, as a
/// second wall behind the store's own scoping: a raw connection as the application's role
/// sees nothing without a scope, one organisation's rows with its scope, and a user's or a
/// token's rows with theirs; rows of another organisation cannot be written.
#[tokio::test]
async fn row_level_security_hides_other_organisations_rows() {
    let Some(db) = fresh().await else { return };
    let a = crate::suite::org(db.store(), "a").await;
    let b = crate::suite::org(db.store(), "b").await;
    let (user_a, tokens_a) = populate(db.store(), a, 1).await;
    let (_, tokens_b) = populate(db.store(), b, 2).await;

    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let tables = [
        "orgs",
        "tenant_keys",
        "key_rotations",
        "projects",
        "environments",
        "params",
        "param_versions",
        "credentials",
        "memberships",
        "sessions",
        "api_keys",
        "invitations",
        "audit_log",
        "audit_checkpoints",
    ];
    async fn count(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(conn)
            .await
            .unwrap()
    }
    async fn scope(conn: &mut sqlx::PgConnection, name: &str, value: &str) {
        for (k, v) in [
            ("coffer.org_id", ""),
            ("coffer.user_id", ""),
            ("coffer.token_hash", ""),
            ("coffer.system", ""),
            (name, value),
        ] {
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(k)
                .bind(v)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    for t in tables {
        assert_eq!(
            count(&mut conn, t).await,
            0,
            "no scope: nothing of {t} is visible"
        );
    }
    // The store's own view, for comparison: both organisations have rows in every table.
    scope(&mut conn, "coffer.org_id", &b.simple().to_string()).await;
    for t in tables {
        // Two key terms (rotated once); one row of everything else.
        let expected = if t == "tenant_keys" { 2 } else { 1 };
        assert_eq!(
            count(&mut conn, t).await,
            expected,
            "org b sees only its own {t}"
        );
    }
    // Rows of another organisation cannot be written from this scope.
    let other = a.as_bytes().to_vec();
    for sql in [
        "INSERT INTO projects (id, org_id, name, created_at) VALUES ($2, $1, 'x', 1)",
        "INSERT INTO memberships (user_id, org_id, role, created_at) VALUES ($2, $1, 'owner', 1)",
        "INSERT INTO credentials (id, ciphertext, key_term, org_id) VALUES ($2, '\\x00', 1, $1)",
        "UPDATE orgs SET require_mfa = TRUE WHERE id = $1 AND $2 IS NOT NULL",
    ] {
        let r = sqlx::query(sql)
            .bind(&other)
            .bind(uuid::Uuid::new_v4().as_bytes().to_vec())
            .execute(&mut conn)
            .await;
        let blocked = match r {
            Err(_) => true,
            Ok(done) => done.rows_affected() == 0,
        };
        assert!(blocked, "refused from org b's scope: {sql}");
    }
    // A user's scope: their memberships, sessions and organisations, nothing else.
    scope(&mut conn, "coffer.user_id", &user_a.simple().to_string()).await;
    for (t, n) in [("memberships", 1), ("sessions", 1), ("orgs", 1)] {
        assert_eq!(count(&mut conn, t).await, n, "user scope: {t}");
    }
    for t in [
        "api_keys",
        "invitations",
        "projects",
        "tenant_keys",
        "credentials",
    ] {
        assert_eq!(count(&mut conn, t).await, 0, "user scope shows no {t}");
    }
    // Seeing is not changing: the user's scope cannot delete or alter its organisation or
    // memberships, nor move a session to another organisation.
    async fn changed(conn: &mut sqlx::PgConnection, sql: &str) -> u64 {
        match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(conn)
            .await
        {
            Ok(r) => r.rows_affected(),
            Err(_) => 0,
        }
    }
    for sql in [
        "DELETE FROM orgs",
        "UPDATE orgs SET require_mfa = TRUE",
        "DELETE FROM memberships",
        "UPDATE memberships SET role = 'viewer'",
        "UPDATE sessions SET stage = 'full'",
    ] {
        assert_eq!(changed(&mut conn, sql).await, 0, "user scope: {sql}");
    }
    // A token's scope: exactly the row with that hash.
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for (t, token) in [
        ("sessions", &tokens_a[0]),
        ("api_keys", &tokens_a[1]),
        ("invitations", &tokens_a[2]),
    ] {
        scope(&mut conn, "coffer.token_hash", &hex(token)).await;
        assert_eq!(
            count(&mut conn, t).await,
            1,
            "token scope finds its {t} row"
        );
        for other_table in ["memberships", "orgs", "projects"] {
            assert_eq!(count(&mut conn, other_table).await, 0);
        }
    }
    scope(&mut conn, "coffer.token_hash", &hex(&tokens_b[0])).await;
    assert_eq!(
        count(&mut conn, "api_keys").await,
        0,
        "a session's hash opens no API key"
    );
    // A token's scope reads its row but cannot change it (only a session may be ended).
    scope(&mut conn, "coffer.token_hash", &hex(&tokens_a[1])).await;
    for sql in ["DELETE FROM api_keys", "UPDATE api_keys SET revoked_at = 1"] {
        assert_eq!(changed(&mut conn, sql).await, 0, "token scope: {sql}");
    }
    scope(&mut conn, "coffer.token_hash", &hex(&tokens_b[0])).await;
    assert_eq!(
        changed(&mut conn, "DELETE FROM sessions").await,
        1,
        "logout ends the session"
    );
    // The maintenance scope spans organisations' identity rows, never their data.
    scope(&mut conn, "coffer.system", "on").await;
    for (t, n) in [
        ("orgs", 2),
        ("memberships", 2),
        ("sessions", 1),
        ("api_keys", 2),
    ] {
        assert_eq!(count(&mut conn, t).await, n, "system scope: {t}");
    }
    for t in [
        "projects",
        "params",
        "credentials",
        "tenant_keys",
        "audit_events",
    ] {
        assert_eq!(count(&mut conn, t).await, 0, "system scope shows no {t}");
    }
    conn.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn a_runtime_role_without_ddl_rights_runs_coffer_and_cannot_rewrite_history() {
    use coffer_store::postgres::{Schema, migrate};
    let admin = admin_url();
    let Ok(mut root) = sqlx::PgConnection::connect(&admin).await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is required in CI"
        );
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (owner, app, db) = (
        format!("coffer_test_own_{id}"),
        format!("coffer_test_app_{id}"),
        format!("coffer_test_{id}"),
    );
    for sql in [
        format!("CREATE ROLE {owner} LOGIN"),
        format!("CREATE ROLE {app} LOGIN"),
        format!("CREATE DATABASE {db} OWNER {owner}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut root)
            .await
            .unwrap();
    }
    let (base, _) = admin.rsplit_once('/').unwrap();
    let host = base
        .split_once("://")
        .map(|(_, r)| r.rsplit_once('@').map_or(r, |(_, h)| h))
        .unwrap();
    let url = |role: &str| format!("postgres://{role}@{host}/{db}");

    // Before migrations, a runtime node refuses to start.
    let err = PgStore::connect_with(&url(&owner), Schema::Verify)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            coffer_store::StoreError::SchemaOutdated { have: 0, .. }
        ),
        "{err:?}"
    );
    // The owner migrates and grants the documented privileges.
    migrate(&url(&owner)).await.unwrap();
    let mut as_owner = sqlx::PgConnection::connect(&url(&owner)).await.unwrap();
    let grants =
        include_str!("../../../../docs/postgres-runtime-role.sql").replace("coffer_app", &app);
    for stmt in grants
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
    {
        sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
            .execute(&mut as_owner)
            .await
            .unwrap();
    }
    // The runtime role runs the store: writes, history, audit chain, checkpoints.
    let store = PgStore::connect_with(&url(&app), Schema::Verify)
        .await
        .unwrap();
    crate::suite::param_versions_append_with_optimistic_concurrency(&store).await;
    crate::suite::audit_chains_append_in_order_with_filters_and_checkpoints(&store).await;
    crate::suite::compact_events_read_back_exactly(&store).await;
    assert!(store.try_lead().await.unwrap());
    store.close().await;
    // …and cannot change the schema, disable the walls, or rewrite history.
    let mut as_app = sqlx::PgConnection::connect(&url(&app)).await.unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "UPDATE audit_strings SET text = 'x'",
        "DELETE FROM audit_strings",
        "DELETE FROM audit_chains",
        "DELETE FROM audit_checkpoints",
        "UPDATE param_versions SET action = 'x'",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP POLICY tenant_scope ON projects",
        "ALTER TABLE projects NO FORCE ROW LEVEL SECURITY",
        "CREATE TABLE intruder (x int)",
        "DELETE FROM _sqlx_migrations",
    ] {
        let e = sqlx::query(sql).execute(&mut as_app).await.expect_err(sql);
        assert!(
            e.to_string().contains("denied") || e.to_string().contains("must be owner"),
            "{sql}: {e}"
        );
    }
    as_app.close().await.unwrap();
    as_owner.close().await.unwrap();
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {app}"),
        format!("DROP ROLE {owner}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut root)
            .await
            .unwrap();
    }
}

/// Two nodes (stores with their own pools, caches and audit writers) on one database.
async fn two_nodes(url: &str) -> (PgStore, PgStore) {
    (
        PgStore::connect(url).await.unwrap(),
        PgStore::connect(url).await.unwrap(),
    )
}

/// A change's notices go out from inside its transaction: other nodes hear them once it
/// commits and never for a change rolled back; and a node knows when it cannot hear them
/// (its listener's connection is gone) until it listens again.
#[tokio::test]
async fn change_notices_reach_other_nodes_with_the_commit_only() {
    use coffer_store::{ChangeEvent, Invalidation, NewAuditEvent};
    use std::time::Duration;
    let Some(db) = fresh().await else { return };
    let a = db.store();
    let b = PgStore::connect(&db.url()).await.unwrap();
    let live = |s: &PgStore| s.notices_live();
    for _ in 0..100 {
        if live(a) && live(&b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(live(a) && live(&b), "both nodes listen");
    let mut heard = b.invalidations().unwrap();
    let event = |org: uuid::Uuid| {
        let mut e = ChangeEvent::new(NewAuditEvent {
            org_id: uuid::Uuid::nil(),
            id: uuid::Uuid::new_v4(),
            time: 1,
            action: "test.change".into(),
            actor_id: None,
            outcome: "success".into(),
            target: String::new(),
            body: "{}".into(),
            compact: None,
        });
        e.notices = vec![Invalidation::Access, Invalidation::Meta(org)];
        e
    };
    async fn heard_within(
        rx: &mut tokio::sync::broadcast::Receiver<Invalidation>,
        ms: u64,
    ) -> Vec<Invalidation> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Ok(i)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            out.push(i);
        }
        out
    }

    // Rolled back (no such session: nothing changed, the transaction is dropped): nothing
    // is heard.
    let rolled_back = event(uuid::Uuid::new_v4());
    assert!(
        !a.delete_session_by_id(
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            Some(&rolled_back)
        )
        .await
        .unwrap()
    );
    assert!(!rolled_back.committed());
    assert_eq!(heard_within(&mut heard, 500).await, vec![]);

    // Committed: both notices, in order.
    let org = uuid::Uuid::new_v4();
    let committed = event(org);
    a.delete_session(&[7; 32], Some(&committed)).await.unwrap();
    assert!(committed.committed());
    assert_eq!(
        heard_within(&mut heard, 2_000).await,
        vec![Invalidation::Access, Invalidation::Meta(org)]
    );

    // B's listener loses its connection: B knows it is deaf, then listens again and
    // forgets everything.
    let mut admin = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the listeners' connections");
    let mut saw_deaf = false;
    for _ in 0..100 {
        if !live(&b) {
            saw_deaf = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut back = false;
    for _ in 0..200 {
        if live(&b) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_deaf || back,
        "the listener was noticed gone or came back"
    );
    assert!(back, "B listens again");
    assert!(
        heard_within(&mut heard, 1_000)
            .await
            .contains(&Invalidation::All),
        "and forgets everything it may have missed"
    );
    b.close().await;
    db.drop_db().await;
}
