//! Log in with a JWT from an external OpenID provider.
//!
//! Each trusted issuer is configured with its audience and the signature algorithms it may
//! use (pinned: asymmetric only, never `none` or HS*). Keys come from the issuer's JWKS,
//! looked up by `kid` through [`JwksSource`] (fetched and cached by the server, or read from
//! a file). `iss`, `aud`, `exp` and `nbf` are checked with at most 60 s of leeway. Header
//! fields that point at other keys (`jku`, `x5u`, an embedded `jwk`) are never used: only
//! keys from the configured source verify tokens.

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx};
use crate::auth::{AuthMethod, LoginOutcome};
use crate::clock::now_ms;
use crate::identity::Identity;
use crate::{CoreError, Role};
use coffer_store::{MembershipRow, StoreError};

/// Signature algorithms, as named in JWT headers.
pub use jsonwebtoken::Algorithm as JwtAlgorithm;

/// A trusted issuer.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// Exactly the `iss` claim.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Accepted algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Create a user on first login (else only users linked beforehand may log in).
    pub jit: bool,
    /// Organisation and role for users created just in time.
    pub jit_org: Option<String>,
    pub jit_role: Role,
    /// Leeway for `exp`/`nbf`, seconds (at most 60).
    pub leeway_secs: u64,
}

impl OidcIssuer {
    /// Refuse configurations that would accept forgeable tokens.
    pub fn validate(&self) -> Result<(), String> {
        if self.algorithms.is_empty() {
            return Err(format!(
                "issuer {}: pin at least one algorithm",
                self.issuer
            ));
        }
        for a in &self.algorithms {
            if matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "issuer {}: HMAC algorithms are not accepted (use RS*/PS*/ES*/EdDSA)",
                    self.issuer
                ));
            }
        }
        if self.leeway_secs > 60 {
            return Err(format!(
                "issuer {}: leeway must be at most 60 s",
                self.issuer
            ));
        }
        if self.audience.is_empty() {
            return Err(format!("issuer {}: an audience is required", self.issuer));
        }
        if self.jit && self.jit_org.is_none() {
            return Err(format!(
                "issuer {}: just-in-time users need an organisation",
                self.issuer
            ));
        }
        Ok(())
    }
}

