//! Coffer's HTTPS edge.
//!
//! This crate holds no key material except the TLS key: it authenticates requests, calls
//! [`coffer_core::Coffer`] with the caller's principal, and turns results into JSON. The
//! organisation a request acts on is never read from the path or the body.

mod audit;
pub mod dto;
pub mod error;
mod extract;
mod hardening;
pub mod jwks;
mod limits;
pub mod mail;
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

pub use hardening::{Hardening, harden_process};
pub use openapi::openapi_json;
pub use run::{DatabaseUrl, RunningServer, ServerConfig, create_data_dir, start};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub coffer: Coffer,
    /// Per-address throttle of login attempts.
    pub limiter: std::sync::Arc<limits::LoginLimiter>,
    /// Signing keys of external OpenID providers.
    pub jwks: std::sync::Arc<dyn coffer_core::oidc::JwksSource>,
}

impl AppState {
    /// Default limits and no OpenID providers.
    pub fn new(coffer: Coffer) -> Self {
        Self {
            coffer,
            limiter: std::sync::Arc::new(limits::LoginLimiter::new(60)),
            jwks: std::sync::Arc::new(jwks::JwksCache::new(
                Default::default(),
                Duration::from_secs(300),
            )),
        }
    }
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
        .route("/v1/sys/rekey", post(sys::rekey))
        .route("/v1/sys/migrate-seal", post(sys::migrate_seal))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/auth/mfa/verify", post(auth::mfa_verify))
        .route("/v1/auth/oidc", post(auth::oidc))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/password", post(auth::change_password))
        .route("/v1/auth/email", axum::routing::put(auth::set_email))
        .route("/v1/auth/sessions", get(auth::sessions))
        .route(
            "/v1/auth/sessions/{id}",
            axum::routing::delete(auth::revoke_session),
        )
        .route("/v1/auth/mfa/enroll", post(auth::mfa_enroll))
        .route("/v1/auth/mfa/confirm", post(auth::mfa_confirm))
        .route("/v1/auth/mfa/disable", post(auth::mfa_disable))
        .route("/v1/auth/switch", post(orgs::switch))
        .route("/v1/orgs", get(orgs::list).post(orgs::create))
        .route("/v1/org/members", get(orgs::members))
        .route(
            "/v1/org/members/{username}",
            axum::routing::put(orgs::set_role).delete(orgs::remove),
        )
        .route(
            "/v1/org/invitations",
            get(orgs::invitations).post(orgs::invite),
        )
        .route("/v1/invitations/accept", post(orgs::accept))
        .route(
            "/v1/org/settings",
            get(orgs::settings).put(orgs::update_settings),
        )
        .route("/v1/org", axum::routing::delete(orgs::delete))
        .route("/v1/org/keys", get(keys::status))
        .route("/v1/org/keys/rotate", post(keys::rotate))
        .route(
            "/v1/org/keys/external",
            axum::routing::put(keys::attach_external).delete(keys::detach_external),
        )
        .route("/v1/org/api-keys", get(apikeys::list).post(apikeys::create))
        .route(
            "/v1/org/api-keys/{id}",
            axum::routing::delete(apikeys::revoke),
        )
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
