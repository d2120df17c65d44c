//! Passwords, sessions and bearer-token authentication.
//!
//! Passwords are Argon2id (OWASP minimum parameters: 19 MiB, t=2, p=1) and verified on the
//! blocking pool. Unknown users are verified against a dummy hash so that timing and the
//! answer are the same as for a wrong password. Session tokens are 256-bit random values
//! stored as SHA-256 digests: verifying a request costs one hash and, at most once per
//! cache lifetime, one indexed lookup — never Argon2.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use coffer_crypto::token::{self, BearerToken};
use coffer_store::SessionRow;
use uuid::Uuid;

use crate::clock::now_ms;
use crate::{Coffer, CoreError, Role};

pub const SESSION_PREFIX: &str = "cfs_";

/// Who is calling, established from a session. The organisation here is the only one the
/// request may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub org_id: Uuid,
    pub org_name: String,
    pub role: Role,
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct LoginResult {
    pub token: BearerToken,
    pub principal: Principal,
}

pub(crate) async fn hash_password(password: String) -> Result<String, CoreError> {
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        coffer_crypto::random_bytes(&mut salt);
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| CoreError::Internal("password hashing failed"))
    })
    .await
    .map_err(|_| CoreError::Internal("password hashing task failed"))?
}

async fn verify_password(password: String, hash: String) -> Result<bool, CoreError> {
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .map_err(|_| CoreError::Internal("password verification task failed"))
}

/// A valid Argon2id hash of a random password nobody knows, with the same parameters as
/// real ones, so verifying against it costs the same.
pub(crate) fn dummy_hash() -> Result<String, CoreError> {
    let pw = token::generate_password();
    let mut salt = [0u8; 16];
    coffer_crypto::random_bytes(&mut salt);
    Argon2::default()
        .hash_password_with_salt(pw.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CoreError::Internal("password hashing failed"))
}

/// Usernames compare case-insensitively and without surrounding whitespace.
pub(crate) fn normalize_username(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Verified sessions, keyed by token digest. Entries live for a short time so that a
/// session revoked elsewhere stops working within that time; local logouts evict at once.
#[derive(Debug)]
pub(crate) struct SessionCache {
    ttl: Duration,
    map: RwLock<HashMap<[u8; 32], (Principal, Instant)>>,
}

const SESSION_CACHE_MAX: usize = 100_000;

impl SessionCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, h: &[u8; 32], now_ms: i64) -> Option<Principal> {
        let map = self.map.read().ok()?;
        let (p, at) = map.get(h)?;
        (at.elapsed() < self.ttl && p.expires_at > now_ms).then(|| p.clone())
    }

    fn put(&self, h: [u8; 32], p: Principal) {
        if let Ok(mut map) = self.map.write() {
            if map.len() >= SESSION_CACHE_MAX {
                map.clear();
            }
            map.insert(h, (p, Instant::now()));
        }
    }

    fn evict(&self, h: &[u8; 32]) {
        if let Ok(mut map) = self.map.write() {
            map.remove(h);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
    }
}

impl Coffer {
    /// Password login. Every failure — unknown user, wrong password, no organisation — is
    /// the same [`CoreError::BadCredentials`] after the same amount of work.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResult, CoreError> {
        self.ensure_unsealed()?;
        let username = normalize_username(username);
        let user = self.store().user_by_name(&username).await?;
        let hash = user.as_ref().map_or_else(
            || self.inner.dummy_hash.clone(),
            |u| u.password_hash.clone(),
        );
        let ok = verify_password(password.to_owned(), hash).await?;
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(CoreError::BadCredentials),
        };
        let membership = self
            .store()
            .memberships(user.id)
            .await?
            .into_iter()
            .next()
            .ok_or(CoreError::BadCredentials)?;
        let role =
            Role::parse(&membership.role).ok_or(CoreError::Internal("unknown role in database"))?;
        let org = self
            .store()
            .org(membership.org_id)
            .await?
            .ok_or(CoreError::BadCredentials)?;
        let (token, digest) = token::generate(SESSION_PREFIX);
        let now = now_ms();
        let ttl = i64::try_from(self.config().session_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl);
        self.store()
            .create_session(&SessionRow {
                token_hash: digest.0,
                user_id: user.id,
                org_id: org.id,
                created_at: now,
                expires_at,
            })
            .await?;
        let principal = Principal {
            user_id: user.id,
            username: user.username,
            org_id: org.id,
            org_name: org.name,
            role,
            expires_at,
        };
        Ok(LoginResult { token, principal })
    }

    /// Resolve a bearer token to its principal.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, CoreError> {
        self.ensure_unsealed()?;
        if !bearer.starts_with(SESSION_PREFIX) || bearer.len() > 128 {
            return Err(CoreError::Unauthenticated);
        }
        let digest = token::hash(bearer).0;
        let now = now_ms();
        if let Some(p) = self.inner.sessions.get(&digest, now) {
            return Ok(p);
        }
        let s = self
            .store()
            .session(&digest)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        if s.expires_at <= now {
            return Err(CoreError::Unauthenticated);
        }
        // The role is read from the membership on every cache refresh, so demotions and
        // removals take effect within the cache lifetime.
        let membership = self
            .store()
            .memberships(s.user_id)
            .await?
            .into_iter()
            .find(|m| m.org_id == s.org_id)
            .ok_or(CoreError::Unauthenticated)?;
        let role =
            Role::parse(&membership.role).ok_or(CoreError::Internal("unknown role in database"))?;
        let user = self
            .store()
            .user(s.user_id)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        let org = self
            .store()
            .org(s.org_id)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        let p = Principal {
            user_id: user.id,
            username: user.username,
            org_id: org.id,
            org_name: org.name,
            role,
            expires_at: s.expires_at,
        };
        self.inner.sessions.put(digest, p.clone());
        Ok(p)
    }

    /// End the session of this token. Idempotent.
    pub async fn logout(&self, bearer: &str) -> Result<(), CoreError> {
        let digest = token::hash(bearer).0;
        self.inner.sessions.evict(&digest);
        self.store().delete_session(&digest).await?;
        Ok(())
    }

    /// Remove expired sessions; run periodically.
    pub async fn purge_expired_sessions(&self) -> Result<u64, CoreError> {
        Ok(self.store().delete_expired_sessions(now_ms()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_normalise() {
        assert_eq!(normalize_username("  Alice "), "alice");
    }

    #[tokio::test]
    async fn password_hash_roundtrip_and_dummy_rejects() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), h.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong".into(), h).await.unwrap());
        assert!(
            !verify_password("anything".into(), dummy_hash().unwrap())
                .await
                .unwrap()
        );
    }
}
