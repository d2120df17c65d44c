use coffer_crypto::{Ciphertext, KeyTerm, RootKeyCheck, WrappedTenantKey};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SealConfigRow {
    pub kind: String,
    pub shares: u8,
    pub threshold: u8,
    pub root_check: RootKeyCheck,
    pub created_at: i64,
    /// AWS KMS and PKCS#11 seals: the root key wrapped by their key.
    pub sealed_root: Option<Vec<u8>>,
}

/// The audit event of a change, handed to the repository method that makes the change: it
/// is appended in the change's own transaction, so both commit or neither does. The store
/// marks it once that transaction has committed, with the place the event took in its
/// chain; a method that returns without committing (nothing to change) leaves it unmarked,
/// and the caller records the event itself. Clones share the mark.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub event: NewAuditEvent,
    /// What other nodes must forget once the change is visible: sent in the change's own
    /// transaction (PostgreSQL delivers a NOTIFY only if, and when, it commits), so no
    /// committed change can go unannounced.
    pub notices: Vec<crate::Invalidation>,
    committed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// (seq, hash) of the event in its chain, once committed.
    position: std::sync::Arc<std::sync::OnceLock<(u64, [u8; 32])>>,
}

impl ChangeEvent {
    pub fn new(event: NewAuditEvent) -> Self {
        Self {
            event,
            notices: Vec::new(),
            committed: std::sync::Arc::default(),
            position: std::sync::Arc::default(),
        }
    }

