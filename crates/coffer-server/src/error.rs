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

pub use coffer_core::ErrorCode;

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
        match &e {
            CoreError::Sealed => Self::new(
                C::Sealed,
                "Coffer is sealed: unseal it with `coffer operator unseal` before use",
            ),
            CoreError::AuditUnavailable => Self::new(
                C::AuditUnavailable,
                "the audit log is unavailable; the request was not completed",
            ),
            CoreError::TenantKeyUnavailable => Self::new(
                C::TenantKeyUnavailable,
                "tenant key unavailable: the organisation's own key (KMS or HSM) cannot be used; \
                     an Owner must enable it again",
            ),
            CoreError::Seal(_) => {
                tracing::error!(error = ?e, "seal unavailable");
                Self::new(
                    C::SealUnavailable,
                    "the seal (KMS or HSM) could not be used; the server log has details",
                )
            }
            CoreError::Unavailable(_) => {
                tracing::error!(error = ?e, "storage unavailable");
                Self::new(C::Unavailable, "storage is unavailable; retry later")
            }
            // Client errors: their text is written to be shown (CoreError's contract). A
            // variant added later is answered with its own code, not as an internal error.
            _ if e.code().status() < 500 => Self::new(e.code(), e.to_string()),
            _ => {
                tracing::error!(error = ?e, "internal error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
