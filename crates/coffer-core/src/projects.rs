//! Projects and their environment trees.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coffer_store::{EnvRow, ProjectRow, StoreError};
use uuid::Uuid;

use crate::audit::{AuditTarget, Cx};
use crate::audit::{Pending, TargetIds};
use crate::clock::now_ms;
use crate::kernel::Kernel;
use crate::{CoreError, Principal, names};

/// The audit actions of projects and environments.
pub mod action {
    use crate::audit::{Action, Forgets};
    pub const PROJECT_LIST: Action = Action::read("project.list");
    pub const PROJECT_CREATE: Action = Action::change("project.create")
        .answered(201)
        .forgets(Forgets::META);
    pub const ENV_LIST: Action = Action::read("env.list");
    pub const ENV_CREATE: Action = Action::change("env.create")
        .answered(201)
        .forgets(Forgets::META);
}

/// The environment every new project starts with.
pub const DEFAULT_ENV: &str = "default";
/// Deepest allowed environment chain; also guards against cycles in corrupted data.
const MAX_ENV_DEPTH: usize = 16;
/// Project metadata is cached for `notified_cache_ttl` while this node hears change notices
/// (a new project or environment clears it on every node at once), and for this long while
/// it may miss some: a stale entry only delays the visibility of a new environment.
const META_TTL_UNNOTIFIED: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectView {
    pub id: Uuid,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvView {
    pub id: Uuid,
    pub name: String,
    pub parent: Option<String>,
    pub created_at: i64,
}

/// A project with its environments, as cached.
#[derive(Debug)]
pub(crate) struct ProjectMeta {
    pub(crate) project: ProjectRow,
    pub(crate) envs: Vec<EnvRow>,
}

impl ProjectMeta {
    pub(crate) fn env(&self, name: &str) -> Result<&EnvRow, CoreError> {
        self.envs
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CoreError::not_found("environment", name))
    }

    /// The environment followed by its ancestors, nearest first.
    pub(crate) fn chain(&self, name: &str) -> Result<Vec<&EnvRow>, CoreError> {
        let mut out = vec![self.env(name)?];
        while let Some(parent) = out.last().and_then(|e| e.parent_id) {
            if out.len() >= MAX_ENV_DEPTH {
                return Err(CoreError::Internal("environment chain too deep"));
            }
            out.push(
                self.envs
                    .iter()
                    .find(|e| e.id == parent)
                    .ok_or(CoreError::Internal("dangling environment parent"))?,
            );
        }
        Ok(out)
    }
}

type MetaKey = (Uuid, String);

/// Project trees a node keeps at most.
const MAX_CACHED_PROJECTS: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct MetaCache {
    map: RwLock<HashMap<MetaKey, (Arc<ProjectMeta>, Instant)>>,
    /// Bumped by every eviction: a tree read from the database before a change's notice
    /// evicted it is not cached after it (it may predate the change).
    generation: std::sync::atomic::AtomicU64,
}

impl MetaCache {
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn get(&self, key: &MetaKey, ttl: Duration) -> Option<Arc<ProjectMeta>> {
        let map = self.map.read().ok()?;
        map.get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(m, _)| m.clone())
    }
    fn put(&self, key: MetaKey, m: Arc<ProjectMeta>, read_at: u64) {
        if let Ok(mut map) = self.map.write() {
            if self.generation() != read_at {
                return;
            }
            // One out for one in: starting over would send every request to the database
            // at once (a node serving more projects than this would do so again and again).
            if map.len() >= MAX_CACHED_PROJECTS
                && !map.contains_key(&key)
                && let Some(gone) = map.keys().next().cloned()
            {
                map.remove(&gone);
            }
            map.insert(key, (m, Instant::now()));
        }
    }
    pub(crate) fn evict_org(&self, org: Uuid) {
        if let Ok(mut map) = self.map.write() {
            self.bump();
            map.retain(|(o, _), _| *o != org);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            self.bump();
            map.clear();
        }
    }

    pub(crate) fn evict(&self, key: &MetaKey) {
        if let Ok(mut map) = self.map.write() {
            self.bump();
            map.remove(key);
        }
    }
}

