//! Access to an organisation: memberships and roles, sessions, API keys and invitations.

use async_trait::async_trait;
use uuid::Uuid;

use super::*;
use crate::StoreError;
use crate::models::*;
use crate::sql::{Backend, Stmt, Tx, read_scoped, scoped};

/// Who may act in an organisation, and with which credential.
#[async_trait]
pub trait AccessRepo: Send + Sync {
    async fn add_membership(
        &self,
        m: &MembershipRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn memberships(&self, user_id: Uuid) -> Result<Vec<MembershipRow>, StoreError>;

    async fn membership(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<MembershipRow>, StoreError>;

    /// What an authenticated request needs to know of its caller, in one read: the
    /// membership, its user and its organisation (None if any of them is gone).
    async fn member(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<(MembershipRow, UserRow, OrgRow)>, StoreError>;

    async fn org_members(&self, org_id: Uuid) -> Result<Vec<(MembershipRow, UserRow)>, StoreError>;

    /// Change a member's role. Refuses (Conflict) to leave the organisation without an Owner.
    async fn set_role(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        role: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;

    /// Remove a member and end their sessions and API keys in that organisation. Refuses
    /// (Conflict) to remove the last Owner.
    async fn remove_member(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;

    async fn create_session(
        &self,
        s: &SessionRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRow>, StoreError>;

    async fn touch_session(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError>;

    /// A session that had to enrol MFA first becomes a full one.
    async fn promote_session(
        &self,
        org_id: Uuid,
        id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn delete_session(
        &self,
        token_hash: &[u8; 32],
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;

    async fn delete_session_by_id(
        &self,
        user_id: Uuid,
        id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;

    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<SessionRow>, StoreError>;

    /// End every session of a user except `keep`.
    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<u64, StoreError>;

    /// Remove sessions past their absolute lifetime or idle for longer than `idle_ms`.
    async fn delete_expired_sessions(&self, now: i64, idle_ms: i64) -> Result<u64, StoreError>;

    async fn create_api_key(
        &self,
        k: &ApiKeyRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError>;

    async fn api_key(&self, org_id: Uuid, id: Uuid) -> Result<Option<ApiKeyRow>, StoreError>;

    async fn api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKeyRow>, StoreError>;

    /// Revoke a key and end the access tokens exchanged for it.
    async fn revoke_api_key(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;

    /// Record when keys were last used: (organisation, key, time) each, in one transaction;
    /// a time older than the recorded one changes nothing.
    async fn touch_api_keys(&self, uses: &[(Uuid, Uuid, i64)]) -> Result<(), StoreError>;

    /// An invitation, with the message that delivers it (`mail`, if mail is enabled), in
    /// one transaction with `event`.
    async fn create_invitation(
        &self,
        i: &InvitationRow,
        mail: Option<&OutboxRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;

    async fn invitation_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<InvitationRow>, StoreError>;

    async fn invitations(&self, org_id: Uuid) -> Result<Vec<InvitationRow>, StoreError>;

    /// Use an invitation, store the account it creates (`new_user`, if the invitee had
    /// none) and add the membership it grants (`member`; an existing membership is kept as
    /// it is), in one transaction with `event`. False, with nothing written and nothing
    /// recorded, if it was used, withdrawn or expired meanwhile.
    async fn consume_invitation(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        new_user: Option<&UserRow>,
        member: Option<&MembershipRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError>;
}

pub(crate) fn insert_membership(m: &MembershipRow) -> Stmt<'_> {
    Stmt::new("INSERT INTO memberships (user_id, org_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(m.user_id)
        .bind(m.org_id)
        .bind(&m.role)
        .bind(m.created_at)
}

#[async_trait]
impl<B: Backend> AccessRepo for B {
    async fn add_membership(
        &self,
        m: &MembershipRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(m.org_id)), audited event, |tx| {
            insert_membership(m).execute(&mut tx).await?;
            Ok(())
        })
    }

    async fn memberships(&self, user_id: Uuid) -> Result<Vec<MembershipRow>, StoreError> {
        read_scoped!(self, crate::Scope::User(user_id), |tx| {
            Stmt::new("SELECT user_id, org_id, role, created_at FROM memberships WHERE user_id = $1 ORDER BY created_at")
                .bind(user_id)
                .fetch_all(&mut tx)
                .await?
                .iter()
                .map(crate::identity::membership_row)
                .collect()
        })
    }

    async fn membership(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<MembershipRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new("SELECT user_id, org_id, role, created_at FROM memberships WHERE org_id = $1 AND user_id = $2")
                .bind(org_id)
                .bind(user_id)
                .fetch_optional(&mut tx)
                .await?
                .map(|r| crate::identity::membership_row(&r))
                .transpose()
        })
    }

    async fn member(
        &self,
        org_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<(MembershipRow, UserRow, OrgRow)>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT m.user_id, m.org_id, m.role, m.created_at AS m_created, \
                 u.id, u.username, u.password_hash, u.created_at, u.email, u.mfa_enabled, \
                 o.name AS org_name, o.created_at AS org_created \
                 FROM memberships m JOIN users u ON u.id = m.user_id JOIN orgs o ON o.id = m.org_id \
                 WHERE m.org_id = $1 AND m.user_id = $2",
            )
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut tx)
            .await?
            .map(|r| {
                let m = MembershipRow {
                    user_id: crate::rows::uuid_col(&r, "user_id")?,
                    org_id: crate::rows::uuid_col(&r, "org_id")?,
                    role: r.text("role")?,
                    created_at: r.int("m_created")?,
                };
                let org = OrgRow {
                    id: m.org_id,
                    name: r.text("org_name")?,
                    created_at: r.int("org_created")?,
                };
                Ok((m, crate::identity::user_row(&r)?, org))
            })
            .transpose()
        })
    }

    async fn org_members(&self, org_id: Uuid) -> Result<Vec<(MembershipRow, UserRow)>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT m.user_id, m.org_id, m.role, m.created_at AS m_created, \
                 u.id, u.username, u.password_hash, u.created_at, u.email, u.mfa_enabled \
                 FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY u.username",
            )
            .bind(org_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|r| {
                use crate::rows::RowRead;
                let m = MembershipRow {
                    user_id: crate::rows::uuid_col(r, "user_id")?,
                    org_id: crate::rows::uuid_col(r, "org_id")?,
                    role: r.text("role")?,
                    created_at: r.int("m_created")?,
                };
                Ok((m, crate::identity::user_row(r)?))
            })
            .collect()
        })
    }

    async fn set_role(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        role: &str,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(crate::Scope::Org(org_id)).await?;
        Stmt::new(Self::LOCK_ORG)
            .bind(org_id)
            .execute(&mut tx)
            .await?;
        if role != "owner" && sole_owner(&mut tx, org_id, user_id).await? {
            return Err(StoreError::Conflict);
        }
        let r = Stmt::new("UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .bind(role)
            .execute(&mut tx)
            .await?;
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(r == 1)
    }

    async fn remove_member(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(crate::Scope::Org(org_id)).await?;
        Stmt::new(Self::LOCK_ORG)
            .bind(org_id)
            .execute(&mut tx)
            .await?;
        if sole_owner(&mut tx, org_id, user_id).await? {
            return Err(StoreError::Conflict);
        }
        let r = Stmt::new("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .execute(&mut tx)
            .await?;
        Stmt::new("DELETE FROM sessions WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .execute(&mut tx)
            .await?;
        Stmt::new("UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL")
            .bind(org_id)
            .bind(user_id)
            .bind(crate::identity::now_ms())
            .execute(&mut tx)
            .await?;
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(r == 1)
    }

    async fn create_session(
        &self,
        s: &SessionRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(s.org_id)), audited event, |tx| {
            Stmt::new(concat!(
                "INSERT INTO sessions (",
                crate::identity::session_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(s.id)
            .bind(s.token_hash.as_slice())
            .bind(s.user_id)
            .bind(s.org_id)
            .bind(&s.stage)
            .bind(&s.method)
            .bind(s.api_key_id)
            .bind(&s.address)
            .bind(s.created_at)
            .bind(s.last_seen_at)
            .bind(s.expires_at)
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRow>, StoreError> {
        read_scoped!(self, crate::Scope::Token(token_hash), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::session_cols!(),
                " FROM sessions WHERE token_hash = $1"
            ))
            .bind(token_hash.as_slice())
            .fetch_optional(&mut tx)
            .await?
            .map(|r| crate::identity::session_row(&r))
            .transpose()
        })
    }

    async fn touch_session(&self, org_id: Uuid, id: Uuid, now: i64) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(org_id)), |tx| {
            Stmt::new("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND org_id = $3 AND last_seen_at < $2")
                .bind(id)
                .bind(now)
                .bind(org_id)
                .execute(&mut tx)
                .await?;
            Ok(())
        })
    }

    async fn promote_session(
        &self,
        org_id: Uuid,
        id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(org_id)), audited event, |tx| {
            Stmt::new("UPDATE sessions SET stage = 'full' WHERE id = $1 AND org_id = $2 AND stage = 'enroll'")
                .bind(id)
                .bind(org_id)
                .execute(&mut tx)
                .await?;
            Ok(())
        })
    }

