//! The audit broker: every API operation becomes one event, durably appended to its
//! organisation's hash chain before the response leaves. If the append fails, the caller
//! must not answer with data (fail closed); see `coffer-server`'s audit layer.

mod archive;
mod compact;
mod context;
#[doc(hidden)]
pub mod fuzzing;
pub mod segment;
mod signing;
mod sinks;
mod verify;

use std::collections::BTreeMap;

use coffer_store::{AuditRow, ChangeEvent, NewAuditEvent, ReadCheck};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use archive::{
    ArchivePlan, ArchiveSettings, ArchiveStatus, ArchiveTarget, PruneReport, PrunedChain,
};
pub use coffer_crypto::offline::{Identities, Recipients};
pub use coffer_store::{AuditFilter, CheckpointRow};
pub use compact::compact;
pub use context::{Action, Cx, Forgets, RequestInfo};
pub(crate) use signing::KnownHeads;
pub use sinks::{AuditSinks, SinkHealth};
pub use verify::{EXPORT_FORMAT, ExportLine, Verifier, VerifyProblem, VerifyReport, verify_export};

use crate::clock::now_ms;
use crate::kernel::Kernel;
use crate::{CoreError, ErrorCode, Principal, Role};
/// The audit actions of the audit log itself.
pub mod action {
    use crate::audit::Action;
    pub const LIST: Action = Action::read("audit.list");
    pub const EXPORT: Action = Action::read("audit.export");
    pub const VERIFY: Action = Action::read("audit.verify");
    pub const CHECKPOINT: Action = Action::change("audit.checkpoint");
    pub const LOG: Action = Action::change("audit.log").answered(201);
}

/// Reads a request answered from this node's cache of current values: what its audit
/// append must confirm (`Kernel::conclude_cached_read`). Shared by the handler that reads
/// and the layer that records.
#[derive(Debug, Clone, Default)]
pub struct ReadLog(std::sync::Arc<std::sync::Mutex<Vec<ReadCheck>>>);

impl ReadLog {
    // A poisoned lock still holds every check: losing one would release an unconfirmed read.
    pub(crate) fn push(&self, check: ReadCheck) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(check);
    }

    pub(crate) fn take(&self) -> Vec<ReadCheck> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Who acted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditActor {
    /// `user`, `anonymous`, or `system` (background jobs).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `session`, `password`, or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
}

/// What was acted on; names as given in the request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param_id: Option<Uuid>,
}

impl AuditTarget {
    pub fn path(&self) -> String {
        [&self.project, &self.env, &self.name]
            .iter()
            .filter_map(|s| s.as_deref())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// One audit event, as stored (its JSON is what the chain hashes). Secret values never
/// appear; values that must be correlated appear only as HMACs under the organisation's
/// audit key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub time_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    pub actor: AuditActor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub action: String,
    pub target: AuditTarget,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// True for events written by a customer through the API.
    pub customer: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub hmac: BTreeMap<String, String>,
}

impl AuditEvent {
    /// A new event stamped now.
    pub fn now(action: &str) -> Self {
        let ms = now_ms();
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Self {
            // Time-ordered, so the unique index on event ids grows at its right edge instead
            // of touching a random page per event (the event carries its time anyway).
            id: Uuid::now_v7(),
            time: humantime::format_rfc3339_millis(t).to_string(),
            time_ms: ms,
            request_id: None,
            client_request_id: None,
            org_id: None,
            actor: AuditActor {
                kind: "anonymous".into(),
                ..AuditActor::default()
            },
            source: None,
            user_agent: None,
            action: action.to_owned(),
            target: AuditTarget::default(),
            outcome: "success".into(),
            status: 200,
            error_code: None,
            customer: false,
            detail: None,
            hmac: BTreeMap::new(),
        }
    }
}

/// The stored row of an event (its JSON is what the chain hashes).
pub(crate) fn event_row(ev: &AuditEvent) -> Result<NewAuditEvent, CoreError> {
    let body =
        serde_json::to_string(ev).map_err(|_| CoreError::Internal("serialise audit event"))?;
    Ok(NewAuditEvent {
        org_id: ev.org_id.unwrap_or_else(Uuid::nil),
        id: ev.id,
        time: ev.time_ms,
        action: ev.action.clone(),
        actor_id: ev.actor.id,
        outcome: ev.outcome.clone(),
        target: ev.target.path(),
        body,
        // An event whose template cannot be made is stored as JSON; it is still recorded.
        compact: compact(ev).ok(),
    })
}

/// An operation's event while the operation runs (see `Kernel::begin`).
#[derive(Debug)]
pub(crate) struct Pending {
    pub ev: AuditEvent,
    cx: Cx,
    action: Action,
    change: Option<ChangeEvent>,
}

impl Pending {
    /// The event, as it stands, for the repository method that makes the change: it
    /// commits in the change's transaction. Made again on each call (a retried write
    /// targets another version).
    pub(crate) fn change_event(&mut self) -> Result<&ChangeEvent, CoreError> {
        let mut change = ChangeEvent::new(event_row(&self.ev)?);
        change.notices = self.action.forgets.notices(self.ev.org_id);
        Ok(self.change.insert(change))
    }

