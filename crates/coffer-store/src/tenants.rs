//! Organisations (with their tenant keys and policies), projects and environments. Written
//! once for both backends (see [`crate::sql`]); every statement runs in a transaction
//! scoped to the organisation, so PostgreSQL's row-level security lets only its rows through.

use async_trait::async_trait;
use uuid::Uuid;

use crate::StoreError;
use crate::models::*;
use crate::rows::*;
use crate::sql::{Backend, Exec, Stmt, read_scoped, scoped};

/// Organisations, projects and environments: the tree that parameters hang from.
#[async_trait]
pub trait TenantRepo: Send + Sync {
    /// Create an organisation with its first tenant key term and its first member
    /// (`owner`), in one transaction with `event`.
    async fn create_org(
        &self,
        org: &OrgRow,
        key: &TenantKeyRow,
        owner: Option<&MembershipRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;
    async fn org(&self, org_id: Uuid) -> Result<Option<OrgRow>, StoreError>;
    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>, StoreError>;
    /// Every organisation, oldest first (for the key maintenance job).
    async fn org_ids(&self) -> Result<Vec<Uuid>, StoreError>;
    /// Every key term of an organisation, oldest first, still wrapped.
    async fn tenant_keys(&self, org_id: Uuid) -> Result<Vec<TenantKeyRow>, StoreError>;
    /// The external key (bring your own key) that wraps an organisation's new key terms.
    async fn external_key(&self, org_id: Uuid) -> Result<Option<String>, StoreError>;
    async fn set_org_require_mfa(
        &self,
        org_id: Uuid,
        on: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;
    async fn org_requires_mfa(&self, org_id: Uuid) -> Result<bool, StoreError>;

    /// A project with its first environments (`envs`, parents first), in one transaction
    /// with its event: a project never exists without them.
    async fn create_project(
        &self,
        p: &ProjectRow,
        envs: &[EnvRow],
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError>;
    async fn projects(&self, org_id: Uuid) -> Result<Vec<ProjectRow>, StoreError>;
    async fn project_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<ProjectRow>, StoreError>;
    /// A project and its environments (oldest first), in one read.
    async fn project_tree(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<(ProjectRow, Vec<EnvRow>)>, StoreError>;
    async fn create_env(&self, e: &EnvRow, event: Option<&ChangeEvent>) -> Result<(), StoreError>;
    async fn envs(&self, org_id: Uuid, project_id: Uuid) -> Result<Vec<EnvRow>, StoreError>;
}

fn insert_env(e: &EnvRow) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO environments (id, org_id, project_id, parent_id, name, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.id)
    .bind(e.org_id)
    .bind(e.project_id)
    .bind(e.parent_id)
    .bind(&e.name)
    .bind(e.created_at)
}

pub(crate) fn insert_org(org: &OrgRow) -> Stmt<'_> {
    Stmt::new("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(org.id)
        .bind(&org.name)
        .bind(org.created_at)
}

pub(crate) fn insert_tenant_key(key: &TenantKeyRow) -> Stmt<'_> {
    Stmt::new("INSERT INTO tenant_keys (org_id, term, wrapped, created_at) VALUES ($1, $2, $3, $4)")
        .bind(key.org_id)
        .bind(i64::from(key.term.0))
        .bind(key.wrapped.as_bytes())
        .bind(key.created_at)
}

const TENANT_KEYS: &str =
    "SELECT org_id, term, wrapped, created_at FROM tenant_keys WHERE org_id = $1 ORDER BY term";

#[async_trait]
impl<B: Backend> TenantRepo for B {
    async fn create_org(
        &self,
        org: &OrgRow,
        key: &TenantKeyRow,
        owner: Option<&MembershipRow>,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(crate::Scope::Org(org.id)).await?;
        insert_org(org).execute(&mut tx).await?;
        self.ensure_root(&mut tx).await?;
        insert_tenant_key(key).execute(&mut tx).await?;
        if let Some(m) = owner {
            crate::identity::insert_membership(m)
                .execute(&mut tx)
                .await?;
        }
        crate::sql::commit_audited(self, tx, event).await?;
        Ok(())
    }

    async fn org(&self, org_id: Uuid) -> Result<Option<OrgRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new("SELECT id, name, created_at FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&mut tx)
                .await?
                .as_ref()
                .map(org_row)
                .transpose()
        })
    }

    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>, StoreError> {
        read_scoped!(self, crate::Scope::System, |tx| {
            Stmt::new("SELECT id, name, created_at FROM orgs WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut tx)
                .await?
                .as_ref()
                .map(org_row)
                .transpose()
        })
    }

    async fn org_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        scoped!(self.begin(crate::Scope::System), |tx| {
            ids(&Stmt::new("SELECT id FROM orgs ORDER BY created_at")
                .fetch_all(&mut tx)
                .await?)
        })
    }

