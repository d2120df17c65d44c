//! Users, memberships, sessions, API keys, invitations, MFA state and the mail outbox.
//!
//! These tables have the same shape on both backends (ids as 16-byte blobs, times as i64),
//! and both sqlx drivers accept `$n` placeholders, so the SQL is written once and the
//! implementation is generated for each backend by [`impl_identity_store!`]. Statements that
//! must serialise (last-owner checks) lock the organisation row; the backend passes the
//! locking statement in, because SQLite has no `FOR UPDATE` (its single writer connection
//! serialises instead).

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;

/// Storage of everything identity-related. A supertrait of [`crate::Store`].
#[async_trait]
pub trait IdentityStore: Send + Sync {
    // --- users ---
    async fn create_user(&self, user: &UserRow) -> Result<(), StoreError>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError>;
    async fn user(&self, user_id: Uuid) -> Result<Option<UserRow>, StoreError>;
    async fn set_password(&self, user_id: Uuid, hash: &str) -> Result<(), StoreError>;
    async fn set_email(&self, user_id: Uuid, email: Option<&str>) -> Result<(), StoreError>;

    // --- lockout: counters live in the database so that they hold across restarts and nodes
    /// Atomically reserve one attempt: counts it as failed in advance and pushes the earliest
    /// next attempt `delay_step_ms × count` into the future. None when the account is locked,
    /// the delay has not passed, or `max` attempts are used up.
    async fn claim_login_attempt(
        &self,
        user_id: Uuid,
        now: i64,
        max: u32,
        delay_step_ms: i64,
    ) -> Result<Option<u32>, StoreError>;
    /// Lock the account until `until` if at least `max` attempts have failed.
    async fn lock_if_exhausted(
        &self,
        user_id: Uuid,
        max: u32,
        until: i64,
    ) -> Result<(), StoreError>;
    /// Give back a claimed attempt that turned out not to be a failure (first factor right,
    /// second factor still to come), without clearing earlier failures.
    async fn release_login_attempt(&self, user_id: Uuid) -> Result<(), StoreError>;
    /// A full success: forget failures and lock.
    async fn reset_login_attempts(&self, user_id: Uuid) -> Result<(), StoreError>;

