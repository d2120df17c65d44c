//! Coffer's HTTPS edge.
//!
//! This crate holds no key material except the TLS key: it authenticates requests, calls
//! [`coffer_core::Coffer`] with the caller's principal, and turns results into JSON. The
//! organisation a request acts on is never read from the path or the body.

mod audit;
pub mod dto;
pub mod error;
mod extract;
mod openapi;
mod routes;
mod run;
pub mod tls;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post};
use coffer_core::Coffer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

pub use openapi::openapi_json;
pub use run::{DatabaseUrl, RunningServer, ServerConfig, start};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub coffer: Coffer,
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(error::ErrorCode::NotFound, "no such endpoint")
}

async fn openapi_doc() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::openapi_json(),
    )
}

/// The whole API as a router, without a socket, so tests can drive it directly.
pub fn router(state: AppState) -> Router {
    use routes::*;
    let request_id = HeaderName::from_static("x-request-id");
    let params_path = "/v1/projects/{project}/envs/{env}/params";
    Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/seal-status", get(sys::seal_status))
        .route("/v1/sys/init", post(sys::init))
        .route("/v1/sys/unseal", post(sys::unseal))
        .route("/v1/sys/seal", post(sys::seal))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/projects", get(projects::list).post(projects::create))
        .route(
            "/v1/projects/{project}/envs",
            get(projects::list_envs).post(projects::create_env),
        )
        .route("/v1/projects/{project}/diff", get(params::diff))
        .route(params_path, get(params::list))
        .route(
            &format!("{params_path}/{{name}}"),
            get(params::get).put(params::set).delete(params::delete),
        )
        .route(
            &format!("{params_path}/{{name}}/history"),
            get(params::history),
        )
        .route(
            &format!("{params_path}/{{name}}/rollback"),
            post(params::rollback),
        )
        .route("/v1/audit/events", get(audit::list).post(audit::log))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/checkpoints", post(audit::checkpoint))
        .route("/v1/sys/metrics", get(sys::metrics))
        .route("/v1/openapi.json", get(openapi_doc))
        // Per route (so the matched path is known); innermost, after request ids are set.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::layer,
        ))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
