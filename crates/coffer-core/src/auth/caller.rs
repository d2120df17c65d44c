//! The caller of a request, as its audit context records it.

use super::{Principal, action};
use crate::CoreError;
use crate::audit::{AuditTarget, Cx};
use crate::identity::Identity;

impl Identity {
    /// Authenticate the caller of a request and note it in the request's audit context
    /// (the actor of its event, and an HMAC of the token that correlates a session's
    /// requests). `any_stage`: also a login that still has to enrol MFA.
    pub async fn authenticate_in(
        &self,
        cx: &Cx,
        bearer: &str,
        any_stage: bool,
    ) -> Result<Principal, CoreError> {
        let p = if any_stage {
            self.authenticate_any_stage(bearer).await?
        } else {
            self.authenticate(bearer).await?
        };
        cx.set_principal(&p, p.method.as_str());
        cx.add_hmac(
            "session",
            self.k.audit_hmac(Some(p.org_id), bearer.as_bytes()),
        );
        Ok(p)
    }

    /// The caller's account (a person's: sessions and API keys act for one). Gone since
    /// the request authenticated: `Unauthenticated`.
    pub(crate) async fn caller_account(
        &self,
        p: &Principal,
    ) -> Result<coffer_store::UserRow, CoreError> {
        self.users
            .user(p.user_id)
            .await?
            .ok_or(CoreError::Unauthenticated)
    }

    /// Who the caller is (the principal the request authenticated as).
    pub async fn whoami(&self, cx: &Cx, p: &Principal) -> Result<Principal, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::WHOAMI, AuditTarget::default());
        self.k.conclude(pending, Ok(p.clone())).await
    }
}
