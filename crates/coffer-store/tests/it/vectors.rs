//! PostgreSQL's second implementation of the audit chain, checked against the committed
//! vectors (`tests/vectors/audit_chain.json`, the file coffer-crypto's `tests/vectors.rs`
//! checks Rust against): the plpgsql appends of migrations 0008 (`coffer_append_audit`) and
//! 0010 (`coffer_append_audit_checked`) are called as they are, on a fresh database, and
//! what they return and store must be exactly the vectors' hashes. Like every PostgreSQL test
//! here it fails when `CI` is set and PostgreSQL is unreachable, and is skipped otherwise.

use coffer_store::{AuditRepo, NewAuditEvent};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// One link of the chain: the event `seq` with `body` after the event whose hash is `prev`.
#[derive(Debug, Clone)]
struct Link {
    name: String,
    prev: Vec<u8>,
    seq: i64,
    body: String,
    hash: Vec<u8>,
}

fn audit_chain_file() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/audit_chain.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn links(file: &Value, key: &str) -> Vec<Link> {
    let items = file[key].as_array().unwrap();
    assert!(!items.is_empty(), "{key} is empty");
    items
        .iter()
        .map(|v| Link {
            name: v["name"].as_str().unwrap().to_owned(),
            prev: hex::decode(v["prev"].as_str().unwrap()).unwrap(),
            seq: i64::try_from(v["seq"].as_u64().unwrap()).unwrap(),
            body: v["body"].as_str().unwrap().to_owned(),
            hash: hex::decode(v["hash"].as_str().unwrap()).unwrap(),
        })
        .collect()
}

fn ids(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| Uuid::new_v4().as_bytes().to_vec()).collect()
}

/// Migration 0010: `coffer_append_audit_checked` with no read checks and no proposed hashes,
/// so the function numbers and hashes the events itself. Returns (seq, hash) per event.
async fn append_checked(
    conn: &mut PgConnection,
    org: Uuid,
    bodies: &[String],
) -> Vec<(i64, Vec<u8>)> {
    let n = bodies.len();
    let out: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT coffer_append_audit_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, NULL, NULL, NULL)",
    )
    .bind(org.as_bytes().to_vec())
    .bind(coffer_crypto::audit::GENESIS.to_vec())
    .bind(ids(n))
    .bind(vec![1i64; n])
    .bind(vec!["test.vector".to_owned(); n])
    .bind(vec![None::<Vec<u8>>; n])
    .bind(vec!["success".to_owned(); n])
    .bind(vec![String::new(); n])
    .bind(bodies.to_vec())
    .bind(Vec::<i32>::new())
    .bind(Vec::<Vec<u8>>::new())
    .bind(Vec::<String>::new())
    .bind(Vec::<Option<Vec<u8>>>::new())
    .bind(Vec::<i64>::new())
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(out.len(), n);
    out.into_iter()
        .map(|o| {
            let o = o.unwrap();
            let (seq, hash) = o.split_at(8);
            (i64::from_be_bytes(seq.try_into().unwrap()), hash.to_vec())
        })
        .collect()
}

