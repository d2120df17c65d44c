//! The audit layer: one event per API operation, durably recorded before the response is
//! released. If recording fails, the response — which may carry a secret — is dropped and
//! replaced by `503 audit_unavailable` (fail closed).
//!
//! Not audited: `/v1/sys/health`, `/v1/sys/metrics`, `/v1/sys/seal-status` and
//! `/v1/openapi.json` (unauthenticated, read-only status polled by load balancers), and
//! requests that match no route.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coffer_core::Principal;
use coffer_core::audit::{AuditActor, AuditEvent, AuditTarget, ReadLog};

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// What handlers and extractors learn about a request, for its audit event.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<SlotData>>);

#[derive(Debug, Default)]
struct SlotData {
    principal: Option<Principal>,
    auth_method: Option<&'static str>,
    hmac: Vec<(&'static str, String)>,
    customer: Option<(String, Option<serde_json::Value>)>,
    param_id: Option<uuid::Uuid>,
    /// Set when the request may be answered from the node's cache (see [`layer`]).
    cached_reads: Option<ReadLog>,
}

impl AuditSlot {
    fn with<R>(&self, f: impl FnOnce(&mut SlotData) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut d| f(&mut d))
    }
    pub fn set_principal(&self, p: &Principal, method: &'static str) {
        self.with(|d| {
            d.principal = Some(p.clone());
            d.auth_method = Some(method);
        });
    }
    /// Record a correlatable value as an HMAC (never the value itself).
    pub fn add_hmac(&self, field: &'static str, mac: Option<String>) {
        if let Some(m) = mac {
            self.with(|d| d.hmac.push((field, m)));
        }
    }
    /// The parameter the request acted on, when the handler knows its id (saves the audit
    /// layer a lookup).
    pub fn set_param_id(&self, id: uuid::Uuid) {
        self.with(|d| d.param_id = Some(id));
    }
    /// Where to note reads answered from the node's cache, if this request may use it (a
    /// GET that the audit layer can answer again when such a read turns out stale).
    pub fn cached_reads(&self) -> Option<ReadLog> {
        self.with(|d| d.cached_reads.clone()).flatten()
    }
    pub fn set_customer(&self, action: String, detail: Option<serde_json::Value>) {
        self.with(|d| d.customer = Some((action, detail)));
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AuditSlot {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AuditSlot>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Stable action names by route.
fn action(method: &Method, path: &str) -> Option<&'static str> {
    let m = method.as_str();
    Some(match (m, path) {
        (_, "/v1/sys/health" | "/v1/sys/metrics" | "/v1/sys/seal-status" | "/v1/openapi.json") => {
            return None;
        }
        ("POST", "/v1/sys/init") => "sys.init",
        ("POST", "/v1/sys/unseal") => "sys.unseal",
        ("POST", "/v1/sys/seal") => "sys.seal",
        ("POST", "/v1/sys/rekey") => "sys.rekey",
        ("POST", "/v1/sys/migrate-seal") => "sys.migrate_seal",
        ("POST", "/v1/auth/login") => "auth.login",
        ("POST", "/v1/auth/logout") => "auth.logout",
        ("GET", "/v1/auth/whoami") => "auth.whoami",
        ("POST", "/v1/auth/mfa/verify") => "auth.mfa_verify",
        ("POST", "/v1/auth/oidc") => "auth.oidc_login",
        ("POST", "/v1/auth/token") => "auth.token_exchange",
        ("POST", "/v1/auth/password") => "account.password_change",
        ("PUT", "/v1/auth/email") => "account.email_change",
        ("GET", "/v1/auth/sessions") => "account.session_list",
        ("DELETE", "/v1/auth/sessions/{id}") => "account.session_revoke",
        ("POST", "/v1/auth/mfa/enroll") => "account.mfa_enroll",
        ("POST", "/v1/auth/mfa/confirm") => "account.mfa_confirm",
        ("POST", "/v1/auth/mfa/disable") => "account.mfa_disable",
        ("POST", "/v1/auth/switch") => "org.switch",
        ("GET", "/v1/orgs") => "org.list",
        ("POST", "/v1/orgs") => "org.create",
        ("GET", "/v1/org/members") => "member.list",
        ("PUT", "/v1/org/members/{username}") => "member.set_role",
        ("DELETE", "/v1/org/members/{username}") => "member.remove",
        ("GET", "/v1/org/invitations") => "invitation.list",
        ("POST", "/v1/org/invitations") => "invitation.create",
        ("POST", "/v1/invitations/accept") => "invitation.accept",
        ("GET", "/v1/org/settings") => "org.settings_read",
        ("PUT", "/v1/org/settings") => "org.settings_update",
        ("DELETE", "/v1/org") => "org.delete",
        ("GET", "/v1/org/keys") => "key.status",
        ("POST", "/v1/org/keys/rotate") => "key.rotate",
        ("PUT", "/v1/org/keys/external") => "key.attach_external",
        ("DELETE", "/v1/org/keys/external") => "key.detach_external",
        ("GET", "/v1/org/api-keys") => "apikey.list",
        ("POST", "/v1/org/api-keys") => "apikey.create",
        ("DELETE", "/v1/org/api-keys/{id}") => "apikey.revoke",
        ("GET", "/v1/projects") => "project.list",
        ("POST", "/v1/projects") => "project.create",
        ("GET", "/v1/projects/{project}/envs") => "env.list",
        ("POST", "/v1/projects/{project}/envs") => "env.create",
        ("GET", "/v1/projects/{project}/diff") => "param.diff",
        ("GET", "/v1/projects/{project}/envs/{env}/params") => "param.list",
        ("GET", "/v1/projects/{project}/envs/{env}/params/{name}") => "param.get",
        ("PUT", "/v1/projects/{project}/envs/{env}/params/{name}") => "param.set",
        ("DELETE", "/v1/projects/{project}/envs/{env}/params/{name}") => "param.delete",
        ("GET", "/v1/projects/{project}/envs/{env}/params/{name}/history") => "param.history",
        ("POST", "/v1/projects/{project}/envs/{env}/params/{name}/rollback") => "param.rollback",
        ("GET", "/v1/audit/events") => "audit.list",
        ("POST", "/v1/audit/events") => "audit.log",
        ("GET", "/v1/audit/export") => "audit.export",
        ("GET", "/v1/audit/verify") => "audit.verify",
        ("POST", "/v1/audit/checkpoints") => "audit.checkpoint",
        _ => "unknown",
    })
}

/// The named segments of the matched route, decoded from the request path.
fn target(template: &str, path: &str) -> AuditTarget {
    let mut t = AuditTarget::default();
    for (tpl, seg) in template.split('/').zip(path.split('/')) {
        let value = || {
            Some(
                percent_encoding::percent_decode_str(seg)
                    .decode_utf8_lossy()
                    .chars()
                    .take(256)
                    .collect::<String>(),
            )
        };
        match tpl {
            "{project}" => t.project = value(),
            "{env}" => t.env = value(),
            "{name}" => t.name = value(),
            _ => {}
        }
    }
    t
}

fn header_str(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(template) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let Some(action) = action(req.method(), &template) else {
        return next.run(req).await;
    };
    // A GET may be answered from the node's cache of current values. Its event is then
    // appended only if the database confirms those values are still current; if one is
    // not, that answer is dropped and the request is answered, and audited, once more from
    // the database. GETs carry no body, so the request can be made again from its head.
    let (head, body) = req.into_parts();
    let again = (head.method == Method::GET).then(|| head.clone());
    let reads = again.as_ref().map(|_| ReadLog::default());
    let req = Request::from_parts(head, body);
    let (res, ev) = attempt(&st, req, next.clone(), action, &template, reads.clone()).await;
    let recorded = match &reads {
        Some(reads) => st.coffer.record_confirming(&ev, reads).await,
        None => st.coffer.record(&ev).await.map(|_| true),
    };
    match (recorded, again) {
        (Ok(true), _) => res,
        (Ok(false), Some(head)) => {
            drop(res);
            let req = Request::from_parts(head, Body::empty());
            let (res, ev) = attempt(&st, req, next, action, &template, None).await;
            match st.coffer.record(&ev).await {
                Ok(_) => res,
                Err(_) => audit_unavailable(),
            }
        }
        _ => audit_unavailable(),
    }
}

fn audit_unavailable() -> Response {
    ApiError::new(
        ErrorCode::AuditUnavailable,
        "the audit log is unavailable; the request was not completed",
    )
    .into_response()
}

/// Run the request and describe it: its response and its audit event.
async fn attempt(
    st: &AppState,
    mut req: Request,
    next: Next,
    action: &'static str,
    template: &str,
    cached_reads: Option<ReadLog>,
) -> (Response, AuditEvent) {
    let slot = AuditSlot::default();
    slot.with(|d| d.cached_reads = cached_reads);
    req.extensions_mut().insert(slot.clone());
    let mut ev = AuditEvent::now(action);
    ev.request_id = header_str(&req, "x-request-id");
    ev.user_agent = header_str(&req, header::USER_AGENT.as_str());
    ev.source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    ev.target = target(template, req.uri().path());

    let res = next.run(req).await;

    let status = res.status();
    ev.status = status.as_u16();
    ev.error_code = res
        .extensions()
        .get::<ErrorCode>()
        .and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    ev.outcome = match status.as_u16() {
        200..=399 => "success",
        401 | 403 => "denied",
        _ => "failure",
    }
    .to_owned();
    slot.with(|d| {
        if let Some(p) = &d.principal {
            ev.org_id = Some(p.org_id);
            ev.actor = AuditActor {
                kind: "user".into(),
                id: Some(p.user_id),
                name: Some(p.username.clone()),
                auth_method: d.auth_method.map(str::to_owned),
            };
        }
        if d.param_id.is_some() {
            ev.target.param_id = d.param_id;
        }
        for (k, v) in d.hmac.drain(..) {
            ev.hmac.insert(k.to_owned(), v);
        }
        if let Some((a, detail)) = d.customer.take()
            && status.is_success()
        {
            ev.action = a;
            ev.customer = true;
            ev.detail = detail;
        }
    });
    if let Some(p) = slot.with(|d| d.principal.clone()).flatten() {
        st.coffer.resolve_target_ids(&p, &mut ev.target).await;
    }
    (res, ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_decoded_from_the_matched_route() {
        let t = target(
            "/v1/projects/{project}/envs/{env}/params/{name}",
            "/v1/projects/web/envs/prod/params/API%20KEY",
        );
        assert_eq!(
            (t.project.as_deref(), t.env.as_deref(), t.name.as_deref()),
            (Some("web"), Some("prod"), Some("API KEY"))
        );
        assert_eq!(action(&Method::GET, "/v1/sys/health"), None);
        assert_eq!(
            action(
                &Method::PUT,
                "/v1/projects/{project}/envs/{env}/params/{name}"
            ),
            Some("param.set")
        );
    }
}
