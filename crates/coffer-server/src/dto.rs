//! Wire types of the JSON API. Timestamps are RFC 3339 UTC strings.

use coffer_core::{DiffKind, ParamView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn ts(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SealStatusResponse {
    pub initialized: bool,
    pub sealed: bool,
    /// `shamir` or `dev-file`.
    pub seal_type: Option<String>,
    pub shares: u8,
    pub threshold: u8,
    /// Shares submitted towards the current unseal.
    pub progress: usize,
    pub version: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub shares: u8,
    pub threshold: u8,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InitResponse {
    /// Shamir shares of the root key. Shown once; Coffer keeps no copy.
    pub shares: Vec<String>,
    pub threshold: u8,
    pub bootstrap: BootstrapAccount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BootstrapAccount {
    pub org: String,
    pub username: String,
    /// Shown once.
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One share, as printed by `coffer operator init`.
    #[serde(default)]
    pub share: Option<String>,
    /// Discard shares submitted so far.
    #[serde(default)]
    pub reset: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub initialized: bool,
    pub sealed: bool,
    pub version: String,
    pub audit: AuditHealth,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoamiResponse {
    pub user_id: Uuid,
    pub username: String,
    pub org_id: Uuid,
    pub org: String,
    pub role: String,
    pub session_expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Bearer token for the Authorization header. Shown once.
    pub token: String,
    pub whoami: WhoamiResponse,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("whoami", &self.whoami)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectResponse {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvRequest {
    pub name: String,
    /// Environment to inherit from; `default` when absent.
    #[serde(default)]
    pub parent: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvResponse {
    pub id: Uuid,
    pub name: String,
    pub parent: Option<String>,
    pub created_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetParamRequest {
    pub value: String,
    /// Mark the value secret (masked in listings). Absent: keep the current flag.
    #[serde(default)]
    pub secret: Option<bool>,
}

impl std::fmt::Debug for SetParamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetParamRequest")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, ToSchema)]
pub struct ParamResponse {
    pub name: String,
    /// Absent when masked.
    pub value: Option<String>,
    pub secret: bool,
    pub masked: bool,
    pub version: u64,
    /// The environment that defines this value (the requested one or an ancestor).
    pub env: String,
    pub updated_at: String,
}

impl std::fmt::Debug for ParamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamResponse")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl From<ParamView> for ParamResponse {
    fn from(v: ParamView) -> Self {
        let value = v
            .value
            .as_ref()
            .map(|s| String::from_utf8_lossy(s.expose_secret()).into_owned());
        Self {
            masked: value.is_none() && v.secret,
            name: v.name,
            value,
            secret: v.secret,
            version: v.version,
            env: v.env,
            updated_at: ts(v.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParamListResponse {
    pub params: Vec<ParamResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WriteResponse {
    pub name: String,
    pub version: u64,
    pub secret: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub version: u64,
    /// `set`, `rollback` or `delete`.
    pub action: String,
    pub secret: bool,
    pub actor_id: Uuid,
    pub created_at: String,
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub versions: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct RevealQuery {
    /// Include secret values (needs a role that may read secrets).
    #[serde(default)]
    pub reveal: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DiffQuery {
    pub a: String,
    pub b: String,
    #[serde(default)]
    pub reveal: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiffKindDto {
    OnlyInA,
    OnlyInB,
    Changed,
}

impl From<DiffKind> for DiffKindDto {
    fn from(k: DiffKind) -> Self {
        match k {
            DiffKind::OnlyInA => Self::OnlyInA,
            DiffKind::OnlyInB => Self::OnlyInB,
            DiffKind::Changed => Self::Changed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiffEntryDto {
    pub name: String,
    pub kind: DiffKindDto,
    pub a: Option<ParamResponse>,
    pub b: Option<ParamResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiffResponse {
    pub a: String,
    pub b: String,
    pub entries: Vec<DiffEntryDto>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// RFC 3339 start (inclusive).
    pub from: Option<String>,
    /// RFC 3339 end (exclusive).
    pub to: Option<String>,
    pub action: Option<String>,
    /// User id of the actor.
    pub actor: Option<Uuid>,
    /// `success`, `denied` or `failure`.
    pub outcome: Option<String>,
    /// Prefix of `project/env/name`.
    pub target: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditListResponse {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<coffer_core::audit::AuditRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `ndjson` (default) or `json`.
    pub format: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerEventRequest {
    /// Letters, digits, `.`, `_`, `-`; recorded as `customer.<action>`.
    pub action: String,
    /// A JSON object of at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerEventResponse {
    pub action: String,
    pub recorded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditHealth {
    /// Events recorded since start.
    pub events: u64,
    /// Failed database appends since start (each failed its request).
    pub store_failures: u64,
    /// The JSON-lines file copy: None when not configured.
    pub file_ok: Option<bool>,
    pub file_failures: u64,
}