/// Migration 0008: `coffer_append_audit` (kept for nodes of the previous release).
async fn append_batch(
    conn: &mut PgConnection,
    org: Uuid,
    bodies: &[String],
) -> Vec<(i64, Vec<u8>)> {
    let n = bodies.len();
    sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT * FROM coffer_append_audit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(vec![org.as_bytes().to_vec()])
    .bind(coffer_crypto::audit::GENESIS.to_vec())
    .bind(vec![org.as_bytes().to_vec(); n])
    .bind(ids(n))
    .bind(vec![1i64; n])
    .bind(vec!["test.vector".to_owned(); n])
    .bind(vec![None::<Vec<u8>>; n])
    .bind(vec!["success".to_owned(); n])
    .bind(vec![String::new(); n])
    .bind(bodies.to_vec())
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

/// A chain whose head is already (`seq`, `hash`), as if earlier events had been appended.
async fn set_head(conn: &mut PgConnection, org: Uuid, seq: i64, hash: &[u8]) {
    sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, $2, $3)")
        .bind(org.as_bytes().to_vec())
        .bind(seq)
        .bind(hash.to_vec())
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// The rows as stored: (seq, prev_hash, hash, body), in chain order.
async fn stored(conn: &mut PgConnection, org: Uuid) -> Vec<(i64, Vec<u8>, Vec<u8>, String)> {
    sqlx::query("SELECT set_config('coffer.org_id', $1, false)")
        .bind(org.simple().to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    // Events appended by the functions of 0008 and 0010 are in audit_events; those of 0014 in
    // audit_log, whose bodies here are stored as JSON (format byte 0).
    let rows = sqlx::query_as(
        "SELECT seq, prev_hash, hash, body FROM audit_events WHERE org_id = $1 \
         UNION ALL \
         SELECT l.seq, COALESCE(LAG(l.hash) OVER (ORDER BY l.seq), $2), l.hash, \
                convert_from(substring(l.body FROM 2), 'UTF8') \
           FROM audit_log l JOIN audit_chains c ON c.chain = l.chain \
          WHERE c.org_id = $1 AND get_byte(l.body, 0) = 0 \
         ORDER BY seq",
    )
    .bind(org.as_bytes().to_vec())
    .bind(coffer_crypto::audit::GENESIS.to_vec())
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SELECT set_config('coffer.org_id', '', false)")
        .execute(&mut *conn)
        .await
        .unwrap();
    rows
}

fn expected_rows(chain: &[Link]) -> Vec<(i64, Vec<u8>, Vec<u8>, String)> {
    chain
        .iter()
        .map(|l| (l.seq, l.prev.clone(), l.hash.clone(), l.body.clone()))
        .collect()
}

#[tokio::test]
async fn plpgsql_audit_appends_match_the_audit_chain_vectors() {
    let file = audit_chain_file();
    let chain = links(&file, "chain");
    let singles = links(&file, "vectors");
    assert_eq!(
        hex::decode(file["genesis"].as_str().unwrap()).unwrap(),
        coffer_crypto::audit::GENESIS
    );
    let Some(db) = crate::postgres::fresh().await else {
        return;
    };
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let bodies: Vec<String> = chain.iter().map(|l| l.body.clone()).collect();
    let expected: Vec<(i64, Vec<u8>)> = chain.iter().map(|l| (l.seq, l.hash.clone())).collect();

    // The whole chain from GENESIS in one call, then one event per call: both loops.
    for per_call in [bodies.len(), 1] {
        let (checked, batch) = (Uuid::new_v4(), Uuid::new_v4());
        let (mut got_checked, mut got_batch) = (Vec::new(), Vec::new());
        for part in bodies.chunks(per_call) {
            got_checked.extend(append_checked(&mut conn, checked, part).await);
            got_batch.extend(append_batch(&mut conn, batch, part).await);
        }
        assert_eq!(got_checked, expected, "0010, {per_call} per call");
        assert_eq!(got_batch, expected, "0008, {per_call} per call");
        assert_eq!(
            stored(&mut conn, checked).await,
            expected_rows(&chain),
            "0010 rows"
        );
        assert_eq!(
            stored(&mut conn, batch).await,
            expected_rows(&chain),
            "0008 rows"
        );
    }

    // Every link alone, after a head set to its predecessor (arbitrary prev, large seq).
    for l in chain.iter().chain(&singles) {
        let (checked, batch) = (Uuid::new_v4(), Uuid::new_v4());
        for org in [checked, batch] {
            set_head(&mut conn, org, l.seq - 1, &l.prev).await;
        }
        let one = std::slice::from_ref(&l.body);
        let want = vec![(l.seq, l.hash.clone())];
        assert_eq!(
            append_checked(&mut conn, checked, one).await,
            want,
            "0010: {}",
            l.name
        );
        assert_eq!(
            append_batch(&mut conn, batch, one).await,
            want,
            "0008: {}",
            l.name
        );
        for org in [checked, batch] {
            let rows = expected_rows(std::slice::from_ref(l));
            assert_eq!(stored(&mut conn, org).await, rows, "{}", l.name);
        }
    }

    // And through the store: its first append to a chain is hashed by the database, the
    // later ones proposed by the writer (coffer_crypto) and only checked there.
    let org = Uuid::new_v4();
    for l in &chain {
        let e = NewAuditEvent {
            org_id: org,
            id: Uuid::now_v7(),
            time: 1,
            action: "test.vector".into(),
            actor_id: None,
            outcome: "success".into(),
            target: String::new(),
            body: l.body.clone(),
            compact: None,
        };
        let (seq, hash) = db.store().append_audit(&e).await.unwrap();
        assert_eq!(
            (i64::try_from(seq).unwrap(), hash.to_vec()),
            (l.seq, l.hash.clone()),
            "store: {}",
            l.name
        );
    }
    assert_eq!(
        stored(&mut conn, org).await,
        expected_rows(&chain),
        "store rows"
    );

    conn.close().await.unwrap();
    db.drop_db().await;
}
