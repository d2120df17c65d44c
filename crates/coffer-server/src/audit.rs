//! The edge's part of the audit log: it gives every request its audit context ([`Cx`]:
//! request id, source address, user agent), which the handlers pass to the core, whose
//! operations record their own events (a change's event commits with the change). The edge
//! records only what never reached an operation: a request rejected on the way (malformed
//! body, no valid token, throttled), as the action of the route it was sent to. A response
//! that would leave without any event is replaced by `503 audit_unavailable` (fail closed).
//!
//! Not audited: `/v1/sys/health`, `/v1/sys/metrics`, `/v1/sys/seal-status` and
//! `/v1/openapi.json` (unauthenticated, read-only status polled by load balancers; they
//! carry no action), and requests that match no route.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coffer_core::ErrorCode;
use coffer_core::audit::{Action, AuditTarget, Cx, RequestInfo};

use crate::AppState;
use crate::error::ApiError;

fn header_str(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Give the request its audit context; afterwards, record it if no operation did.
pub async fn layer(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let cx = Cx::new(RequestInfo {
        request_id: header_str(&req, "x-request-id"),
        client_request_id: req
            .extensions()
            .get::<ClientRequestId>()
            .map(|c| c.0.clone()),
        source: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: header_str(&req, header::USER_AGENT.as_str()),
    });
    req.extensions_mut().insert(cx.clone());
    let res = next.run(req).await;
    let Some(action) = cx.route_action() else {
        return res;
    };
    if cx.recorded() {
        return res;
    }
    let (code, res) = match res.extensions().get::<ErrorCode>() {
        Some(code) if !res.status().is_success() => (*code, res),
        // Refused by one of axum's own extractors (a path segment or query string of the
        // wrong shape) before any operation ran: answered as the JSON error every client
        // expects, without repeating the input.
        _ if res.status().is_client_error() => (
            ErrorCode::BadRequest,
            ApiError::bad_request("invalid path segment or query parameter").into_response(),
        ),
        _ => {
            // An operation answered without its event: a defect, never an answer.
            tracing::error!(
                action = action.name,
                "a response had no audit event; failing the request closed"
            );
            return audit_unavailable();
        }
    };
    match st.coffer.record_rejection(&cx, code).await {
        Ok(()) => res,
        Err(_) => audit_unavailable(),
    }
}

/// The `x-request-id` a client sent. The server gives every request its own id (a client
/// could otherwise choose the id its requests are recorded under and forge correlation);
/// the client's is kept beside it.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

/// Take the client's `x-request-id` off the request (so that the request id layer makes a
/// new one), keeping it as [`ClientRequestId`] if it is short printable ASCII.
pub async fn own_request_id(mut req: Request) -> Request {
    if let Some(v) = req.headers_mut().remove("x-request-id")
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_graphic())
    {
        req.extensions_mut().insert(ClientRequestId(s.to_owned()));
    }
    req
}

fn audit_unavailable() -> Response {
    ApiError::new(
        ErrorCode::AuditUnavailable,
        "the audit log is unavailable; the request was not completed",
    )
    .into_response()
}

/// `handler` as the operation `action`: a request rejected before the operation runs is
/// recorded under that action, with the names in its path as the target.
pub fn op<H, T>(action: Action, handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    handler.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| note_route(action, req, next),
    ))
}

async fn note_route(action: Action, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Some(cx) = parts.extensions.get::<Cx>().cloned() {
        let params = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok();
        let get = |key: &str| {
            params
                .iter()
                .flat_map(|p| p.iter())
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_owned())
        };
        let (project, env, name) = (get("project"), get("env"), get("name"));
        cx.set_route(
            action,
            AuditTarget::names(project.as_deref(), env.as_deref(), name.as_deref()),
        );
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The request's audit context, for handlers to hand to the core.
impl<S: Send + Sync> FromRequestParts<S> for CxOf {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(CxOf(
            parts.extensions.get::<Cx>().cloned().unwrap_or_default(),
        ))
    }
}

/// Extractor of the request's [`Cx`].
#[derive(Debug, Clone)]
pub struct CxOf(pub Cx);