    /// The change committed although its commit's answer was lost (the operation checked):
    /// its event committed with it, and must not be appended again.
    pub(crate) fn confirm_committed(&self) {
        if let Some(c) = &self.change {
            c.confirm_committed();
        }
    }

    /// Add `key: value` to the event's detail.
    pub(crate) fn note(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        let detail = self
            .ev
            .detail
            .get_or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(map) = detail {
            map.insert(key.to_owned(), value.into());
        }
    }

    /// The actor is this user (a login, once its first factor is right).
    pub(crate) fn set_actor(&mut self, user: Uuid, username: &str, org: Uuid, method: &str) {
        self.ev.actor = AuditActor {
            kind: "user".into(),
            id: Some(user),
            name: Some(username.to_owned()),
            auth_method: Some(method.to_owned()),
        };
        self.ev.org_id = Some(org);
    }

    /// The operation failed with `code`.
    pub(crate) fn failed(&mut self, code: ErrorCode) {
        self.ev.status = code.status();
        self.ev.outcome = match self.ev.status {
            401 | 403 => "denied",
            _ => "failure",
        }
        .into();
        self.ev.error_code = Some(code.as_str().to_owned());
        self.ev.customer = false;
        self.ev.detail = None;
    }
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event: AuditEvent,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub created_at: i64,
    pub signature: String,
}

impl From<&CheckpointRow> for Checkpoint {
    fn from(c: &CheckpointRow) -> Self {
        Self {
            seq: c.seq,
            hash: hex::encode(c.hash),
            created_at: c.created_at,
            signature: hex::encode(&c.signature),
        }
    }
}

/// Page size for verification and export: memory stays bounded whatever the log's length.
pub const PAGE: u32 = 1000;
const MAX_DETAIL_BYTES: usize = 16 * 1024;

fn require_auditor(p: &Principal) -> Result<(), CoreError> {
    if p.role >= Role::Admin {
        Ok(())
    } else {
        Err(CoreError::Forbidden(
            "only Owners and Admins can read the audit log",
        ))
    }
}

fn to_record(r: &AuditRow) -> Result<AuditRecord, CoreError> {
    let event: AuditEvent = serde_json::from_str(&r.body).map_err(|_| CoreError::Integrity)?;
    Ok(AuditRecord {
        seq: r.seq,
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
        event,
    })
}

/// Fills in the ids behind an event's target names, for the services whose targets name
/// projects, environments and parameters (and know their ids).
pub(crate) trait TargetIds {
    async fn fill(&self, p: &Principal, t: &mut AuditTarget);
}

/// For events whose targets name no project.
pub(crate) struct NoTargetIds;

impl TargetIds for NoTargetIds {
    async fn fill(&self, _: &Principal, _: &mut AuditTarget) {}
}

/// The audit recorder: every service begins and concludes its operations' events here.
impl Kernel {
    /// HMAC of `data` under the organisation's audit key (nil org: the system chain).
    /// None while sealed: the key derives from the root key.
    pub fn audit_hmac(&self, org_id: Option<Uuid>, data: &[u8]) -> Option<String> {
        self.keyring
            .audit_hmac_key(org_id.unwrap_or_else(Uuid::nil))
            .ok()
            .map(|k| k.mac_hex(data))
    }

    /// Begin the event of an operation: `action` on `target`, by the context's actor.
    pub(crate) fn begin(&self, cx: &Cx, action: Action, target: AuditTarget) -> Pending {
        Pending {
            ev: cx.event(action, target),
            cx: cx.clone(),
            action,
            change: None,
        }
    }

