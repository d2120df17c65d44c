//! The node's audit writer: one connection and thread that appends batches of events.

use super::*;
use crate::audit_pack::{Dictionary, Needs, Plan, lock};

/// The dictionary of audit chains and interned texts this node shares among its writers.
pub(super) type Dict = std::sync::Arc<std::sync::Mutex<Dictionary>>;

pub(super) type AuditReply = oneshot::Sender<Result<Option<(u64, [u8; 32])>, StoreError>>;
pub(super) type AuditJob = (NewAuditEvent, Vec<ReadCheck>, AuditReply);
/// A job as queued: with how far its event must have gone before it is answered.
pub(super) type Queued = (AuditJob, Durability);

const AUDIT_BATCH: usize = 256;

/// This node's audit writer: events queued while a batch commits go into the next batch,
/// so one statement (one round trip, one WAL flush) covers many requests. The database
/// confirms the batch's cached reads, then numbers and chains the events under each chain's
/// row lock (`coffer_append_audit_packed`), so writers on several nodes queue on a shared
/// chain instead of racing for it. (Two writers, each with a batch under way, were measured
/// slower: the second waits for the first's lock anyway, and both batches are smaller.)
///
/// (Committing without waiting for the WAL flush, and answering after a second connection's
/// synchronous commit had flushed it, so the next batch could be appended during the
/// flush, was measured ~13% slower on one node: more, smaller batches and a second round
/// trip each. With two nodes on one chain it was +8 to +35% faster, but is only correct if
/// the second connection provably outlived no crash since the batch committed: see
/// docs/benchmarks.md.)
///
/// The writer keeps a connection of its own rather than taking one from the pool: the pool
/// hands out its connections in turn, so consecutive appends would each run in a different
/// server process, none with its caches warm.
///
/// A batch of nothing but [`Durability::Written`] events (operations that changed nothing)
/// commits with `synchronous_commit = off`: the database server has the events before
/// anyone is answered, but the commit does not wait for the WAL flush. Within
/// [`READ_SYNC_BOUND`] the writer then commits a transaction synchronously, whose flush
/// covers every earlier commit (unless a durable batch did so first).
pub(super) fn spawn_audit_writer(
    pool: PgPool,
    values: std::sync::Arc<cache::ValueCache>,
    dict: Dict,
) -> mpsc::Sender<Queued> {
    let (tx, mut rx) = mpsc::channel::<Queued>(4096);
    let writer = async move {
        let mut conn: Option<WriterConn> = None;
        // The last (seq, hash) this writer appended to each chain: with it the writer
        // proposes the next events' hashes, which the database stores as they are if no
        // other node appended in between (only ever a proposal: the database checks the
        // head under its lock).
        let mut heads = crate::chain::Heads::new();
        // When the oldest commit not yet flushed was made.
        let mut unflushed: Option<std::time::Instant> = None;
        loop {
            let first = match unflushed {
                None => rx.recv().await,
                Some(t) => {
                    match tokio::time::timeout_at((t + READ_SYNC_BOUND).into(), rx.recv()).await {
                        Ok(job) => job,
                        Err(_) => {
                            flush(&pool, &mut conn, &mut unflushed).await;
                            continue;
                        }
                    }
                }
            };
            let Some(first) = first else { break };
            let mut batch: Vec<AuditJob> = Vec::with_capacity(AUDIT_BATCH);
            let mut relaxed = first.1 == Durability::Written;
            batch.push(first.0);
            while batch.len() < AUDIT_BATCH {
                match rx.try_recv() {
                    Ok((j, d)) => {
                        relaxed &= d == Durability::Written;
                        batch.push(j);
                    }
                    Err(_) => break,
                }
            }
            let w = Writing {
                pool: &pool,
                values: &values,
                dict: &dict,
            };
            if append_batch(&w, &mut conn, &mut heads, batch, relaxed).await {
                if relaxed {
                    unflushed.get_or_insert_with(std::time::Instant::now);
                } else {
                    unflushed = None;
                }
            }
            if unflushed.is_some_and(|t| t.elapsed() >= READ_SYNC_BOUND) {
                flush(&pool, &mut conn, &mut unflushed).await;
            }
        }
        if unflushed.is_some() {
            flush(&pool, &mut conn, &mut unflushed).await;
        }
        if let Some(c) = conn {
            let _ = sqlx::Connection::close(c.conn).await;
        }
    };
    // Every request waits for this loop, so it runs on a thread of its own: as a task among
    // the request tasks, each database answer waited in the runtime's queue behind them
    // before the next batch could start (measured: ~10% more reads/s at 16 connections on
    // one node with the thread). The thread ends when the store is dropped.
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            std::thread::Builder::new()
                .name("coffer-audit".into())
                .spawn(move || rt.block_on(writer))
        });
    if let Err(e) = started {
        // Without a writer every append fails (closed channel): the service fails closed.
        tracing::error!(error = %e, "could not start the audit writer");
    }
    tx
}

