//! Organisations a user belongs to, their members and roles, and invitations.
//!
//! Rules (docs/access-control.md): Owners and Admins manage members; nobody grants a role
//! above their own; Admins cannot touch Owners (promote to, demote, remove); the last Owner
//! can be neither removed nor demoted (checked in the same transaction as the change).

use coffer_crypto::token::{self, BearerToken};
use coffer_store::{InvitationRow, MembershipRow, StoreError, UserRow};
use uuid::Uuid;

use crate::auth::{AuthMethod, LoginResult, NewSession, Principal, SESSION_PREFIX};
use crate::clock::now_ms;
use crate::identity::Identity;
use crate::{CoreError, Role};

pub const INVITE_PREFIX: &str = "cfi_";

pub(crate) fn ensure_admin(p: &Principal) -> Result<(), CoreError> {
    if p.role >= Role::Admin {
        Ok(())
    } else {
        Err(CoreError::Forbidden(
            "only Owners and Admins manage members",
        ))
    }
}

/// An organisation the caller belongs to.
#[derive(Debug, Clone)]
pub struct OrgMembershipView {
    pub org_id: Uuid,
    pub name: String,
    pub role: Role,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct MemberView {
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub mfa_enabled: bool,
    pub joined_at: i64,
}

#[derive(Debug, Clone)]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
}

/// A new invitation. The token goes to the invitee by e-mail; it is returned here only
/// when the server has no mail transport configured (so an administrator can pass it on).
#[derive(Debug)]
pub struct Invitation {
    pub view: InvitationView,
    pub token: Option<BearerToken>,
}

/// Check and normalise an e-mail address: ASCII (an international domain in its `xn--`
/// form, so that no two addresses look alike), a local part of the characters RFC 5322
/// allows unquoted, a dotted domain, at most 254 characters; stored in lower case. The
/// same rule is the API document's pattern (crates/coffer-server/src/schema.rs).
pub(crate) fn normalize_email(email: &str) -> Result<String, CoreError> {
    let bad = || CoreError::invalid("email", "must be an address like name@example.com");
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !local_ok || !domain_ok || email.len() > 254 {
        return Err(bad());
    }
    Ok(email.to_ascii_lowercase())
}