    // --- MFA ---
    async fn set_mfa(
        &self,
        user_id: Uuid,
        sealed_secret: Option<&[u8]>,
        enabled: bool,
    ) -> Result<(), StoreError>;
    async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>, StoreError>;
    /// Activate the stored seed, keeping the record of used steps.
    async fn enable_mfa(&self, user_id: Uuid) -> Result<(), StoreError>;
    /// Record a TOTP time step as used; false if this or a later step was used already.
    async fn use_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool, StoreError>;
    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        hashes: &[[u8; 32]],
    ) -> Result<(), StoreError>;
    /// Spend a recovery code; false if unknown or already used.
    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Whether any organisation the user belongs to requires MFA.
    async fn user_requires_mfa(&self, user_id: Uuid) -> Result<bool, StoreError>;
    async fn set_org_require_mfa(&self, org_id: Uuid, on: bool) -> Result<(), StoreError>;
    async fn org_requires_mfa(&self, org_id: Uuid) -> Result<bool, StoreError>;

    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>, StoreError>;

    // --- memberships ---
    async fn add_membership(&self, m: &MembershipRow) -> Result<(), StoreError>;
    async fn memberships(&self, user_id: Uuid) -> Result<Vec<MembershipRow>, StoreError>;
    async fn membership(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<MembershipRow>, StoreError>;
    async fn org_members(&self, org_id: Uuid) -> Result<Vec<(MembershipRow, UserRow)>, StoreError>;
    /// Change a member's role. Refuses (Conflict) to leave the organisation without an Owner.
    async fn set_role(&self, org_id: Uuid, user_id: Uuid, role: &str) -> Result<bool, StoreError>;
    /// Remove a member and end their sessions and API keys in that organisation. Refuses
    /// (Conflict) to remove the last Owner.
    async fn remove_member(&self, org_id: Uuid, user_id: Uuid) -> Result<bool, StoreError>;

    // --- sessions ---
    async fn create_session(&self, s: &SessionRow) -> Result<(), StoreError>;
    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRow>, StoreError>;
    async fn touch_session(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError>;
    /// A session that had to enrol MFA first becomes a full one.
    async fn promote_session(&self, org_id: Uuid, id: Uuid) -> Result<(), StoreError>;
    async fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError>;
    async fn delete_session_by_id(&self, user_id: Uuid, id: Uuid) -> Result<bool, StoreError>;
    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<SessionRow>, StoreError>;
    /// End every session of a user except `keep`.
    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<u64, StoreError>;
    /// Remove sessions past their absolute lifetime or idle for longer than `idle_ms`.
    async fn delete_expired_sessions(&self, now: i64, idle_ms: i64) -> Result<u64, StoreError>;

    // --- API keys ---
    async fn create_api_key(&self, k: &ApiKeyRow) -> Result<(), StoreError>;
    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError>;
    async fn api_key(&self, org_id: Uuid, id: Uuid) -> Result<Option<ApiKeyRow>, StoreError>;
    async fn api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// Revoke a key and end the access tokens exchanged for it.
    async fn revoke_api_key(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<bool, StoreError>;
    async fn touch_api_key(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError>;

    // --- invitations ---
    async fn create_invitation(&self, i: &InvitationRow) -> Result<(), StoreError>;
    async fn invitation_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<InvitationRow>, StoreError>;
    async fn invitations(&self, org_id: Uuid) -> Result<Vec<InvitationRow>, StoreError>;
    /// Mark an invitation used; false if it was used already or has expired.
    async fn consume_invitation(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<bool, StoreError>;

    // --- external identities ---
    async fn identity_user(&self, issuer: &str, subject: &str) -> Result<Option<Uuid>, StoreError>;
    async fn link_identity(
        &self,
        issuer: &str,
        subject: &str,
        user_id: Uuid,
        now: i64,
    ) -> Result<(), StoreError>;

    // --- login addresses ---
    /// How many addresses the user has logged in from.
    async fn login_address_count(&self, user_id: Uuid) -> Result<u64, StoreError>;
    /// Remember that the user logged in from `address`; true if it is new.
    async fn note_login_address(
        &self,
        user_id: Uuid,
        address: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    // --- outbox ---
    async fn enqueue_mail(&self, m: &OutboxRow) -> Result<(), StoreError>;
    async fn due_mail(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
    /// Take a due message for sending until `until` (a lease: if the sender dies, the
    /// message is due again then). False if it is sent, not due, or another node took it.
    async fn claim_mail(&self, id: Uuid, now: i64, until: i64) -> Result<bool, StoreError>;
    async fn mail_sent(&self, id: Uuid, now: i64) -> Result<(), StoreError>;
    async fn mail_failed(
        &self,
        id: Uuid,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError>;
    async fn pending_mail(&self) -> Result<u64, StoreError>;
}

macro_rules! user_cols {
    () => {
        "id, username, password_hash, created_at, email, mfa_enabled"
    };
}
pub(crate) use user_cols;
macro_rules! session_cols {
    () => {
        "id, token_hash, user_id, org_id, stage, method, api_key_id, address, created_at, last_seen_at, expires_at"
    };
}
pub(crate) use session_cols;
macro_rules! key_cols {
    () => {
        "id, org_id, user_id, name, role, key_hash, prefix, read_only, projects, envs, created_at, expires_at, last_used_at, revoked_at"
    };
}
pub(crate) use key_cols;
macro_rules! invite_cols {
    () => {
        "id, org_id, email, role, token_hash, invited_by, created_at, expires_at, accepted_at"
    };
}
pub(crate) use invite_cols;

pub(crate) fn user_row<R: RowRead>(r: &R) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: uuid_col(r, "id")?,
        username: r.text("username")?,
        password_hash: r.text("password_hash")?,
        created_at: r.int("created_at")?,
        email: r.opt_text("email")?,
        mfa_enabled: r.flag("mfa_enabled")?,
    })
}

pub(crate) fn membership_row<R: RowRead>(r: &R) -> Result<MembershipRow, StoreError> {
    Ok(MembershipRow {
        user_id: uuid_col(r, "user_id")?,
        org_id: uuid_col(r, "org_id")?,
        role: r.text("role")?,
        created_at: r.int("created_at")?,
    })
}

fn opt_uuid<R: RowRead>(r: &R, c: &str) -> Result<Option<Uuid>, StoreError> {
    r.opt_bytes(c)?
        .map(|b| Uuid::from_slice(&b).map_err(|_| StoreError::Corrupt))
        .transpose()
}

pub(crate) fn session_row<R: RowRead>(r: &R) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: uuid_col(r, "id")?,
        token_hash: hash_col(r, "token_hash")?,
        user_id: uuid_col(r, "user_id")?,
        org_id: uuid_col(r, "org_id")?,
        stage: r.text("stage")?,
        method: r.text("method")?,
        api_key_id: opt_uuid(r, "api_key_id")?,
        address: r.text("address")?,
        created_at: r.int("created_at")?,
        last_seen_at: r.int("last_seen_at")?,
        expires_at: r.int("expires_at")?,
    })
}

fn names_col<R: RowRead>(r: &R, c: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&r.text(c)?).map_err(|_| StoreError::Corrupt)
}