/// Make every commit before now durable: a transaction with an id, committed synchronously,
/// waits for the WAL flush up to its own commit record, which follows theirs.
async fn flush(
    pool: &PgPool,
    conn: &mut Option<WriterConn>,
    unflushed: &mut Option<std::time::Instant>,
) {
    let flushed = match writer_connection(pool, conn, false).await {
        Ok(c) => sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *c)
            .await
            .map_err(StoreError::from),
        Err(e) => Err(e),
    };
    match flushed {
        Ok(_) => *unflushed = None,
        Err(e) => {
            // Tried again after another bound, not at once; the database flushes by itself
            // meanwhile (its WAL writer, within 3 × wal_writer_delay).
            *unflushed = Some(std::time::Instant::now());
            tracing::error!(error = %e, "could not flush the audit events of reads");
            *conn = None;
        }
    }
}

/// The writer's connection, and whether its commits wait for the WAL flush.
struct WriterConn {
    conn: PgConnection,
    relaxed: bool,
}

/// The writer's own connection, opened again after a failure, with `relaxed` commits or
/// not.
async fn writer_connection<'c>(
    pool: &PgPool,
    conn: &'c mut Option<WriterConn>,
    relaxed: bool,
) -> Result<&'c mut PgConnection, StoreError> {
    if conn.is_none() {
        let opts = pool.connect_options();
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            <PgConnection as sqlx::Connection>::connect_with(&*opts),
        )
        .await
        .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
        *conn = Some(WriterConn {
            conn: c,
            relaxed: false,
        });
    }
    let switch = conn.as_ref().is_some_and(|w| w.relaxed != relaxed);
    if switch && let Some(w) = conn.as_mut() {
        let set = if relaxed {
            "SET synchronous_commit = off"
        } else {
            "SET synchronous_commit = on"
        };
        match sqlx::raw_sql(set).execute(&mut w.conn).await {
            Ok(_) => w.relaxed = relaxed,
            Err(e) => {
                // Not knowing its setting, the connection is not used again.
                *conn = None;
                return Err(e.into());
            }
        }
    }
    conn.as_mut()
        .map(|w| &mut w.conn)
        .ok_or(StoreError::Unavailable(sqlx::Error::PoolClosed))
}

/// One organisation's share of a batch: its events' jobs.
type OrgJobs = (Uuid, Vec<AuditJob>);

/// Per event of one organisation's share: its (seq, hash), or None if its checks failed.
type Assigned = Vec<Option<(u64, [u8; 32])>>;

