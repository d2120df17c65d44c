//! The parameter and audit repositories on PostgreSQL: shared statements in transactions
//! scoped to the organisation, and the hot paths as plpgsql calls (docs/adr/0004).

use super::*;

#[async_trait]
impl ParamRepo for PgStore {
    async fn param(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param(&mut tx, org_id, env_id, name).await
        })
    }

    async fn param_state(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<(ParamRow, bool)>, StoreError> {
        sqlx::query("SELECT * FROM coffer_param_state($1, $2, $3)")
            .bind(DbId(org_id))
            .bind(DbId(env_id))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Ok((param_row(&r)?, r.flag("is_secret")?)))
            .transpose()
    }

    async fn current_value(
        &self,
        org_id: Uuid,
        env_id: Uuid,
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::current_value(&mut tx, org_id, env_id, name).await
        })
    }

    async fn nearest_value(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<Option<ParamValue>, StoreError> {
        let found = self.reads.nearest(org_id, env_chain, name).await?;
        self.values.put(org_id, env_chain, name, found.as_ref());
        Ok(found)
    }

    async fn nearest_value_cached(
        &self,
        org_id: Uuid,
        env_chain: &[Uuid],
        name: &str,
    ) -> Result<(Option<ParamValue>, Option<ReadCheck>), StoreError> {
        if let Some((value, check)) = self.values.get(org_id, env_chain, name) {
            return Ok((Some(value), Some(check)));
        }
        Ok((self.nearest_value(org_id, env_chain, name).await?, None))
    }

    async fn current_values(
        &self,
        org_id: Uuid,
        env_ids: &[Uuid],
    ) -> Result<Vec<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::current_values(&mut tx, org_id, env_ids).await
        })
    }

    async fn param_version(
        &self,
        org_id: Uuid,
        param_id: Uuid,
        version: u64,
    ) -> Result<Option<ParamValue>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param_version(&mut tx, org_id, param_id, version).await
        })
    }

    async fn param_history(
        &self,
        org_id: Uuid,
        param_id: Uuid,
    ) -> Result<Vec<ParamVersionRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            params::param_history(&mut tx, org_id, param_id).await
        })
    }

    async fn append_param_version(&self, w: &ParamWrite) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let outcome = match self.writes.send((w.clone(), reply)).await {
            Ok(()) => answer.await.unwrap_or(Err(StoreError::CommitFailed)),
            Err(_) => Err(StoreError::CommitFailed),
        };
        // Forgotten whatever the outcome: a conflict means another writer changed it.
        self.values.forget(w.org_id, &w.name);
        outcome
    }
}

#[async_trait]
impl AuditRepo for PgStore {
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<(u64, [u8; 32]), StoreError> {
        self.append_audit_checked(e, &[], Durability::Stable)
            .await?
            .ok_or(StoreError::CommitFailed)
    }

    async fn append_audit_checked(
        &self,
        e: &NewAuditEvent,
        checks: &[ReadCheck],
        durability: Durability,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.audit
            .send(((e.clone(), checks.to_vec(), reply), durability))
            .await
            .map_err(|_| StoreError::CommitFailed)?;
        answer.await.map_err(|_| StoreError::CommitFailed)?
    }

    async fn audit_events(
        &self,
        org_id: Uuid,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            audit::audit_events(&mut tx, org_id, f).await
        })
    }

    async fn audit_head(&self, org_id: Uuid) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        audit::audit_head(&mut self.reads(), org_id).await
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        scoped!(self.begin(Scope::Org(c.org_id)), |tx| {
            audit::insert_checkpoint(&mut tx, c).await?;
            // Which chains still need a checkpoint is read from the head row.
            Stmt::new(
                "UPDATE audit_heads SET checkpoint_seq = GREATEST(checkpoint_seq, $2) WHERE org_id = $1",
            )
            .bind(c.org_id)
            .bind(db_int(c.seq))
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn checkpoints(&self, org_id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        scoped!(self.begin_read(Scope::Org(org_id)), |tx| {
            audit::checkpoints(&mut tx, org_id).await
        })
    }

    async fn audit_key(&self) -> Result<Option<AuditKeyRow>, StoreError> {
        audit::audit_key(&mut self.reads()).await
    }

    async fn init_audit_key(&self, k: &AuditKeyRow) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        self.ensure_root(&mut tx).await?;
        audit::init_audit_key(&mut tx, k).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn orgs_needing_checkpoint(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT org_id FROM audit_heads WHERE seq > checkpoint_seq")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| uuid_col(r, "org_id"))
            .collect()
    }

    async fn store_signed_heads(&self, heads: &[CheckpointRow]) -> Result<(), StoreError> {
        audit::store_signed_heads(self, heads).await
    }

    async fn signed_head(&self, org_id: Uuid) -> Result<Option<CheckpointRow>, StoreError> {
        audit::signed_head(&mut self.reads(), org_id).await
    }
}

/// One call of `coffer_append_version` (migration 0011): the whole write, one round trip,
/// its own transaction. The value must be sealed under the organisation's newest term; the
/// function checks that under a share lock on the organisation row, which orders the write
/// against a rotation (which takes it exclusively): a write either commits before the new
/// term exists (and the rewrap job sees it) or sees it.
/// One parameter write (with its audit event, when it has one) as one statement: both
/// commit or neither does (migration 0012). Answers 'ok', 'conflict' or 'stale_term'.
/// `packed`: the event's stored body (see `audit_writer::pack`).
pub(super) fn version_statement<'a>(
    w: &'a ParamWrite,
    packed: Option<&'a [u8]>,
) -> sqlx::query::QueryScalar<'a, sqlx::Postgres, String, sqlx::postgres::PgArguments> {
    let v = &w.version;
    let q = sqlx::query_scalar(match w.event {
        None => {
            "SELECT coffer_append_version($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        }
        // With its audit event (migrations 0012, 0013, 0014): both in the one statement's
        // transaction, answering where the event went.
        Some(_) => {
            "SELECT coffer_append_version_audited_packed($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
        }
    })
    .bind(DbId(w.org_id))
    .bind(DbId(w.env_id))
    .bind(DbId(w.param_id))
    .bind(&w.name)
    .bind(db_int(w.expected_current))
    .bind(db_int(v.version))
    .bind(v.action == VersionAction::Delete)
    .bind(v.created_at)
    .bind(DbId(w.credential_id))
    .bind(w.ciphertext.as_ref().map(|ct| ct.as_bytes()))
    .bind(w.ciphertext.as_ref().map(|ct| i64::from(ct.key_term().0)))
    .bind(v.is_secret)
    .bind(v.action.as_str())
    .bind(DbId(v.actor_id));
    match &w.event {
        None => q,
        Some(e) => {
            let e = &e.event;
            q.bind(coffer_crypto::audit::GENESIS.as_slice())
                .bind(e.time)
                .bind(&e.action)
                .bind(e.actor_id.map(DbId))
                .bind(&e.outcome)
                .bind(&e.target)
                .bind(&e.body)
                .bind(packed)
        }
    }
}

