use axum::Json;
use axum::extract::State;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use coffer_core::SetParam;

type EnvPath = ApiPath<(String, String)>;
type ParamPath = ApiPath<(String, String, String)>;

/// All parameters visible in an environment (inherited ones included). Secrets are masked
/// unless `reveal=true`.
#[utoipa::path(get, path = "/v1/projects/{project}/envs/{env}/params", operation_id = "list_params", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), RevealQuery),
    responses((status = 200, body = ParamListResponse), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath((project, env)): EnvPath,
    ApiQuery(q): ApiQuery<RevealQuery>,
) -> ApiResult<Json<ParamListResponse>> {
    let v = st
        .coffer
        .params()
        .list_params(&cx, &p, &project, &env, q.reveal)
        .await?;
    Ok(Json(ParamListResponse {
        params: v.into_iter().map(ParamResponse::from).collect(),
    }))
}

/// One parameter's current value, as seen from this environment.
#[utoipa::path(get, path = "/v1/projects/{project}/envs/{env}/params/{name}", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ParamResponse), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiPath((project, env, name)): ParamPath,
) -> ApiResult<Json<ParamResponse>> {
    let v = st
        .coffer
        .params()
        .get_param(&cx, &p, &project, &env, &name)
        .await?;
    Ok(Json(v.into()))
}

/// Set a parameter: creates a new immutable version.
#[utoipa::path(put, path = "/v1/projects/{project}/envs/{env}/params/{name}", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), ("name" = String, Path)), request_body = SetParamRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiPath((project, env, name)): ParamPath,
    ApiJson(req): ApiJson<SetParamRequest>,
) -> ApiResult<Json<WriteResponse>> {
    let value = zeroize::Zeroizing::new(req.value);
    let v = st
        .coffer
        .params()
        .set_param(
            &cx,
            &p,
            &project,
            &env,
            SetParam {
                name: &name,
                value: value.as_bytes(),
                secret: req.secret,
            },
        )
        .await?;
    Ok(Json(WriteResponse {
        name: v.name,
        version: v.version,
        secret: v.secret,
    }))
}

/// Delete a parameter from this environment (history is kept).
#[utoipa::path(delete, path = "/v1/projects/{project}/envs/{env}/params/{name}", operation_id = "delete_param", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = WriteResponse), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiPath((project, env, name)): ParamPath,
) -> ApiResult<Json<WriteResponse>> {
    let v = st
        .coffer
        .params()
        .delete_param(&cx, &p, &project, &env, &name)
        .await?;
    Ok(Json(WriteResponse {
        name,
        version: v.version,
        secret: false,
    }))
}

#[utoipa::path(get, path = "/v1/projects/{project}/envs/{env}/params/{name}/history", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = HistoryResponse), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiPath((project, env, name)): ParamPath,
) -> ApiResult<Json<HistoryResponse>> {
    let v = st
        .coffer
        .params()
        .param_history(&cx, &p, &project, &env, &name)
        .await?;
    Ok(Json(HistoryResponse {
        versions: v
            .into_iter()
            .map(|h| HistoryEntry {
                version: h.version,
                action: h.action.to_owned(),
                secret: h.secret,
                actor_id: h.actor_id,
                actor: h.actor,
                created_at: ts(h.created_at),
                current: h.current,
            })
            .collect(),
    }))
}

/// Make an earlier version's value current again (as a new version).
#[utoipa::path(post, path = "/v1/projects/{project}/envs/{env}/params/{name}/rollback", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), ("env" = String, Path), ("name" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rollback(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiPath((project, env, name)): ParamPath,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> ApiResult<Json<WriteResponse>> {
    let v = st
        .coffer
        .params()
        .rollback_param(&cx, &p, &project, &env, &name, req.version)
        .await?;
    Ok(Json(WriteResponse {
        name: v.name,
        version: v.version,
        secret: v.secret,
    }))
}

/// Compare the resolved parameters of two environments.
#[utoipa::path(get, path = "/v1/projects/{project}/diff", tag = "params", security(("bearer" = [])),
    params(("project" = String, Path), DiffQuery),
    responses((status = 200, body = DiffResponse), (status = 404, body = ErrorBody)))]
pub async fn diff(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<Json<DiffResponse>> {
    let entries = st
        .coffer
        .params()
        .diff_envs(&cx, &p, &project, &q.a, &q.b, q.reveal)
        .await?;
    Ok(Json(DiffResponse {
        a: q.a,
        b: q.b,
        entries: entries
            .into_iter()
            .map(|e| DiffEntryDto {
                name: e.name,
                kind: e.kind.into(),
                a: e.a.map(Into::into),
                b: e.b.map(Into::into),
            })
            .collect(),
    }))
}
