use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use coffer_core::apikeys::{ApiKeyView, NewApiKey};
use uuid::Uuid;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::routes::orgs::parse_role;

fn dto(k: ApiKeyView) -> ApiKeyDto {
    ApiKeyDto {
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        role: k.role.as_str().to_owned(),
        owner_id: k.owner,
        read_only: k.read_only,
        projects: k.projects,
        envs: k.envs,
        created_at: ts(k.created_at),
        expires_at: ts(k.expires_at),
        last_used_at: k.last_used_at.map(ts),
        revoked_at: k.revoked_at.map(ts),
    }
}

/// Create an API key. The key is in this response only.
#[utoipa::path(post, path = "/v1/org/api-keys", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKeyResponse), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKeyResponse>)> {
    let ttl = match &req.expires_in {
        None => Duration::from_secs(90 * 86_400),
        Some(s) => humantime::parse_duration(s)
            .map_err(|_| ApiError::bad_request("expires_in must be a duration like 90d or 12h"))?,
    };
    let created = st
        .coffer
        .create_api_key(
            &cx,
            &p,
            NewApiKey {
                name: req.name,
                role: parse_role(&req.role)?,
                read_only: req.read_only,
                projects: req.projects,
                envs: req.envs,
                ttl,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyResponse {
            key: created.key.expose_secret().to_owned(),
            api_key: dto(created.view),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/org/api-keys", tag = "api-keys", security(("bearer" = [])), responses((status = 200, body = [ApiKeyDto])))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ApiKeyDto>>> {
    Ok(Json(
        st.coffer
            .list_api_keys(&cx, &p)
            .await?
            .into_iter()
            .map(dto)
            .collect(),
    ))
}

/// Revoke an API key; it and its access tokens stop working at once.
#[utoipa::path(delete, path = "/v1/org/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    st.coffer.revoke_api_key(&cx, &p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
