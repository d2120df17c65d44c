//! The one error type of the HTTP edge.
//!
//! Each [`ErrorCode`] has a fixed status and a stable snake_case name that clients may match
//! on (table in docs/api.md). Client errors carry the domain's message; server errors carry
//! a generic message and the request id, and their cause is logged here, once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coffer_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthenticated,
    BadCredentials,
    Forbidden,
    MfaEnrollmentRequired,
    NotFound,
    AlreadyExists,
    Conflict,
    LastOwner,
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
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest | InvalidJson | MalformedShare | DuplicateShare | WrongSealType => {
                StatusCode::BAD_REQUEST
            }
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Unauthenticated | BadCredentials => StatusCode::UNAUTHORIZED,
            Forbidden | MfaEnrollmentRequired => StatusCode::FORBIDDEN,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            NotFound => StatusCode::NOT_FOUND,
            AlreadyExists | Conflict | LastOwner | AlreadyInitialized | AlreadyUnsealed => {
                StatusCode::CONFLICT
            }
            Sealed | Unavailable | AuditUnavailable | TenantKeyUnavailable | SealUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            NotInitialized => StatusCode::NOT_IMPLEMENTED,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the server log has details under this request's id",
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        use ErrorCode as C;
        let code = match &e {
            CoreError::Sealed => {
                return Self::new(
                    C::Sealed,
                    "Coffer is sealed: unseal it with `coffer operator unseal` before use",
                );
            }
            CoreError::NotInitialized => C::NotInitialized,
            CoreError::AlreadyInitialized => C::AlreadyInitialized,
            CoreError::AlreadyUnsealed => C::AlreadyUnsealed,
            CoreError::WrongSealType => C::WrongSealType,
            CoreError::Unauthenticated => C::Unauthenticated,
            CoreError::BadCredentials => C::BadCredentials,
            CoreError::Forbidden(_) => C::Forbidden,
            CoreError::MfaEnrollmentRequired => C::MfaEnrollmentRequired,
            CoreError::LastOwner => C::LastOwner,
            CoreError::NotFound { .. } => C::NotFound,
            CoreError::Invalid { .. } => C::BadRequest,
            CoreError::AlreadyExists { .. } => C::AlreadyExists,
            CoreError::Conflict => C::Conflict,
            CoreError::MalformedShare => C::MalformedShare,
            CoreError::DuplicateShare => C::DuplicateShare,
            CoreError::AuditUnavailable => {
                return Self::new(
                    C::AuditUnavailable,
                    "the audit log is unavailable; the request was not completed",
                );
            }
            CoreError::TenantKeyUnavailable => {
                return Self::new(
                    C::TenantKeyUnavailable,
                    "tenant key unavailable: the organisation's own key (KMS or HSM) cannot be used; \
                     an Owner must enable it again",
                );
            }
            CoreError::Seal(_) => {
                tracing::error!(error = ?e, "seal unavailable");
                return Self::new(
                    C::SealUnavailable,
                    "the seal (KMS or HSM) could not be used; the server log has details",
                );
            }
            CoreError::Unavailable(_) => {
                tracing::error!(error = ?e, "storage unavailable");
                return Self::new(C::Unavailable, "storage is unavailable; retry later");
            }
            _ => {
                tracing::error!(error = ?e, "internal error");
                return Self::internal();
            }
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut res = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response();
        res.extensions_mut().insert(self.code);
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// Map axum's JSON extraction failures to our codes without echoing input back.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::MissingJsonContentType(_) => Self::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ),
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ErrorCode::PayloadTooLarge, "request body too large")
            }
            J::JsonSyntaxError(_) => {
                Self::new(ErrorCode::InvalidJson, "request body is not valid JSON")
            }
            // serde's message can quote the offending input, which may be a secret: keep it out.
            J::JsonDataError(_) => Self::new(
                ErrorCode::InvalidJson,
                "request body does not match the expected schema (see /v1/openapi.json)",
            ),
            _ => Self::new(ErrorCode::BadRequest, "could not read the request body"),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(_: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request("invalid query string")
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        Self::bad_request("invalid path parameter")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
