//! Wire types of the JSON API. Timestamps are RFC 3339 UTC strings.

use coffer_core::{DiffKind, ParamView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

mod keys;
pub use keys::*;

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
    /// How many shares to issue (2-255).
    #[serde(deserialize_with = "crate::whole_number::de")]
    #[schema(minimum = 2, maximum = 255)]
    pub shares: u8,
    /// How many of them unseal (2 to `shares`).
    #[serde(deserialize_with = "crate::whole_number::de")]
    #[schema(minimum = 2, maximum = 255)]
    pub threshold: u8,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InitResponse {
    /// Shamir shares of the root key. Shown once; Coffer keeps no copy. With a KMS or HSM
    /// seal these are recovery shares (for rekey and seal migration).
    pub shares: Vec<String>,
    pub threshold: u8,
    /// The server unsealed itself (KMS or HSM seal).
    #[serde(default)]
    pub unsealed: bool,
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
    #[schema(nullable = false)]
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
    /// Username or e-mail address.
    pub username: String,
    pub password: String,
    /// Organisation to start in (default: the oldest membership).
    #[serde(default)]
    pub org: Option<String>,
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

/// The answer to a login step. Either `token` and `whoami` (logged in), or `mfa_required`
/// with an `mfa_token` to send with a code to `/v1/auth/mfa/verify`.
#[derive(Serialize, ToSchema, Default)]
pub struct LoginResponse {
    /// Bearer token for the Authorization header. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whoami: Option<WhoamiResponse>,
    /// A TOTP or recovery code must follow.
    pub mfa_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// An organisation requires MFA: this session may only enrol it.
    pub mfa_enrollment_required: bool,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("whoami", &self.whoami)
            .field("mfa_required", &self.mfa_required)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    #[schema(schema_with = crate::schema::name)]
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
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    /// Environment to inherit from; `default` when absent.
    #[serde(default)]
    #[schema(schema_with = crate::schema::nullable_name)]
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
    /// The actor's username (null when the account no longer exists).
    pub actor: Option<String>,
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
    #[serde(deserialize_with = "crate::whole_number::de")]
    pub version: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevealQuery {
    /// Include secret values (needs a role that may read secrets).
    #[serde(default)]
    pub reveal: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The first environment.
    // utoipa takes only a literal here: crate::schema::NAME_PATTERN (a unit test compares).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^(?!.*\.\.)[^\x00-\x1f\x7f-\x9f/=\s]([^\x00-\x1f\x7f-\x9f/=]*[^\x00-\x1f\x7f-\x9f/=\s])?$"
    )]
    pub a: String,
    /// The second environment.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^(?!.*\.\.)[^\x00-\x1f\x7f-\x9f/=\s]([^\x00-\x1f\x7f-\x9f/=]*[^\x00-\x1f\x7f-\x9f/=\s])?$"
    )]
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
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// RFC 3339 start (inclusive).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub action: Option<String>,
    /// User id of the actor.
    pub actor: Option<Uuid>,
    /// `success`, `denied` or `failure`.
    #[param(pattern = "^(success|denied|failure)$")]
    pub outcome: Option<String>,
    /// Prefix of `project/env/name`.
    pub target: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor` (8 bytes in unpadded base64url:
    /// the last character carries 4 bits).
    #[param(pattern = "^[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]$")]
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
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
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `ndjson` (default) or `json`.
    #[param(pattern = "^(ndjson|json)$")]
    pub format: Option<String>,
    /// RFC 3339 start (inclusive).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[param(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerEventRequest {
    /// Letters, digits, `.`, `_`, `-`; recorded as `customer.<action>`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
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

/// Wraps a credential so that `Debug` never prints it.
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    pub mfa_token: Secret,
    /// A 6-digit TOTP code or a recovery code.
    pub code: Secret,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcLoginRequest {
    /// A JWT from a configured issuer.
    pub token: Secret,
    #[serde(default)]
    pub org: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// An API key (`cfr_…`).
    pub api_key: Secret,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// Short-lived access token (`cfa_…`). Shown once.
    pub access_token: String,
    pub expires_at: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse").finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    pub current_password: Secret,
    #[schema(schema_with = crate::schema::new_password)]
    pub new_password: Secret,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The new address, or `null` to remove it.
    #[schema(schema_with = crate::schema::nullable_email)]
    pub email: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDto {
    pub id: Uuid,
    pub org_id: Uuid,
    pub method: String,
    pub address: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub current: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    pub password: Secret,
}

#[derive(Serialize, ToSchema)]
pub struct MfaEnrollResponse {
    /// Add this to an authenticator app (or show it as a QR code). Shown once.
    pub otpauth_uri: String,
    /// The same seed in base32, for typing in by hand.
    pub secret: String,
}

impl std::fmt::Debug for MfaEnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaEnrollResponse").finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaCodeRequest {
    pub code: Secret,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// One-time recovery codes. Shown once; store them offline.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodesResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryCodesResponse")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaDisableRequest {
    pub password: Secret,
    pub code: Secret,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgDto {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    /// The organisation this token acts on.
    pub active: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchOrgRequest {
    pub org: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberDto {
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub mfa_enabled: bool,
    pub joined_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    #[schema(pattern = "^(owner|admin|contributor|viewer)$")]
    pub role: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    #[schema(schema_with = crate::schema::email)]
    pub email: String,
    #[schema(pattern = "^(owner|admin|contributor|viewer)$")]
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationDto {
    pub id: Uuid,
    pub email: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: String,
    pub accepted_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InviteResponse {
    pub invitation: InvitationDto,
    /// The one-time token, only when the server sends no mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for InviteResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteResponse")
            .field("invitation", &self.invitation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitationRequest {
    pub token: Secret,
    /// For a new account (default: the invited address's local part); ignored when the
    /// invited address already has one.
    #[serde(default)]
    #[schema(schema_with = crate::schema::username)]
    pub username: Option<String>,
    /// The new account's password, or the existing account's.
    #[schema(schema_with = crate::schema::new_password)]
    pub password: Secret,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptInvitationResponse {
    pub user_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgSettingsDto {
    pub require_mfa: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    #[schema(pattern = "^(owner|admin|contributor|viewer)$")]
    pub role: String,
    #[serde(default)]
    pub read_only: bool,
    /// Projects the key is limited to (none: every project).
    #[serde(default)]
    #[schema(schema_with = crate::schema::name_list)]
    pub projects: Vec<String>,
    /// Environments the key is limited to (none: every environment).
    #[serde(default)]
    #[schema(schema_with = crate::schema::name_list)]
    pub envs: Vec<String>,
    /// Lifetime: 1-366 days (`30d`) or 1-8784 hours (`12h`). Default 90 days.
    #[serde(default)]
    #[schema(schema_with = crate::schema::lifetime)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyDto {
    pub id: Uuid,
    pub name: String,
    /// First characters of the key, to tell keys apart.
    pub prefix: String,
    pub role: String,
    pub owner_id: Uuid,
    pub read_only: bool,
    pub projects: Vec<String>,
    pub envs: Vec<String>,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    pub api_key: ApiKeyDto,
    /// The key. Shown once; Coffer stores only its hash.
    pub key: String,
}

impl std::fmt::Debug for CreatedApiKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKeyResponse")
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteOrgRequest {
    /// The organisation's name, to confirm.
    pub confirm: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateSealRequest {
    /// A quorum of the current shares (unseal shares, or recovery shares of a KMS/HSM seal).
    pub shares: Vec<String>,
}

impl std::fmt::Debug for MigrateSealRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateSealRequest").finish_non_exhaustive()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RekeyRequest {
    /// A quorum of the current unseal shares.
    pub current_shares: Vec<String>,
    /// How many new shares to issue (2-255).
    #[serde(deserialize_with = "crate::whole_number::de")]
    #[schema(minimum = 2, maximum = 255)]
    pub shares: u8,
    /// How many of them unseal (2 to `shares`).
    #[serde(deserialize_with = "crate::whole_number::de")]
    #[schema(minimum = 2, maximum = 255)]
    pub threshold: u8,
}

impl std::fmt::Debug for RekeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyRequest")
            .field("shares", &self.shares)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, ToSchema)]
pub struct RekeyResponse {
    /// Shares of the new root key: shown once, never stored.
    pub shares: Vec<String>,
    pub threshold: u8,
}

impl std::fmt::Debug for RekeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RekeyResponse([REDACTED])")
    }
}
