//! The seal configuration: how the root key is kept and its check value. Written once for
//! both backends (see [`crate::sql`]).

use async_trait::async_trait;
use coffer_crypto::RootKeyCheck;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Backend, Stmt};

/// The one seal configuration row.
#[async_trait]
pub trait SealRepo: Send + Sync {
    async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError>;
    /// Initialise: the seal configuration, with the first organisation and its Owner
    /// (`first`), in one transaction with `event`. Fails with [`StoreError::Conflict`] if
    /// the server was already initialised.
    async fn init_seal_config(
        &self,
        cfg: &SealConfigRow,
        first: Option<&FirstOrg>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;
    /// Switch the seal kind (`coffer operator migrate-seal`): the root key stays, only how it
    /// is kept changes. Conflict unless the stored check value is `root_check`.
    async fn migrate_seal(
        &self,
        kind: &str,
        sealed_root: Option<&[u8]>,
        root_check: &RootKeyCheck,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl<B: Backend> SealRepo for B {
    async fn seal_config(&self) -> Result<Option<SealConfigRow>, StoreError> {
        let row = Stmt::new(
            "SELECT kind, shares, threshold, root_check, created_at, sealed_root FROM seal_config WHERE id = 1",
        )
        .fetch_optional(&mut self.reads())
        .await?;
        row.map(|r| {
            Ok(SealConfigRow {
                kind: r.text("kind")?,
                shares: u8::try_from(r.int("shares")?).map_err(|_| StoreError::Corrupt)?,
                threshold: u8::try_from(r.int("threshold")?).map_err(|_| StoreError::Corrupt)?,
                root_check: RootKeyCheck::from_stored_bytes(r.bytes("root_check")?),
                created_at: r.int("created_at")?,
                sealed_root: r.opt_bytes("sealed_root")?,
            })
        })
        .transpose()
    }

    async fn init_seal_config(
        &self,
        c: &SealConfigRow,
        first: Option<&FirstOrg>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        Stmt::new(
            "INSERT INTO seal_config (id, kind, shares, threshold, root_check, created_at, sealed_root) \
             VALUES (1, $1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.kind)
        .bind(i64::from(c.shares))
        .bind(i64::from(c.threshold))
        .bind(c.root_check.as_bytes())
        .bind(c.created_at)
        .bind(c.sealed_root.as_deref())
        .execute(&mut tx)
        .await?;
        if let Some(f) = first {
            // No root guard to check: the root key is being stored in this transaction.
            self.rescope(&mut tx, crate::Scope::Org(f.org.id)).await?;
            crate::tenants::insert_org(&f.org).execute(&mut tx).await?;
            crate::tenants::insert_tenant_key(&f.key)
                .execute(&mut tx)
                .await?;
            crate::identity::insert_user(&f.owner_account)
                .execute(&mut tx)
                .await?;
            crate::identity::insert_membership(&f.owner)
                .execute(&mut tx)
                .await?;
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn migrate_seal(
        &self,
        kind: &str,
        sealed_root: Option<&[u8]>,
        root_check: &RootKeyCheck,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_bare().await?;
        let done = Stmt::new(
            "UPDATE seal_config SET kind = $1, sealed_root = $2 WHERE id = 1 AND root_check = $3",
        )
        .bind(kind)
        .bind(sealed_root)
        .bind(root_check.as_bytes())
        .execute(&mut tx)
        .await?;
        if done != 1 {
            return Err(StoreError::Conflict);
        }
        crate::sql::commit_audited(self, tx, event).await
    }
}
