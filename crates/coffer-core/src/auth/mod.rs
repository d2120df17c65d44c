//! Passwords, sessions and bearer-token authentication.
//!
//! Passwords are Argon2id (OWASP minimum parameters: 19 MiB, t=2, p=1) and verified on the
//! blocking pool. Unknown, locked and throttled accounts are verified against a dummy hash so
//! that timing and the answer are the same as for a wrong password. Bearer tokens are 256-bit
//! random values stored as SHA-256 digests: verifying a request costs one hash and, at most
//! once per cache lifetime, a few indexed lookups — never Argon2.
//!
//! Token kinds, told apart by prefix: `cfs_` login sessions, `cfm_` a login waiting for its
//! second factor, `cfa_` access tokens exchanged for an API key, `cfr_` API keys.

use std::time::Duration;

use coffer_crypto::token::{self, BearerToken};
use coffer_store::{SessionRow, UserRow};
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx, Pending};
use crate::clock::now_ms;
use crate::identity::Identity;
use crate::{CoreError, Role};
/// The audit actions of authentication and sessions.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const LOGIN: Action = Action::change("auth.login");
    pub const LOGOUT: Action = Action::change("auth.logout")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const WHOAMI: Action = Action::read("auth.whoami");
    pub const OIDC_LOGIN: Action = Action::change("auth.oidc_login");
    pub const SESSION_LIST: Action = Action::read("account.session_list");
    pub const SESSION_REVOKE: Action = Action::change("account.session_revoke")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const PASSWORD_CHANGE: Action = Action::change("account.password_change")
        .answered(204)
        .forgets(Forgets::ACCESS);
}

mod cache;
mod caller;
mod credentials;
mod passwords;

pub(crate) use cache::SessionCache;
pub use passwords::normalize_username;
pub(crate) use passwords::{dummy_hash, hash_password, validate_password, verify_password};

pub const SESSION_PREFIX: &str = "cfs_";
pub const MFA_PREFIX: &str = "cfm_";
pub const ACCESS_PREFIX: &str = "cfa_";
pub const API_KEY_PREFIX: &str = "cfr_";

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Password,
    Oidc,
    ApiKey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Oidc => "oidc",
            AuthMethod::ApiKey => "apikey",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "password" => AuthMethod::Password,
            "oidc" => AuthMethod::Oidc,
            "apikey" => AuthMethod::ApiKey,
            _ => return None,
        })
    }
}

/// Restrictions an API key carries on top of its role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub read_only: bool,
    /// Project names (empty: every project).
    pub projects: Vec<String>,
    /// Environment names (empty: every environment).
    pub envs: Vec<String>,
}

impl Scope {
    pub fn allows_project(&self, name: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == name)
    }
    /// Outside the scope looks like "not found": a restricted key learns nothing of what it
    /// may not see.
    pub(crate) fn check_project(&self, name: &str) -> Result<(), CoreError> {
        if self.allows_project(name) {
            Ok(())
        } else {
            Err(CoreError::not_found("project", name))
        }
    }
    pub(crate) fn check_env(&self, name: &str) -> Result<(), CoreError> {
        if self.envs.is_empty() || self.envs.iter().any(|e| e == name) {
            Ok(())
        } else {
            Err(CoreError::not_found("environment", name))
        }
    }
}

/// Who is calling. The organisation here is the only one the request may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub org_id: Uuid,
    pub org_name: String,
    pub role: Role,
    pub expires_at: i64,
    /// The session behind the token (None when an API key is used directly).
    pub session_id: Option<Uuid>,
    pub method: AuthMethod,
    pub api_key_id: Option<Uuid>,
    pub scope: Scope,
    /// The login still has to enrol MFA before anything else is allowed.
    pub mfa_enrollment_pending: bool,
}

impl Principal {
    /// Account management (password, MFA, sessions, API keys of one's own) needs a person,
    /// not an API key.
    pub(crate) fn ensure_person(&self) -> Result<(), CoreError> {
        if self.method == AuthMethod::ApiKey {
            Err(CoreError::Forbidden("API keys cannot manage accounts"))
        } else {
            Ok(())
        }
    }
}

/// The result of a first factor.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in. With `principal.mfa_enrollment_pending` the session may only enrol MFA.
    Session(LoginResult),
    /// The password was right; a TOTP or recovery code must follow, with this token.
    MfaRequired {
        mfa_token: BearerToken,
        expires_at: i64,
    },
}

