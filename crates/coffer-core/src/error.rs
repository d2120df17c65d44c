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
    /// The login must enrol MFA (an organisation requires it) before anything else.
    #[error("multi-factor authentication must be set up first: run `coffer mfa enroll`")]
    MfaEnrollmentRequired,
    #[error("an organisation must keep at least one Owner")]
    LastOwner,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
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
    #[error("storage error")]
    Store(#[source] StoreError),
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// The audit log could not record the operation: nothing may be answered (fail closed).
    #[error("the audit log is unavailable")]
    AuditUnavailable,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => CoreError::Unavailable(e),
            StoreError::Conflict => CoreError::Conflict,
            // This node's root key is out of date: it is as good as sealed until it catches up.
            StoreError::RootReplaced => CoreError::Sealed,
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