/// A new username: 1-64 ASCII letters, digits, `.`, `_` or `-` (no `..`), as typed (no
/// look-alike letters from other scripts, no full-width forms); stored in lower case. The
/// API document's pattern says the same (crates/coffer-server/src/schema.rs).
fn validate_username(name: &str) -> Result<String, CoreError> {
    if name.is_empty()
        || name.len() > 64
        || name.contains("..")
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(CoreError::invalid(
            "username",
            "use 1-64 characters a-z, 0-9, '.', '_' or '-' (no '..')",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// The username a newcomer gets when accepting an invitation without choosing one: the
/// invited address's local part, with characters a username cannot hold made `_`.
fn username_from_email(email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    let mut name: String = local
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        name.push_str("user");
    }
    name
}

impl Identity {
    /// The organisations the caller belongs to.
    pub async fn my_orgs(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Vec<OrgMembershipView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::ORG_LIST, AuditTarget::default());
        let r: Result<Vec<OrgMembershipView>, CoreError> = async { self.orgs_of(p).await }.await;
        self.k.conclude(pending, r).await
    }

    async fn orgs_of(&self, p: &Principal) -> Result<Vec<OrgMembershipView>, CoreError> {
        self.k.ensure_unsealed()?;
        let mut out = Vec::new();
        for m in self.access.memberships(p.user_id).await? {
            // An API key is bound to its organisation and sees only that one.
            if p.method == AuthMethod::ApiKey && m.org_id != p.org_id {
                continue;
            }
            if let (Some(org), Some(role)) =
                (self.tenants.org(m.org_id).await?, Role::parse(&m.role))
            {
                out.push(OrgMembershipView {
                    org_id: org.id,
                    name: org.name,
                    role,
                    active: org.id == p.org_id,
                });
            }
        }
        Ok(out)
    }

    /// Create an organisation; the caller becomes its Owner.
    pub async fn create_org_as(
        &self,
        cx: &Cx,
        p: &Principal,
        name: &str,
    ) -> Result<Uuid, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::ORG_CREATE, AuditTarget::default());
        let r: Result<Uuid, CoreError> = async {
            p.ensure_person()?;
            // The organisation, its key, its Owner and the event: one transaction.
            let event = pending.change_event()?;
            self.create_org_owned(name, Some(p.user_id), Some(event))
                .await
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Move to another organisation: a new session bound to it replaces the current one.
    pub async fn switch_org(
        &self,
        cx: &Cx,
        p: &Principal,
        bearer: &str,
        org_name: &str,
        address: &str,
    ) -> Result<LoginResult, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::ORG_SWITCH, AuditTarget::default());
        let r: Result<LoginResult, CoreError> = async {
            p.ensure_person()?;
            let target = self
                .orgs_of(p)
                .await?
                .into_iter()
                .find(|o| o.name == org_name)
                .ok_or_else(|| CoreError::not_found("organisation", org_name))?;
            let user = self.caller_account(p).await?;
            let (token, _) = self
                .new_session(
                    SESSION_PREFIX,
                    NewSession {
                        user: &user,
                        org_id: target.org_id,
                        stage: "full",
                        method: p.method,
                        api_key_id: None,
                        address,
                        ttl: self.k.config().session_ttl,
                        event: Some(pending.change_event()?),
                    },
                )
                .await?;
            // The session switched from ends with this change (its own event).
            self.access
                .delete_session(&coffer_crypto::token::hash(bearer).0, None)
                .await?;
            self.access_changed();
            let principal = self.authenticate(token.expose_secret()).await?;
            Ok(LoginResult { token, principal })
        }
        .await;
        self.k.conclude(pending, r).await
    }

    pub async fn members(&self, cx: &Cx, p: &Principal) -> Result<Vec<MemberView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::MEMBER_LIST, AuditTarget::default());
        let r: Result<Vec<MemberView>, CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_admin(p)?;
            Ok(self
                .access
                .org_members(p.org_id)
                .await?
                .into_iter()
                .filter_map(|(m, u)| {
                    Some(MemberView {
                        user_id: u.id,
                        username: u.username,
                        email: u.email,
                        role: Role::parse(&m.role)?,
                        mfa_enabled: u.mfa_enabled,
                        joined_at: m.created_at,
                    })
                })
                .collect())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// A member of the caller's organisation by username, or by e-mail address (looked up
    /// as at login). Anyone who is not a member, existing or not, is the same "not found".
    async fn member(&self, p: &Principal, username: &str) -> Result<(UserRow, Role), CoreError> {
        let not_found = || CoreError::not_found("member", username);
        let user = self
            .find_login_user(username)
            .await?
            .ok_or_else(not_found)?;
        let m = self
            .access
            .membership(p.org_id, user.id)
            .await?
            .ok_or_else(not_found)?;
        let role = Role::parse(&m.role).ok_or(CoreError::Internal("unknown role in database"))?;
        Ok((user, role))
    }

    /// Change a member's role.
    pub async fn set_member_role(
        &self,
        cx: &Cx,
        p: &Principal,
        username: &str,
        role: Role,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::MEMBER_SET_ROLE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_admin(p)?;
            let (user, current) = self.member(p, username).await?;
            if role > p.role || (p.role < Role::Owner && current == Role::Owner) {
                return Err(CoreError::Forbidden("only Owners manage Owners"));
            }
            match self
                .access
                .set_role(
                    p.org_id,
                    user.id,
                    role.as_str(),
                    Some(pending.change_event()?),
                )
                .await
            {
                Err(StoreError::Conflict) => return Err(CoreError::LastOwner),
                r => r?,
            };
            self.access_changed();
            self.notify(
                &user,
                "Your role in Coffer changed",
                &format!(
                    "Your role in organisation '{}' is now {}.",
                    p.org_name,
                    role.as_str()
                ),
            )
            .await;
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Remove a member; their sessions and API keys in this organisation end with it.
    pub async fn remove_member(
        &self,
        cx: &Cx,
        p: &Principal,
        username: &str,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::MEMBER_REMOVE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_admin(p)?;
            let (user, current) = self.member(p, username).await?;
            if p.role < Role::Owner && current == Role::Owner {
                return Err(CoreError::Forbidden("only Owners manage Owners"));
            }
            match self
                .access
                .remove_member(p.org_id, user.id, Some(pending.change_event()?))
                .await
            {
                Err(StoreError::Conflict) => return Err(CoreError::LastOwner),
                r => r?,
            };
            self.access_changed();
            self.notify(
                &user,
                "You were removed from a Coffer organisation",
                &format!(
                    "You are no longer a member of organisation '{}'.",
                    p.org_name
                ),
            )
            .await;
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Invite someone by e-mail, with a role no higher than the caller's (Admins cannot
    /// invite Owners).
    pub async fn invite(
        &self,
        cx: &Cx,
        p: &Principal,
        email: &str,
        role: Role,
    ) -> Result<Invitation, CoreError> {
        let mut pending =
            self.k
                .begin_for(cx, p, action::INVITATION_CREATE, AuditTarget::default());
        let r: Result<Invitation, CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_admin(p)?;
            if role > p.role || (role == Role::Owner && p.role < Role::Owner) {
                return Err(CoreError::Forbidden("only Owners manage Owners"));
            }
            let email = normalize_email(email)?;
            let (token, digest) = token::generate(INVITE_PREFIX);
            let now = now_ms();
            let ttl = i64::try_from(self.k.config().invitation_ttl.as_millis()).unwrap_or(i64::MAX);
            let row = InvitationRow {
                id: Uuid::new_v4(),
                org_id: p.org_id,
                email: email.clone(),
                role: role.as_str().to_owned(),
                token_hash: digest.0,
                invited_by: p.user_id,
                created_at: now,
                expires_at: now.saturating_add(ttl),
                accepted_at: None,
            };
            // The invitation and the message that carries it commit together.
            let _root = self.k.root_stable().await;
            let mail = self.seal_mail(
                &email,
                &format!("You are invited to '{}' on Coffer", p.org_name),
                &format!(
                    "{} invited you to join organisation '{}' as {}.\n\nAccept with:\n\n  coffer org accept {}\n\nThe invitation expires in {} days and works once.",
                    p.username,
                    p.org_name,
                    role.as_str(),
                    token.expose_secret(),
                    self.k.config().invitation_ttl.as_secs() / 86_400
                ),
            )?;
            self.access
                .create_invitation(&row, Some(&mail), Some(pending.change_event()?))
                .await?;
            let token = (!self.k.config().mail_enabled).then_some(token);
            Ok(Invitation {
                view: invitation_view(row),
                token,
            })
        }
        .await;
        self.k.conclude(pending, r).await
    }

    pub async fn list_invitations(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Vec<InvitationView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::INVITATION_LIST, AuditTarget::default());
        let r: Result<Vec<InvitationView>, CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_admin(p)?;
            Ok(self
                .access
                .invitations(p.org_id)
                .await?
                .into_iter()
                .map(invitation_view)
                .collect())
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Accept an invitation. A new user chooses a username and password; an existing user
    /// (the invitation's e-mail address is theirs) proves it with their password. Every
    /// failure is the same error, and the invitation stays unused.
    pub async fn accept_invitation(
        &self,
        cx: &Cx,
        invite_token: &str,
        username: Option<&str>,
        password: &str,
    ) -> Result<Uuid, CoreError> {
        let mut pending = self
            .k
            .begin(cx, action::INVITATION_ACCEPT, AuditTarget::default());
        let r: Result<Uuid, CoreError> = async {
            self.k.ensure_unsealed()?;
            let invalid = || CoreError::InvitationNotFound;
            if !invite_token.starts_with(INVITE_PREFIX) || invite_token.len() > 128 {
                return Err(invalid());
            }
            let inv = self
                .access
                .invitation_by_hash(&token::hash(invite_token).0)
                .await?
                .filter(|i| i.accepted_at.is_none() && i.expires_at > now_ms())
                .ok_or_else(invalid)?;
            let role =
                Role::parse(&inv.role).ok_or(CoreError::Internal("unknown role in database"))?;
            let (user, new_user) = match self.users.user_by_email(&inv.email).await? {
                Some(existing) => (
                    self.check_first_factor(Some(existing), password).await?,
                    false,
                ),
                None => {
                    let username =
                        username.map_or_else(|| username_from_email(&inv.email), str::to_owned);
                    (
                        prepare_user(&username, password, Some(inv.email.clone())).await?,
                        true,
                    )
                }
            };
            // The invitation is used, a newcomer's account stored and the membership added
            // together, with the event.
            let member = MembershipRow {
                user_id: user.id,
                org_id: inv.org_id,
                role: role.as_str().to_owned(),
                created_at: now_ms(),
            };
            match self
                .access
                .consume_invitation(
                    inv.org_id,
                    inv.id,
                    now_ms(),
                    new_user.then_some(&user),
                    Some(&member),
                    Some(pending.change_event()?),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(invalid()),
                Err(StoreError::Conflict) if new_user => return Err(user_exists(user.username)),
                Err(e) => return Err(e.into()),
            }
            self.users.reset_login_attempts(user.id).await?;
            Ok(user.id)
        }
        .await;
        self.k.conclude(pending, r).await
    }

    /// Create a user with a password and add them to the caller's organisation. Owners and
    /// Admins only, never above their role (service accounts, bootstrap scripts).
    pub async fn create_member(
        &self,
        p: &Principal,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Uuid, CoreError> {
        self.k.ensure_unsealed()?;
        ensure_admin(p)?;
        if role > p.role {
            return Err(CoreError::Forbidden("your role cannot add this member"));
        }
        self.add_user_to_org(p.org_id, username, password, role)
            .await
    }

    /// Bootstrap primitive behind [`Identity::create_member`], without the caller check.
    pub async fn add_user_to_org(
        &self,
        org_id: Uuid,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Uuid, CoreError> {
        let user = self.new_user(username, password, None).await?;
        let now = now_ms();
        self.access
            .add_membership(
                &MembershipRow {
                    user_id: user.id,
                    org_id,
                    role: role.as_str().to_owned(),
                    created_at: now,
                },
                None,
            )
            .await?;
        Ok(user.id)
    }

    /// Validate and store a new user with a password.
    async fn new_user(
        &self,
        username: &str,
        password: &str,
        email: Option<String>,
    ) -> Result<UserRow, CoreError> {
        let user = prepare_user(username, password, email).await?;
        match self.users.create_user(&user).await {
            Err(StoreError::Conflict) => Err(user_exists(user.username)),
            r => r.map(|()| user).map_err(Into::into),
        }
    }

    /// Set or clear the caller's e-mail address (where notifications go).
    pub async fn set_email(
        &self,
        cx: &Cx,
        p: &Principal,
        email: Option<&str>,
    ) -> Result<(), CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action::EMAIL_CHANGE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            p.ensure_person()?;
            let email = email.map(normalize_email).transpose()?;
            let user = self.caller_account(p).await?;
            match self
                .users
                .set_email(p.user_id, email.as_deref(), Some(pending.change_event()?))
                .await
            {
                Err(StoreError::Conflict) => {
                    return Err(CoreError::AlreadyExists {
                        kind: "account with the e-mail address",
                        name: email.unwrap_or_default(),
                    });
                }
                r => r?,
            }
            // Tell the old address, so a hijacked account does not change it silently.
            self.notify(
                &user,
                "Your Coffer e-mail address changed",
                "The e-mail address of your account was changed.",
            )
            .await;
            Ok(())
        }
        .await;
        self.k.conclude(pending, r).await
    }
}