/// Append one batch and answer each of its requests. A batch of several organisations'
/// events (a node serving many tenants) is appended in one transaction, one call per
/// organisation taking its chain's lock in organisation order, so it costs one commit and
/// one WAL flush instead of one per organisation. If that fails before the commit was sent,
/// nothing was appended, and each organisation is tried again in a transaction of its own.
/// Returns whether anything was committed.
async fn append_batch(
    w: &Writing<'_>,
    conn: &mut Option<WriterConn>,
    heads: &mut crate::chain::Heads,
    batch: Vec<AuditJob>,
    relaxed: bool,
) -> bool {
    let (pool, values) = (w.pool, w.values);
    let mut by_org: std::collections::BTreeMap<Uuid, Vec<AuditJob>> = Default::default();
    for job in batch {
        by_org.entry(job.0.org_id).or_default().push(job);
    }
    let mut groups: Vec<OrgJobs> = Vec::with_capacity(by_org.len());
    for (org, jobs) in by_org {
        // A read of another organisation cannot be confirmed in this one's transaction.
        let (jobs, foreign): (Vec<AuditJob>, Vec<AuditJob>) = jobs
            .into_iter()
            .partition(|(_, checks, _)| checks.iter().all(|c| c.org_id == org));
        for (_, _, reply) in foreign {
            let _ = reply.send(Ok(None));
        }
        if !jobs.is_empty() {
            groups.push((org, jobs));
        }
    }
    if groups.len() > 1 {
        match append_together(w, conn, heads, &groups, relaxed).await {
            Together::Committed(results, learned) => {
                lock(w.dict).merge(learned);
                for ((org, jobs), assigned) in groups.into_iter().zip(results) {
                    answer(heads, values, org, jobs, Ok(assigned));
                }
                return true;
            }
            Together::CommitUnknown(e) => {
                tracing::error!(error = %e, "audit batch commit failed");
                *conn = None;
                for (org, jobs) in groups {
                    answer(heads, values, org, jobs, Err(StoreError::CommitFailed));
                }
                return false;
            }
            Together::NotAppended(e) => {
                tracing::warn!(error = %e, "audit batch of several organisations failed; appending each alone");
                // The connection may still be inside the failed transaction: a new one.
                *conn = None;
            }
        }
    }
    let mut committed = false;
    for (org, jobs) in groups {
        let events: Vec<&NewAuditEvent> = jobs.iter().map(|(e, _, _)| e).collect();
        let checks: Vec<&[ReadCheck]> = jobs.iter().map(|(_, c, _)| c.as_slice()).collect();
        let head = heads.get(&org).copied();
        let appended = match writer_connection(pool, conn, relaxed).await {
            Ok(c) => append_audit_batch(c, w.dict, org, head, &events, &checks).await,
            Err(e) => Err(e),
        };
        let appended = match appended {
            Ok((assigned, learned)) => {
                // Outside a transaction, the texts were interned by a statement of their own.
                lock(w.dict).merge(learned);
                committed = true;
                Ok(assigned)
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch failed");
                // The connection may be broken (a database restart): open a new one next,
                // and trust no id learned before (the database may have lost commits that
                // were not yet flushed).
                *conn = None;
                lock(w.dict).clear();
                Err(e)
            }
        };
        answer(heads, values, org, jobs, appended);
    }
    committed
}

/// How appending several organisations' events in one transaction ended.
enum Together {
    /// With the texts interned in the transaction.
    Committed(Vec<Assigned>, Dictionary),
    /// Failed before COMMIT was sent: nothing was appended.
    NotAppended(StoreError),
    /// COMMIT was sent but not acknowledged: the events may or may not be there.
    CommitUnknown(StoreError),
}

async fn append_together(
    w: &Writing<'_>,
    conn: &mut Option<WriterConn>,
    heads: &crate::chain::Heads,
    groups: &[OrgJobs],
    relaxed: bool,
) -> Together {
    let c = match writer_connection(w.pool, conn, relaxed).await {
        Ok(c) => c,
        Err(e) => return Together::NotAppended(e),
    };
    let appended = async {
        sqlx::raw_sql("BEGIN").execute(&mut *c).await?;
        let mut out = Vec::with_capacity(groups.len());
        let mut learned = Dictionary::default();
        for (org, jobs) in groups {
            let events: Vec<&NewAuditEvent> = jobs.iter().map(|(e, _, _)| e).collect();
            let checks: Vec<&[ReadCheck]> = jobs.iter().map(|(_, c, _)| c.as_slice()).collect();
            let head = heads.get(org).copied();
            let (assigned, l) = append_audit_batch(c, w.dict, *org, head, &events, &checks).await?;
            out.push(assigned);
            learned.merge(l);
        }
        Ok::<_, StoreError>((out, learned))
    }
    .await;
    match appended {
        Err(e) => Together::NotAppended(e),
        Ok((out, learned)) => match sqlx::raw_sql("COMMIT").execute(&mut *c).await {
            Ok(_) => Together::Committed(out, learned),
            Err(e) => Together::CommitUnknown(e.into()),
        },
    }
}

