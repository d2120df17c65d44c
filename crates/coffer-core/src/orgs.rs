//! Organisations and their tenant keys. Members and invitations are in `members`.

use coffer_crypto::{KeyTerm, RootKey, TenantKey};
use coffer_store::{ChangeEvent, MembershipRow, OrgRow, StoreError, TenantKeyRow};
use uuid::Uuid;

use crate::Coffer;
use crate::audit::{AuditTarget, Cx};
use crate::clock::now_ms;
use crate::identity::Identity;
use crate::{CoreError, Principal, Role, names};
/// The audit actions of organisations.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const DELETE: Action = Action::change("org.delete")
        .answered(204)
        .forgets(Forgets::EVERYTHING_OF_THE_ORG);
}

impl Identity {
    /// Create an organisation with a fresh tenant key (term 1) wrapped by the root key.
    pub async fn create_org(&self, name: &str) -> Result<Uuid, CoreError> {
        self.create_org_owned(name, None, None).await
    }

    /// The same, with its Owner (`owner`, a user id) and the change's event, all in one
    /// transaction.
    pub(crate) async fn create_org_owned(
        &self,
        name: &str,
        owner: Option<Uuid>,
        event: Option<&ChangeEvent>,
    ) -> Result<Uuid, CoreError> {
        names::validate_new("organisation name", name)?;
        let _root = self.k.root_stable().await;
        let (org, key) = self.k.keyring.with_root(|root| new_org(root, name))?;
        let owner = owner.map(|user_id| MembershipRow {
            user_id,
            org_id: org.id,
            role: Role::Owner.as_str().to_owned(),
            created_at: now_ms(),
        });
        self.insert_org(&org, &key, owner.as_ref(), event).await
    }

    pub(crate) async fn insert_org(
        &self,
        org: &OrgRow,
        key: &TenantKeyRow,
        owner: Option<&MembershipRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<Uuid, CoreError> {
        match self.tenants.create_org(org, key, owner, event).await {
            Err(StoreError::Conflict) => Err(CoreError::AlreadyExists {
                kind: "organisation",
                name: org.name.clone(),
            }),
            r => Ok(r.map(|()| org.id)?),
        }
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

impl Coffer {
    /// Delete the caller's organisation (Owners, in person, naming it to confirm). Its key
    /// terms are destroyed first, in the same transaction as its values and metadata, so no
    /// later database copy or backup holds anything that decrypts them. Copies taken before
    /// hold them wrapped by the root key: the next root key rotation (`coffer operator
    /// rekey`) makes those copies useless too. The audit chain stays.
    pub async fn delete_org(&self, cx: &Cx, p: &Principal, confirm: &str) -> Result<(), CoreError> {
        let mut pending = self
            .k()
            .begin_for(cx, p, action::DELETE, AuditTarget::default());
        let r: Result<(), CoreError> = async {
            p.ensure_person()?;
            if p.role != Role::Owner {
                return Err(CoreError::Forbidden("only Owners delete an organisation"));
            }
            if confirm != p.org_name {
                return Err(CoreError::invalid(
                    "confirm",
                    "must be the organisation's name",
                ));
            }
            self.k().ensure_unsealed()?;
            if !self
                .inner
                .key_repo
                .delete_org(p.org_id, Some(pending.change_event()?))
                .await?
            {
                return Err(CoreError::not_found("organisation", &p.org_name));
            }
            self.k().keyring.evict(Some(p.org_id));
            self.projects().meta.evict_org(p.org_id);
            // Other nodes: the change's notices (`Forgets::EVERYTHING_OF_THE_ORG`).
            self.identity().access_changed();
            tracing::info!(org_id = %p.org_id, "organisation deleted; its keys are destroyed");
            Ok(())
        }
        .await;
        self.k().conclude(pending, r).await
    }
}
