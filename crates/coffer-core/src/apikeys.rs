//! API keys for automation: `cfr_` + 256 random bits, stored as SHA-256, shown once.
//!
//! A key carries a role no higher than its creator's, optional restrictions (projects,
//! environments, read-only) and an expiry. It acts with the lower of its role and its
//! creator's current role, so demoting or removing the creator limits or ends the key at
//! once. Keys can be used directly as a bearer token or exchanged for a short-lived `cfa_`
//! access token.

use coffer_crypto::token::{self, BearerToken};
use coffer_store::ApiKeyRow;
use std::time::Duration;
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx};
use crate::auth::{ACCESS_PREFIX, API_KEY_PREFIX, AuthMethod, NewSession, Principal};
use crate::clock::now_ms;
use crate::identity::{Identity, KeyUses};
use crate::{CoreError, Role, names};
/// The audit actions of API keys.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const CREATE: Action = Action::change("apikey.create").answered(201);
    pub const LIST: Action = Action::read("apikey.list");
    pub const REVOKE: Action = Action::change("apikey.revoke")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const EXCHANGE: Action = Action::change("auth.token_exchange");
}

/// Longest lifetime of an API key.
pub const MAX_KEY_TTL: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub read_only: bool,
    pub projects: Vec<String>,
    pub envs: Vec<String>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub owner: Uuid,
    pub read_only: bool,
    pub projects: Vec<String>,
    pub envs: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug)]
pub struct CreatedApiKey {
    pub view: ApiKeyView,
    /// The key itself: shown once, never stored.
    pub key: BearerToken,
}

#[derive(Debug)]
pub struct AccessToken {
    pub token: BearerToken,
    pub expires_at: i64,
}