pub(crate) fn names_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn api_key_row<R: RowRead>(r: &R) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        user_id: uuid_col(r, "user_id")?,
        name: r.text("name")?,
        role: r.text("role")?,
        key_hash: hash_col(r, "key_hash")?,
        prefix: r.text("prefix")?,
        read_only: r.flag("read_only")?,
        projects: names_col(r, "projects")?,
        envs: names_col(r, "envs")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

pub(crate) fn invitation_row<R: RowRead>(r: &R) -> Result<InvitationRow, StoreError> {
    Ok(InvitationRow {
        id: uuid_col(r, "id")?,
        org_id: uuid_col(r, "org_id")?,
        email: r.text("email")?,
        role: r.text("role")?,
        token_hash: hash_col(r, "token_hash")?,
        invited_by: uuid_col(r, "invited_by")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        accepted_at: r.opt_int("accepted_at")?,
    })
}

pub(crate) fn outbox_row<R: RowRead>(r: &R) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: uuid_col(r, "id")?,
        sealed: r.bytes("sealed")?,
        created_at: r.int("created_at")?,
        attempts: u32::try_from(r.int("attempts")?).map_err(|_| StoreError::Corrupt)?,
        next_attempt_at: r.int("next_attempt_at")?,
    })
}

/// Run `$body` (which uses the transaction `$tx`) in a transaction on `$pool` scoped to
/// `$scope` for row-level security, and commit it.
macro_rules! scoped {
    ($store:ident, $pool:expr, $scope:expr, |$tx:ident| $body:block) => {{
        let mut $tx = $store.tx($pool, $scope).await?;
        let out = $body;
        $tx.commit().await?;
        out
    }};
}
pub(crate) use scoped;

/// Whether the user is the organisation's only Owner, inside the open transaction.
macro_rules! sole_owner {
    ($tx:ident, $org:expr, $user:expr) => {{
        let row = sqlx::query($crate::identity::OWNERS_SQL)
            .bind($org.as_bytes().as_slice())
            .bind($user.as_bytes().as_slice())
            .fetch_one(&mut *$tx)
            .await?;
        let owners = $crate::rows::RowRead::int(&row, "owners")?;
        let me = $crate::rows::RowRead::int(&row, "me")?;
        me > 0 && owners <= 1
    }};
}
pub(crate) use sole_owner;