impl LoginOutcome {
    /// The session, or Unauthenticated if a second factor is still due.
    pub fn session(self) -> Result<LoginResult, CoreError> {
        match self {
            LoginOutcome::Session(r) => Ok(r),
            LoginOutcome::MfaRequired { .. } => Err(CoreError::Unauthenticated),
        }
    }
}

#[derive(Debug)]
pub struct LoginResult {
    pub token: BearerToken,
    pub principal: Principal,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Session fields that vary between the ways of logging in.
pub(crate) struct NewSession<'a> {
    pub user: &'a UserRow,
    pub org_id: Uuid,
    pub stage: &'static str,
    pub method: AuthMethod,
    pub api_key_id: Option<Uuid>,
    pub address: &'a str,
    pub ttl: Duration,
    /// The audit event of the login or exchange that creates the session.
    pub event: Option<&'a coffer_store::ChangeEvent>,
}

impl Identity {
    /// Password login. Every failure — unknown user, wrong password, locked account, too
    /// many attempts — is the same [`CoreError::BadCredentials`] after the same work.
    pub async fn login(
        &self,
        cx: &Cx,
        username: &str,
        password: &str,
        org: Option<&str>,
        address: &str,
    ) -> Result<LoginOutcome, CoreError> {
        let mut pending = self.k.begin(cx, action::LOGIN, AuditTarget::default());
        let r: Result<LoginOutcome, CoreError> = async {
            self.k.ensure_unsealed()?;
            let user = self.find_login_user(username).await?;
            let user = self.check_first_factor(user, password).await?;
            self.after_first_factor(&mut pending, user, org, AuthMethod::Password, address)
                .await
        }
        .await;
        if r.is_err()
            && let Some(mac) = self
                .k
                .audit_hmac(None, normalize_username(username).as_bytes())
        {
            // People sometimes type their password into the username field: only an HMAC.
            pending.ev.hmac.insert("username".into(), mac);
        }
        self.k.conclude(pending, r).await
    }

    /// Look a user up by username, or by e-mail if the name contains `@`.
    pub(crate) async fn find_login_user(&self, name: &str) -> Result<Option<UserRow>, CoreError> {
        let name = normalize_username(name);
        // No account's name or address holds a control character (names are validated
        // when made), and PostgreSQL cannot even compare a NUL: nobody to find.
        if name.is_empty() || name.len() > 320 || name.chars().any(char::is_control) {
            return Ok(None);
        }
        Ok(if name.contains('@') {
            self.users.user_by_email(&name).await?
        } else {
            self.users.user_by_name(&name).await?
        })
    }

    /// Claim an attempt, verify the password (always, against a dummy hash when there is
    /// nothing to verify against) and settle the lockout counter.
    pub(crate) async fn check_first_factor(
        &self,
        user: Option<UserRow>,
        password: &str,
    ) -> Result<UserRow, CoreError> {
        let cfg = self.k.config();
        let claimed = match &user {
            Some(u) => self
                .users
                .claim_login_attempt(
                    u.id,
                    now_ms(),
                    cfg.max_failed_logins,
                    ms(cfg.login_delay_step),
                )
                .await?
                .is_some(),
            None => {
                // The same statement for an id that matches nothing, so that an unknown
                // user costs the same round trip as a known one.
                let _ = self
                    .users
                    .claim_login_attempt(
                        Uuid::nil(),
                        now_ms(),
                        cfg.max_failed_logins,
                        ms(cfg.login_delay_step),
                    )
                    .await?;
                false
            }
        };
        let hash = match &user {
            Some(u) if claimed => u.password_hash.clone(),
            _ => self.dummy_hash.clone(),
        };
        let ok = verify_password(password.to_owned(), hash).await?;
        let Some(user) = user else {
            return Err(CoreError::BadCredentials);
        };
        if !claimed {
            return Err(CoreError::BadCredentials);
        }
        if !ok {
            self.note_failure(user.id).await?;
            return Err(CoreError::BadCredentials);
        }
        Ok(user)
    }

    pub(crate) async fn note_failure(&self, user_id: Uuid) -> Result<(), CoreError> {
        let cfg = self.k.config();
        self.users
            .lock_if_exhausted(
                user_id,
                cfg.max_failed_logins,
                now_ms().saturating_add(ms(cfg.lockout)),
            )
            .await?;
        Ok(())
    }