    async fn delete_session(
        &self,
        token_hash: &[u8; 32],
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        scoped!(self.begin(crate::Scope::Token(token_hash)), audited event, |tx| {
            let r = Stmt::new("DELETE FROM sessions WHERE token_hash = $1")
                .bind(token_hash.as_slice())
                .execute(&mut tx)
                .await?;
            Ok(r > 0)
        })
    }

    async fn delete_session_by_id(
        &self,
        user_id: Uuid,
        id: Uuid,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        scoped!(self.begin(crate::Scope::User(user_id)), audited event, |tx| {
            let r = Stmt::new("DELETE FROM sessions WHERE user_id = $1 AND id = $2")
                .bind(user_id)
                .bind(id)
                .execute(&mut tx)
                .await?;
            if r == 0 {
                // Nothing changed: no change event (the caller records the refusal).
                return Ok(false);
            }
            Ok(true)
        })
    }

    async fn user_sessions(&self, user_id: Uuid) -> Result<Vec<SessionRow>, StoreError> {
        read_scoped!(self, crate::Scope::User(user_id), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::session_cols!(),
                " FROM sessions WHERE user_id = $1 ORDER BY created_at"
            ))
            .bind(user_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(crate::identity::session_row)
            .collect()
        })
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<u64, StoreError> {
        scoped!(self.begin(crate::Scope::User(user_id)), |tx| {
            let keep = keep.unwrap_or(Uuid::nil());
            let r = Stmt::new("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
                .bind(user_id)
                .bind(keep)
                .execute(&mut tx)
                .await?;
            Ok(r)
        })
    }

    async fn delete_expired_sessions(&self, now: i64, idle_ms: i64) -> Result<u64, StoreError> {
        scoped!(self.begin(crate::Scope::System), |tx| {
            let r =
                Stmt::new("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $1 - $2")
                    .bind(now)
                    .bind(idle_ms)
                    .execute(&mut tx)
                    .await?;
            Ok(r)
        })
    }

    async fn create_api_key(
        &self,
        k: &ApiKeyRow,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(k.org_id)), audited event, |tx| {
            Stmt::new(concat!(
                "INSERT INTO api_keys (",
                crate::identity::key_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ))
            .bind(k.id)
            .bind(k.org_id)
            .bind(k.user_id)
            .bind(&k.name)
            .bind(&k.role)
            .bind(k.key_hash.as_slice())
            .bind(&k.prefix)
            .bind(k.read_only)
            .bind(crate::identity::names_json(&k.projects))
            .bind(crate::identity::names_json(&k.envs))
            .bind(k.created_at)
            .bind(k.expires_at)
            .bind(k.last_used_at)
            .bind(k.revoked_at)
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError> {
        read_scoped!(self, crate::Scope::Token(hash), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::key_cols!(),
                " FROM api_keys WHERE key_hash = $1"
            ))
            .bind(hash.as_slice())
            .fetch_optional(&mut tx)
            .await?
            .map(|r| crate::identity::api_key_row(&r))
            .transpose()
        })
    }

    async fn api_key(&self, org_id: Uuid, id: Uuid) -> Result<Option<ApiKeyRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::key_cols!(),
                " FROM api_keys WHERE org_id = $1 AND id = $2"
            ))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&mut tx)
            .await?
            .map(|r| crate::identity::api_key_row(&r))
            .transpose()
        })
    }

    async fn api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKeyRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::key_cols!(),
                " FROM api_keys WHERE org_id = $1 ORDER BY created_at"
            ))
            .bind(org_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(crate::identity::api_key_row)
            .collect()
        })
    }

    async fn revoke_api_key(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(crate::Scope::Org(org_id)).await?;
        let r = Stmt::new("UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL")
            .bind(org_id)
            .bind(id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        if r != 1 {
            // Unknown or already revoked: no change, no change event.
            return Ok(false);
        }
        Stmt::new("DELETE FROM sessions WHERE api_key_id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(r == 1)
    }

    async fn touch_api_keys(&self, uses: &[(Uuid, Uuid, i64)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_bare().await?;
        for (org_id, id, at) in uses {
            self.rescope(&mut tx, crate::Scope::Org(*org_id)).await?;
            Stmt::new(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND org_id = $3 \
                 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(*id)
            .bind(*at)
            .bind(*org_id)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_invitation(
        &self,
        i: &InvitationRow,
        mail: Option<&OutboxRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(i.org_id)), audited event, |tx| {
            if let Some(m) = mail {
                self.ensure_root(&mut tx).await?;
                super::mail::insert_outbox(m).execute(&mut tx).await?;
            }
            Stmt::new(concat!(
                "INSERT INTO invitations (",
                crate::identity::invite_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(i.id)
            .bind(i.org_id)
            .bind(&i.email)
            .bind(&i.role)
            .bind(i.token_hash.as_slice())
            .bind(i.invited_by)
            .bind(i.created_at)
            .bind(i.expires_at)
            .bind(i.accepted_at)
            .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn invitation_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<InvitationRow>, StoreError> {
        read_scoped!(self, crate::Scope::Token(hash), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::invite_cols!(),
                " FROM invitations WHERE token_hash = $1"
            ))
            .bind(hash.as_slice())
            .fetch_optional(&mut tx)
            .await?
            .map(|r| crate::identity::invitation_row(&r))
            .transpose()
        })
    }

    async fn invitations(&self, org_id: Uuid) -> Result<Vec<InvitationRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(concat!(
                "SELECT ",
                crate::identity::invite_cols!(),
                " FROM invitations WHERE org_id = $1 ORDER BY created_at"
            ))
            .bind(org_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(crate::identity::invitation_row)
            .collect()
        })
    }

    async fn consume_invitation(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        new_user: Option<&UserRow>,
        member: Option<&MembershipRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(crate::Scope::Org(org_id)).await?;
        let used = Stmt::new("UPDATE invitations SET accepted_at = $2 WHERE id = $1 AND org_id = $3 AND accepted_at IS NULL AND expires_at > $2")
            .bind(id)
            .bind(now)
            .bind(org_id)
            .execute(&mut tx)
            .await?;
        if used != 1 {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
        if let Some(u) = new_user {
            super::insert_user(u).execute(&mut tx).await?;
        }
        if let Some(m) = member {
            Stmt::new("INSERT INTO memberships (user_id, org_id, role, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(m.user_id)
                .bind(m.org_id)
                .bind(&m.role)
                .bind(m.created_at)
                .execute(&mut tx)
                .await?;
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(true)
    }
}