    async fn tenant_keys(&self, org_id: Uuid) -> Result<Vec<TenantKeyRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            tenant_keys(&mut tx, org_id).await
        })
    }

    async fn external_key(&self, org_id: Uuid) -> Result<Option<String>, StoreError> {
        scoped!(self.begin(crate::Scope::Org(org_id)), |tx| {
            Ok(Stmt::new("SELECT external_key FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&mut tx)
                .await?
                .map(|r| r.opt_text("external_key"))
                .transpose()?
                .flatten())
        })
    }

    async fn set_org_require_mfa(
        &self,
        org_id: Uuid,
        on: bool,
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(org_id)), audited event, |tx| {
            Stmt::new("UPDATE orgs SET require_mfa = $2 WHERE id = $1")
                .bind(org_id)
                .bind(on)
                .execute(&mut tx)
                .await?;
            Ok(())
        })
    }

    async fn org_requires_mfa(&self, org_id: Uuid) -> Result<bool, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            let r =
                Stmt::new("SELECT COUNT(*) AS n FROM orgs WHERE id = $1 AND require_mfa = TRUE")
                    .bind(org_id)
                    .fetch_one(&mut tx)
                    .await?;
            Ok(r.int("n")? > 0)
        })
    }

    async fn create_project(
        &self,
        p: &ProjectRow,
        envs: &[EnvRow],
        event: Option<&ChangeEvent>,
    ) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(p.org_id)), audited event, |tx| {
            Stmt::new(
                "INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(p.id)
            .bind(p.org_id)
            .bind(&p.name)
            .bind(p.created_at)
            .execute(&mut tx)
            .await?;
            for e in envs {
                insert_env(e).execute(&mut tx).await?;
            }
            Ok(())
        })
    }

    async fn projects(&self, org_id: Uuid) -> Result<Vec<ProjectRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY name",
            )
            .bind(org_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(project_row)
            .collect()
        })
    }

    async fn project_by_name(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<ProjectRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 AND name = $2",
            )
            .bind(org_id)
            .bind(name)
            .fetch_optional(&mut tx)
            .await?
            .as_ref()
            .map(project_row)
            .transpose()
        })
    }

    async fn project_tree(
        &self,
        org_id: Uuid,
        name: &str,
    ) -> Result<Option<(ProjectRow, Vec<EnvRow>)>, StoreError> {
        let rows = read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT p.id, p.org_id, p.name, p.created_at, e.id AS env_id, \
                 e.parent_id AS env_parent, e.name AS env_name, e.created_at AS env_created \
                 FROM projects p LEFT JOIN environments e \
                 ON e.project_id = p.id AND e.org_id = p.org_id \
                 WHERE p.org_id = $1 AND p.name = $2 ORDER BY e.created_at, e.name",
            )
            .bind(org_id)
            .bind(name)
            .fetch_all(&mut tx)
            .await
            .map_err(StoreError::from)
        })?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let project = project_row(first)?;
        let mut envs = Vec::with_capacity(rows.len());
        for r in &rows {
            // A project without environments still has its one row, with NULLs.
            let Some(id) = r.opt_bytes("env_id")? else {
                continue;
            };
            envs.push(EnvRow {
                id: Uuid::from_slice(&id).map_err(|_| StoreError::Corrupt)?,
                org_id: project.org_id,
                project_id: project.id,
                parent_id: r
                    .opt_bytes("env_parent")?
                    .map(|p| Uuid::from_slice(&p).map_err(|_| StoreError::Corrupt))
                    .transpose()?,
                name: r.text("env_name")?,
                created_at: r.int("env_created")?,
            });
        }
        Ok(Some((project, envs)))
    }

    async fn create_env(&self, e: &EnvRow, event: Option<&ChangeEvent>) -> Result<(), StoreError> {
        scoped!(self.begin(crate::Scope::Org(e.org_id)), audited event, |tx| {
            insert_env(e)
                .execute(&mut tx)
            .await?;
            Ok(())
        })
    }

    async fn envs(&self, org_id: Uuid, project_id: Uuid) -> Result<Vec<EnvRow>, StoreError> {
        read_scoped!(self, crate::Scope::Org(org_id), |tx| {
            Stmt::new(
                "SELECT id, org_id, project_id, parent_id, name, created_at FROM environments \
                 WHERE org_id = $1 AND project_id = $2 ORDER BY created_at, name",
            )
            .bind(org_id)
            .bind(project_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(env_row)
            .collect()
        })
    }
}

/// An organisation's key terms, inside an open transaction scoped to it.
pub(crate) async fn tenant_keys<E: Exec>(
    tx: &mut E,
    org_id: Uuid,
) -> Result<Vec<TenantKeyRow>, StoreError> {
    Stmt::new(TENANT_KEYS)
        .bind(org_id)
        .fetch_all(tx)
        .await?
        .iter()
        .map(crate::keys::tenant_key_row)
        .collect()
}
