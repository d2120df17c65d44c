//! TOTP second factor (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps, ±1 step of skew) and
//! one-time recovery codes.
//!
//! The TOTP seed is sealed with a key derived from the root key, bound to the user id. A code
//! is accepted once: the time step it matched is stored, and only later steps are accepted
//! afterwards. Recovery codes carry 80 random bits each and are stored as SHA-256 digests.

use coffer_crypto::system::{Purpose, SystemKey};
use coffer_crypto::token::{self, BearerToken};
use coffer_store::{CredentialChange, UserRow};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use uuid::Uuid;

use crate::CoreError;
use crate::audit::{AuditTarget, Cx};
use crate::auth::{AuthMethod, LoginOutcome, Principal};
use crate::clock::now_ms;
use crate::identity::Identity;
/// The audit actions of multi-factor authentication and organisation settings.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const MFA_VERIFY: Action = Action::change("auth.mfa_verify");
    pub const MFA_ENROLL: Action = Action::change("account.mfa_enroll");
    pub const MFA_CONFIRM: Action = Action::change("account.mfa_confirm").forgets(Forgets::ACCESS);
    pub const MFA_DISABLE: Action = Action::change("account.mfa_disable")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const SETTINGS_UPDATE: Action = Action::change("org.settings_update")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const SETTINGS_READ: Action = Action::read("org.settings_read");
}

const STEP_SECS: u64 = 30;
const SEED_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;

/// What a user needs to add Coffer to an authenticator app. Shown once.
#[derive(Debug)]
pub struct MfaEnrollment {
    /// `otpauth://totp/...` URI (also a QR code's content).
    pub otpauth_uri: BearerToken,
    /// The seed in base32, for typing in by hand.
    pub secret_base32: BearerToken,
}

fn totp(seed: Vec<u8>, account: &str) -> Result<Totp, CoreError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(seed)
        .with_account_name(account.replace(':', "_"))
        .with_issuer(Some("Coffer"))
        .build()
        .map_err(|_| CoreError::Internal("totp parameters"))
}

/// Digits only: people paste codes with spaces or dashes.
fn clean_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

fn recovery_hash(code: &str) -> [u8; 32] {
    token::hash(&clean_code(code).to_lowercase()).0
}

fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut raw = [0u8; 16];
    coffer_crypto::random_bytes(&mut raw);
    let chars: String = raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!(
        "{}-{}-{}-{}",
        &chars[0..4],
        &chars[4..8],
        &chars[8..12],
        &chars[12..16]
    )
}

impl Identity {
    fn totp_key(&self) -> Result<SystemKey, CoreError> {
        self.k.keyring.with_root(|root| {
            SystemKey::derive(root, Purpose::Totp).map_err(|_| CoreError::Internal("derive key"))
        })
    }

    async fn user_totp(
        &self,
        user_id: Uuid,
        account: &str,
    ) -> Result<Option<(Totp, i64)>, CoreError> {
        let Some(st) = self.users.mfa_state(user_id).await? else {
            return Ok(None);
        };
        let Some(sealed) = st.sealed_secret else {
            return Ok(None);
        };
        let seed = self
            .totp_key()?
            .open(user_id, &sealed)
            .map_err(|_| CoreError::Integrity)?;
        Ok(Some((
            totp(seed.expose_secret().to_vec(), account)?,
            st.last_step,
        )))
    }

