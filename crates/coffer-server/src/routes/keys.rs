//! The organisation's tenant key: status and rotation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::{AttachKeyRequest, KeyStatusDto};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth};

/// Key terms, values per term and rotation progress (Owners and Admins).
#[utoipa::path(get, path = "/v1/org/keys", tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = KeyStatusDto), (status = 403, body = ErrorBody)))]
pub async fn status(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<KeyStatusDto>> {
    Ok(Json(st.coffer.keys().key_status(&cx, &p).await?.into()))
}

/// Rotate the organisation's key: a new term seals new values at once, and a background
/// job rewraps stored values to it (Owners and Admins).
#[utoipa::path(post, path = "/v1/org/keys/rotate", tag = "keys", security(("bearer" = [])),
    responses((status = 202, body = KeyStatusDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rotate(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<(StatusCode, Json<KeyStatusDto>)> {
    let s = st.coffer.keys().rotate_key(&cx, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(s.into())))
}

/// Attach the organisation's own key (bring your own key): new terms are wrapped by it, and
/// a rotation starts that moves every value to such a term (Owners, in person).
#[utoipa::path(put, path = "/v1/org/keys/external", tag = "keys", security(("bearer" = [])), request_body = AttachKeyRequest,
    responses((status = 202, body = KeyStatusDto), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "attached by another organisation (already_exists), or no service for it on this server (not_configured)", body = ErrorBody)))]
pub async fn attach_external(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<AttachKeyRequest>,
) -> ApiResult<(StatusCode, Json<KeyStatusDto>)> {
    let s = st
        .coffer
        .keys()
        .attach_external_key(&cx, &p, &req.key)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(s.into())))
}

/// Go back to the root key: a rotation moves every value to a root-wrapped term (Owners, in
/// person).
#[utoipa::path(delete, path = "/v1/org/keys/external", tag = "keys", security(("bearer" = [])),
    responses((status = 202, body = KeyStatusDto), (status = 403, body = ErrorBody),
        (status = 404, description = "no external key is attached (not_found)", body = ErrorBody)))]
pub async fn detach_external(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<(StatusCode, Json<KeyStatusDto>)> {
    let s = st.coffer.keys().detach_external_key(&cx, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(s.into())))
}
