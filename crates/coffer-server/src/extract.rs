//! Request extractors that fail with [`ApiError`].

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use coffer_core::Principal;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// JSON body; rejections become our error codes.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::Json::<T>::from_request(req, state).await?.0))
    }
}

/// Path parameters; a malformed one is a JSON `bad_request` that does not repeat it.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(
            axum::extract::Path::<T>::from_request_parts(parts, state)
                .await?
                .0,
        ))
    }
}

/// The query string; a malformed one is a JSON `bad_request` that does not repeat it.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await?
                .0,
        ))
    }
}

/// The authenticated caller.
#[derive(Debug)]
pub struct Auth(pub Principal);

/// The raw bearer token, for logout.
#[derive(Debug)]
pub struct Bearer(pub String);

fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let unauth = || {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "missing or malformed Authorization: Bearer header",
        )
    };
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(unauth)?;
    let s = h.to_str().map_err(|_| unauth())?;
    let t = s.strip_prefix("Bearer ").ok_or_else(unauth)?.trim();
    if t.is_empty() {
        return Err(unauth());
    }
    Ok(t.to_owned())
}

async fn principal(
    parts: &mut Parts,
    state: &AppState,
    any_stage: bool,
) -> Result<Principal, ApiError> {
    let token = bearer(parts)?;
    let cx = parts
        .extensions
        .get::<coffer_core::audit::Cx>()
        .cloned()
        .unwrap_or_default();
    state
        .coffer
        .identity()
        .authenticate_in(&cx, &token, any_stage)
        .await
        .map_err(|e| match e {
            coffer_core::CoreError::Unauthenticated => ApiError::new(
                ErrorCode::Unauthenticated,
                "the token is invalid or expired; log in again",
            ),
            other => other.into(),
        })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        principal(parts, state, false).await.map(Auth)
    }
}

/// The caller, also when their login still has to enrol MFA (only for the routes that
/// lead there: whoami, logout, MFA enrolment).
#[derive(Debug)]
pub struct AuthAnyStage(pub Principal);

impl FromRequestParts<AppState> for AuthAnyStage {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        principal(parts, state, true).await.map(AuthAnyStage)
    }
}

/// The peer's IP address (the TCP connection's; forwarding headers are not trusted).
#[derive(Debug, Clone)]
pub struct PeerAddr(pub Option<std::net::IpAddr>);

impl PeerAddr {
    pub fn label(&self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Bearer(bearer(parts)?))
    }
}