pub(crate) fn ensure_can_write(p: &Principal) -> Result<(), CoreError> {
    if p.scope.read_only {
        return Err(CoreError::Forbidden("this API key is read-only"));
    }
    if p.role.can_write() {
        Ok(())
    } else {
        Err(CoreError::Forbidden(
            "your role cannot change this organisation's data",
        ))
    }
}

/// Projects and environments: each organisation's namespace, cached per project as a
/// tree (the one every parameter read resolves its environment chain in).
pub struct Projects {
    pub(crate) k: Arc<Kernel>,
    pub(crate) tenants: Arc<dyn coffer_store::TenantRepo>,
    pub(crate) meta: MetaCache,
}

impl TargetIds for Projects {
    async fn fill(&self, p: &Principal, t: &mut crate::audit::AuditTarget) {
        self.fill_ids(p, t).await;
    }
}

impl Projects {
    pub(crate) fn new(k: Arc<Kernel>, tenants: Arc<dyn coffer_store::TenantRepo>) -> Self {
        Self {
            k,
            tenants,
            meta: MetaCache::default(),
        }
    }

    /// Fill in the target's project and environment ids, as this principal sees them, from
    /// the cache when warm; the environment chain's ids (nearest first) when it names one.
    pub(crate) async fn fill_ids(
        &self,
        p: &Principal,
        t: &mut crate::audit::AuditTarget,
    ) -> Option<Vec<Uuid>> {
        let meta = self.project_meta(p, t.project.as_deref()?).await.ok()?;
        t.project_id = Some(meta.project.id);
        let chain = meta.chain(t.env.as_deref()?).ok()?;
        t.env_id = chain.first().map(|e| e.id);
        Some(chain.iter().map(|e| e.id).collect())
    }

    /// [`Kernel::conclude`] with the target's ids.
    async fn conclude<T>(&self, pending: Pending, r: Result<T, CoreError>) -> Result<T, CoreError> {
        self.k.conclude_with(pending, r, self).await
    }

    pub(crate) async fn project_meta(
        &self,
        p: &Principal,
        project: &str,
    ) -> Result<Arc<ProjectMeta>, CoreError> {
        self.k.ensure_unsealed()?;
        names::validate("project name", project)?;
        p.scope.check_project(project)?;
        let key = (p.org_id, project.to_owned());
        let ttl = if self.k.cluster().notices_live() {
            self.k.config().notified_cache_ttl
        } else {
            META_TTL_UNNOTIFIED
        };
        if let Some(m) = self.meta.get(&key, ttl) {
            return Ok(m);
        }
        let read_at = self.meta.generation();
        let (row, envs) = self
            .tenants
            .project_tree(p.org_id, project)
            .await?
            .ok_or_else(|| CoreError::not_found("project", project))?;
        let m = Arc::new(ProjectMeta { project: row, envs });
        self.meta.put(key, m.clone(), read_at);
        Ok(m)
    }

    pub async fn create_project(
        &self,
        cx: &Cx,
        p: &Principal,
        name: &str,
    ) -> Result<ProjectView, CoreError> {
        let mut pending =
            self.k
                .begin_for(cx, p, action::PROJECT_CREATE, AuditTarget::project(name));
        let r: Result<ProjectView, CoreError> = async {
            self.k.ensure_unsealed()?;
            ensure_can_write(p)?;
            names::validate_new("project name", name)?;
            p.scope.check_project(name)?;
            let now = now_ms();
            let row = ProjectRow {
                id: Uuid::new_v4(),
                org_id: p.org_id,
                name: name.to_owned(),
                created_at: now,
            };
            let env = EnvRow {
                id: Uuid::new_v4(),
                org_id: p.org_id,
                project_id: row.id,
                parent_id: None,
                name: DEFAULT_ENV.into(),
                created_at: now,
            };
            match self
                .tenants
                .create_project(
                    &row,
                    std::slice::from_ref(&env),
                    Some(pending.change_event()?),
                )
                .await
            {
                Err(StoreError::Conflict) => {
                    return Err(CoreError::AlreadyExists {
                        kind: "project",
                        name: name.to_owned(),
                    });
                }
                r => r?,
            }
            // Other nodes: the change's notice (`Forgets::META`).
            self.meta.evict(&(p.org_id, name.to_owned()));
            Ok(ProjectView {
                id: row.id,
                name: row.name,
                created_at: row.created_at,
            })
        }
        .await;
        self.conclude(pending, r).await
    }

