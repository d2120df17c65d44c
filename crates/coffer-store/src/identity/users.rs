//! Users: accounts, lockout counters, MFA state, linked external identities and the
//! addresses they signed in from.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;

use crate::sql::{Backend, Stmt, Tx, read_scoped};

/// Accounts and what proves who they are.
#[async_trait]
pub trait UserRepo: Send + Sync {
    async fn create_user(&self, user: &UserRow) -> Result<(), StoreError>;

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError>;

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError>;

    async fn user(&self, user_id: Uuid) -> Result<Option<UserRow>, StoreError>;

    async fn set_password(
        &self,
        user_id: Uuid,
        hash: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn set_email(
        &self,
        user_id: Uuid,
        email: Option<&str>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

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

    async fn set_mfa(
        &self,
        user_id: Uuid,
        sealed_secret: Option<&[u8]>,
        enabled: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>, StoreError>;

    /// Activate the stored seed, keeping the record of used steps.
    async fn enable_mfa(
        &self,
        user_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

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

    async fn identity_user(&self, issuer: &str, subject: &str) -> Result<Option<Uuid>, StoreError>;

    /// A user who signs in through an external provider, made at their first login: the
    /// account, its membership and the link from (`issuer`, `subject`), in one
    /// transaction. Conflict, with nothing written, if the name is taken or the identity
    /// is linked already.
    async fn create_external_user(
        &self,
        user: &UserRow,
        member: &MembershipRow,
        issuer: &str,
        subject: &str,
    ) -> Result<(), StoreError>;

    /// Change how a user proves who they are, with what follows from it, in one
    /// transaction with `event`: `what` changes, the recovery codes are replaced (when
    /// given), and every session of the user but `keep` ends — `keep` (organisation,
    /// session), if it was waiting to enrol MFA, becomes a full session when `promote`.
    async fn change_credentials(
        &self,
        user_id: Uuid,
        what: CredentialChange<'_>,
        recovery_codes: Option<&[[u8; 32]]>,
        keep: Option<(Uuid, Uuid)>,
        promote: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    /// How many addresses the user has logged in from.
    async fn login_address_count(&self, user_id: Uuid) -> Result<u64, StoreError>;

    /// Remember that the user logged in from `address`; true if it is new.
    async fn note_login_address(
        &self,
        user_id: Uuid,
        address: &str,
        now: i64,
    ) -> Result<bool, StoreError>;
}

/// What [`UserRepo::change_credentials`] changes.
#[derive(Debug, Clone, Copy)]
pub enum CredentialChange<'a> {
    /// A new password hash.
    Password(&'a str),
    /// Turn on the TOTP seed stored at enrolment.
    EnableMfa,
    /// Forget the TOTP seed.
    DisableMfa,
}

fn replace_codes<'a>(user_id: Uuid, hashes: &'a [[u8; 32]]) -> Vec<Stmt<'a>> {
    let mut out = vec![Stmt::new("DELETE FROM recovery_codes WHERE user_id = $1").bind(user_id)];
    out.extend(hashes.iter().map(|h| {
        Stmt::new("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id)
            .bind(h.as_slice())
    }));
    out
}

pub(crate) fn insert_user(u: &UserRow) -> Stmt<'_> {
    Stmt::new("INSERT INTO users (id, username, password_hash, created_at, email) VALUES ($1, $2, $3, $4, $5)")
        .bind(u.id)
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(u.created_at)
        .bind(u.email.as_deref())
}

#[async_trait]
impl<B: Backend> UserRepo for B {
    async fn create_user(&self, u: &UserRow) -> Result<(), StoreError> {
        insert_user(u).execute(&mut self.writes()).await?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        one_user(
            self,
            concat!(
                "SELECT ",
                crate::identity::user_cols!(),
                " FROM users WHERE username = $1"
            ),
            username,
        )
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
        one_user(
            self,
            concat!(
                "SELECT ",
                crate::identity::user_cols!(),
                " FROM users WHERE email = $1"
            ),
            email,
        )
        .await
    }

    async fn user(&self, user_id: Uuid) -> Result<Option<UserRow>, StoreError> {
        one_user(
            self,
            concat!(
                "SELECT ",
                crate::identity::user_cols!(),
                " FROM users WHERE id = $1"
            ),
            user_id,
        )
        .await
    }

    async fn set_password(
        &self,
        user_id: Uuid,
        hash: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let change = Stmt::new("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user_id)
            .bind(hash);
        crate::sql::execute_audited(self, &change, event).await?;
        Ok(())
    }

    async fn set_email(
        &self,
        user_id: Uuid,
        email: Option<&str>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let change = Stmt::new("UPDATE users SET email = $2 WHERE id = $1")
            .bind(user_id)
            .bind(email);
        crate::sql::execute_audited(self, &change, event).await?;
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
        let row = Stmt::new(
            "UPDATE users SET \
               failed_attempts = CASE WHEN locked_until > 0 THEN 1 ELSE failed_attempts + 1 END, \
               locked_until = 0, \
               next_attempt_at = $2 + (CASE WHEN locked_until > 0 THEN 1 ELSE failed_attempts + 1 END) * $4 \
             WHERE id = $1 AND locked_until <= $2 AND next_attempt_at <= $2 \
               AND (failed_attempts < $3 OR locked_until > 0) \
             RETURNING failed_attempts",
        )
        .bind(user_id)
        .bind(now)
        .bind(i64::from(max))
        .bind(delay_step_ms)
        .fetch_optional(&mut self.writes())
        .await?;
        row.map(|r| {
            u32::try_from(crate::rows::RowRead::int(&r, "failed_attempts")?)
                .map_err(|_| StoreError::Corrupt)
        })
        .transpose()
    }

    async fn lock_if_exhausted(
        &self,
        user_id: Uuid,
        max: u32,
        until: i64,
    ) -> Result<(), StoreError> {
        Stmt::new("UPDATE users SET locked_until = $3 WHERE id = $1 AND failed_attempts >= $2")
            .bind(user_id)
            .bind(i64::from(max))
            .bind(until)
            .execute(&mut self.writes())
            .await?;
        Ok(())
    }

    async fn release_login_attempt(&self, user_id: Uuid) -> Result<(), StoreError> {
        Stmt::new(
            "UPDATE users SET failed_attempts = CASE WHEN failed_attempts > 0 THEN failed_attempts - 1 ELSE 0 END, \
             next_attempt_at = 0 WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut self.writes())
        .await?;
        Ok(())
    }

    async fn reset_login_attempts(&self, user_id: Uuid) -> Result<(), StoreError> {
        Stmt::new("UPDATE users SET failed_attempts = 0, next_attempt_at = 0, locked_until = 0 WHERE id = $1")
            .bind(user_id)
            .execute(&mut self.writes())
            .await?;
        Ok(())
    }

    async fn set_mfa(
        &self,
        user_id: Uuid,
        sealed_secret: Option<&[u8]>,
        enabled: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        if sealed_secret.is_some() {
            self.ensure_root(&mut tx).await?;
        }
        Stmt::new(
            "UPDATE users SET mfa_secret = $2, mfa_enabled = $3, mfa_last_step = 0 WHERE id = $1",
        )
        .bind(user_id)
        .bind(sealed_secret)
        .bind(enabled)
        .execute(&mut tx)
        .await?;
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>, StoreError> {
        let row =
            Stmt::new("SELECT mfa_secret, mfa_enabled, mfa_last_step FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut self.reads())
                .await?;
        row.map(|r| {
            use crate::rows::RowRead;
            Ok(MfaState {
                sealed_secret: r.opt_bytes("mfa_secret")?,
                enabled: r.flag("mfa_enabled")?,
                last_step: r.int("mfa_last_step")?,
            })
        })
        .transpose()
    }

    async fn enable_mfa(
        &self,
        user_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let change = Stmt::new(
            "UPDATE users SET mfa_enabled = TRUE WHERE id = $1 AND mfa_secret IS NOT NULL",
        )
        .bind(user_id);
        crate::sql::execute_audited(self, &change, event).await?;
        Ok(())
    }

    async fn use_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool, StoreError> {
        let r =
            Stmt::new("UPDATE users SET mfa_last_step = $2 WHERE id = $1 AND mfa_last_step < $2")
                .bind(user_id)
                .bind(step)
                .execute(&mut self.writes())
                .await?;
        Ok(r == 1)
    }

    async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        hashes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        for stmt in replace_codes(user_id, hashes) {
            stmt.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn change_credentials(
        &self,
        user_id: Uuid,
        what: CredentialChange<'_>,
        recovery_codes: Option<&[[u8; 32]]>,
        keep: Option<(Uuid, Uuid)>,
        promote: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        let change = match what {
            CredentialChange::Password(hash) => {
                Stmt::new("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(hash)
            }
            CredentialChange::EnableMfa => Stmt::new(
                "UPDATE users SET mfa_enabled = TRUE WHERE id = $1 AND mfa_secret IS NOT NULL",
            )
            .bind(user_id),
            CredentialChange::DisableMfa => Stmt::new(
                "UPDATE users SET mfa_secret = NULL, mfa_enabled = FALSE, mfa_last_step = 0 \
                 WHERE id = $1",
            )
            .bind(user_id),
        };
        if change.execute(&mut tx).await? != 1 {
            return Err(StoreError::Conflict);
        }
        for stmt in recovery_codes
            .map(|h| replace_codes(user_id, h))
            .unwrap_or_default()
        {
            stmt.execute(&mut tx).await?;
        }
        self.rescope(&mut tx, crate::Scope::User(user_id)).await?;
        Stmt::new("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(keep.map_or(Uuid::nil(), |(_, s)| s))
            .execute(&mut tx)
            .await?;
        if let (Some((org, session)), true) = (keep, promote) {
            self.rescope(&mut tx, crate::Scope::Org(org)).await?;
            Stmt::new(
                "UPDATE sessions SET stage = 'full' WHERE id = $1 AND org_id = $2 AND stage = 'enroll'",
            )
            .bind(session)
            .bind(org)
            .execute(&mut tx)
            .await?;
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn use_recovery_code(
        &self,
        user_id: Uuid,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = Stmt::new("UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL")
            .bind(user_id)
            .bind(hash.as_slice())
            .bind(now)
            .execute(&mut self.writes())
            .await?;
        Ok(r == 1)
    }

    async fn user_requires_mfa(&self, user_id: Uuid) -> Result<bool, StoreError> {
        read_scoped!(self, crate::Scope::User(user_id), |tx| {
            let r = Stmt::new("SELECT COUNT(*) AS n FROM memberships m JOIN orgs o ON o.id = m.org_id WHERE m.user_id = $1 AND o.require_mfa = TRUE")
                .bind(user_id)
                .fetch_one(&mut tx)
                .await?;
            Ok(crate::rows::RowRead::int(&r, "n")? > 0)
        })
    }

    async fn identity_user(&self, issuer: &str, subject: &str) -> Result<Option<Uuid>, StoreError> {
        Stmt::new("SELECT user_id FROM identities WHERE issuer = $1 AND subject = $2")
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&mut self.reads())
            .await?
            .map(|r| crate::rows::uuid_col(&r, "user_id"))
            .transpose()
    }

    async fn create_external_user(
        &self,
        user: &UserRow,
        member: &MembershipRow,
        issuer: &str,
        subject: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(crate::Scope::Org(member.org_id)).await?;
        insert_user(user).execute(&mut tx).await?;
        crate::identity::insert_membership(member)
            .execute(&mut tx)
            .await?;
        Stmt::new(
            "INSERT INTO identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.id)
        .bind(user.created_at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn login_address_count(&self, user_id: Uuid) -> Result<u64, StoreError> {
        let r = Stmt::new("SELECT COUNT(*) AS n FROM login_addresses WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut self.reads())
            .await?;
        u64::try_from(crate::rows::RowRead::int(&r, "n")?).map_err(|_| StoreError::Corrupt)
    }

    async fn note_login_address(
        &self,
        user_id: Uuid,
        address: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = Stmt::new("INSERT INTO login_addresses (user_id, address, first_seen) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(address)
            .bind(now)
            .execute(&mut self.writes())
            .await?;
        Ok(r == 1)
    }
}

/// The one user a unique-column lookup (`$1`) finds, if any.
async fn one_user<'a, B: Backend>(
    b: &B,
    sql: &'static str,
    key: impl crate::sql::IntoArg<'a>,
) -> Result<Option<UserRow>, StoreError> {
    Stmt::new(sql)
        .bind(key)
        .fetch_optional(&mut b.reads())
        .await?
        .map(|r| crate::identity::user_row(&r))
        .transpose()
}