    /// The first factor is right: ask for the second, demand enrolment, or log in.
    pub(crate) async fn after_first_factor(
        &self,
        pending: &mut Pending,
        user: UserRow,
        org: Option<&str>,
        method: AuthMethod,
        address: &str,
    ) -> Result<LoginOutcome, CoreError> {
        let org_id = self.login_org(&user, org).await?;
        if user.mfa_enabled {
            // Not a failure, but not a success yet either: earlier failures still count.
            self.users.release_login_attempt(user.id).await?;
            let (token, _) = self
                .new_session(
                    MFA_PREFIX,
                    NewSession {
                        user: &user,
                        org_id,
                        stage: "mfa",
                        method,
                        api_key_id: None,
                        address,
                        ttl: self.k.config().mfa_pending_ttl,
                        event: Some(pending.change_event()?),
                    },
                )
                .await?;
            let expires_at = now_ms().saturating_add(ms(self.k.config().mfa_pending_ttl));
            return Ok(LoginOutcome::MfaRequired {
                mfa_token: token,
                expires_at,
            });
        }
        self.users.reset_login_attempts(user.id).await?;
        let stage = if self.users.user_requires_mfa(user.id).await? {
            "enroll"
        } else {
            "full"
        };
        self.finish_login(pending, &user, org_id, stage, method, address)
            .await
            .map(LoginOutcome::Session)
    }

    pub(crate) async fn finish_login(
        &self,
        pending: &mut Pending,
        user: &UserRow,
        org_id: Uuid,
        stage: &'static str,
        method: AuthMethod,
        address: &str,
    ) -> Result<LoginResult, CoreError> {
        pending.set_actor(user.id, &user.username, org_id, method.as_str());
        let (token, _) = self
            .new_session(
                SESSION_PREFIX,
                NewSession {
                    user,
                    org_id,
                    stage,
                    method,
                    api_key_id: None,
                    address,
                    ttl: self.k.config().session_ttl,
                    event: Some(pending.change_event()?),
                },
            )
            .await?;
        // The login happened with the session's commit: telling the user about a new
        // address is best effort and cannot turn it into a failure.
        if let Err(e) = self.note_login_address(user, address).await {
            tracing::error!(error = %e, "could not note a login's address");
        }
        let principal = self.authenticate_any_stage(token.expose_secret()).await?;
        Ok(LoginResult { token, principal })
    }

    /// Remember the address a user signed in from, and tell them when it is a new one.
    async fn note_login_address(&self, user: &UserRow, address: &str) -> Result<(), CoreError> {
        if self
            .users
            .note_login_address(user.id, address, now_ms())
            .await?
            // The very first login is not news; a new address after that is.
            && self.users.login_address_count(user.id).await? > 1
        {
            self.notify(
                user,
                "New sign-in to your Coffer account",
                &format!("Your account signed in from a new address: {address}. If this was not you, change your password and revoke your sessions."),
            )
            .await;
        }
        Ok(())
    }

    /// The organisation a login starts in: the one asked for, else the oldest membership.
    async fn login_org(&self, user: &UserRow, org: Option<&str>) -> Result<Uuid, CoreError> {
        let ms = self.access.memberships(user.id).await?;
        let chosen = match org {
            None => ms.first().map(|m| m.org_id),
            Some(name) => {
                let mut found = None;
                for m in &ms {
                    if self
                        .tenants
                        .org(m.org_id)
                        .await?
                        .is_some_and(|o| o.name == name)
                    {
                        found = Some(m.org_id);
                    }
                }
                found
            }
        };
        chosen.ok_or(CoreError::BadCredentials)
    }

    pub(crate) async fn new_session(
        &self,
        prefix: &str,
        s: NewSession<'_>,
    ) -> Result<(BearerToken, Uuid), CoreError> {
        let (token, digest) = token::generate(prefix);
        let now = now_ms();
        let id = Uuid::new_v4();
        self.access
            .create_session(
                &SessionRow {
                    id,
                    token_hash: digest.0,
                    user_id: s.user.id,
                    org_id: s.org_id,
                    stage: s.stage.to_owned(),
                    method: s.method.as_str().to_owned(),
                    api_key_id: s.api_key_id,
                    address: s.address.chars().take(64).collect(),
                    created_at: now,
                    last_seen_at: now,
                    expires_at: now.saturating_add(ms(s.ttl)),
                },
                s.event,
            )
            .await?;
        Ok((token, id))
    }

