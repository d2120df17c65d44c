//! Parameters: versioned, always encrypted, inherited down the environment tree.

use std::collections::BTreeMap;

use coffer_crypto::{RecordContext, SecretBytes};
use coffer_store::{EnvRow, ParamValue, ParamVersionRow, ParamWrite, VersionAction};
use uuid::Uuid;

use crate::audit::ReadLog;
use crate::audit::TargetIds;
use crate::audit::{Action, AuditTarget, Cx, Pending};
use crate::clock::now_ms;
use crate::kernel::Kernel;
use crate::keyring::OrgKeys;
use crate::projects::Projects;
use crate::projects::ensure_can_write;
use crate::{CoreError, Principal, names};

/// The audit actions of parameters.
pub mod action {
    use crate::audit::Action;
    pub const LIST: Action = Action::read("param.list");
    pub const GET: Action = Action::read("param.get");
    pub const SET: Action = Action::change("param.set");
    pub const DELETE: Action = Action::change("param.delete");
    pub const HISTORY: Action = Action::read("param.history");
    pub const ROLLBACK: Action = Action::change("param.rollback");
    pub const DIFF: Action = Action::read("param.diff");
}

/// How often a write is retried when another writer moved the version under it.
const WRITE_ATTEMPTS: usize = 5;

#[derive(Debug)]
pub struct SetParam<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    /// None keeps the current flag (new parameters default to not secret).
    pub secret: Option<bool>,
}

/// What a write does to a parameter.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    /// A new value; `secret` None keeps the flag (a new parameter is not secret).
    Set {
        value: &'a [u8],
        secret: Option<bool>,
    },
    /// The value of an earlier version, as a new version.
    Rollback { to: u64 },
    /// A deletion marker: the value is gone from this environment, its history stays.
    Delete,
}

impl Change<'_> {
    fn action(self) -> VersionAction {
        match self {
            Change::Set { .. } => VersionAction::Set,
            Change::Rollback { .. } => VersionAction::Rollback,
            Change::Delete => VersionAction::Delete,
        }
    }
}