/// A new account with a password, validated and hashed, not stored yet.
pub(crate) async fn prepare_user(
    username: &str,
    password: &str,
    email: Option<String>,
) -> Result<UserRow, CoreError> {
    validate_password(password)?;
    let username = validate_username(username)?;
    Ok(UserRow {
        id: Uuid::new_v4(),
        username,
        password_hash: crate::auth::hash_password(password.to_owned()).await?,
        created_at: now_ms(),
        email,
        mfa_enabled: false,
    })
}

fn user_exists(name: String) -> CoreError {
    CoreError::AlreadyExists { kind: "user", name }
}

use crate::audit::{AuditTarget, Cx};
use crate::auth::validate_password;
/// The audit actions of members and organisations.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const ORG_LIST: Action = Action::read("org.list");
    pub const ORG_CREATE: Action = Action::change("org.create").answered(201);
    pub const ORG_SWITCH: Action = Action::change("org.switch").forgets(Forgets::ACCESS);
    pub const MEMBER_LIST: Action = Action::read("member.list");
    pub const MEMBER_SET_ROLE: Action = Action::change("member.set_role")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const MEMBER_REMOVE: Action = Action::change("member.remove")
        .answered(204)
        .forgets(Forgets::ACCESS);
    pub const INVITATION_CREATE: Action = Action::change("invitation.create").answered(201);
    pub const INVITATION_LIST: Action = Action::read("invitation.list");
    pub const INVITATION_ACCEPT: Action = Action::change("invitation.accept");
    pub const EMAIL_CHANGE: Action = Action::change("account.email_change").answered(204);
}