    /// Resolve a bearer token to its principal. Logins that still have to enrol MFA are
    /// refused here (fail closed); the few routes they may use call
    /// [`Identity::authenticate_any_stage`].
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, CoreError> {
        let p = self.authenticate_any_stage(bearer).await?;
        if p.mfa_enrollment_pending {
            return Err(CoreError::MfaEnrollmentRequired);
        }
        Ok(p)
    }

    pub async fn authenticate_any_stage(&self, bearer: &str) -> Result<Principal, CoreError> {
        self.k.ensure_unsealed()?;
        if bearer.len() > 128 {
            return Err(CoreError::Unauthenticated);
        }
        let is_session = bearer.starts_with(SESSION_PREFIX) || bearer.starts_with(ACCESS_PREFIX);
        let is_key = bearer.starts_with(API_KEY_PREFIX);
        if !is_session && !is_key {
            return Err(CoreError::Unauthenticated);
        }
        let digest = token::hash(bearer).0;
        let now = now_ms();
        let cache = &self.sessions;
        let ttl = self.principal_ttl();
        if let Some(p) = cache.get(&digest, now, ttl) {
            return Ok(p);
        }
        let lock = cache.refreshing.lock(digest);
        let _refreshing = lock.lock().await;
        // Another request may have refreshed it while this one waited.
        if let Some(p) = cache.get(&digest, now_ms(), ttl) {
            return Ok(p);
        }
        let generation = cache.generation();
        let p = if is_key {
            self.principal_for_api_key(&digest, now).await?
        } else {
            self.principal_for_session(&digest, now).await?
        };
        cache.put(digest, p.clone(), generation);
        Ok(p)
    }

    async fn principal_for_session(
        &self,
        digest: &[u8; 32],
        now: i64,
    ) -> Result<Principal, CoreError> {
        let s = self
            .access
            .session(digest)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        let idle = ms(self.k.config().idle_timeout);
        if s.expires_at <= now || s.last_seen_at.saturating_add(idle) <= now {
            self.access.delete_session(digest, None).await?;
            return Err(CoreError::Unauthenticated);
        }
        if s.stage == "mfa" {
            return Err(CoreError::Unauthenticated);
        }
        // Activity is recorded coarsely: at most a few writes per idle period.
        if now.saturating_sub(s.last_seen_at) >= (idle / 8).min(60_000) {
            self.access.touch_session(s.org_id, s.id, now).await?;
        }
        let method = AuthMethod::parse(&s.method).ok_or(CoreError::Internal("session method"))?;
        let (role_cap, scope, expires_at) = match s.api_key_id {
            Some(key_id) => {
                let k = self
                    .access
                    .api_key(s.org_id, key_id)
                    .await?
                    .filter(|k| k.revoked_at.is_none() && k.expires_at > now)
                    .ok_or(CoreError::Unauthenticated)?;
                (
                    Role::parse(&k.role),
                    key_scope(&k),
                    s.expires_at.min(k.expires_at),
                )
            }
            None => (Some(Role::Owner), Scope::default(), s.expires_at),
        };
        let mut p = self
            .principal_for(s.user_id, s.org_id, role_cap, scope, expires_at)
            .await?;
        p.session_id = Some(s.id);
        p.method = method;
        p.api_key_id = s.api_key_id;
        // An organisation that started requiring MFA after this login holds its members
        // without MFA to enrolment from the next cache refresh on.
        p.mfa_enrollment_pending = s.stage == "enroll"
            || (s.api_key_id.is_none()
                && self.tenants.org_requires_mfa(s.org_id).await?
                && !self
                    .users
                    .user(s.user_id)
                    .await?
                    .is_some_and(|u| u.mfa_enabled));
        Ok(p)
    }

    async fn principal_for_api_key(
        &self,
        digest: &[u8; 32],
        now: i64,
    ) -> Result<Principal, CoreError> {
        let k = self
            .access
            .api_key_by_hash(digest)
            .await?
            .filter(|k| k.revoked_at.is_none() && k.expires_at > now)
            .ok_or(CoreError::Unauthenticated)?;
        if k.last_used_at
            .is_none_or(|t| now.saturating_sub(t) >= 60_000)
        {
            self.note_key_use(k.org_id, k.id, now);
        }
        let mut p = self
            .principal_for(
                k.user_id,
                k.org_id,
                Role::parse(&k.role),
                key_scope(&k),
                k.expires_at,
            )
            .await?;
        p.method = AuthMethod::ApiKey;
        p.api_key_id = Some(k.id);
        Ok(p)
    }

