//! Organisations and their tenant keys. Members and invitations are in `members`.

use coffer_crypto::{KeyTerm, RootKey, TenantKey};
use coffer_store::{OrgRow, StoreError, TenantKeyRow};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::{Coffer, CoreError, names};

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