    /// Begin the event of a change the service makes by itself (a background job) in
    /// `org_id`'s chain: actor `system`, no request. Its repository method commits it with
    /// the change, as for any operation.
    pub(crate) fn begin_system(
        &self,
        org_id: Uuid,
        action: Action,
        detail: serde_json::Value,
    ) -> Pending {
        let mut pending = self.begin(&Cx::system(), action, AuditTarget::default());
        pending.ev.org_id = Some(org_id);
        pending.ev.detail = Some(detail);
        pending
    }

    /// [`Kernel::begin`] for an operation called with its caller `p`: the actor, unless the
    /// context already names one (the edge's authentication sets it with the method).
    pub(crate) fn begin_for(
        &self,
        cx: &Cx,
        p: &Principal,
        action: Action,
        target: AuditTarget,
    ) -> Pending {
        if cx.principal().is_none() {
            cx.set_principal(p, p.method.as_str());
        }
        self.begin(cx, action, target)
    }

    /// End an operation: its answer `r` stands only once its event is in the log. A change
    /// whose event committed with it is done; any other outcome (a read, a change that did
    /// not happen, a failure) is appended now. If that fails, the answer — which may carry a
    /// secret — is dropped for [`CoreError::AuditUnavailable`] (fail closed).
    pub(crate) async fn conclude<T>(
        &self,
        pending: Pending,
        r: Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        self.conclude_with(pending, r, &NoTargetIds).await
    }

    /// [`Kernel::conclude`], with the target's ids filled in by `ids` first.
    pub(crate) async fn conclude_with<T>(
        &self,
        mut pending: Pending,
        r: Result<T, CoreError>,
        ids: &impl TargetIds,
    ) -> Result<T, CoreError> {
        if let Some(c) = &pending.change {
            if c.committed() {
                // The change and its event are in the log, whatever failed after them.
                if let Some(at) = c.position() {
                    self.known_heads.note(c.event.org_id, at);
                }
                self.sinks.write(&c.event.body);
                pending.cx.mark_recorded();
                return r;
            }
            // Not committed with its change, or not known to be (a lost commit answer):
            // the event appended now must not collide with one that did commit.
            pending.ev.id = uuid::Uuid::now_v7();
        }
        let durable = match &r {
            Ok(_) if pending.ev.outcome != "success" => false,
            Ok(_) => pending.action.change,
            Err(e) => {
                pending.failed(e.code());
                false
            }
        };
        // The ids behind the target's names, unless the operation failed because storage is
        // unreachable: looking them up would only wait for it again before the answer.
        let storage_down = matches!(r, Err(CoreError::Unavailable(_)));
        if pending.ev.target.project.is_some()
            && !storage_down
            && let Some(p) = pending.cx.principal()
        {
            ids.fill(&p, &mut pending.ev.target).await;
        }
        match self.append_event(&pending.ev, &[], durable).await {
            Ok(Some(_)) => {
                pending.cx.mark_recorded();
                r
            }
            _ => Err(CoreError::AuditUnavailable),
        }
    }

    /// Append an event that is not part of a change. `durable`: on stable storage before
    /// this returns (always for changes; for other events, `audit.read_sync` decides).
    async fn append_event(
        &self,
        ev: &AuditEvent,
        checks: &[ReadCheck],
        durable: bool,
    ) -> Result<Option<u64>, CoreError> {
        let durability = if durable || self.config.read_sync_always {
            coffer_store::Durability::Stable
        } else {
            coffer_store::Durability::Written
        };
        let row = event_row(ev)?;
        match self
            .audit
            .append_audit_checked(&row, checks, durability)
            .await
        {
            Ok(Some(at)) => {
                self.known_heads.note(row.org_id, at);
                self.sinks.write(&row.body);
                Ok(Some(at.0))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(error = ?e, action = %ev.action, "audit append failed; failing the request closed");
                self.sinks.note_store_failure();
                Err(CoreError::AuditUnavailable)
            }
        }
    }

    /// Append the event of a read answered from this node's cache, confirming in the same
    /// transaction that the values read are still current. `Ok(false)`: one is not, nothing
    /// was recorded, and the read must be made again from the database.
    pub(crate) async fn conclude_cached_read(
        &self,
        pending: &Pending,
        checks: &[ReadCheck],
    ) -> Result<bool, CoreError> {
        let recorded = self
            .append_event(&pending.ev, checks, false)
            .await?
            .is_some();
        self.cached_reads[usize::from(!recorded)]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if recorded {
            pending.cx.mark_recorded();
        }
        Ok(recorded)
    }

