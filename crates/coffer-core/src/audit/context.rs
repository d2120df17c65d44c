//! What every core operation receives to record its own audit event: the request's context
//! ([`Cx`]: request id, source address, user agent, and the actor once authenticated), and
//! its stable [`Action`] name, defined next to the operation itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

use super::{AuditActor, AuditEvent, AuditTarget};
use crate::Principal;

/// An operation's stable name in the audit log, and whether it changes state. A change's
/// event commits in the change's own transaction and is always on stable storage before the
/// answer; the event of an operation that changes nothing (a read, a list, a denial) is
/// appended before the answer with the durability `audit.read_sync` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    pub name: &'static str,
    pub change: bool,
    /// The status a success is answered with (the event records it).
    pub status: u16,
    /// What every node must forget once the change commits.
    pub forgets: Forgets,
}

/// Cached state a change makes stale on every node. Its notices are sent from inside the
/// change's transaction ([`coffer_store::ChangeEvent::notices`]), so that no node can keep
/// serving from a cache what a committed change revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forgets {
    /// Verified principals: sessions, API keys, memberships, roles, MFA.
    pub access: bool,
    /// The organisation's projects and environments.
    pub meta: bool,
    /// The organisation's unwrapped tenant keys.
    pub keys: bool,
}

impl Forgets {
    pub const NOTHING: Self = Self {
        access: false,
        meta: false,
        keys: false,
    };
    pub const ACCESS: Self = Self {
        access: true,
        meta: false,
        keys: false,
    };
    pub const META: Self = Self {
        access: false,
        meta: true,
        keys: false,
    };
    pub const EVERYTHING_OF_THE_ORG: Self = Self {
        access: true,
        meta: true,
        keys: true,
    };

    /// The notices for a change in `org`'s chain.
    pub fn notices(self, org: Option<uuid::Uuid>) -> Vec<coffer_store::Invalidation> {
        use coffer_store::Invalidation as I;
        let mut out = Vec::new();
        if self.access {
            out.push(I::Access);
        }
        if let Some(org) = org {
            if self.meta {
                out.push(I::Meta(org));
            }
            if self.keys {
                out.push(I::Keys(org));
            }
        }
        out
    }
}

impl Action {
    /// An operation that changes nothing.
    pub const fn read(name: &'static str) -> Self {
        Self {
            name,
            change: false,
            status: 200,
            forgets: Forgets::NOTHING,
        }
    }

    /// An operation that changes state.
    pub const fn change(name: &'static str) -> Self {
        Self {
            name,
            change: true,
            status: 200,
            forgets: Forgets::NOTHING,
        }
    }

    /// The same action answered with another success status (201 Created, 204 No Content).
    pub const fn answered(self, status: u16) -> Self {
        Self { status, ..self }
    }

    /// The same change, making `what` stale on every node.
    pub const fn forgets(self, what: Forgets) -> Self {
        Self {
            forgets: what,
            ..self
        }
    }
}

/// Where a request came from, as the edge that received it knows it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The id the server gave the request (its `x-request-id`, returned to the client).
    pub request_id: Option<String>,
    /// The `x-request-id` the client sent, if any: kept for correlation, never as the id.
    pub client_request_id: Option<String>,
    /// The peer's IP address.
    pub source: Option<String>,
    /// `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
}

/// One request's audit context, shared by the edge that made it and the core operations it
/// is handed to (cheap to clone). The core fills in the actor when it authenticates the
/// caller, and marks the request recorded once its event is in the log, so the edge can
/// tell a request that never reached an operation (rejected before, e.g. malformed JSON)
/// and have it recorded as such.
#[derive(Debug, Clone, Default)]
pub struct Cx(Arc<CxInner>);

#[derive(Debug, Default)]
struct CxInner {
    info: RequestInfo,
    state: Mutex<CxState>,
}

#[derive(Debug, Default)]
struct CxState {
    actor: Option<(AuditActor, Uuid)>,
    principal: Option<Principal>,
    hmac: BTreeMap<String, String>,
    /// Names the edge took from the request, for an event of a request rejected there.
    target: AuditTarget,
    /// The operation the edge routed the request to, for the same purpose.
    action: Option<Action>,
    recorded: bool,
}

