//! Response types, mirroring the server's OpenAPI schemas.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub seal_type: Option<String>,
    pub shares: u8,
    pub threshold: u8,
    pub progress: usize,
    pub version: String,
}

#[derive(Deserialize, Serialize)]
pub struct InitResponse {
    pub shares: Vec<String>,
    pub threshold: u8,
    /// A KMS or HSM seal unsealed the server; `shares` are recovery shares.
    #[serde(default)]
    pub unsealed: bool,
    pub bootstrap: BootstrapAccount,
}

impl std::fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitResponse")
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Serialize)]
pub struct BootstrapAccount {
    pub org: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Whoami {
    pub user_id: Uuid,
    pub username: String,
    pub org_id: Uuid,
    pub org: String,
    pub role: String,
    pub session_expires_at: String,
}

#[derive(Deserialize)]
pub struct LoginResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub whoami: Option<Whoami>,
    #[serde(default)]
    pub mfa_required: bool,
    #[serde(default)]
    pub mfa_token: Option<String>,
    #[serde(default)]
    pub mfa_enrollment_required: bool,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("whoami", &self.whoami)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Env {
    pub id: Uuid,
    pub name: String,
    pub parent: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
    pub secret: bool,
    pub masked: bool,
    pub version: u64,
    pub env: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("version", &self.version)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ParamList {
    pub params: Vec<Param>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResult {
    pub name: String,
    pub version: u64,
    pub secret: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    pub version: u64,
    pub action: String,
    pub secret: bool,
    pub actor_id: Uuid,
    /// The actor's username (older servers do not send it).
    #[serde(default)]
    pub actor: Option<String>,
    pub created_at: String,
    pub current: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct History {
    pub versions: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffEntry {
    pub name: String,
    /// `only_in_a`, `only_in_b` or `changed`.
    pub kind: String,
    pub a: Option<Param>,
    pub b: Option<Param>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    pub entries: Vec<DiffEntry>,
}

impl std::fmt::Debug for BootstrapAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAccount")
            .field("org", &self.org)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// Each: `{seq, prev_hash, hash, event}`.
    pub events: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyTerm {
    pub term: u32,
    pub created_at: i64,
    pub values: u64,
    pub active: bool,
    /// `root`, or the organisation's own key that wraps this term.
    #[serde(default)]
    pub wrapped_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRotation {
    pub target_term: u32,
    pub reason: String,
    pub total: u64,
    pub done: u64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    pub active_term: u32,
    /// The organisation's own key, if attached.
    #[serde(default)]
    pub external_key: Option<String>,
    pub terms: Vec<KeyTerm>,
    pub rotation: Option<KeyRotation>,
    pub rotate_after_days: u64,
    pub rotate_after_encryptions: u64,
}

#[derive(Deserialize, Serialize)]
pub struct RekeyResponse {
    pub shares: Vec<String>,
    pub threshold: u8,
}

impl std::fmt::Debug for RekeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RekeyResponse([REDACTED])")
    }
}