    /// Record something the service did by itself (a background job) in an organisation's
    /// chain: actor `system`. Failures are logged, not returned: the job's work is done and
    /// committed either way.
    pub(crate) async fn record_system(
        &self,
        org_id: Uuid,
        action: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self
            .append_system(Some(org_id), action, outcome, detail)
            .await
        {
            tracing::error!(org_id = %org_id, action, error = %e, "could not record a system audit event");
        }
    }

    /// Durably append an event of the service itself (actor `system`, no HTTP request) to
    /// `org_id`'s chain (None: the system chain).
    pub(crate) async fn append_system(
        &self,
        org_id: Option<Uuid>,
        action: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) -> Result<(), CoreError> {
        let mut ev = AuditEvent::now(action);
        ev.org_id = org_id;
        ev.actor = AuditActor {
            kind: "system".into(),
            ..AuditActor::default()
        };
        ev.outcome = outcome.to_owned();
        // Not an HTTP request.
        ev.status = 0;
        ev.detail = Some(detail);
        self.append_event(&ev, &[], true)
            .await?
            .map(|_| ())
            .ok_or(CoreError::AuditUnavailable)
    }
}

/// The audit log as its readers see it: listing, export, verification, checkpoints.
pub struct AuditLog {
    pub(crate) k: std::sync::Arc<Kernel>,
    pub(crate) audit: std::sync::Arc<dyn coffer_store::AuditRepo>,
    pub(crate) archive: std::sync::Arc<dyn coffer_store::ArchiveRepo>,
    /// Events per second an archive run writes at most (0: as fast as it can).
    pub(crate) archive_rate: std::sync::atomic::AtomicU32,
}

impl AuditLog {
    /// Durably append a prepared event (for tools and tests; operations record their own
    /// through `Kernel::begin` and `Kernel::conclude`).
    pub async fn record(&self, ev: &AuditEvent) -> Result<u64, CoreError> {
        self.k
            .append_event(ev, &[], true)
            .await?
            .ok_or(CoreError::AuditUnavailable)
    }

