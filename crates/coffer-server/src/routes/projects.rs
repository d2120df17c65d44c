use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Auth};

#[utoipa::path(get, path = "/v1/projects", operation_id = "list_projects", tag = "projects", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProjectResponse>)))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ProjectResponse>>> {
    let v = st.coffer.projects().list_projects(&cx, &p).await?;
    Ok(Json(
        v.into_iter()
            .map(|x| ProjectResponse {
                id: x.id,
                name: x.name,
                created_at: ts(x.created_at),
            })
            .collect(),
    ))
}

/// Create a project; it starts with one environment, `default`.
#[utoipa::path(post, path = "/v1/projects", operation_id = "create_project", tag = "projects", security(("bearer" = [])), request_body = CreateProjectRequest,
    responses((status = 201, body = ProjectResponse), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> ApiResult<(StatusCode, Json<ProjectResponse>)> {
    let x = st
        .coffer
        .projects()
        .create_project(&cx, &p, &req.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectResponse {
            id: x.id,
            name: x.name,
            created_at: ts(x.created_at),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/envs", tag = "projects", security(("bearer" = [])),
    params(("project" = String, Path)), responses((status = 200, body = Vec<EnvResponse>), (status = 404, body = ErrorBody)))]
pub async fn list_envs(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<Json<Vec<EnvResponse>>> {
    let v = st.coffer.projects().list_envs(&cx, &p, &project).await?;
    Ok(Json(
        v.into_iter()
            .map(|e| EnvResponse {
                id: e.id,
                name: e.name,
                parent: e.parent,
                created_at: ts(e.created_at),
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/projects/{project}/envs", tag = "projects", security(("bearer" = [])),
    params(("project" = String, Path)), request_body = CreateEnvRequest,
    responses((status = 201, body = EnvResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_env(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<CreateEnvRequest>,
) -> ApiResult<(StatusCode, Json<EnvResponse>)> {
    let e = st
        .coffer
        .projects()
        .create_env(&cx, &p, &project, &req.name, req.parent.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnvResponse {
            id: e.id,
            name: e.name,
            parent: e.parent,
            created_at: ts(e.created_at),
        }),
    ))
}