/// A parameter as resolved for an environment.
#[derive(Debug)]
pub struct ParamView {
    pub name: String,
    /// None when masked: a secret the caller did not ask to reveal or may not read.
    pub value: Option<SecretBytes>,
    pub secret: bool,
    pub version: u64,
    /// The environment that defines the value (the requested one or an ancestor).
    pub env: String,
    pub updated_at: i64,
    /// The parameter's id (for the request's audit target; not shown to clients).
    pub param_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHistoryEntry {
    /// The parameter (in the environment asked about) this is a version of.
    pub param_id: Uuid,
    pub version: u64,
    pub action: &'static str,
    pub secret: bool,
    pub actor_id: Uuid,
    /// The actor's username (None when the account no longer exists).
    pub actor: Option<String>,
    pub created_at: i64,
    pub current: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffKind {
    OnlyInA,
    OnlyInB,
    Changed,
}

#[derive(Debug)]
pub struct DiffEntry {
    pub name: String,
    pub kind: DiffKind,
    pub a: Option<ParamView>,
    pub b: Option<ParamView>,
}

fn open_value(keys: &OrgKeys, pv: &ParamValue) -> Result<SecretBytes, CoreError> {
    let ct = pv.ciphertext.as_ref().ok_or(CoreError::Integrity)?;
    let ctx = RecordContext {
        org_id: pv.param.org_id,
        record_id: pv.param.id,
        version: pv.version.version,
    };
    keys.term(ct.key_term())?.open(&ctx, ct).map_err(|_| {
        tracing::error!(param_id = %pv.param.id, version = pv.version.version, "stored ciphertext failed authentication");
        CoreError::Integrity
    })
}

fn terms_of(values: &[ParamValue]) -> impl Iterator<Item = coffer_crypto::KeyTerm> {
    values
        .iter()
        .filter_map(|v| v.ciphertext.as_ref().map(|c| c.key_term()))
}

fn validate_value(value: &[u8], max: usize) -> Result<(), CoreError> {
    if value.len() > max {
        return Err(CoreError::invalid(
            "value",
            format!("must be at most {max} bytes"),
        ));
    }
    if std::str::from_utf8(value).is_err() {
        return Err(CoreError::invalid("value", "must be UTF-8 text"));
    }
    Ok(())
}

/// What a write answers: the version written, without its value.
fn written(w: &ParamWrite, env: &str) -> ParamView {
    ParamView {
        name: w.name.clone(),
        value: None,
        secret: w.version.is_secret,
        version: w.version.version,
        env: env.to_owned(),
        updated_at: w.version.created_at,
        param_id: w.param_id,
    }
}

/// Parameters: reads, the one write pipeline (seal the value, write the version with its
/// event, retry when another writer moved it), history and diffs.
pub struct Params {
    pub(crate) k: std::sync::Arc<Kernel>,
    pub(crate) params: std::sync::Arc<dyn coffer_store::ParamRepo>,
    pub(crate) projects: std::sync::Arc<Projects>,
    /// Names for the actors in a history.
    pub(crate) users: std::sync::Arc<dyn coffer_store::UserRepo>,
}

impl TargetIds for Params {
    /// The project's, environment's and parameter's ids, as this principal sees them, from
    /// the caches when warm. Names that do not resolve stay id-less.
    async fn fill(&self, p: &Principal, t: &mut AuditTarget) {
        let Some(chain) = self.projects.fill_ids(p, t).await else {
            return;
        };
        let Some(name) = t.name.as_deref() else {
            return;
        };
        if t.param_id.is_some() {
            return; // the handler already knew it
        }
        if let Ok(Some(v)) = self.params.nearest_value(p.org_id, &chain, name).await {
            t.param_id = Some(v.param.id);
        }
    }
}

impl Params {
    /// [`Kernel::conclude`] with the target's ids.
    async fn conclude<T>(&self, pending: Pending, r: Result<T, CoreError>) -> Result<T, CoreError> {
        self.k.conclude_with(pending, r, self).await
    }

    fn view(
        &self,
        p: &Principal,
        keys: &OrgKeys,
        pv: &ParamValue,
        env: &str,
        reveal: bool,
    ) -> Result<ParamView, CoreError> {
        let secret = pv.version.is_secret;
        let show = !secret || (reveal && p.role.can_read_secrets());
        Ok(ParamView {
            name: pv.param.name.clone(),
            value: if show {
                Some(open_value(keys, pv)?)
            } else {
                None
            },
            secret,
            version: pv.version.version,
            env: env.to_owned(),
            updated_at: pv.version.created_at,
            param_id: pv.param.id,
        })
    }

    async fn append(&self, w: ParamWrite) -> Result<Option<ParamWrite>, CoreError> {
        match self.params.append_param_version(&w).await {
            Ok(()) => Ok(None),
            Err(coffer_store::StoreError::Conflict) => Ok(Some(w)),
            // Another node rotated the key: reseal under the newest term and try again.
            Err(coffer_store::StoreError::StaleKeyTerm) => {
                self.k.keyring.evict(Some(w.org_id));
                Ok(Some(w))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Write a new version of a parameter in one environment.
    pub async fn set_param(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        req: SetParam<'_>,
    ) -> Result<ParamView, CoreError> {
        let change = Change::Set {
            value: req.value,
            secret: req.secret,
        };
        self.write(cx, action::SET, p, project, env, req.name, change)
            .await
    }

    /// Make the value of an earlier version current again, as a new version.
    pub async fn rollback_param(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
        to: u64,
    ) -> Result<ParamView, CoreError> {
        self.write(
            cx,
            action::ROLLBACK,
            p,
            project,
            env,
            name,
            Change::Rollback { to },
        )
        .await
    }

    /// Delete a parameter from one environment (history is kept; an inherited value, if
    /// any, shows through again).
    pub async fn delete_param(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
    ) -> Result<ParamView, CoreError> {
        self.write(cx, action::DELETE, p, project, env, name, Change::Delete)
            .await
    }

    /// The one write path of set, rollback and delete: read the parameter's current state,
    /// decide the next version, seal its value for that version under a fresh data key, and
    /// append it unless another writer moved the version first, in which case start over.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        cx: &Cx,
        action: Action,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
        change: Change<'_>,
    ) -> Result<ParamView, CoreError> {
        let mut pending = self
            .k
            .begin_for(cx, p, action, AuditTarget::param(project, env, name));
        let r = self
            .write_audited(&mut pending, p, project, env, name, change)
            .await;
        self.conclude(pending, r).await
    }

    /// [`Params::write`] with its event, which commits with the version written.
    async fn write_audited(
        &self,
        pending: &mut Pending,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
        change: Change<'_>,
    ) -> Result<ParamView, CoreError> {
        ensure_can_write(p)?;
        if let Change::Set { value, .. } = change {
            names::validate_new("parameter name", name)?;
            validate_value(value, self.k.config().max_value_bytes)?;
        } else {
            names::validate("parameter name", name)?;
        }
        let meta = self.projects.project_meta(p, project).await?;
        pending.ev.target.project_id = Some(meta.project.id);
        p.scope.check_env(env)?;
        let env_id = meta.env(env)?.id;
        pending.ev.target.env_id = Some(env_id);
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.params.param_state(p.org_id, env_id, name).await?;
            let (param_id, expected_current, was_secret) = match (&current, change) {
                (None, Change::Set { .. }) => (Uuid::new_v4(), 0, false),
                (None, _) => return Err(CoreError::not_found("parameter", name)),
                (Some((row, _)), Change::Delete) if row.deleted => {
                    return Err(CoreError::not_found("parameter", name));
                }
                (Some((row, secret)), _) => (row.id, row.current_version, *secret),
            };
            let version = expected_current + 1;
            pending.ev.target.param_id = Some(param_id);
            let ctx = RecordContext {
                org_id: p.org_id,
                record_id: param_id,
                version,
            };
            let (is_secret, ciphertext) = match change {
                Change::Set { value, secret } => {
                    let keys = self.k.org_keys(p.org_id).await?;
                    (
                        secret.unwrap_or(was_secret),
                        Some(self.seal_value(&keys, &ctx, value)?),
                    )
                }
                Change::Rollback { to } => {
                    let old = self
                        .params
                        .param_version(p.org_id, param_id, to)
                        .await?
                        .ok_or_else(|| CoreError::not_found("version", &to.to_string()))?;
                    let Some(old_ct) = &old.ciphertext else {
                        return Err(CoreError::invalid(
                            "version",
                            format!("version {to} is a deletion and has no value"),
                        ));
                    };
                    let keys = self
                        .k
                        .org_keys_covering(p.org_id, std::iter::once(old_ct.key_term()))
                        .await?;
                    let value = open_value(&keys, &old)?;
                    let ct = self.seal_value(&keys, &ctx, value.expose_secret())?;
                    (old.version.is_secret, Some(ct))
                }
                Change::Delete => (was_secret, None),
            };
            let w = ParamWrite {
                org_id: p.org_id,
                env_id,
                param_id,
                name: name.to_owned(),
                expected_current,
                version: ParamVersionRow {
                    param_id,
                    version,
                    is_secret,
                    action: change.action(),
                    actor_id: p.user_id,
                    created_at: now_ms(),
                },
                ciphertext,
                credential_id: new_credential_id(),
                event: Some(pending.change_event()?.clone()),
            };
            let view = written(&w, env);
            if self.append(w).await?.is_none() {
                return Ok(view);
            }
        }
        Err(CoreError::Conflict)
    }

    /// A value sealed for one version of one parameter under the active key term.
    fn seal_value(
        &self,
        keys: &OrgKeys,
        ctx: &RecordContext,
        value: &[u8],
    ) -> Result<coffer_store::Ciphertext, CoreError> {
        keys.active()?
            .seal_with(self.k.config().value_scheme, ctx, value)
            .map_err(|_| CoreError::Internal("encryption failed"))
    }

    /// The value of one parameter as seen from `env` (its own or inherited). Reading a
    /// secret needs a role that may read secrets. The value may come from this node's cache
    /// of current values: such an answer stands only once the database has confirmed, in
    /// the transaction that appends the read's audit event, that it is still current;
    /// otherwise it is read again from the database.
    pub async fn get_param(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
    ) -> Result<ParamView, CoreError> {
        let mut pending =
            self.k
                .begin_for(cx, p, action::GET, AuditTarget::param(project, env, name));
        let reads = ReadLog::default();
        let r = self
            .get_param_from(p, project, env, name, Some(&reads))
            .await;
        let checks = reads.take();
        if let Ok(v) = &r {
            pending.ev.target.param_id = Some(v.param_id);
            if !checks.is_empty() {
                if self.k.conclude_cached_read(&pending, &checks).await? {
                    return r;
                }
                let r = self.get_param_from(p, project, env, name, None).await;
                if let Ok(v) = &r {
                    pending.ev.target.param_id = Some(v.param_id);
                }
                return self.conclude(pending, r).await;
            }
        }
        self.conclude(pending, r).await
    }

    async fn get_param_from(
        &self,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
        reads: Option<&ReadLog>,
    ) -> Result<ParamView, CoreError> {
        names::validate("parameter name", name)?;
        let meta = self.projects.project_meta(p, project).await?;
        p.scope.check_env(env)?;
        let chain = meta.chain(env)?;
        let ids: Vec<Uuid> = chain.iter().map(|e| e.id).collect();
        let found = match reads {
            None => self.params.nearest_value(p.org_id, &ids, name).await?,
            Some(log) => match self
                .params
                .nearest_value_cached(p.org_id, &ids, name)
                .await?
            {
                (Some(pv), Some(check)) => match self.param_view(p, &chain, &pv).await {
                    Ok(view) => {
                        log.push(check);
                        return Ok(view);
                    }
                    // A cached answer that cannot be served as it stands (its key term
                    // retired since, say) is read again rather than failed.
                    Err(_) => self.params.nearest_value(p.org_id, &ids, name).await?,
                },
                (found, _) => found,
            },
        };
        let Some(pv) = found else {
            return Err(CoreError::not_found("parameter", name));
        };
        self.param_view(p, &chain, &pv).await
    }

    /// A value read through `chain`, opened for `p`.
    async fn param_view(
        &self,
        p: &Principal,
        chain: &[&EnvRow],
        pv: &ParamValue,
    ) -> Result<ParamView, CoreError> {
        if pv.version.is_secret && !p.role.can_read_secrets() {
            return Err(CoreError::Forbidden("your role cannot read secret values"));
        }
        let keys = self
            .k
            .org_keys_covering(p.org_id, pv.ciphertext.iter().map(|c| c.key_term()))
            .await?;
        let env_name = chain
            .iter()
            .find(|e| e.id == pv.param.env_id)
            .map_or("", |e| e.name.as_str());
        self.view(p, &keys, pv, env_name, true)
    }

    /// Every parameter visible in `env`, nearest definition winning, sorted by name.
    /// Secrets are masked unless `reveal` is set and the role allows it.
    pub async fn list_params(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        reveal: bool,
    ) -> Result<Vec<ParamView>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::LIST, AuditTarget::env(project, env));
        let r: Result<Vec<ParamView>, CoreError> =
            async { self.list_params_of(p, project, env, reveal).await }.await;
        self.conclude(pending, r).await
    }

    async fn list_params_of(
        &self,
        p: &Principal,
        project: &str,
        env: &str,
        reveal: bool,
    ) -> Result<Vec<ParamView>, CoreError> {
        let meta = self.projects.project_meta(p, project).await?;
        p.scope.check_env(env)?;
        let chain = meta.chain(env)?;
        let ids: Vec<Uuid> = chain.iter().map(|e| e.id).collect();
        let values = self.params.current_values(p.org_id, &ids).await?;
        let keys = self
            .k
            .org_keys_covering(p.org_id, terms_of(&values))
            .await?;
        let mut out: BTreeMap<String, ParamView> = BTreeMap::new();
        for pv in &values {
            if out.contains_key(&pv.param.name) {
                continue; // a nearer environment already defines it
            }
            let env_name = chain
                .iter()
                .find(|e| e.id == pv.param.env_id)
                .map_or("", |e| e.name.as_str());
            out.insert(
                pv.param.name.clone(),
                self.view(p, &keys, pv, env_name, reveal)?,
            );
        }
        Ok(out.into_values().collect())
    }

    async fn own_param(
        &self,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
    ) -> Result<(uuid::Uuid, coffer_store::ParamRow), CoreError> {
        names::validate("parameter name", name)?;
        let meta = self.projects.project_meta(p, project).await?;
        p.scope.check_env(env)?;
        let env_id = meta.env(env)?.id;
        let row = self
            .params
            .param(p.org_id, env_id, name)
            .await?
            .ok_or_else(|| CoreError::not_found("parameter", name))?;
        Ok((env_id, row))
    }

    pub async fn param_history(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        env: &str,
        name: &str,
    ) -> Result<Vec<ParamHistoryEntry>, CoreError> {
        let mut pending = self.k.begin_for(
            cx,
            p,
            action::HISTORY,
            AuditTarget::param(project, env, name),
        );
        let r: Result<Vec<ParamHistoryEntry>, CoreError> = async {
            let (_, row) = self.own_param(p, project, env, name).await?;
            let mut names: std::collections::HashMap<Uuid, Option<String>> =
                std::collections::HashMap::new();
            let mut out = Vec::new();
            for v in self
                .params
                .param_history(p.org_id, row.id)
                .await?
                .into_iter()
                .rev()
            {
                // One lookup per actor, however many versions they made.
                let actor = match names.get(&v.actor_id) {
                    Some(n) => n.clone(),
                    None => {
                        let n = self.users.user(v.actor_id).await?.map(|u| u.username);
                        names.insert(v.actor_id, n.clone());
                        n
                    }
                };
                out.push(ParamHistoryEntry {
                    param_id: row.id,
                    current: v.version == row.current_version,
                    version: v.version,
                    action: v.action.as_str(),
                    secret: v.is_secret,
                    actor_id: v.actor_id,
                    actor,
                    created_at: v.created_at,
                });
            }
            Ok(out)
        }
        .await;
        if let Ok(Some(first)) = r.as_ref().map(|v| v.first()) {
            pending.ev.target.param_id = Some(first.param_id);
        }
        self.conclude(pending, r).await
    }

    /// Differences between the resolved parameters of two environments.
    pub async fn diff_envs(
        &self,
        cx: &Cx,
        p: &Principal,
        project: &str,
        a: &str,
        b: &str,
        reveal: bool,
    ) -> Result<Vec<DiffEntry>, CoreError> {
        let pending = self
            .k
            .begin_for(cx, p, action::DIFF, AuditTarget::project(project));
        let r: Result<Vec<DiffEntry>, CoreError> = async {
            // Values are compared in full, then masked for output as `list` would mask them.
            let full = Principal {
                role: crate::Role::Owner,
                ..p.clone()
            };
            let la = self.list_params_of(&full, project, a, true).await?;
            let lb = self.list_params_of(&full, project, b, true).await?;
            let mut a_map: BTreeMap<String, ParamView> =
                la.into_iter().map(|v| (v.name.clone(), v)).collect();
            let mut out = Vec::new();
            for vb in lb {
                match a_map.remove(&vb.name) {
                    None => out.push(DiffEntry {
                        name: vb.name.clone(),
                        kind: DiffKind::OnlyInB,
                        a: None,
                        b: Some(vb),
                    }),
                    Some(va) => {
                        let same = match (&va.value, &vb.value) {
                            (Some(x), Some(y)) => coffer_crypto::token::constant_time_eq(
                                x.expose_secret(),
                                y.expose_secret(),
                            ),
                            _ => false,
                        };
                        if !same || va.secret != vb.secret {
                            out.push(DiffEntry {
                                name: vb.name.clone(),
                                kind: DiffKind::Changed,
                                a: Some(va),
                                b: Some(vb),
                            });
                        }
                    }
                }
            }
            out.extend(a_map.into_values().map(|va| DiffEntry {
                name: va.name.clone(),
                kind: DiffKind::OnlyInA,
                a: Some(va),
                b: None,
            }));
            out.sort_by(|x, y| x.name.cmp(&y.name));
            let show_secrets = reveal && p.role.can_read_secrets();
            for e in &mut out {
                for v in [&mut e.a, &mut e.b].into_iter().flatten() {
                    if v.secret && !show_secrets {
                        v.value = None;
                    }
                }
            }
            Ok(out)
        }
        .await;
        self.conclude(pending, r).await
    }
}

/// Credential ids are time-ordered (UUIDv7): the rewrap job walks credentials in id order,
/// and with ids that follow insertion order it reads and rewrites the table's pages in
/// sequence instead of one random page per value. The ids are opaque, and the time they
/// carry is already stored beside them (`param_versions.created_at`).
fn new_credential_id() -> Uuid {
    Uuid::now_v7()
}

impl std::fmt::Debug for Params {
    // The repositories are trait objects without Debug; the caches say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params").finish_non_exhaustive()
    }
}