    /// Check a TOTP code (or, with `allow_recovery`, a recovery code). A code is spent by
    /// a successful check and never accepted again.
    async fn check_second_factor(
        &self,
        user_id: Uuid,
        account: &str,
        code: &str,
        allow_recovery: bool,
    ) -> Result<bool, CoreError> {
        let Some((t, _)) = self.user_totp(user_id, account).await? else {
            return Ok(false);
        };
        let code = clean_code(code);
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
            let step = now / STEP_SECS;
            let mut matched = None;
            // Every candidate is computed and compared, matching or not (constant time).
            for s in [step.saturating_sub(1), step, step + 1] {
                let expected = t.generate(s * STEP_SECS).to_string();
                if token::constant_time_eq(expected.as_bytes(), code.as_bytes()) {
                    matched = Some(s);
                }
            }
            return match matched {
                Some(s) => Ok(self
                    .users
                    .use_totp_step(user_id, i64::try_from(s).unwrap_or(i64::MAX))
                    .await?),
                None => Ok(false),
            };
        }
        if allow_recovery {
            return Ok(self
                .users
                .use_recovery_code(user_id, &recovery_hash(&code), now_ms())
                .await?);
        }
        Ok(false)
    }

    /// [`Identity::check_second_factor`] under the user's one attempt counter, the one
    /// passwords use: an attempt is claimed first (refused while the account is locked or
    /// must wait), and a wrong code counts as a failed attempt and can lock the account.
    /// `claimed`: the caller's password check has already claimed this attempt. The caller
    /// resets the counter once everything it asks for is proven.
    async fn check_second_factor_counted(
        &self,
        user: &UserRow,
        code: &str,
        allow_recovery: bool,
        claimed: bool,
    ) -> Result<(), CoreError> {
        let cfg = self.k.config();
        let claimed = claimed
            || self
                .users
                .claim_login_attempt(
                    user.id,
                    now_ms(),
                    cfg.max_failed_logins,
                    i64::try_from(cfg.login_delay_step.as_millis()).unwrap_or(i64::MAX),
                )
                .await?
                .is_some();
        if !claimed {
            return Err(CoreError::BadCredentials);
        }
        if !self
            .check_second_factor(user.id, &user.username, code, allow_recovery)
            .await?
        {
            self.note_failure(user.id).await?;
            return Err(CoreError::InvalidCode);
        }
        Ok(())
    }

    /// Second step of a login: the token from [`LoginOutcome::MfaRequired`] and a TOTP or
    /// recovery code. Failures count against the same lockout as passwords.
    pub async fn verify_mfa_login(
        &self,
        cx: &Cx,
        mfa_token: &str,
        code: &str,
        address: &str,
    ) -> Result<LoginOutcome, CoreError> {
        let mut pending = self.k.begin(cx, action::MFA_VERIFY, AuditTarget::default());
        let r: Result<LoginOutcome, CoreError> = async {
            self.k.ensure_unsealed()?;
            if !mfa_token.starts_with(crate::auth::MFA_PREFIX) || mfa_token.len() > 128 {
                return Err(CoreError::BadCredentials);
            }
            let digest = token::hash(mfa_token).0;
            let s = self
                .access
                .session(&digest)
                .await?
                .filter(|s| s.stage == "mfa" && s.expires_at > now_ms())
                .ok_or(CoreError::BadCredentials)?;
            let user = self
                .users
                .user(s.user_id)
                .await?
                .ok_or(CoreError::BadCredentials)?;
            self.check_second_factor_counted(&user, code, true, false)
                .await?;
            self.access.delete_session(&digest, None).await?;
            self.users.reset_login_attempts(user.id).await?;
            let method = if s.method == "oidc" {
                AuthMethod::Oidc
            } else {
                AuthMethod::Password
            };
            self.finish_login(&mut pending, &user, s.org_id, "full", method, address)
                .await
                .map(LoginOutcome::Session)
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Start TOTP enrolment: a new seed, not active until confirmed with a code from it.
    /// Needs the password again.
    pub async fn mfa_enroll_start(
        &self,
        cx: &Cx,
        p: &Principal,
        password: &str,
    ) -> Result<MfaEnrollment, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::MFA_ENROLL, AuditTarget::default());
        let r: Result<MfaEnrollment, CoreError> = async {
            p.ensure_person()?;
            let user = self.reauthenticate(p, password).await?;
            if user.mfa_enabled {
                return Err(CoreError::invalid(
                    "mfa",
                    "MFA is already enabled; disable it first",
                ));
            }
            let _root = self.k.root_stable().await;
            let mut seed = zeroize::Zeroizing::new(vec![0u8; SEED_BYTES]);
            coffer_crypto::random_bytes(&mut seed);
            let sealed = self
                .totp_key()?
                .seal(user.id, &seed)
                .map_err(|_| CoreError::Internal("seal totp seed"))?;
            self.users
                .set_mfa(user.id, Some(&sealed), false, Some(pending.change_event()?))
                .await?;
            let t = totp(seed.to_vec(), &user.username)?;
            Ok(MfaEnrollment {
                otpauth_uri: BearerToken::from_string(
                    t.to_url().map_err(|_| CoreError::Internal("otpauth uri"))?,
                ),
                secret_base32: BearerToken::from_string(t.secret().to_base32()),
            })
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Confirm enrolment with a current code. Returns the recovery codes (shown once) and
    /// ends the user's other sessions; a login that was waiting to enrol becomes a full one.
    pub async fn mfa_enroll_confirm(
        &self,
        cx: &Cx,
        p: &Principal,
        code: &str,
    ) -> Result<Vec<String>, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::MFA_CONFIRM, AuditTarget::default());
        let r: Result<Vec<String>, CoreError> = async {
            p.ensure_person()?;
            let user = self.caller_account(p).await?;
            if user.mfa_enabled {
                return Err(CoreError::invalid("mfa", "MFA is already enabled"));
            }
            match self.check_second_factor_counted(&user, code, false, false).await {
                Err(CoreError::InvalidCode) => {
                    return Err(CoreError::invalid(
                        "code",
                        "the code does not match; check the time on your device",
                    ));
                }
                r => r?,
            }
            self.users.reset_login_attempts(user.id).await?;
            // The confirming code's step stays recorded as used.
            let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
            let hashes: Vec<[u8; 32]> = codes.iter().map(|c| recovery_hash(c)).collect();
            self.change_credentials(
                p,
                &user,
                CredentialChange::EnableMfa,
                Some(&hashes),
                pending.change_event()?,
                (
                    "Two-factor authentication enabled",
                    "Two-factor authentication (TOTP) was enabled on your Coffer account and your other sessions were ended.",
                ),
            )
            .await?;
            Ok(codes)
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Turn TOTP off. Needs the password and a current code, and is refused while any of
    /// the user's organisations requires MFA.
    pub async fn mfa_disable(
        &self,
        cx: &Cx,
        p: &Principal,
        password: &str,
        code: &str,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::MFA_DISABLE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            p.ensure_person()?;
            let user = self.caller_account(p).await?;
            if !user.mfa_enabled {
                return Err(CoreError::invalid("mfa", "MFA is not enabled"));
            }
            if self.users.user_requires_mfa(user.id).await? {
                return Err(CoreError::Forbidden(
                    "an organisation you belong to requires MFA",
                ));
            }
            // Password and code are one attempt against the lockout: a right password
            // does not reset the counter until the code is right too.
            let user = self.check_first_factor(Some(user), password).await?;
            // One answer for the pair: which of the two was wrong is not said, so that a
            // stolen session cannot test passwords here.
            self.check_second_factor_counted(&user, code, true, true)
                .await
                .map_err(|e| match e {
                    CoreError::InvalidCode => CoreError::BadCredentials,
                    e => e,
                })?;
            self.users.reset_login_attempts(user.id).await?;
            self.change_credentials(
                p,
                &user,
                CredentialChange::DisableMfa,
                Some(&[]),
                pending.change_event()?,
                (
                    "Two-factor authentication disabled",
                    "Two-factor authentication was turned off on your Coffer account and your other sessions were ended.",
                ),
            )
            .await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Require MFA of every member (Owners and Admins).
    pub async fn set_org_require_mfa(
        &self,
        cx: &Cx,
        p: &Principal,
        on: bool,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::SETTINGS_UPDATE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            crate::members::ensure_admin(p)?;
            self.tenants
                .set_org_require_mfa(p.org_id, on, Some(pending.change_event()?))
                .await?;
            self.access_changed();
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    pub async fn org_settings(&self, cx: &Cx, p: &Principal) -> Result<OrgSettings, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::SETTINGS_READ, AuditTarget::default());
        let r: Result<OrgSettings, CoreError> = async {
            self.k.ensure_unsealed()?;
            Ok(OrgSettings {
                require_mfa: self.tenants.org_requires_mfa(p.org_id).await?,
            })
        }
        .await;
        self.k.conclude(pending, r).await
    }
}

#[derive(Debug, Clone)]
pub struct OrgSettings {
    pub require_mfa: bool,
}

/// The current TOTP code for a base32 seed (for tests and the CLI's self-check).
pub fn totp_code_now(secret_base32: &str) -> Option<String> {
    let now = u64::try_from(now_ms() / 1000).ok()?;
    totp_code_at(secret_base32, now)
}

/// The TOTP code for a base32 seed at a given Unix time.
pub fn totp_code_at(secret_base32: &str, unix_secs: u64) -> Option<String> {
    let seed = Secret::try_from_base32(secret_base32).ok()?;
    Some(
        totp(seed.to_vec(), "x")
            .ok()?
            .generate(unix_secs)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s, 8 digits "94287082": the 6-digit code is the
        // last six digits.
        let t = totp(b"12345678901234567890".to_vec(), "x").unwrap();
        assert_eq!(t.generate(59).to_string(), "287082");
        assert_eq!(t.generate(1111111109).to_string(), "081804");
    }

    #[test]
    fn recovery_codes_normalise_and_differ() {
        let a = new_recovery_code();
        let b = new_recovery_code();
        assert_ne!(a, b);
        assert_eq!(a.len(), 19);
        assert_eq!(
            recovery_hash(&a),
            recovery_hash(&a.to_uppercase().replace('-', " "))
        );
        assert_eq!(clean_code("123 456"), "123456");
    }
}
