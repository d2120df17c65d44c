//! Tenant key lifecycle: rotation, the rewrap job, destruction of retired terms and
//! automatic rotation. The state machine is in docs/crypto.md.
//!
//! A rotation adds a term and makes it the one new values are sealed under, at once (the
//! store refuses values sealed under an older term). The job then moves every stored value
//! to the new term in batches, rewrapping only its data key: values are never decrypted.
//! Each batch commits the rewrapped ciphertexts together with the job's cursor, so a job
//! killed at any point resumes after its last committed batch. A term is destroyed once no
//! value uses it and its successor is older than the key cache lifetime of every node.

use std::time::Duration;

use coffer_crypto::{KeyTerm, RecordContext, TenantKey};
use coffer_store::{Invalidation, Rewrapped, RotationRow, StoreError, TenantKeyRow};
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx, Pending};
use crate::clock::now_ms;
use crate::external::WrapTarget;
use crate::kernel::Kernel;
use crate::members::ensure_admin;
use crate::{CoreError, Principal};
/// The audit actions of tenant keys.
pub mod action {
    use crate::audit::Action;
    pub const STATUS: Action = Action::read("key.status");
    pub const ROTATE: Action = Action::change("key.rotate").answered(202);
    pub const ATTACH_EXTERNAL: Action = Action::change("key.attach_external").answered(202);
    pub const DETACH_EXTERNAL: Action = Action::change("key.detach_external").answered(202);
    // Done by the service itself (actor `system`).
    pub const ROTATED: Action = Action::change("key.rotated");
    pub const REWRAP_FINISHED: Action = Action::change("key.rewrap_finished");
    pub const TERMS_DESTROYED: Action = Action::change("key.terms_destroyed");
}

/// One term of an organisation's key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TermView {
    pub term: u32,
    pub created_at: i64,
    /// Stored values sealed under this term.
    pub values: u64,
    pub active: bool,
    /// `root`, or the external key (`awskms:…`, `pkcs11:…`) that wraps this term.
    pub wrapped_by: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RotationView {
    pub target_term: u32,
    pub reason: String,
    pub total: u64,
    pub done: u64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    pub active_term: u32,
    /// The organisation's own key that wraps new terms, if attached.
    pub external_key: Option<String>,
    pub terms: Vec<TermView>,
    pub rotation: Option<RotationView>,
    /// Automatic rotation policy.
    pub rotate_after_days: u64,
    pub rotate_after_encryptions: u64,
}