fn invitation_view(r: InvitationRow) -> InvitationView {
    InvitationView {
        id: r.id,
        email: r.email,
        role: Role::parse(&r.role).unwrap_or(Role::Viewer),
        created_at: r.created_at,
        expires_at: r.expires_at,
        accepted_at: r.accepted_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_usernames_are_checked() {
        assert_eq!(
            normalize_email("Bob.O'Neil+ops@Example.CO.uk").unwrap(),
            "bob.o'neil+ops@example.co.uk"
        );
        assert_eq!(
            normalize_email("ana@xn--bcher-kva.example").unwrap(),
            "ana@xn--bcher-kva.example"
        );
        for bad in [
            "bob",
            "bob@x",
            "@example.com",
            "a b@example.com",
            " bob@example.com",
            "bob@example..com",
            "bob@example.com.",
            "<bob>@example.com",
            "bob@b\u{fc}cher.example",
            "b\u{f6}b@example.com",
            "bob@ex@ample.com",
            "bob@example.com\u{0}",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert!(normalize_email(&long).is_err(), "255 characters");
        assert!(normalize_email(&long[1..]).is_ok(), "254 characters");
        assert_eq!(validate_username("Alice.B_c-9").unwrap(), "alice.b_c-9");
        // Full-width letters, Cyrillic "а" (looks like Latin "a"), spaces: refused.
        for bad in [
            "ＡＬＩＣＥ",
            "\u{0430}lice",
            " alice",
            "al..ice",
            "",
            &"a".repeat(65),
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            username_from_email("zoe.o'neil+x@example.com"),
            "zoe_o_neil_x"
        );
        assert_eq!(
            validate_username(&username_from_email("a..b@x.io")).unwrap(),
            "a__b"
        );
    }
}
