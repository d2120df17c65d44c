//! Changing how a user proves who they are (password, MFA): each change commits with its
//! event, the replaced recovery codes and the end of the user's other sessions, all or
//! nothing.

use coffer_store::{ChangeEvent, CredentialChange, UserRow};

use super::{Principal, action, hash_password, validate_password};
use crate::CoreError;
use crate::audit::{AuditTarget, Cx};
use crate::identity::Identity;

impl Identity {
    /// Change the caller's password. Needs the current one (re-authentication, counted
    /// against the lockout) and ends every other session.
    pub async fn change_password(
        &self,
        cx: &Cx,
        p: &Principal,
        current: &str,
        new: &str,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::PASSWORD_CHANGE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            p.ensure_person()?;
            validate_password(new)?;
            let user = self.reauthenticate(p, current).await?;
            let hash = hash_password(new.to_owned()).await?;
            self.change_credentials(
                p,
                &user,
                CredentialChange::Password(&hash),
                None,
                pending.change_event()?,
                (
                    "Your Coffer password was changed",
                    "The password of your account was changed and your other sessions were ended.",
                ),
            )
            .await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// A change of how the caller proves who they are, committed with its event, the
    /// recovery codes (if given) and the end of the caller's other sessions — all or
    /// nothing — then caches cleared on every node and the user told (`mail`: subject,
    /// body).
    pub(crate) async fn change_credentials(
        &self,
        p: &Principal,
        user: &UserRow,
        what: CredentialChange<'_>,
        recovery_codes: Option<&[[u8; 32]]>,
        event: &ChangeEvent,
        (subject, body): (&str, &str),
    ) -> Result<(), CoreError> {
        self.users
            .change_credentials(
                user.id,
                what,
                recovery_codes,
                p.session_id.map(|s| (p.org_id, s)),
                matches!(what, CredentialChange::EnableMfa),
                Some(event),
            )
            .await?;
        self.access_changed();
        self.notify(user, subject, body).await;
        Ok(())
    }

    /// Check the caller's password again before a sensitive change.
    pub(crate) async fn reauthenticate(
        &self,
        p: &Principal,
        password: &str,
    ) -> Result<UserRow, CoreError> {
        let user = self.users.user(p.user_id).await?;
        let user = self.check_first_factor(user, password).await?;
        self.users.reset_login_attempts(user.id).await?;
        Ok(user)
    }
}