/// Where issuers' signing keys come from.
#[async_trait]
pub trait JwksSource: Send + Sync + std::fmt::Debug {
    /// The issuer's key set; `refresh` asks for a fresh copy (an unknown `kid` was seen).
    async fn jwks(&self, issuer: &str, refresh: bool) -> Result<JwkSet, String>;
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Issued at (seconds). A token from the future is refused: its lifetime would start
    /// later than the provider says it issued it.
    iat: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Unverified {
    iss: Option<String>,
}

/// Read `iss` without verifying, only to pick the issuer's configuration.
fn peek_issuer(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Unverified>(&bytes).ok()?.iss
}

/// Usernames for users created from an external identity never collide with (and so never
/// take over) local accounts: they carry a tag of the issuer.
fn jit_username(issuer: &str, subject: &str) -> String {
    let tag = hex::encode(&coffer_crypto::token::hash(issuer).0[..4]);
    let sub: String = crate::auth::normalize_username(subject)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("oidc-{tag}-{sub}")
}

impl Identity {
    /// Verify an external JWT and log its subject in.
    pub async fn login_oidc(
        &self,
        cx: &Cx,
        jwt: &str,
        keys: &dyn JwksSource,
        org: Option<&str>,
        address: &str,
    ) -> Result<LoginOutcome, CoreError> {
        let mut pending = self
            .k
            .begin(cx, crate::auth::action::OIDC_LOGIN, AuditTarget::default());
        let r: Result<LoginOutcome, CoreError> = async {
            self.k.ensure_unsealed()?;
            let bad = || CoreError::BadCredentials;
            if jwt.len() > 16 * 1024 {
                return Err(bad());
            }
            let iss = peek_issuer(jwt).ok_or_else(bad)?;
            let cfg = self
                .k
                .config()
                .oidc
                .iter()
                .find(|i| i.issuer == iss)
                .ok_or_else(bad)?
                .clone();
            let header = jsonwebtoken::decode_header(jwt).map_err(|_| bad())?;
            if !cfg.algorithms.contains(&header.alg) {
                return Err(bad());
            }
            let kid = header.kid.ok_or_else(bad)?;
            let mut set = keys.jwks(&cfg.issuer, false).await.map_err(|e| {
                tracing::warn!(issuer = %cfg.issuer, error = %e, "JWKS unavailable");
                bad()
            })?;
            if set.find(&kid).is_none() {
                set = keys.jwks(&cfg.issuer, true).await.map_err(|_| bad())?;
            }
            let jwk = set.find(&kid).ok_or_else(bad)?;
            let key = DecodingKey::from_jwk(jwk).map_err(|_| bad())?;
            let mut v = Validation::new(header.alg);
            v.algorithms = vec![header.alg];
            v.leeway = cfg.leeway_secs;
            v.validate_nbf = true;
            v.set_issuer(&[&cfg.issuer]);
            v.set_audience(&[&cfg.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            let data = jsonwebtoken::decode::<Claims>(jwt, &key, &v).map_err(|e| {
                tracing::debug!(error = %e, "OIDC token rejected");
                bad()
            })?;
            let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
            if data
                .claims
                .iat
                .is_some_and(|iat| iat > now.saturating_add(cfg.leeway_secs))
            {
                tracing::debug!("OIDC token rejected: issued in the future");
                return Err(bad());
            }
            let subject = data.claims.sub;
            if subject.is_empty() || subject.len() > 255 {
                return Err(bad());
            }
            let user_id = match self.users.identity_user(&cfg.issuer, &subject).await? {
                Some(id) => id,
                None if cfg.jit => self.jit_user(&cfg, &subject).await?,
                None => return Err(bad()),
            };
            let user = self.users.user(user_id).await?.ok_or_else(bad)?;
            self.after_first_factor(&mut pending, user, org, AuthMethod::Oidc, address)
                .await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// The user of a subject's first login, made with its membership and identity link in
    /// one transaction. The user is the (issuer, subject) pair; the name only labels it: if
    /// another subject's name normalises to the same one, this one's carries a tag of its
    /// exact subject.
    async fn jit_user(&self, cfg: &OidcIssuer, subject: &str) -> Result<Uuid, CoreError> {
        let org_name = cfg.jit_org.as_deref().ok_or(CoreError::BadCredentials)?;
        let org = self
            .tenants
            .org_by_name(org_name)
            .await?
            .ok_or(CoreError::Internal(
                "the OIDC just-in-time organisation does not exist",
            ))?;
        // A random password nobody knows: this user logs in through the provider only.
        let password = coffer_crypto::token::generate_password();
        let base = jit_username(&cfg.issuer, subject);
        // At most 64 characters, like every username (the base is ASCII).
        let tagged = format!(
            "{}-{}",
            &base[..base.len().min(51)],
            hex::encode(&coffer_crypto::token::hash(subject).0[..6])
        );
        for username in [base, tagged] {
            let user =
                crate::members::prepare_user(&username, password.expose_secret(), None).await?;
            let member = MembershipRow {
                user_id: user.id,
                org_id: org.id,
                role: cfg.jit_role.as_str().to_owned(),
                created_at: user.created_at,
            };
            match self
                .users
                .create_external_user(&user, &member, &cfg.issuer, subject)
                .await
            {
                Ok(()) => return Ok(user.id),
                Err(StoreError::Conflict) => {
                    // Another login of the same subject made it meanwhile.
                    if let Some(id) = self.users.identity_user(&cfg.issuer, subject).await? {
                        return Ok(id);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_unpinned_configurations_are_refused() {
        let mut c = OidcIssuer {
            issuer: "https://idp".into(),
            audience: "coffer".into(),
            algorithms: vec![Algorithm::RS256],
            jit: false,
            jit_org: None,
            jit_role: Role::Viewer,
            leeway_secs: 60,
        };
        assert!(c.validate().is_ok());
        c.algorithms = vec![Algorithm::HS256];
        assert!(c.validate().is_err());
        c.algorithms = vec![];
        assert!(c.validate().is_err());
        c.algorithms = vec![Algorithm::ES256];
        c.leeway_secs = 61;
        assert!(c.validate().is_err());
    }

    #[test]
    fn jit_usernames_are_tagged_by_issuer() {
        let a = jit_username("https://a", "Alice");
        let b = jit_username("https://b", "Alice");
        assert_ne!(a, b);
        assert!(a.starts_with("oidc-") && a.ends_with("-alice"));
        assert_eq!(
            jit_username("https://a", "x/y:z"),
            jit_username("https://a", "x_y_z")
        );
    }
}