    /// The caller's current role is read from the membership on every cache refresh, so
    /// demotions and removals take effect within the cache lifetime (at once on this node).
    /// An API key acts with the lower of its own role and its creator's current role.
    async fn principal_for(
        &self,
        user_id: Uuid,
        org_id: Uuid,
        role_cap: Option<Role>,
        scope: Scope,
        expires_at: i64,
    ) -> Result<Principal, CoreError> {
        let role_cap = role_cap.ok_or(CoreError::Internal("unknown role in database"))?;
        let (m, user, org) = self
            .access
            .member(org_id, user_id)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        let role = Role::parse(&m.role).ok_or(CoreError::Internal("unknown role in database"))?;
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            org_id: org.id,
            org_name: org.name,
            role: role.min(role_cap),
            expires_at,
            session_id: None,
            method: AuthMethod::Password,
            api_key_id: None,
            scope,
            mfa_enrollment_pending: false,
        })
    }

    /// Forget cached principals after a change to who may do what (the change's own
    /// notice, sent in its transaction, tells the other nodes).
    pub(crate) fn access_changed(&self) {
        self.sessions.clear();
    }

    /// How long a verified principal may be answered from the cache: long while every
    /// change's notice reaches this node, briefly while it may miss some; at most an eighth
    /// of the idle timeout, so that sessions in use are seen in use.
    pub(crate) fn principal_ttl(&self) -> std::time::Duration {
        let cfg = self.k.config();
        if self.k.cluster().notices_live() {
            cfg.notified_cache_ttl.min(cfg.idle_timeout / 8)
        } else {
            cfg.session_cache_ttl
        }
    }

    /// End the session of this token. Idempotent.
    pub async fn logout(&self, cx: &Cx, bearer: &str) -> Result<(), CoreError> {
        // Attributed to the session's user while the token is still valid; logging out with
        // a dead token is harmless and stays anonymous.
        let _ = self.authenticate_in(cx, bearer, true).await;
        let mut pending = self.k.begin(cx, action::LOGOUT, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            let digest = token::hash(bearer).0;
            self.access
                .delete_session(&digest, Some(pending.change_event()?))
                .await?;
            self.access_changed();
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Remove sessions past their lifetime or idle timeout; run periodically.
    pub async fn purge_expired_sessions(&self) -> Result<u64, CoreError> {
        Ok(self
            .access
            .delete_expired_sessions(now_ms(), ms(self.k.config().idle_timeout))
            .await?)
    }

    /// The caller's own sessions.
    pub async fn list_sessions(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Vec<SessionView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::SESSION_LIST, AuditTarget::default());
        let r: Result<Vec<SessionView>, CoreError> = async {
            p.ensure_person()?;
            let now = now_ms();
            let idle = ms(self.k.config().idle_timeout);
            Ok(self
                .access
                .user_sessions(p.user_id)
                .await?
                .into_iter()
                .filter(|s| s.stage != "mfa" && s.expires_at > now && s.last_seen_at + idle > now)
                .map(|s| SessionView {
                    current: Some(s.id) == p.session_id,
                    id: s.id,
                    method: s.method,
                    address: s.address,
                    created_at: s.created_at,
                    last_seen_at: s.last_seen_at,
                    expires_at: s.expires_at,
                    org_id: s.org_id,
                })
                .collect())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// End one of the caller's own sessions.
    pub async fn revoke_session(&self, cx: &Cx, p: &Principal, id: Uuid) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::SESSION_REVOKE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            p.ensure_person()?;
            if !self
                .access
                .delete_session_by_id(p.user_id, id, Some(pending.change_event()?))
                .await?
            {
                return Err(CoreError::not_found("session", &id.to_string()));
            }
            self.access_changed();
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }
}

fn key_scope(k: &coffer_store::ApiKeyRow) -> Scope {
    Scope {
        read_only: k.read_only,
        projects: k.projects.clone(),
        envs: k.envs.clone(),
    }
}

/// One of a user's sessions, for listing. Never includes the token.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub method: String,
    pub address: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub current: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_hide_what_they_do_not_cover() {
        let s = Scope {
            read_only: true,
            projects: vec!["app".into()],
            envs: vec!["prod".into()],
        };
        assert!(s.check_project("app").is_ok());
        assert!(matches!(
            s.check_project("other"),
            Err(CoreError::NotFound { .. })
        ));
        assert!(s.check_env("prod").is_ok());
        assert!(s.check_env("dev").is_err());
        assert!(Scope::default().check_env("anything").is_ok());
    }
}