    /// Requests answered from this node's cache of current values: (confirmed when
    /// audited, found stale and answered again from the database).
    pub fn cached_read_counts(&self) -> (u64, u64) {
        let [confirmed, stale] = &self.k.cached_reads;
        (
            confirmed.load(std::sync::atomic::Ordering::Relaxed),
            stale.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Health of the audit sinks (the database and the optional copies).
    pub fn audit_health(&self) -> SinkHealth {
        self.k.sinks.health()
    }

    /// Events this process stored as JSON because their compact form did not render back
    /// to the hashed JSON (see docs/audit.md, "How events are stored"): above zero means the
    /// template writer misses a field, which costs space, not integrity.
    pub fn compact_fallbacks(&self) -> u64 {
        coffer_store::compact_fallbacks()
    }

    /// Whether this node runs background jobs now (see `Cluster::try_lead`).
    pub async fn is_job_leader(&self) -> bool {
        match self.k.cluster().try_lead().await {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!(error = %e, "could not determine background-job leadership");
                false
            }
        }
    }
    pub async fn audit_checkpoint_own(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Option<Checkpoint>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::CHECKPOINT, AuditTarget::default());
        let r: Result<Option<Checkpoint>, CoreError> = async {
            require_auditor(p)?;
            self.checkpoint(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Events of the caller's organisation, oldest first, after the cursor.
    pub async fn audit_list(
        &self,
        cx: &Cx,
        p: &Principal,
        mut f: AuditFilter,
    ) -> Result<Vec<AuditRecord>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::LIST, AuditTarget::default());
        let r: Result<Vec<AuditRecord>, CoreError> = async {
            self.k.ensure_unsealed()?;
            require_auditor(p)?;
            f.limit = f.limit.clamp(1, PAGE);
            self.audit
                .audit_events(p.org_id, &f)
                .await?
                .iter()
                .map(to_record)
                .collect()
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Start an export (audited once, however many pages follow).
    pub async fn audit_export_begin(&self, cx: &Cx, p: &Principal) -> Result<(), CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::EXPORT, AuditTarget::default());
        let r = self.k.ensure_unsealed().and_then(|()| require_auditor(p));
        self.k.conclude(pending, r).await
    }

    /// Record a customer-supplied event (`POST /v1/audit/events`) in the caller's
    /// organisation's chain: action `customer.<action>`, marked as customer-supplied.
    pub async fn audit_log(
        &self,
        cx: &Cx,
        p: &Principal,
        action: &str,
        detail: Option<serde_json::Value>,
    ) -> Result<(), CoreError> {
        let mut pending = self.k.begin_for(cx, p, action::LOG, AuditTarget::default());
        let r = self
            .customer_event(p, action, detail)
            .map(|(name, detail)| {
                pending.ev.action = name;
                pending.ev.customer = true;
                pending.ev.detail = detail;
            });
        self.k.conclude(pending, r).await
    }

    /// Raw rows for export (time range only, so the exported range stays a contiguous chain).
    pub async fn audit_export_page(
        &self,
        p: &Principal,
        from: Option<i64>,
        to: Option<i64>,
        after_seq: u64,
    ) -> Result<Vec<AuditRow>, CoreError> {
        self.k.ensure_unsealed()?;
        require_auditor(p)?;
        let f = AuditFilter {
            from,
            to,
            after_seq,
            limit: PAGE,
            ..AuditFilter::default()
        };
        Ok(self.audit.audit_events(p.org_id, &f).await?)
    }

    pub async fn audit_checkpoints(&self, p: &Principal) -> Result<Vec<CheckpointRow>, CoreError> {
        self.k.ensure_unsealed()?;
        require_auditor(p)?;
        self.signed_points(p.org_id).await
    }

    /// Verify the caller's organisation's whole chain and its checkpoints, page by page.
    pub async fn audit_verify(&self, cx: &Cx, p: &Principal) -> Result<VerifyReport, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::VERIFY, AuditTarget::default());
        let r: Result<VerifyReport, CoreError> = async {
            self.k.ensure_unsealed()?;
            require_auditor(p)?;
            self.verify_chain(p.org_id).await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    pub(crate) async fn verify_chain(&self, org_id: Uuid) -> Result<VerifyReport, CoreError> {
        // What this node wrote first: events appended while this runs are read below.
        let written = self.k.known_heads.get(org_id);
        let key = self.audit.audit_key().await?.map(|k| k.public_key);
        // Events at or below the anchor were archived and pruned: verification starts from
        // it, once its signature holds (it is a checkpoint the writing node signed).
        let anchor = self.archive.anchor(org_id).await?.map(|a| a.checkpoint);
        let start = anchor.as_ref().map(|a| (a.seq, a.hash));
        let checkpoints = self
            .signed_points(org_id)
            .await?
            .into_iter()
            .filter(|c| start.is_none_or(|(seq, _)| c.seq > seq))
            .collect();
        let mut v = Verifier::new(org_id, key, checkpoints, start);
        if let Some(a) = &anchor {
            v.check_checkpoint(a, &a.hash);
        }
        if let Some(head) = written {
            v.expect_written(head);
        }
        let mut after = start.map_or(0, |s| s.0);
        loop {
            let rows = self
                .audit
                .audit_events(
                    org_id,
                    &AuditFilter {
                        after_seq: after,
                        limit: PAGE,
                        ..AuditFilter::default()
                    },
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for r in &rows {
                v.push(r.seq, &r.prev_hash, &r.hash, &r.body);
            }
        }
        Ok(v.finish(self.audit.audit_head(org_id).await?))
    }

    /// Validate a customer-supplied event: returns the action (prefixed `customer.`) and
    /// detail to record, marked as customer-supplied, in the caller's organisation's chain.
    pub fn customer_event(
        &self,
        p: &Principal,
        action: &str,
        detail: Option<serde_json::Value>,
    ) -> Result<(String, Option<serde_json::Value>), CoreError> {
        self.k.ensure_unsealed()?;
        crate::projects::ensure_can_write(p)?;
        let ok = !action.is_empty()
            && action.len() <= 128
            && action
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(CoreError::invalid(
                "action",
                "1-128 characters: letters, digits, '.', '_' or '-'",
            ));
        }
        if let Some(d) = &detail
            && (!d.is_object() || d.to_string().len() > MAX_DETAIL_BYTES)
        {
            return Err(CoreError::invalid(
                "detail",
                format!("must be a JSON object of at most {MAX_DETAIL_BYTES} bytes"),
            ));
        }
        Ok((format!("customer.{action}"), detail))
    }
}

impl std::fmt::Debug for AuditLog {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}