/// What a write's statement answered, once its transaction committed.
pub(super) fn version_outcome(w: &ParamWrite, outcome: &str) -> Result<(), StoreError> {
    match (outcome, &w.event) {
        ("ok", None) => Ok(()),
        (ok, Some(e)) if ok.starts_with("ok:") => {
            e.mark_committed(Some(event_position(&ok[3..])?));
            Ok(())
        }
        ("conflict", _) => Err(StoreError::Conflict),
        ("stale_term", _) => Err(StoreError::StaleKeyTerm),
        _ => Err(StoreError::Corrupt),
    }
}

/// An event's (seq, hash) as plpgsql answers it: hex of the 8-byte big-endian sequence
/// number and the 32-byte hash.
fn event_position(hex_at: &str) -> Result<(u64, [u8; 32]), StoreError> {
    let bytes = hex::decode(hex_at).map_err(|_| StoreError::Corrupt)?;
    let (seq, hash) = bytes.split_at_checked(8).ok_or(StoreError::Corrupt)?;
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| StoreError::Corrupt)?);
    Ok((seq, hash.try_into().map_err(|_| StoreError::Corrupt)?))
}

/// The stored body of each write's event, its texts interned on `pool` first if any are
/// new (each intern its own transaction, so the ids are kept).
pub(super) async fn pack_writes(
    pool: &PgPool,
    dict: &std::sync::Mutex<crate::audit_pack::Dictionary>,
    writes: &[&ParamWrite],
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let events: Vec<&NewAuditEvent> = writes
        .iter()
        .filter_map(|w| w.event.as_ref().map(|e| &e.event))
        .collect();
    if events.is_empty() {
        return Ok(vec![None; writes.len()]);
    }
    use crate::audit_pack::{Dictionary, Plan, lock};
    let plan = Plan::new(&events);
    let needs = plan.needs(&lock(dict), &Dictionary::default());
    // A connection only when something is not interned yet (rare once the node is warm).
    let learned = if needs.orgs.is_empty() {
        Dictionary::default()
    } else {
        super::audit_writer::intern(&mut *pool.acquire().await?, needs).await?
    };
    let packed = plan.pack(&lock(dict), &learned)?;
    lock(dict).merge(learned);
    let mut packed = packed.into_iter().map(|(_, body)| body);
    Ok(writes
        .iter()
        .map(|w| w.event.as_ref().and_then(|_| packed.next()))
        .collect())
}

/// One write alone, in its own (implicit) transaction.
pub(super) async fn append_version(
    pool: &PgPool,
    w: &ParamWrite,
    packed: Option<&[u8]>,
) -> Result<(), StoreError> {
    let outcome = version_statement(w, packed)
        .fetch_one(pool)
        .await
        .map_err(audit_or_store_error)?;
    version_outcome(w, &outcome)
}

/// A failure inside the audit append of a combined statement is the audit's (the whole
/// statement, the write included, was rolled back); anything else is the write's.
pub(super) fn audit_or_store_error(e: sqlx::Error) -> StoreError {
    let in_audit = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.r#where())
        .is_some_and(|w| w.contains("coffer_append_audit_packed"));
    if in_audit {
        tracing::error!(error = %e, "audit append failed; the write is rolled back");
        StoreError::AuditFailed
    } else {
        e.into()
    }
}
