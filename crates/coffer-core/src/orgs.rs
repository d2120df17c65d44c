//! Organisations and their members. (Invitations, role changes and the HTTP surface for
//! them belong to the identity work; these are the primitives.)

use coffer_crypto::{KeyTerm, RootKey, TenantKey};
use coffer_store::{MembershipRow, OrgRow, StoreError, TenantKeyRow, UserRow};
use uuid::Uuid;

use crate::auth::{hash_password, normalize_username};
use crate::clock::now_ms;
use crate::{Coffer, CoreError, Principal, Role, names};

impl Coffer {
    /// Create an organisation with a fresh tenant key (term 1) wrapped by the root key.
    pub async fn create_org(&self, name: &str) -> Result<Uuid, CoreError> {
        names::validate("organisation name", name)?;
        let (org, key) = self.inner.keyring.with_root(|root| new_org(root, name))?;
        self.insert_org(&org, &key).await
    }

    pub(crate) async fn insert_org(
        &self,
        org: &OrgRow,
        key: &TenantKeyRow,
    ) -> Result<Uuid, CoreError> {
        match self.store().create_org(org, key).await {
            Err(StoreError::Conflict) => Err(CoreError::AlreadyExists {
                kind: "organisation",
                name: org.name.clone(),
            }),
            r => Ok(r.map(|()| org.id)?),
        }
    }

    /// Create a user with a password and add them to an organisation with a role. Only
    /// Owners and Admins may do this, in their own organisation, and never above their role.
    pub async fn create_member(
        &self,
        p: &Principal,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Uuid, CoreError> {
        self.ensure_unsealed()?;
        if p.role < Role::Admin || role > p.role {
            return Err(CoreError::Forbidden("your role cannot add this member"));
        }
        self.add_user_to_org(p.org_id, username, password, role)
            .await
    }

    /// Bootstrap primitive behind [`Coffer::create_member`], without the caller check.
    pub async fn add_user_to_org(
        &self,
        org_id: Uuid,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Uuid, CoreError> {
        let username = normalize_username(username);
        names::validate("username", &username)?;
        if password.len() < 12 {
            return Err(CoreError::invalid(
                "password",
                "must be at least 12 characters",
            ));
        }
        let now = now_ms();
        let user = UserRow {
            id: Uuid::new_v4(),
            username: username.clone(),
            password_hash: hash_password(password.to_owned()).await?,
            created_at: now,
        };
        match self.store().create_user(&user).await {
            Err(StoreError::Conflict) => {
                return Err(CoreError::AlreadyExists {
                    kind: "user",
                    name: username,
                });
            }
            r => r?,
        }
        self.store()
            .add_membership(&MembershipRow {
                user_id: user.id,
                org_id,
                role: role.as_str().to_owned(),
                created_at: now,
            })
            .await?;
        Ok(user.id)
    }
}

/// A new organisation row and its first tenant key, wrapped by the root key.
pub(crate) fn new_org(root: &RootKey, name: &str) -> Result<(OrgRow, TenantKeyRow), CoreError> {
    let now = now_ms();
    let org = OrgRow {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        created_at: now,
    };
    let tk = TenantKey::generate(KeyTerm(1));
    let wrapped = root
        .wrap_tenant_key(org.id, &tk)
        .map_err(|_| CoreError::Internal("wrap tenant key"))?;
    let key = TenantKeyRow {
        org_id: org.id,
        term: tk.term(),
        wrapped,
        created_at: now,
    };
    Ok((org, key))
}