/// Answer one organisation's requests and remember where its chain now ends.
fn answer(
    heads: &mut crate::chain::Heads,
    values: &cache::ValueCache,
    org: Uuid,
    jobs: Vec<AuditJob>,
    appended: Result<Assigned, StoreError>,
) {
    match appended {
        Ok(assigned) => {
            match assigned.iter().rev().flatten().next() {
                Some(last) => {
                    heads.insert(org, *last);
                }
                None => {
                    heads.remove(&org);
                }
            }
            for ((_, checks, reply), r) in jobs.into_iter().zip(assigned) {
                if r.is_none() {
                    // A cached read no longer holds: read it afresh next time.
                    for c in &checks {
                        values.forget(c.org_id, &c.name);
                    }
                }
                let _ = reply.send(Ok(r));
            }
        }
        Err(_) => {
            heads.remove(&org);
            for (_, _, reply) in jobs {
                let _ = reply.send(Err(StoreError::CommitFailed));
            }
        }
    }
}

/// Append one event in the caller's transaction (a change's event; no proposal, so the
/// database computes the link).
pub(super) async fn append_one(
    conn: &mut PgConnection,
    dict: &std::sync::Mutex<Dictionary>,
    e: &NewAuditEvent,
) -> Result<(u64, [u8; 32]), StoreError> {
    // What it interns is not kept: whether the caller's transaction commits is the caller's.
    let (appended, _) = append_audit_batch(conn, dict, e.org_id, None, &[e], &[&[]]).await?;
    match appended.as_slice() {
        [Some(at)] => Ok(*at),
        _ => Err(StoreError::CommitFailed),
    }
}

/// What the audit writer works with besides its connection.
struct Writing<'a> {
    pool: &'a PgPool,
    values: &'a cache::ValueCache,
    dict: &'a std::sync::Mutex<Dictionary>,
}

/// Intern on `conn` the texts of `events` that `dict` does not know, and give each event its
/// stored body. Also returns what was interned: ids the caller may keep in `dict` once the
/// statement that interned them is known committed.
pub(super) async fn pack(
    conn: &mut PgConnection,
    dict: &std::sync::Mutex<Dictionary>,
    events: &[&NewAuditEvent],
) -> Result<(Vec<Vec<u8>>, Dictionary), StoreError> {
    let plan = Plan::new(events);
    let needs = plan.needs(&lock(dict), &Dictionary::default());
    let learned = intern(conn, needs).await?;
    let packed = plan.pack(&lock(dict), &learned)?;
    Ok((packed.into_iter().map(|(_, body)| body).collect(), learned))
}

/// Intern on `conn` what a batch needs, one call per organisation (none if nothing is
/// needed); returns the chains' and texts' ids.
pub(super) async fn intern(
    conn: &mut PgConnection,
    needs: Needs,
) -> Result<Dictionary, StoreError> {
    let mut learned = Dictionary::default();
    for (org, n) in needs.orgs {
        let (digests, texts): (Vec<Vec<u8>>, Vec<String>) =
            n.texts.into_iter().map(|(d, t)| (d.to_vec(), t)).unzip();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT coffer_audit_intern($1, $2, $3)")
            .bind(DbId(org))
            .bind(&digests)
            .bind(&texts)
            .fetch_one(&mut *conn)
            .await?;
        let (chain, ids) = ids.split_first().ok_or(StoreError::Corrupt)?;
        if ids.len() != digests.len() {
            return Err(StoreError::Corrupt);
        }
        learned.learn_chain(org, *chain);
        for (d, id) in digests.iter().zip(ids) {
            let d: [u8; 32] = d.as_slice().try_into().map_err(|_| StoreError::Corrupt)?;
            learned.learn_string(org, d, *id);
        }
    }
    Ok(learned)
}

