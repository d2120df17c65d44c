use coffer_store::StoreError;

/// Domain errors. The HTTP edge maps each variant to a stable error code and status; the
/// `Display` text of client errors is safe to show, internal ones are logged and replaced by
/// a generic message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("the server is sealed")]
    Sealed,
    #[error("the server has not been initialised")]
    NotInitialized,
    #[error("the server is already initialised")]
    AlreadyInitialized,
    #[error("the server is already unsealed")]
    AlreadyUnsealed,
    #[error("this operation is not available for the server's seal type")]
    WrongSealType,
    #[error("authentication required")]
    Unauthenticated,
    /// Wrong username or password. One message for every cause.
    #[error("invalid username or password")]
    BadCredentials,
    /// A wrong, or already used, second-factor code where the password is already proven
    /// (a login's second step, MFA confirmation): saying so leaks nothing the caller does
    /// not know, and tells a person who just enrolled why the code they used is refused.
    #[error("invalid or already used code; wait for the next one")]
    InvalidCode,
    /// The login must enrol MFA (an organisation requires it) before anything else.
    #[error("multi-factor authentication must be set up first: run `coffer mfa enroll`")]
    MfaEnrollmentRequired,
    #[error("an organisation must keep at least one Owner")]
    LastOwner,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    /// An invitation token that matches no open invitation: never issued, already used,
    /// revoked or expired (one answer for all, as for any credential).
    #[error("no such invitation: the token is unknown, used or expired")]
    InvitationNotFound,
    /// Detaching the organisation's own key when none is attached.
    #[error("no external key is attached")]
    NoExternalKey,
    /// The request needs something this server is not configured with (a key service).
    #[error("{0}")]
    NotConfigured(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("the write conflicted with a concurrent change; retry")]
    Conflict,
    #[error("the share is malformed (check for typos)")]
    MalformedShare,
    #[error("this share was already submitted")]
    DuplicateShare,
    /// Stored ciphertext failed authentication: tampering, corruption or a key mix-up.
    #[error("stored data failed integrity checks")]
    Integrity,
    /// The organisation's own external key (KMS or HSM) refused or cannot be reached: its
    /// data cannot be decrypted until the key is usable again.
    #[error("tenant key unavailable: the organisation's external key cannot be used")]
    TenantKeyUnavailable,
    /// The seal (KMS or HSM) could not produce or protect the root key.
    #[error("the seal failed: {0}")]
    Seal(String),
    /// Dev mode on a data directory initialised with a key file that is gone.
    #[error(
        "this data directory was initialised with the dev root key file {0}, which is missing: restore it (a new key cannot open this data)"
    )]
    DevKeyMissing(String),
    #[error("storage error")]
    Store(#[source] StoreError),
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// The audit log could not record the operation: nothing may be answered (fail closed).
    #[error("the audit log is unavailable")]
    AuditUnavailable,
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Archiving or pruning the audit log refused or failed; nothing was pruned.
    #[error("audit archive: {0}")]
    Archive(String),
}