    /// Whether the event committed with its change.
    pub fn committed(&self) -> bool {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where the committed event is in its chain: (seq, hash).
    pub fn position(&self) -> Option<(u64, [u8; 32])> {
        self.position.get().copied()
    }

    pub(crate) fn mark_committed(&self, at: Option<(u64, [u8; 32])>) {
        if let Some(at) = at {
            let _ = self.position.set(at);
        }
        self.committed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The caller established otherwise that the change's transaction committed (its
    /// answer was lost on the way): the event is in the log with it.
    pub fn confirm_committed(&self) {
        self.mark_committed(None);
    }
}

/// The first organisation, stored at initialisation: its first key term, and its Owner's
/// account and membership.
#[derive(Debug, Clone)]
pub struct FirstOrg {
    pub org: OrgRow,
    pub key: TenantKeyRow,
    pub owner_account: UserRow,
    pub owner: MembershipRow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    pub id: Uuid,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct TenantKeyRow {
    pub org_id: Uuid,
    pub term: KeyTerm,
    pub wrapped: WrappedTenantKey,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    /// PHC string (Argon2id); never the password.
    pub password_hash: String,
    pub created_at: i64,
    /// Normalised e-mail address, where known.
    pub email: Option<String>,
    pub mfa_enabled: bool,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRow {
    pub user_id: Uuid,
    pub org_id: Uuid,
    pub role: String,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct SessionRow {
    /// Public id, for listing and revoking; not a credential.
    pub id: Uuid,
    pub token_hash: [u8; 32],
    pub user_id: Uuid,
    pub org_id: Uuid,
    /// "full", "mfa" (second factor pending) or "enroll" (must enrol MFA first).
    pub stage: String,
    /// "password", "oidc" or "apikey".
    pub method: String,
    pub api_key_id: Option<Uuid>,
    pub address: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for SessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// TOTP state of a user. The secret is sealed by a key derived from the root key.
#[derive(Clone)]
pub struct MfaState {
    pub sealed_secret: Option<Vec<u8>>,
    pub enabled: bool,
    pub last_step: i64,
}

impl std::fmt::Debug for MfaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaState")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// An API key. Only the SHA-256 of the key is stored; `prefix` is its first characters,
/// shown so people can tell keys apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub org_id: Uuid,
    /// The member who created it; the key never has more rights than they do now.
    pub user_id: Uuid,
    pub name: String,
    pub role: String,
    pub key_hash: [u8; 32],
    pub prefix: String,
    pub read_only: bool,
    /// Project names it is restricted to (empty: all).
    pub projects: Vec<String>,
    /// Environment names it is restricted to (empty: all).
    pub envs: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub role: String,
    pub token_hash: [u8; 32],
    pub invited_by: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
}

/// A sealed e-mail waiting for delivery.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: Uuid,
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub project_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub env_id: Uuid,
    pub name: String,
    pub current_version: u64,
    pub deleted: bool,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    Set,
    Rollback,
    Delete,
}

impl VersionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Rollback => "rollback",
            Self::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "set" => Self::Set,
            "rollback" => Self::Rollback,
            "delete" => Self::Delete,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamVersionRow {
    pub param_id: Uuid,
    pub version: u64,
    pub is_secret: bool,
    pub action: VersionAction,
    pub actor_id: Uuid,
    pub created_at: i64,
}

/// A parameter version with its ciphertext (None for a deletion marker).
#[derive(Debug, Clone)]
pub struct ParamValue {
    pub param: ParamRow,
    pub version: ParamVersionRow,
    pub ciphertext: Option<Ciphertext>,
}

/// A value answered from a node's cache instead of the database, and what must still hold
/// for that answer to have been current: `param_id` at `version` is the live parameter
/// `name` in the last environment of `envs`, and no environment before it (nearer to the
/// one asked for) defines `name`. The request's audit append confirms this in the same
/// transaction ([`crate::Store::append_audit_checked`]); if it no longer holds, the request
/// is answered again from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCheck {
    pub org_id: Uuid,
    pub envs: Vec<Uuid>,
    pub name: String,
    pub param_id: Uuid,
    pub version: u64,
}

/// A new version to append. For `Set` and `Rollback` the ciphertext must be sealed for
/// (org_id, param_id, version); for `Delete` it is None.
#[derive(Debug, Clone)]
pub struct ParamWrite {
    pub org_id: Uuid,
    pub env_id: Uuid,
    pub param_id: Uuid,
    pub name: String,
    pub expected_current: u64,
    pub version: ParamVersionRow,
    pub ciphertext: Option<Ciphertext>,
    pub credential_id: Uuid,
    /// The write's audit event, committed in the same transaction.
    pub event: Option<ChangeEvent>,
}

/// How far an appended audit event must have gone before the append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On stable storage: it survives a power loss (SQLite: the write-ahead log is synced;
    /// PostgreSQL: the commit waited for its WAL flush).
    #[default]
    Stable,
    /// Committed and handed to the operating system (SQLite) or the database server
    /// (PostgreSQL), so it survives the service being killed; on stable storage within
    /// [`READ_SYNC_BOUND`], when the writer syncs what it committed this way.
    Written,
}

/// The longest a [`Durability::Written`] event waits before its writer starts a sync.
pub const READ_SYNC_BOUND: std::time::Duration = std::time::Duration::from_millis(10);

/// An audit event to append. The store assigns `seq` and computes the chain hash.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    /// Nil for events outside any organisation.
    pub org_id: Uuid,
    pub id: Uuid,
    pub time: i64,
    pub action: String,
    pub actor_id: Option<Uuid>,
    pub outcome: String,
    /// `project/env/name`-style path of what was acted on ("" when nothing).
    pub target: String,
    /// The event as JSON; exactly these bytes are hashed.
    pub body: String,
    /// The same event as a template and its holes (`audit_codec`), stored instead of the
    /// JSON when it renders back to exactly `body`; None stores the JSON.
    pub compact: Option<crate::audit_codec::CompactEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub org_id: Uuid,
    pub seq: u64,
    pub time: i64,
    pub body: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub org_id: Uuid,
    pub seq: u64,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct AuditKeyRow {
    pub public_key: Vec<u8>,
    /// The Ed25519 seed sealed by the root key.
    pub wrapped_key: Vec<u8>,
    pub created_at: i64,
}

/// Filters for listing audit events; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub action: Option<String>,
    pub actor_id: Option<Uuid>,
    pub outcome: Option<String>,
    /// Prefix of the target path.
    pub target: Option<String>,
    /// Only events with a larger sequence number (cursor).
    pub after_seq: u64,
    pub limit: u32,
}

/// The latest key rotation of an organisation: its rewrap job's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRow {
    pub org_id: Uuid,
    pub target_term: KeyTerm,
    /// Why it started: "manual", "age" or "usage".
    pub reason: String,
    /// Values under older terms when the rotation started.
    pub total: u64,
    pub done: u64,
    /// Last credential id the job has passed.
    pub cursor: Option<Uuid>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// A stored value to rewrap, with the context its ciphertext is bound to.
#[derive(Debug, Clone)]
pub struct RewrapItem {
    pub credential_id: Uuid,
    pub param_id: Uuid,
    pub version: u64,
    pub ciphertext: Ciphertext,
}

/// A value moved to a new term; replaces the stored one only if that is still under
/// `old_term`.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    pub credential_id: Uuid,
    pub old_term: KeyTerm,
    pub ciphertext: Ciphertext,
}