impl Cx {
    pub fn new(info: RequestInfo) -> Self {
        Self(Arc::new(CxInner {
            info,
            state: Mutex::default(),
        }))
    }

    /// The context of work the service does by itself (background jobs): actor `system`.
    pub fn system() -> Self {
        let cx = Self::default();
        cx.with(|s| {
            s.actor = Some((
                AuditActor {
                    kind: "system".into(),
                    ..AuditActor::default()
                },
                Uuid::nil(),
            ));
        });
        cx
    }

    pub fn info(&self) -> &RequestInfo {
        &self.0.info
    }

    // The state is plain data: a panic elsewhere cannot leave it half-written.
    fn with<R>(&self, f: impl FnOnce(&mut CxState) -> R) -> R {
        f(&mut self.0.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The caller is `p`, authenticated by `method` (`session`, `password`, ...).
    pub(crate) fn set_principal(&self, p: &Principal, method: &str) {
        let actor = AuditActor {
            kind: "user".into(),
            id: Some(p.user_id),
            name: Some(p.username.clone()),
            auth_method: Some(method.to_owned()),
        };
        self.with(|s| {
            s.actor = Some((actor, p.org_id));
            s.principal = Some(p.clone());
        });
    }

    /// The authenticated caller, if any.
    pub(crate) fn principal(&self) -> Option<Principal> {
        self.with(|s| s.principal.clone())
    }

    /// Record a correlatable value as an HMAC (never the value itself).
    pub(crate) fn add_hmac(&self, field: &str, mac: Option<String>) {
        if let Some(m) = mac {
            self.with(|s| s.hmac.insert(field.to_owned(), m));
        }
    }

    /// The operation the edge routed this request to, and the names in its path: what the
    /// event of a request rejected before reaching it records.
    pub fn set_route(&self, action: Action, target: AuditTarget) {
        self.with(|s| {
            s.action = Some(action);
            s.target = target;
        });
    }

    pub fn route_action(&self) -> Option<Action> {
        self.with(|s| s.action)
    }

    /// Whether this request's event is in the log.
    pub fn recorded(&self) -> bool {
        self.with(|s| s.recorded)
    }

    pub(crate) fn mark_recorded(&self) {
        self.with(|s| s.recorded = true);
    }

    /// A new event of this request: its origin, actor (and organisation) and HMACs, the
    /// action and target; success with the action's status until concluded otherwise.
    pub(crate) fn event(&self, action: Action, target: AuditTarget) -> AuditEvent {
        let mut ev = AuditEvent::now(action.name);
        ev.request_id.clone_from(&self.0.info.request_id);
        ev.client_request_id
            .clone_from(&self.0.info.client_request_id);
        ev.source.clone_from(&self.0.info.source);
        ev.user_agent.clone_from(&self.0.info.user_agent);
        ev.target = target;
        ev.status = action.status;
        self.with(|s| {
            if let Some((actor, org)) = &s.actor {
                ev.actor = actor.clone();
                ev.org_id = (!org.is_nil()).then_some(*org);
                if actor.kind == "system" {
                    // Not an HTTP request.
                    ev.status = 0;
                }
            }
            ev.hmac = s.hmac.clone();
        });
        ev
    }

    /// The target names the edge noted (see [`Cx::set_route`]).
    pub(crate) fn route_target(&self) -> AuditTarget {
        self.with(|s| s.target.clone())
    }
}

impl AuditTarget {
    /// A target of names only (the ids are filled in by the operation as it resolves them).
    pub fn names(project: Option<&str>, env: Option<&str>, name: Option<&str>) -> Self {
        // Names as given, which may be invalid: at most 256 characters, and no control
        // characters (a NUL cannot even be stored in a PostgreSQL text column).
        let clip = |s: &str| {
            s.chars()
                .take(256)
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect::<String>()
        };
        Self {
            project: project.map(clip),
            env: env.map(clip),
            name: name.map(clip),
            ..Self::default()
        }
    }

    pub(crate) fn project(project: &str) -> Self {
        Self::names(Some(project), None, None)
    }

    pub(crate) fn env(project: &str, env: &str) -> Self {
        Self::names(Some(project), Some(env), None)
    }

    pub(crate) fn param(project: &str, env: &str, name: &str) -> Self {
        Self::names(Some(project), Some(env), Some(name))
    }
}