impl From<RotationRow> for RotationView {
    fn from(r: RotationRow) -> Self {
        Self {
            target_term: r.target_term.0,
            reason: r.reason,
            total: r.total,
            done: r.done,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// Tenant keys: their status, rotation, the rewrap job and destruction of retired terms,
/// and organisations' own keys (`external`).
pub struct Keys {
    pub(crate) k: std::sync::Arc<Kernel>,
    pub(crate) keys: std::sync::Arc<dyn coffer_store::KeyRepo>,
    pub(crate) tenants: std::sync::Arc<dyn coffer_store::TenantRepo>,
    /// Wakes the key maintenance job (a rotation was requested).
    pub(crate) key_job: tokio::sync::Notify,
    /// One key maintenance run at a time on this node (the background job and an explicit
    /// call would otherwise rewrap the same batches twice).
    pub(crate) key_maintenance: tokio::sync::Mutex<()>,
}

impl Keys {
    pub(crate) fn new(
        k: std::sync::Arc<Kernel>,
        keys: std::sync::Arc<dyn coffer_store::KeyRepo>,
        tenants: std::sync::Arc<dyn coffer_store::TenantRepo>,
    ) -> Self {
        Self {
            k,
            keys,
            tenants,
            key_job: tokio::sync::Notify::new(),
            key_maintenance: tokio::sync::Mutex::new(()),
        }
    }
}

impl Keys {
    /// The caller's organisation's key terms and rotation progress (Owner, Admin).
    pub async fn key_status(&self, cx: &Cx, p: &Principal) -> Result<KeyStatus, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::STATUS, AuditTarget::default());
        let r: Result<KeyStatus, CoreError> = async {
            ensure_admin(p)?;
            self.org_key_status(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Start a rotation of the caller's organisation's key (Owner, Admin).
    pub async fn rotate_key(&self, cx: &Cx, p: &Principal) -> Result<KeyStatus, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::ROTATE, AuditTarget::default());
        let r: Result<KeyStatus, CoreError> = async {
            ensure_admin(p)?;
            self.rotate_org_key_to(p.org_id, "manual", WrapTarget::Current, Some(&mut pending))
                .await?;
            self.org_key_status(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    pub async fn org_key_status(&self, org_id: Uuid) -> Result<KeyStatus, CoreError> {
        self.k.ensure_unsealed()?;
        // The job first: a finished job then always comes with the counts it finished with
        // (they are read after its commit), never with older ones.
        let rotation = self.keys.rotation(org_id).await?;
        let keys = self.tenants.tenant_keys(org_id).await?;
        let usage = self.keys.term_usage(org_id).await?;
        let active = keys
            .iter()
            .map(|k| k.term)
            .max()
            .ok_or(CoreError::Integrity)?;
        let terms = keys
            .iter()
            .map(|k| TermView {
                term: k.term.0,
                created_at: k.created_at,
                values: usage
                    .iter()
                    .find(|(t, _)| *t == k.term)
                    .map_or(0, |(_, n)| *n),
                active: k.term == active,
                wrapped_by: k
                    .wrapped
                    .external_blob()
                    .map_or_else(|| "root".to_owned(), |w| w.reference.to_owned()),
            })
            .collect();
        Ok(KeyStatus {
            active_term: active.0,
            external_key: self.tenants.external_key(org_id).await?,
            terms,
            rotation: rotation.map(Into::into),
            rotate_after_days: self.k.config().key_rotate_after.as_secs() / 86_400,
            rotate_after_encryptions: self.k.config().key_rotate_after_encryptions,
        })
    }

    /// Add a new term to an organisation's key; new values use it at once. The rewrap job
    /// (on the leader node) moves existing values to it. Done by the service itself (the
    /// rotation policy): recorded as `key.rotated` by `system`, with the rotation.
    pub async fn rotate_org_key(&self, org_id: Uuid, reason: &str) -> Result<KeyTerm, CoreError> {
        let mut pending = self.k.begin_system(
            org_id,
            action::ROTATED,
            serde_json::json!({ "reason": reason }),
        );
        let r = self
            .rotate_org_key_to(org_id, reason, WrapTarget::Current, Some(&mut pending))
            .await;
        self.k.conclude(pending, r).await
    }

    /// [`Keys::rotate_org_key`], with the new term wrapped by `target`, recorded by
    /// `pending`'s event (which gains the new term).
    pub(crate) async fn rotate_org_key_to(
        &self,
        org_id: Uuid,
        reason: &str,
        target: WrapTarget,
        mut pending: Option<&mut Pending>,
    ) -> Result<KeyTerm, CoreError> {
        // A second attempt covers a stale key cache (another node rotated meanwhile).
        for _ in 0..2 {
            let current = self.k.org_keys(org_id).await?;
            // Not held across `org_keys`, which takes it too (a queued rotation would
            // otherwise deadlock a nested read).
            let root_guard = self.k.root_stable().await;
            let next = KeyTerm(current.active()?.term().0.saturating_add(1));
            let key = TenantKey::generate(next);
            let wrapped = self.k.wrap_new_term(org_id, &key, &target).await?;
            let row = TenantKeyRow {
                org_id,
                term: next,
                wrapped,
                created_at: now_ms(),
            };
            let event = match pending.as_deref_mut() {
                Some(p) => {
                    p.note("term", next.0);
                    Some(p.change_event()?)
                }
                None => None,
            };
            let outcome = self.keys.rotate_tenant_key(&row, reason, event).await;
            drop(root_guard);
            self.k.keyring.evict(Some(org_id));
            match outcome {
                Ok(_) => {
                    self.k.publish(Invalidation::Keys(org_id));
                    self.key_job.notify_one();
                    tracing::info!(org_id = %org_id, term = next.0, reason, "tenant key rotated");
                    return Ok(next);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict)
    }

    /// Resolves when a rotation was requested on this node or announced by another.
    pub async fn key_job_requested(&self) {
        self.key_job.notified().await;
    }

    /// The key maintenance job (leader only): finish rewraps, destroy retired terms, and
    /// start rotations that the age or usage policy calls for. Returns values rewrapped.
    pub async fn run_key_maintenance(&self) -> Result<u64, CoreError> {
        self.k.ensure_unsealed()?;
        let _one_at_a_time = self.key_maintenance.lock().await;
        let mut moved = 0;
        let mut failed = None;
        for org in self.tenants.org_ids().await? {
            match self.maintain_org_keys(org).await {
                Ok(n) => moved += n,
                // Its own key is revoked or unreachable: the others carry on.
                Err(CoreError::TenantKeyUnavailable) => {}
                // The organisation was deleted meanwhile.
                Err(CoreError::Integrity) if self.tenants.org(org).await?.is_none() => {}
                // Without the database nothing else will work either.
                Err(e @ CoreError::Unavailable(_)) => return Err(e),
                // One organisation's trouble (a corrupt record, say) must not hold back the
                // rotations and rewraps of all the others: report it once the rest is done.
                Err(e) => {
                    tracing::error!(org_id = %org, error = %e, "key maintenance failed for an organisation");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    async fn maintain_org_keys(&self, org_id: Uuid) -> Result<u64, CoreError> {
        let moved = self.rewrap_org(org_id).await?;
        let rotation = self.keys.rotation(org_id).await?;
        if rotation.as_ref().is_none_or(|r| r.finished_at.is_some()) {
            self.destroy_retired_terms(org_id).await?;
            if let Some(reason) = self.rotation_due(org_id, rotation.as_ref()).await? {
                match self.rotate_org_key(org_id, reason).await {
                    Ok(_) | Err(CoreError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(moved)
    }

    /// Destroy the terms of the organisation's key that no value uses any more (and whose
    /// successor is old enough), recorded as `key.terms_destroyed` with the deletion.
    async fn destroy_retired_terms(&self, org_id: Uuid) -> Result<(), CoreError> {
        let grace = i64::try_from(self.retire_grace().as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(grace);
        let retired = self.keys.retired_terms(org_id, before).await?;
        if retired.is_empty() {
            return Ok(());
        }
        let terms: Vec<u32> = retired.iter().map(|t| t.0).collect();
        let mut pending = self.k.begin_system(
            org_id,
            action::TERMS_DESTROYED,
            serde_json::json!({ "terms": terms }),
        );
        let r = match self
            .keys
            .destroy_retired_keys(org_id, before, &retired, Some(pending.change_event()?))
            .await
        {
            // Something changed in between (a value written under a term): next run.
            Err(StoreError::Conflict) => return Ok(()),
            r => r.map_err(CoreError::from),
        };
        if r.is_ok() {
            self.k.keyring.evict(Some(org_id));
            self.k.publish(Invalidation::Keys(org_id));
            tracing::info!(org_id = %org_id, ?terms, "retired tenant key terms destroyed");
        }
        self.k.conclude(pending, r).await
    }

    /// Retired terms live on until every node's cached copy of the key set has expired, so
    /// that no node can still seal a value under one.
    fn retire_grace(&self) -> Duration {
        self.k.config().key_cache_ttl.saturating_mul(2) + Duration::from_secs(1)
    }

    async fn rotation_due(
        &self,
        org_id: Uuid,
        last: Option<&RotationRow>,
    ) -> Result<Option<&'static str>, CoreError> {
        let keys = self.tenants.tenant_keys(org_id).await?;
        let Some(active) = keys.iter().max_by_key(|k| k.term) else {
            return Ok(None);
        };
        let age = now_ms().saturating_sub(active.created_at);
        let max_age =
            i64::try_from(self.k.config().key_rotate_after.as_millis()).unwrap_or(i64::MAX);
        if age >= max_age {
            return Ok(Some("age"));
        }
        let used = self
            .keys
            .term_usage(org_id)
            .await?
            .into_iter()
            .find(|(t, _)| *t == active.term)
            .map_or(0, |(_, n)| n);
        // Values moved here by the rewrap job count against the nonce budget too, but only
        // new writes trigger a rotation: an organisation with more values than the limit
        // would otherwise rotate forever.
        let rewrapped = last
            .filter(|r| r.target_term == active.term)
            .map_or(0, |r| r.done);
        let limit = self.k.config().key_rotate_after_encryptions;
        if used.saturating_sub(rewrapped) >= limit {
            return Ok(Some("usage"));
        }
        if used >= limit {
            tracing::warn!(org_id = %org_id, values = used, limit, "organisation holds more values than one key term should seal");
        }
        Ok(None)
    }

    /// Run the organisation's unfinished rewrap job to the end. Values are not decrypted:
    /// each data key is unwrapped with its old term and wrapped with the new one.
    async fn rewrap_org(&self, org_id: Uuid) -> Result<u64, CoreError> {
        let Some(job) = self.keys.rotation(org_id).await? else {
            return Ok(0);
        };
        if job.finished_at.is_some() {
            return Ok(0);
        }
        let target = job.target_term;
        let mut cursor = job.cursor;
        let mut moved = 0u64;
        loop {
            let batch = self
                .keys
                .rewrap_batch(org_id, target, cursor, self.k.config().rewrap_batch)
                .await?;
            let last = batch.last().map(|i| i.credential_id).or(cursor);
            let finished = (batch.len() < self.k.config().rewrap_batch as usize).then(now_ms);
            let keys = self
                .k
                .org_keys_covering(
                    org_id,
                    batch
                        .iter()
                        .map(|i| i.ciphertext.key_term())
                        .chain(std::iter::once(target)),
                )
                .await?;
            let rewrapped = tokio::task::spawn_blocking(move || {
                let new = keys.term(target)?;
                batch
                    .iter()
                    .map(|it| {
                        let old_term = it.ciphertext.key_term();
                        let old = keys.term(old_term)?;
                        let ctx = RecordContext {
                            org_id,
                            record_id: it.param_id,
                            version: it.version,
                        };
                        let ciphertext = old.rewrap(new, &ctx, &it.ciphertext).map_err(|_| {
                            tracing::error!(param_id = %it.param_id, version = it.version, "stored ciphertext failed authentication during rewrap");
                            CoreError::Integrity
                        })?;
                        Ok(Rewrapped {
                            credential_id: it.credential_id,
                            old_term,
                            ciphertext,
                        })
                    })
                    .collect::<Result<Vec<_>, CoreError>>()
            })
            .await
            .map_err(|_| CoreError::Internal("rewrap task"))??;
            // The last batch commits with the job's event.
            let mut pending = finished.map(|_| {
                self.k.begin_system(
                    org_id,
                    action::REWRAP_FINISHED,
                    serde_json::json!({ "term": target.0, "values": job.total }),
                )
            });
            let event = match pending.as_mut() {
                Some(p) => Some(p.change_event()?),
                None => None,
            };
            match self
                .keys
                .apply_rewrap(org_id, target, &rewrapped, last, finished, event)
                .await
            {
                Ok(n) => moved += n,
                // A newer rotation superseded this job; the next run follows that one.
                Err(StoreError::Conflict) => return Ok(moved),
                // Nothing changed (the job resumes from its cursor next run).
                Err(e) => return Err(e.into()),
            }
            cursor = last;
            if let Some(p) = pending {
                tracing::info!(org_id = %org_id, term = target.0, moved, "rewrap finished");
                return self.k.conclude(p, Ok(moved)).await;
            }
            let pause = self.k.config().rewrap_pause;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl std::fmt::Debug for Keys {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}