/// Implements [`IdentityStore`] for a backend. `$read`/`$write` name the pool fields to use
/// for reads and writes; `$lock_org` is a statement that locks one organisation's row (bind
/// `$1` = org id) for the rest of the transaction.
macro_rules! impl_identity_store {
    ($ty:ty, $read:ident, $write:ident, $lock_org:expr) => {
        #[async_trait::async_trait]
        impl $crate::identity::IdentityStore for $ty {
            async fn create_user(&self, u: &UserRow) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO users (id, username, password_hash, created_at, email) VALUES ($1, $2, $3, $4, $5)")
                    .bind(u.id.as_bytes().as_slice())
                    .bind(&u.username)
                    .bind(&u.password_hash)
                    .bind(u.created_at)
                    .bind(u.email.as_deref())
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
                sqlx::query(concat!("SELECT ", $crate::identity::user_cols!(), " FROM users WHERE username = $1"))
                    .bind(username)
                    .fetch_optional(&self.$read)
                    .await?
                    .map(|r| $crate::identity::user_row(&r))
                    .transpose()
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
                sqlx::query(concat!("SELECT ", $crate::identity::user_cols!(), " FROM users WHERE email = $1"))
                    .bind(email)
                    .fetch_optional(&self.$read)
                    .await?
                    .map(|r| $crate::identity::user_row(&r))
                    .transpose()
            }

            async fn user(&self, user_id: Uuid) -> Result<Option<UserRow>, StoreError> {
                sqlx::query(concat!("SELECT ", $crate::identity::user_cols!(), " FROM users WHERE id = $1"))
                    .bind(user_id.as_bytes().as_slice())
                    .fetch_optional(&self.$read)
                    .await?
                    .map(|r| $crate::identity::user_row(&r))
                    .transpose()
            }

            async fn set_password(&self, user_id: Uuid, hash: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(hash)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn set_email(&self, user_id: Uuid, email: Option<&str>) -> Result<(), StoreError> {
                sqlx::query("UPDATE users SET email = $2 WHERE id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(email)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn claim_login_attempt(
                &self,
                user_id: Uuid,
                now: i64,
                max: u32,
                delay_step_ms: i64,
            ) -> Result<Option<u32>, StoreError> {
                // An expired lock starts a fresh count. All SET expressions see the old row.
                let row = sqlx::query(
                    "UPDATE users SET \
                       failed_attempts = CASE WHEN locked_until > 0 THEN 1 ELSE failed_attempts + 1 END, \
                       locked_until = 0, \
                       next_attempt_at = $2 + (CASE WHEN locked_until > 0 THEN 1 ELSE failed_attempts + 1 END) * $4 \
                     WHERE id = $1 AND locked_until <= $2 AND next_attempt_at <= $2 \
                       AND (failed_attempts < $3 OR locked_until > 0) \
                     RETURNING failed_attempts",
                )
                .bind(user_id.as_bytes().as_slice())
                .bind(now)
                .bind(i64::from(max))
                .bind(delay_step_ms)
                .fetch_optional(&self.$write)
                .await?;
                row.map(|r| {
                    u32::try_from($crate::rows::RowRead::int(&r, "failed_attempts")?)
                        .map_err(|_| StoreError::Corrupt)
                })
                .transpose()
            }

            async fn lock_if_exhausted(&self, user_id: Uuid, max: u32, until: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE users SET locked_until = $3 WHERE id = $1 AND failed_attempts >= $2")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(i64::from(max))
                    .bind(until)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn release_login_attempt(&self, user_id: Uuid) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE users SET failed_attempts = CASE WHEN failed_attempts > 0 THEN failed_attempts - 1 ELSE 0 END, \
                     next_attempt_at = 0 WHERE id = $1",
                )
                .bind(user_id.as_bytes().as_slice())
                .execute(&self.$write)
                .await?;
                Ok(())
            }

            async fn reset_login_attempts(&self, user_id: Uuid) -> Result<(), StoreError> {
                sqlx::query("UPDATE users SET failed_attempts = 0, next_attempt_at = 0, locked_until = 0 WHERE id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn set_mfa(&self, user_id: Uuid, sealed_secret: Option<&[u8]>, enabled: bool) -> Result<(), StoreError> {
                let mut tx = self.$write.begin().await?;
                if sealed_secret.is_some() {
                    self.ensure_root(&mut *tx).await?;
                }
                sqlx::query("UPDATE users SET mfa_secret = $2, mfa_enabled = $3, mfa_last_step = 0 WHERE id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(sealed_secret)
                    .bind(enabled)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>, StoreError> {
                let row = sqlx::query("SELECT mfa_secret, mfa_enabled, mfa_last_step FROM users WHERE id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .fetch_optional(&self.$read)
                    .await?;
                row.map(|r| {
                    use $crate::rows::RowRead;
                    Ok(MfaState {
                        sealed_secret: r.opt_bytes("mfa_secret")?,
                        enabled: r.flag("mfa_enabled")?,
                        last_step: r.int("mfa_last_step")?,
                    })
                })
                .transpose()
            }

            async fn enable_mfa(&self, user_id: Uuid) -> Result<(), StoreError> {
                sqlx::query("UPDATE users SET mfa_enabled = TRUE WHERE id = $1 AND mfa_secret IS NOT NULL")
                    .bind(user_id.as_bytes().as_slice())
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn use_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("UPDATE users SET mfa_last_step = $2 WHERE id = $1 AND mfa_last_step < $2")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(step)
                    .execute(&self.$write)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn replace_recovery_codes(&self, user_id: Uuid, hashes: &[[u8; 32]]) -> Result<(), StoreError> {
                let mut tx = self.$write.begin().await?;
                sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                for h in hashes {
                    sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                        .bind(user_id.as_bytes().as_slice())
                        .bind(h.as_slice())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn use_recovery_code(&self, user_id: Uuid, hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(hash.as_slice())
                    .bind(now)
                    .execute(&self.$write)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn user_requires_mfa(&self, user_id: Uuid) -> Result<bool, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::User(user_id), |tx| {
                    let r = sqlx::query("SELECT COUNT(*) AS n FROM memberships m JOIN orgs o ON o.id = m.org_id WHERE m.user_id = $1 AND o.require_mfa = TRUE")
                        .bind(user_id.as_bytes().as_slice())
                        .fetch_one(&mut *tx)
                        .await?;
                    Ok($crate::rows::RowRead::int(&r, "n")? > 0)
                })
            }

            async fn set_org_require_mfa(&self, org_id: Uuid, on: bool) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query("UPDATE orgs SET require_mfa = $2 WHERE id = $1")
                        .bind(org_id.as_bytes().as_slice())
                        .bind(on)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn org_requires_mfa(&self, org_id: Uuid) -> Result<bool, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    let r = sqlx::query("SELECT COUNT(*) AS n FROM orgs WHERE id = $1 AND require_mfa = TRUE")
                        .bind(org_id.as_bytes().as_slice())
                        .fetch_one(&mut *tx)
                        .await?;
                    Ok($crate::rows::RowRead::int(&r, "n")? > 0)
                })
            }

            async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::System, |tx| {
                    sqlx::query("SELECT id, name, created_at FROM orgs WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::rows::org_row(&r))
                        .transpose()
                })
            }

            async fn add_membership(&self, m: &MembershipRow) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(m.org_id), |tx| {
                    sqlx::query("INSERT INTO memberships (user_id, org_id, role, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(m.user_id.as_bytes().as_slice())
                        .bind(m.org_id.as_bytes().as_slice())
                        .bind(&m.role)
                        .bind(m.created_at)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn memberships(&self, user_id: Uuid) -> Result<Vec<MembershipRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::User(user_id), |tx| {
                    sqlx::query("SELECT user_id, org_id, role, created_at FROM memberships WHERE user_id = $1 ORDER BY created_at")
                        .bind(user_id.as_bytes().as_slice())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map($crate::identity::membership_row)
                        .collect()
                })
            }

            async fn membership(&self, org_id: Uuid, user_id: Uuid) -> Result<Option<MembershipRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query("SELECT user_id, org_id, role, created_at FROM memberships WHERE org_id = $1 AND user_id = $2")
                        .bind(org_id.as_bytes().as_slice())
                        .bind(user_id.as_bytes().as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::identity::membership_row(&r))
                        .transpose()
                })
            }

            async fn org_members(&self, org_id: Uuid) -> Result<Vec<(MembershipRow, UserRow)>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query(
                        "SELECT m.user_id, m.org_id, m.role, m.created_at AS m_created, \
                         u.id, u.username, u.password_hash, u.created_at, u.email, u.mfa_enabled \
                         FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY u.username",
                    )
                    .bind(org_id.as_bytes().as_slice())
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| {
                        use $crate::rows::RowRead;
                        let m = MembershipRow {
                            user_id: $crate::rows::uuid_col(r, "user_id")?,
                            org_id: $crate::rows::uuid_col(r, "org_id")?,
                            role: r.text("role")?,
                            created_at: r.int("m_created")?,
                        };
                        Ok((m, $crate::identity::user_row(r)?))
                    })
                    .collect()
                })
            }

            async fn set_role(&self, org_id: Uuid, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
                let mut tx = self.tx(&self.$write, $crate::Scope::Org(org_id)).await?;
                sqlx::query($lock_org).bind(org_id.as_bytes().as_slice()).execute(&mut *tx).await?;
                if role != "owner" && $crate::identity::sole_owner!(tx, org_id, user_id) {
                    return Err(StoreError::Conflict);
                }
                let r = sqlx::query("UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2")
                    .bind(org_id.as_bytes().as_slice())
                    .bind(user_id.as_bytes().as_slice())
                    .bind(role)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(r.rows_affected() == 1)
            }

            async fn remove_member(&self, org_id: Uuid, user_id: Uuid) -> Result<bool, StoreError> {
                let mut tx = self.tx(&self.$write, $crate::Scope::Org(org_id)).await?;
                sqlx::query($lock_org).bind(org_id.as_bytes().as_slice()).execute(&mut *tx).await?;
                if $crate::identity::sole_owner!(tx, org_id, user_id) {
                    return Err(StoreError::Conflict);
                }
                let r = sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
                    .bind(org_id.as_bytes().as_slice())
                    .bind(user_id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM sessions WHERE org_id = $1 AND user_id = $2")
                    .bind(org_id.as_bytes().as_slice())
                    .bind(user_id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL")
                    .bind(org_id.as_bytes().as_slice())
                    .bind(user_id.as_bytes().as_slice())
                    .bind($crate::identity::now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(r.rows_affected() == 1)
            }

            async fn create_session(&self, s: &SessionRow) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(s.org_id), |tx| {
                    sqlx::query(concat!("INSERT INTO sessions (", $crate::identity::session_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
                        .bind(s.id.as_bytes().as_slice())
                        .bind(s.token_hash.as_slice())
                        .bind(s.user_id.as_bytes().as_slice())
                        .bind(s.org_id.as_bytes().as_slice())
                        .bind(&s.stage)
                        .bind(&s.method)
                        .bind(s.api_key_id.as_ref().map(|k| k.as_bytes().to_vec()))
                        .bind(&s.address)
                        .bind(s.created_at)
                        .bind(s.last_seen_at)
                        .bind(s.expires_at)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Token(token_hash), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::session_cols!(), " FROM sessions WHERE token_hash = $1"))
                        .bind(token_hash.as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::identity::session_row(&r))
                        .transpose()
                })
            }

            async fn touch_session(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND org_id = $3 AND last_seen_at < $2")
                        .bind(id.as_bytes().as_slice())
                        .bind(now)
                        .bind(org_id.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn promote_session(&self, org_id: Uuid, id: Uuid) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query("UPDATE sessions SET stage = 'full' WHERE id = $1 AND org_id = $2 AND stage = 'enroll'")
                        .bind(id.as_bytes().as_slice())
                        .bind(org_id.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Token(token_hash), |tx| {
                    let r = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                        .bind(token_hash.as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(r.rows_affected() > 0)
                })
            }

            async fn delete_session_by_id(&self, user_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::User(user_id), |tx| {
                    let r = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2")
                        .bind(user_id.as_bytes().as_slice())
                        .bind(id.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(r.rows_affected() > 0)
                })
            }

            async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<SessionRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::User(user_id), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::session_cols!(), " FROM sessions WHERE user_id = $1 ORDER BY created_at"))
                        .bind(user_id.as_bytes().as_slice())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map($crate::identity::session_row)
                        .collect()
                })
            }

            async fn delete_user_sessions(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::User(user_id), |tx| {
                    let keep = keep.unwrap_or(Uuid::nil());
                    let r = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
                        .bind(user_id.as_bytes().as_slice())
                        .bind(keep.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(r.rows_affected())
                })
            }

            async fn delete_expired_sessions(&self, now: i64, idle_ms: i64) -> Result<u64, StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::System, |tx| {
                    let r = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $1 - $2")
                        .bind(now)
                        .bind(idle_ms)
                        .execute(&mut *tx)
                        .await?;
                    Ok(r.rows_affected())
                })
            }

            async fn create_api_key(&self, k: &ApiKeyRow) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(k.org_id), |tx| {
                    sqlx::query(concat!("INSERT INTO api_keys (", $crate::identity::key_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"))
                        .bind(k.id.as_bytes().as_slice())
                        .bind(k.org_id.as_bytes().as_slice())
                        .bind(k.user_id.as_bytes().as_slice())
                        .bind(&k.name)
                        .bind(&k.role)
                        .bind(k.key_hash.as_slice())
                        .bind(&k.prefix)
                        .bind(k.read_only)
                        .bind($crate::identity::names_json(&k.projects))
                        .bind($crate::identity::names_json(&k.envs))
                        .bind(k.created_at)
                        .bind(k.expires_at)
                        .bind(k.last_used_at)
                        .bind(k.revoked_at)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Token(hash), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::key_cols!(), " FROM api_keys WHERE key_hash = $1"))
                        .bind(hash.as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::identity::api_key_row(&r))
                        .transpose()
                })
            }

            async fn api_key(&self, org_id: Uuid, id: Uuid) -> Result<Option<ApiKeyRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::key_cols!(), " FROM api_keys WHERE org_id = $1 AND id = $2"))
                        .bind(org_id.as_bytes().as_slice())
                        .bind(id.as_bytes().as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::identity::api_key_row(&r))
                        .transpose()
                })
            }

            async fn api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKeyRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::key_cols!(), " FROM api_keys WHERE org_id = $1 ORDER BY created_at"))
                        .bind(org_id.as_bytes().as_slice())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map($crate::identity::api_key_row)
                        .collect()
                })
            }

            async fn revoke_api_key(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<bool, StoreError> {
                let mut tx = self.tx(&self.$write, $crate::Scope::Org(org_id)).await?;
                let r = sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL")
                    .bind(org_id.as_bytes().as_slice())
                    .bind(id.as_bytes().as_slice())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM sessions WHERE api_key_id = $1")
                    .bind(id.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(r.rows_affected() == 1)
            }

            async fn touch_api_key(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND org_id = $3")
                        .bind(id.as_bytes().as_slice())
                        .bind(now)
                        .bind(org_id.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn create_invitation(&self, i: &InvitationRow) -> Result<(), StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(i.org_id), |tx| {
                    sqlx::query(concat!("INSERT INTO invitations (", $crate::identity::invite_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                        .bind(i.id.as_bytes().as_slice())
                        .bind(i.org_id.as_bytes().as_slice())
                        .bind(&i.email)
                        .bind(&i.role)
                        .bind(i.token_hash.as_slice())
                        .bind(i.invited_by.as_bytes().as_slice())
                        .bind(i.created_at)
                        .bind(i.expires_at)
                        .bind(i.accepted_at)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                })
            }

            async fn invitation_by_hash(&self, hash: &[u8; 32]) -> Result<Option<InvitationRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Token(hash), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::invite_cols!(), " FROM invitations WHERE token_hash = $1"))
                        .bind(hash.as_slice())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| $crate::identity::invitation_row(&r))
                        .transpose()
                })
            }

            async fn invitations(&self, org_id: Uuid) -> Result<Vec<InvitationRow>, StoreError> {
                $crate::identity::scoped!(self, &self.$read, $crate::Scope::Org(org_id), |tx| {
                    sqlx::query(concat!("SELECT ", $crate::identity::invite_cols!(), " FROM invitations WHERE org_id = $1 ORDER BY created_at"))
                        .bind(org_id.as_bytes().as_slice())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map($crate::identity::invitation_row)
                        .collect()
                })
            }

            async fn consume_invitation(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<bool, StoreError> {
                $crate::identity::scoped!(self, &self.$write, $crate::Scope::Org(org_id), |tx| {
                    let r = sqlx::query("UPDATE invitations SET accepted_at = $2 WHERE id = $1 AND org_id = $3 AND accepted_at IS NULL AND expires_at > $2")
                        .bind(id.as_bytes().as_slice())
                        .bind(now)
                        .bind(org_id.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    Ok(r.rows_affected() == 1)
                })
            }

            async fn identity_user(&self, issuer: &str, subject: &str) -> Result<Option<Uuid>, StoreError> {
                sqlx::query("SELECT user_id FROM identities WHERE issuer = $1 AND subject = $2")
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(&self.$read)
                    .await?
                    .map(|r| $crate::rows::uuid_col(&r, "user_id"))
                    .transpose()
            }

            async fn link_identity(&self, issuer: &str, subject: &str, user_id: Uuid, now: i64) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(issuer)
                    .bind(subject)
                    .bind(user_id.as_bytes().as_slice())
                    .bind(now)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn login_address_count(&self, user_id: Uuid) -> Result<u64, StoreError> {
                let r = sqlx::query("SELECT COUNT(*) AS n FROM login_addresses WHERE user_id = $1")
                    .bind(user_id.as_bytes().as_slice())
                    .fetch_one(&self.$read)
                    .await?;
                u64::try_from($crate::rows::RowRead::int(&r, "n")?).map_err(|_| StoreError::Corrupt)
            }

            async fn note_login_address(&self, user_id: Uuid, address: &str, now: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("INSERT INTO login_addresses (user_id, address, first_seen) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(user_id.as_bytes().as_slice())
                    .bind(address)
                    .bind(now)
                    .execute(&self.$write)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn enqueue_mail(&self, m: &OutboxRow) -> Result<(), StoreError> {
                let mut tx = self.$write.begin().await?;
                self.ensure_root(&mut *tx).await?;
                sqlx::query("INSERT INTO outbox (id, sealed, created_at, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(m.id.as_bytes().as_slice())
                    .bind(m.sealed.as_slice())
                    .bind(m.created_at)
                    .bind(i64::from(m.attempts))
                    .bind(m.next_attempt_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn due_mail(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
                sqlx::query("SELECT id, sealed, created_at, attempts, next_attempt_at FROM outbox WHERE sent_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2")
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$write)
                    .await?
                    .iter()
                    .map($crate::identity::outbox_row)
                    .collect()
            }

            async fn claim_mail(&self, id: Uuid, now: i64, until: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("UPDATE outbox SET next_attempt_at = $3 WHERE id = $1 AND sent_at IS NULL AND next_attempt_at <= $2")
                    .bind(id.as_bytes().as_slice())
                    .bind(now)
                    .bind(until)
                    .execute(&self.$write)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn mail_sent(&self, id: Uuid, now: i64) -> Result<(), StoreError> {
                // The sealed message is dropped once delivered: nothing to keep.
                sqlx::query("UPDATE outbox SET sent_at = $2, sealed = $3, last_error = NULL WHERE id = $1")
                    .bind(id.as_bytes().as_slice())
                    .bind(now)
                    .bind(Vec::<u8>::new())
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn mail_failed(&self, id: Uuid, next_attempt_at: i64, error: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1")
                    .bind(id.as_bytes().as_slice())
                    .bind(next_attempt_at)
                    .bind(error)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn pending_mail(&self) -> Result<u64, StoreError> {
                let r = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")
                    .fetch_one(&self.$read)
                    .await?;
                u64::try_from($crate::rows::RowRead::int(&r, "n")?).map_err(|_| StoreError::Corrupt)
            }
        }
    };
}
pub(crate) use impl_identity_store;

/// Counts the organisation's Owners and whether `$2` is one of them.
pub(crate) const OWNERS_SQL: &str = "SELECT COUNT(*) AS owners, \
     COALESCE(SUM(CASE WHEN user_id = $2 THEN 1 ELSE 0 END), 0) AS me \
     FROM memberships WHERE org_id = $1 AND role = 'owner'";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