/// The stable error codes clients match on (table in docs/api.md), each with its HTTP
/// status. Defined here because an operation's audit event records its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    HeadersTooLarge,
    Unauthenticated,
    BadCredentials,
    InvalidCode,
    Forbidden,
    MfaEnrollmentRequired,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    Conflict,
    LastOwner,
    NotConfigured,
    TooManyRequests,
    Sealed,
    NotInitialized,
    AlreadyInitialized,
    AlreadyUnsealed,
    WrongSealType,
    MalformedShare,
    DuplicateShare,
    Unavailable,
    AuditUnavailable,
    TenantKeyUnavailable,
    SealUnavailable,
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest | InvalidJson | MalformedShare | DuplicateShare => 400,
            UnsupportedMediaType => 415,
            PayloadTooLarge => 413,
            HeadersTooLarge => 431,
            Unauthenticated | BadCredentials | InvalidCode => 401,
            Forbidden | MfaEnrollmentRequired => 403,
            TooManyRequests => 429,
            NotFound => 404,
            MethodNotAllowed => 405,
            AlreadyExists | Conflict | LastOwner | NotConfigured | AlreadyInitialized
            | AlreadyUnsealed | WrongSealType => 409,
            Sealed | Unavailable | AuditUnavailable | TenantKeyUnavailable | SealUnavailable => 503,
            NotInitialized => 501,
            Internal => 500,
        }
    }

    /// The snake_case name clients see.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            InvalidJson => "invalid_json",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            HeadersTooLarge => "headers_too_large",
            Unauthenticated => "unauthenticated",
            BadCredentials => "bad_credentials",
            InvalidCode => "invalid_code",
            Forbidden => "forbidden",
            MfaEnrollmentRequired => "mfa_enrollment_required",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            AlreadyExists => "already_exists",
            Conflict => "conflict",
            LastOwner => "last_owner",
            TooManyRequests => "too_many_requests",
            Sealed => "sealed",
            NotInitialized => "not_initialized",
            AlreadyInitialized => "already_initialized",
            AlreadyUnsealed => "already_unsealed",
            WrongSealType => "wrong_seal_type",
            MalformedShare => "malformed_share",
            DuplicateShare => "duplicate_share",
            Unavailable => "unavailable",
            AuditUnavailable => "audit_unavailable",
            TenantKeyUnavailable => "tenant_key_unavailable",
            SealUnavailable => "seal_unavailable",
            NotConfigured => "not_configured",
            Internal => "internal",
        }
    }
}

impl CoreError {
    /// The error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            CoreError::Sealed => C::Sealed,
            CoreError::NotInitialized => C::NotInitialized,
            CoreError::AlreadyInitialized => C::AlreadyInitialized,
            CoreError::AlreadyUnsealed => C::AlreadyUnsealed,
            CoreError::WrongSealType => C::WrongSealType,
            CoreError::Unauthenticated => C::Unauthenticated,
            CoreError::BadCredentials => C::BadCredentials,
            CoreError::InvalidCode => C::InvalidCode,
            CoreError::Forbidden(_) => C::Forbidden,
            CoreError::MfaEnrollmentRequired => C::MfaEnrollmentRequired,
            CoreError::LastOwner => C::LastOwner,
            CoreError::NotFound { .. }
            | CoreError::InvitationNotFound
            | CoreError::NoExternalKey => C::NotFound,
            CoreError::NotConfigured(_) => C::NotConfigured,
            CoreError::Invalid { .. } => C::BadRequest,
            CoreError::AlreadyExists { .. } => C::AlreadyExists,
            CoreError::Conflict => C::Conflict,
            CoreError::MalformedShare => C::MalformedShare,
            CoreError::DuplicateShare => C::DuplicateShare,
            CoreError::AuditUnavailable => C::AuditUnavailable,
            CoreError::TenantKeyUnavailable => C::TenantKeyUnavailable,
            CoreError::Seal(_) | CoreError::DevKeyMissing(_) => C::SealUnavailable,
            CoreError::Unavailable(_) => C::Unavailable,
            CoreError::Integrity
            | CoreError::Store(_)
            | CoreError::Internal(_)
            | CoreError::Archive(_) => C::Internal,
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            // The change was rolled back with its event: nothing happened, nothing may be said.
            StoreError::AuditFailed => CoreError::AuditUnavailable,
            StoreError::Unavailable(_) => CoreError::Unavailable(e),
            StoreError::Conflict => CoreError::Conflict,
            // This node's root key is out of date: it is as good as sealed until it catches up.
            StoreError::RootReplaced => CoreError::Sealed,
            StoreError::UnstorableText => {
                CoreError::invalid("text", "contains a character that cannot be stored (NUL)")
            }
            other => CoreError::Store(other),
        }
    }
}

impl CoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }
    pub(crate) fn not_found(kind: &'static str, name: &str) -> Self {
        CoreError::NotFound {
            kind,
            name: name.to_owned(),
        }
    }
}