/// Everything sealed by the root key or a key derived from it.
#[derive(Debug, Clone, Default)]
pub struct RootSecrets {
    pub tenant_keys: Vec<TenantKeyRow>,
    /// The audit signing key, sealed.
    pub audit_key: Option<Vec<u8>>,
    /// (user id, sealed TOTP seed).
    pub mfa: Vec<(Uuid, Vec<u8>)>,
    /// (message id, sealed message) of mail not yet delivered.
    pub outbox: Vec<(Uuid, Vec<u8>)>,
}

/// A new root key's check value and share counts, with every root secret resealed.
#[derive(Debug, Clone)]
pub struct RootRotation {
    /// The check value of the root key being replaced, and every root secret as it was read
    /// (before resealing): the rotation applies only if both are still exactly what the
    /// database holds, so nothing sealed meanwhile (on any node) is left behind.
    pub previous_check: RootKeyCheck,
    pub previous: RootSecrets,
    pub root_check: RootKeyCheck,
    pub shares: u8,
    pub threshold: u8,
    /// The new root key wrapped by an auto-unseal seal's key.
    pub sealed_root: Option<Vec<u8>>,
    pub secrets: RootSecrets,
}

/// An archive segment file, written and verified (docs/audit.md, "Archive segments").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub number: u64,
    pub name: String,
    /// Events before this time (ms) were eligible.
    pub cut_ms: i64,
    pub created_at: i64,
    pub events: u64,
    pub bytes: u64,
    /// SHA-256 of the whole file's plaintext.
    pub sha256: [u8; 32],
    /// Where the server keeps the file, when it wrote it itself.
    pub location: Option<String>,
    pub verified_at: i64,
    /// SHA-256 of the file's bytes on disk when they are not its plaintext (encrypted with
    /// age); None: the file is its plaintext.
    pub file_sha256: Option<[u8; 32]>,
}

/// The part of one chain a segment holds: `from_seq..=to_seq`, ending at `to_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentChainRow {
    pub number: u64,
    pub org_id: Uuid,
    pub from_seq: u64,
    pub to_seq: u64,
    pub to_hash: [u8; 32],
    /// The signed checkpoint at `to_seq` (None for ranges recorded before it was kept).
    pub anchor: Option<CheckpointRow>,
}

/// A chain's anchor: the signed checkpoint at the end of its pruned part, which must end a
/// recorded segment's range. The event after it links to its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRow {
    pub checkpoint: CheckpointRow,
    pub segment: u64,
}

/// A chain's newest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub org_id: Uuid,
    pub seq: u64,
    pub hash: [u8; 32],
}

/// How much the audit log holds in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStorage {
    /// Events in the database, over every chain (head minus anchor).
    pub live_events: u64,
    /// Bytes: on PostgreSQL the audit tables with their indexes; on SQLite the whole
    /// database file in use (SQLite cannot size one table without a full scan).
    pub bytes: u64,
}