    pub async fn list_projects(
        &self,
        cx: &Cx,
        p: &Principal,
    ) -> Result<Vec<ProjectView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::PROJECT_LIST, AuditTarget::default());
        let r: Result<Vec<ProjectView>, CoreError> = async {
            self.k.ensure_unsealed()?;
            Ok(self
                .tenants
                .projects(p.org_id)
                .await?
                .into_iter()
                .filter(|r| p.scope.allows_project(&r.name))
                .map(|r| ProjectView {
                    id: r.id,
                    name: r.name,
                    created_at: r.created_at,
                })
                .collect())
        }
        .await;
        self.conclude(pending, r).await
    }

    /// Create an environment. Without a parent it inherits from `default`.
    pub async fn create_env(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<EnvView, CoreError> {
        let mut pending =
            self.k
                .begin_for(cx, p, action::ENV_CREATE, AuditTarget::project(project));
        let r: Result<EnvView, CoreError> = async {
            ensure_can_write(p)?;
            names::validate_new("environment name", name)?;
            p.scope.check_env(name)?;
            let meta = self.project_meta(p, project).await?;
            let parent_name = parent.unwrap_or(DEFAULT_ENV);
            // Checked like any name before it is looked up: a refusal never repeats input
            // that is not a valid name.
            names::validate("parent", parent_name)?;
            let parent_row = meta.env(parent_name)?;
            if meta.chain(parent_name)?.len() + 1 > MAX_ENV_DEPTH {
                return Err(CoreError::invalid(
                    "parent",
                    format!("environments nest at most {MAX_ENV_DEPTH} deep"),
                ));
            }
            let row = EnvRow {
                id: Uuid::new_v4(),
                org_id: p.org_id,
                project_id: meta.project.id,
                parent_id: Some(parent_row.id),
                name: name.to_owned(),
                created_at: now_ms(),
            };
            match self
                .tenants
                .create_env(&row, Some(pending.change_event()?))
                .await
            {
                Err(StoreError::Conflict) => {
                    return Err(CoreError::AlreadyExists {
                        kind: "environment",
                        name: name.to_owned(),
                    });
                }
                r => r?,
            }
            self.meta.evict(&(p.org_id, project.to_owned()));
            Ok(EnvView {
                id: row.id,
                name: row.name,
                parent: Some(parent_name.to_owned()),
                created_at: row.created_at,
            })
        }
        .await;
        self.conclude(pending, r).await
    }

    pub async fn list_envs(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
    ) -> Result<Vec<EnvView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::ENV_LIST, AuditTarget::project(project));
        let r: Result<Vec<EnvView>, CoreError> = async {
            let meta = self.project_meta(p, project).await?;
            Ok(meta
                .envs
                .iter()
                .filter(|e| p.scope.check_env(&e.name).is_ok())
                .map(|e| EnvView {
                    id: e.id,
                    name: e.name.clone(),
                    parent: e
                        .parent_id
                        .and_then(|pid| meta.envs.iter().find(|x| x.id == pid))
                        .map(|x| x.name.clone()),
                    created_at: e.created_at,
                })
                .collect())
        }
        .await;
        self.conclude(pending, r).await
    }
}

impl std::fmt::Debug for Projects {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projects").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(org: Uuid, name: &str) -> Arc<ProjectMeta> {
        Arc::new(ProjectMeta {
            project: ProjectRow {
                id: Uuid::new_v4(),
                org_id: org,
                name: name.to_owned(),
                created_at: 0,
            },
            envs: Vec::new(),
        })
    }

    #[test]
    fn a_full_project_cache_drops_one_tree_per_new_one_not_all() {
        let cache = MetaCache::default();
        let org = Uuid::new_v4();
        let ttl = Duration::from_secs(60);
        for i in 0..=MAX_CACHED_PROJECTS {
            let name = format!("p{i}");
            cache.put((org, name.clone()), tree(org, &name), cache.generation());
        }
        let kept = (0..=MAX_CACHED_PROJECTS)
            .filter(|i| cache.get(&(org, format!("p{i}")), ttl).is_some())
            .count();
        assert_eq!(kept, MAX_CACHED_PROJECTS);
        let newest = format!("p{MAX_CACHED_PROJECTS}");
        assert!(cache.get(&(org, newest), ttl).is_some());
    }
}
