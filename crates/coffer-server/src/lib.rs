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
mod links;
pub mod mail;
mod openapi;
mod routes;
mod run;
mod schema;
pub mod tls;
mod whole_number;

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

/// Default cap on a request's line and headers together, in bytes (`http.max_header_bytes`).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct AppState {
    pub coffer: Coffer,
    /// Per-address throttle of login attempts.
    pub limiter: std::sync::Arc<limits::LoginLimiter>,
    /// Signing keys of external OpenID providers.
    pub jwks: std::sync::Arc<dyn coffer_core::oidc::JwksSource>,
    /// Cap on a request's line and headers together, in bytes.
    pub max_header_bytes: usize,
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
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(error::ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(
        error::ErrorCode::MethodNotAllowed,
        "this endpoint does not take this method (the API document lists the methods: /v1/openapi.json)",
    )
}

async fn openapi_doc() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::openapi_json(),
    )
}

/// The whole API as a router, without a socket, so tests can drive it directly.
pub fn router(state: AppState) -> Router {
    use crate::audit::op;
    use coffer_core::actions as a;
    use routes::*;
    let request_id = HeaderName::from_static("x-request-id");
    let params_path = "/v1/projects/{project}/envs/{env}/params";
    Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/seal-status", get(sys::seal_status))
        .route("/v1/sys/init", post(op(a::sys::INIT, sys::init)))
        .route("/v1/sys/unseal", post(op(a::sys::UNSEAL, sys::unseal)))
        .route("/v1/sys/seal", post(op(a::sys::SEAL, sys::seal)))
        .route("/v1/sys/rekey", post(op(a::sys::REKEY, sys::rekey)))
        .route(
            "/v1/sys/migrate-seal",
            post(op(a::sys::MIGRATE_SEAL, sys::migrate_seal)),
        )
        .route("/v1/auth/login", post(op(a::auth::LOGIN, auth::login)))
        .route("/v1/auth/logout", post(op(a::auth::LOGOUT, auth::logout)))
        .route("/v1/auth/whoami", get(op(a::auth::WHOAMI, auth::whoami)))
        .route(
            "/v1/auth/mfa/verify",
            post(op(a::mfa::MFA_VERIFY, auth::mfa_verify)),
        )
        .route("/v1/auth/oidc", post(op(a::auth::OIDC_LOGIN, auth::oidc)))
        .route(
            "/v1/auth/token",
            post(op(a::apikeys::EXCHANGE, auth::token)),
        )
        .route(
            "/v1/auth/password",
            post(op(a::auth::PASSWORD_CHANGE, auth::change_password)),
        )
        .route(
            "/v1/auth/email",
            axum::routing::put(op(a::members::EMAIL_CHANGE, auth::set_email)),
        )
        .route(
            "/v1/auth/sessions",
            get(op(a::auth::SESSION_LIST, auth::sessions)),
        )
        .route(
            "/v1/auth/sessions/{id}",
            axum::routing::delete(op(a::auth::SESSION_REVOKE, auth::revoke_session)),
        )
        .route(
            "/v1/auth/mfa/enroll",
            post(op(a::mfa::MFA_ENROLL, auth::mfa_enroll)),
        )
        .route(
            "/v1/auth/mfa/confirm",
            post(op(a::mfa::MFA_CONFIRM, auth::mfa_confirm)),
        )
        .route(
            "/v1/auth/mfa/disable",
            post(op(a::mfa::MFA_DISABLE, auth::mfa_disable)),
        )
        .route(
            "/v1/auth/switch",
            post(op(a::members::ORG_SWITCH, orgs::switch)),
        )
        .route(
            "/v1/orgs",
            get(op(a::members::ORG_LIST, orgs::list))
                .post(op(a::members::ORG_CREATE, orgs::create)),
        )
        .route(
            "/v1/org/members",
            get(op(a::members::MEMBER_LIST, orgs::members)),
        )
        .route(
            "/v1/org/members/{username}",
            axum::routing::put(op(a::members::MEMBER_SET_ROLE, orgs::set_role))
                .delete(op(a::members::MEMBER_REMOVE, orgs::remove)),
        )
        .route(
            "/v1/org/invitations",
            get(op(a::members::INVITATION_LIST, orgs::invitations))
                .post(op(a::members::INVITATION_CREATE, orgs::invite)),
        )
        .route(
            "/v1/invitations/accept",
            post(op(a::members::INVITATION_ACCEPT, orgs::accept)),
        )
        .route(
            "/v1/org/settings",
            get(op(a::mfa::SETTINGS_READ, orgs::settings))
                .put(op(a::mfa::SETTINGS_UPDATE, orgs::update_settings)),
        )
        .route(
            "/v1/org",
            axum::routing::delete(op(a::orgs::DELETE, orgs::delete)),
        )
        .route("/v1/org/keys", get(op(a::keys::STATUS, keys::status)))
        .route(
            "/v1/org/keys/rotate",
            post(op(a::keys::ROTATE, keys::rotate)),
        )
        .route(
            "/v1/org/keys/external",
            axum::routing::put(op(a::keys::ATTACH_EXTERNAL, keys::attach_external))
                .delete(op(a::keys::DETACH_EXTERNAL, keys::detach_external)),
        )
        .route(
            "/v1/org/api-keys",
            get(op(a::apikeys::LIST, apikeys::list)).post(op(a::apikeys::CREATE, apikeys::create)),
        )
        .route(
            "/v1/org/api-keys/{id}",
            axum::routing::delete(op(a::apikeys::REVOKE, apikeys::revoke)),
        )
        .route(
            "/v1/projects",
            get(op(a::projects::PROJECT_LIST, projects::list))
                .post(op(a::projects::PROJECT_CREATE, projects::create)),
        )
        .route(
            "/v1/projects/{project}/envs",
            get(op(a::projects::ENV_LIST, projects::list_envs))
                .post(op(a::projects::ENV_CREATE, projects::create_env)),
        )
        .route(
            "/v1/projects/{project}/diff",
            get(op(a::params::DIFF, params::diff)),
        )
        .route(params_path, get(op(a::params::LIST, params::list)))
        .route(
            &format!("{params_path}/{{name}}"),
            get(op(a::params::GET, params::get))
                .put(op(a::params::SET, params::set))
                .delete(op(a::params::DELETE, params::delete)),
        )
        .route(
            &format!("{params_path}/{{name}}/history"),
            get(op(a::params::HISTORY, params::history)),
        )
        .route(
            &format!("{params_path}/{{name}}/rollback"),
            post(op(a::params::ROLLBACK, params::rollback)),
        )
        .route(
            "/v1/audit/events",
            get(op(a::audit::LIST, audit::list)).post(op(a::audit::LOG, audit::log)),
        )
        .route("/v1/audit/export", get(op(a::audit::EXPORT, audit::export)))
        .route("/v1/audit/verify", get(op(a::audit::VERIFY, audit::verify)))
        .route(
            "/v1/audit/checkpoints",
            post(op(a::audit::CHECKPOINT, audit::checkpoint)),
        )
        .route("/v1/sys/metrics", get(sys::metrics))
        .route("/v1/openapi.json", get(openapi_doc))
        // Per route (so the matched path is known); innermost, after request ids are set.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::layer,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.max_header_bytes,
            limits::cap_head,
        ))
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
        .layer(axum::middleware::map_request(crate::audit::own_request_id))
}