/// Append one organisation's events in one statement; returns (seq, hash) per event, in
/// order, or None for an event whose checks failed (not appended), and the texts interned
/// for them (see [`pack`]).
async fn append_audit_batch(
    conn: &mut PgConnection,
    dict: &std::sync::Mutex<Dictionary>,
    org: Uuid,
    head: Option<(u64, [u8; 32])>,
    events: &[&NewAuditEvent],
    checks: &[&[ReadCheck]],
) -> Result<(Assigned, Dictionary), StoreError> {
    let (packed, learned) = pack(conn, dict, events).await?;
    let cols = AuditColumns::of(events);
    let cc = CheckColumns::of(checks);
    // The links the events get if nobody appended since `head`, as verification computes them.
    let proposed = match head {
        Some(h) => Some((
            h,
            crate::chain::assign(events, &mut crate::chain::Heads::from([(org, h)]))?,
        )),
        None => None,
    };
    let assigned: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT coffer_append_audit_packed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17)",
    )
    .bind(DbId(org))
    .bind(coffer_crypto::audit::GENESIS.as_slice())
    .bind(&cols.time)
    .bind(&cols.action)
    .bind(&cols.actor)
    .bind(&cols.outcome)
    .bind(&cols.target)
    .bind(&cols.body)
    .bind(&packed)
    .bind(&cc.event)
    .bind(&cc.env)
    .bind(&cc.name)
    .bind(&cc.param)
    .bind(&cc.version)
    .bind(proposed.as_ref().map(|((seq, _), _)| db_int(*seq)))
    .bind(proposed.as_ref().map(|((_, hash), _)| hash.as_slice()))
    .bind(proposed.as_ref().map(|(_, links)| {
        links
            .iter()
            .map(|(_, _, h)| h.as_slice())
            .collect::<Vec<_>>()
    }))
    .fetch_one(&mut *conn)
    .await?;
    if assigned.is_empty()
        && !events.is_empty()
        && let Some((_, links)) = proposed
    {
        // Stored as proposed.
        let assigned = links
            .into_iter()
            .map(|(seq, _, h)| Some((seq, h)))
            .collect();
        return Ok((assigned, learned));
    }
    if assigned.len() != events.len() {
        return Err(StoreError::CommitFailed);
    }
    let assigned = assigned
        .into_iter()
        .map(|a| {
            a.map(|bytes| {
                let (seq, hash) = bytes.split_at_checked(8).ok_or(StoreError::Corrupt)?;
                let seq = i64::from_be_bytes(seq.try_into().map_err(|_| StoreError::Corrupt)?);
                Ok((
                    u64::try_from(seq).map_err(|_| StoreError::Corrupt)?,
                    <[u8; 32]>::try_from(hash).map_err(|_| StoreError::Corrupt)?,
                ))
            })
            .transpose()
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((assigned, learned))
}

/// A batch's read checks as one array per column, one element per environment to check
/// (all of one organisation: the batch's).
#[derive(Default)]
struct CheckColumns<'a> {
    event: Vec<i32>,
    env: Vec<&'a [u8]>,
    name: Vec<&'a str>,
    param: Vec<Option<&'a [u8]>>,
    version: Vec<i64>,
}

impl<'a> CheckColumns<'a> {
    fn of(checks: &[&'a [ReadCheck]]) -> Self {
        let mut cc = CheckColumns::default();
        for (event, of_event) in checks.iter().enumerate() {
            let event = i32::try_from(event + 1).unwrap_or(i32::MAX);
            for c in *of_event {
                for (level, env) in c.envs.iter().enumerate() {
                    // Nearer environments must still not define the name; the last one
                    // must still hold this version.
                    let found = level + 1 == c.envs.len();
                    cc.event.push(event);
                    cc.env.push(env.as_bytes().as_slice());
                    cc.name.push(&c.name);
                    cc.param
                        .push(found.then(|| c.param_id.as_bytes().as_slice()));
                    cc.version.push(if found { db_int(c.version) } else { 0 });
                }
            }
        }
        cc
    }
}

/// A batch's events as one array per column, for `coffer_append_audit_packed`.
struct AuditColumns<'a> {
    time: Vec<i64>,
    action: Vec<&'a str>,
    actor: Vec<Option<&'a [u8]>>,
    outcome: Vec<&'a str>,
    target: Vec<&'a str>,
    body: Vec<&'a str>,
}

impl<'a> AuditColumns<'a> {
    fn of(events: &[&'a NewAuditEvent]) -> Self {
        AuditColumns {
            time: events.iter().map(|e| e.time).collect(),
            action: events.iter().map(|e| e.action.as_str()).collect(),
            actor: events
                .iter()
                .map(|e| e.actor_id.as_ref().map(|a| a.as_bytes().as_slice()))
                .collect(),
            outcome: events.iter().map(|e| e.outcome.as_str()).collect(),
            target: events.iter().map(|e| e.target.as_str()).collect(),
            body: events.iter().map(|e| e.body.as_str()).collect(),
        }
    }
}