fn view(k: ApiKeyRow) -> ApiKeyView {
    ApiKeyView {
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        role: Role::parse(&k.role).unwrap_or(Role::Viewer),
        owner: k.user_id,
        read_only: k.read_only,
        projects: k.projects,
        envs: k.envs,
        created_at: k.created_at,
        expires_at: k.expires_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

impl Identity {
    /// Owners and Admins create keys for automation; Contributors for their own use.
    /// Viewers cannot, and no key gets a role above its creator's.
    pub async fn create_api_key(
        &self,
        cx: &Cx,
        p: &Principal,
        req: NewApiKey,
    ) -> Result<CreatedApiKey, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::CREATE, AuditTarget::default());
        let r: Result<CreatedApiKey, CoreError> = async {
            self.k.ensure_unsealed()?;
            p.ensure_person()?;
            if p.role < Role::Contributor {
                return Err(CoreError::Forbidden("Viewers cannot create API keys"));
            }
            if req.role > p.role {
                return Err(CoreError::Forbidden(
                    "an API key cannot have a higher role than its creator",
                ));
            }
            names::validate_new("name", &req.name)?;
            for n in req.projects.iter().chain(&req.envs) {
                names::validate("scope", n)?;
            }
            if req.ttl.is_zero() || req.ttl > MAX_KEY_TTL {
                return Err(CoreError::invalid(
                    "expires_in",
                    "must be between 1 second and 366 days",
                ));
            }
            let (key, digest) = token::generate(API_KEY_PREFIX);
            let now = now_ms();
            let row = ApiKeyRow {
                id: Uuid::new_v4(),
                org_id: p.org_id,
                user_id: p.user_id,
                name: req.name,
                role: req.role.as_str().to_owned(),
                key_hash: digest.0,
                prefix: key.expose_secret().chars().take(12).collect(),
                read_only: req.read_only,
                projects: req.projects,
                envs: req.envs,
                created_at: now,
                expires_at: now
                    .saturating_add(i64::try_from(req.ttl.as_millis()).unwrap_or(i64::MAX)),
                last_used_at: None,
                revoked_at: None,
            };
            self.access
                .create_api_key(&row, Some(pending.change_event()?))
                .await?;
            if let Some(user) = self.users.user(p.user_id).await? {
                self.notify(
                    &user,
                    "An API key was created",
                    &format!(
                        "API key '{}' ({}…) with role {} was created in organisation '{}'.",
                        row.name, row.prefix, row.role, p.org_name
                    ),
                )
                .await;
            }
            Ok(CreatedApiKey {
                view: view(row),
                key,
            })
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Owners and Admins see every key of the organisation; Contributors their own.
    pub async fn list_api_keys(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Vec<ApiKeyView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::LIST, AuditTarget::default());
        let r: Result<Vec<ApiKeyView>, CoreError> = async {
            self.k.ensure_unsealed()?;
            if p.role < Role::Contributor || p.method == AuthMethod::ApiKey {
                return Err(CoreError::Forbidden("your role cannot list API keys"));
            }
            // Uses this node has not written yet.
            self.flush_key_uses().await;
            Ok(self
                .access
                .api_keys(p.org_id)
                .await?
                .into_iter()
                .filter(|k| p.role >= Role::Admin || k.user_id == p.user_id)
                .map(view)
                .collect())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Revoke a key: it and every access token exchanged for it stop working at once.
    pub async fn revoke_api_key(&self, cx: &Cx, p: &Principal, id: Uuid) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::REVOKE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            self.k.ensure_unsealed()?;
            let not_found = || CoreError::not_found("API key", &id.to_string());
            let k = self
                .access
                .api_key(p.org_id, id)
                .await?
                .ok_or_else(not_found)?;
            let own = k.user_id == p.user_id;
            if !(p.role >= Role::Admin || (own && p.role >= Role::Contributor)) {
                return Err(not_found());
            }
            if !self
                .access
                .revoke_api_key(p.org_id, id, now_ms(), Some(pending.change_event()?))
                .await?
            {
                return Err(not_found());
            }
            self.access_changed();
            if let Some(owner) = self.users.user(k.user_id).await? {
                self.notify(
                    &owner,
                    "An API key was revoked",
                    &format!("API key '{}' ({}…) was revoked.", k.name, k.prefix),
                )
                .await;
            }
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Trade an API key for a short-lived access token.
    pub async fn exchange_api_key(
        &self,
        cx: &Cx,
        key: &str,
        address: &str,
    ) -> Result<AccessToken, CoreError> {
        let mut pending = self.k.begin(cx, action::EXCHANGE, AuditTarget::default());
        let r: Result<AccessToken, CoreError> = async {
            self.k.ensure_unsealed()?;
            if !key.starts_with(API_KEY_PREFIX) {
                return Err(CoreError::Unauthenticated);
            }
            let p = self.authenticate(key).await?;
            let key_id = p.api_key_id.ok_or(CoreError::Unauthenticated)?;
            let user = self.caller_account(&p).await?;
            pending.set_actor(p.user_id, &p.username, p.org_id, "apikey");
            let left = p.expires_at.saturating_sub(now_ms());
            let ttl = self
                .k
                .config()
                .access_token_ttl
                .min(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
            let (token, _) = self
                .new_session(
                    ACCESS_PREFIX,
                    NewSession {
                        user: &user,
                        org_id: p.org_id,
                        stage: "full",
                        method: AuthMethod::ApiKey,
                        api_key_id: Some(key_id),
                        address,
                        ttl,
                        event: Some(pending.change_event()?),
                    },
                )
                .await?;
            Ok(AccessToken {
                token,
                expires_at: now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(0)),
            })
        }
        .await;
        self.k.conclude(pending, r).await
    }
}

/// Key uses kept at most before they are written early.
const MAX_PENDING_USES: usize = 100_000;

impl Identity {
    /// Remember that a key was used. Written with others in one transaction every few
    /// seconds ([`Identity::flush_key_uses`]): a node serving many keys would otherwise write
    /// (and on SQLite wait for an fsync) on nearly every request. The time is shown to
    /// people (`coffer apikey list`), never used to decide access.
    pub(crate) fn note_key_use(&self, org_id: Uuid, key_id: Uuid, at: i64) {
        let full = match self.key_uses.lock() {
            Ok(mut uses) => {
                uses.insert((org_id, key_id), at);
                // Once, when the cap is reached: not one flush task per request past it.
                uses.len() == MAX_PENDING_USES
            }
            Err(_) => false,
        };
        if full && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (uses, access) = (self.key_uses.clone(), self.access.clone());
            rt.spawn(async move { flush_key_uses(&uses, &*access).await });
        }
    }

    /// Write the key uses noted since the last flush. On failure they are kept for the next.
    pub(crate) async fn flush_key_uses(&self) {
        flush_key_uses(&self.key_uses, &*self.access).await;
    }
}

async fn flush_key_uses(key_uses: &KeyUses, access: &dyn coffer_store::AccessRepo) {
    {
        let uses: Vec<(Uuid, Uuid, i64)> = match key_uses.lock() {
            Ok(mut m) => m.drain().map(|((org, key), at)| (org, key, at)).collect(),
            Err(_) => return,
        };
        if uses.is_empty() {
            return;
        }
        if let Err(e) = access.touch_api_keys(&uses).await {
            tracing::debug!(error = %e, "could not record API key use; will retry");
            if let Ok(mut m) = key_uses.lock() {
                for (org, key, at) in uses {
                    m.entry((org, key)).or_insert(at);
                }
            }
        }
    }
}
