//! The organisation's tenant key: status and rotation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::dto::KeyStatusDto;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Auth;

/// Key terms, values per term and rotation progress (Owners and Admins).
#[utoipa::path(get, path = "/v1/org/keys", tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = KeyStatusDto), (status = 403, body = ErrorBody)))]
pub async fn status(State(st): State<AppState>, Auth(p): Auth) -> ApiResult<Json<KeyStatusDto>> {
    Ok(Json(st.coffer.key_status(&p).await?.into()))
}

/// Rotate the organisation's key: a new term seals new values at once, and a background
/// job rewraps stored values to it (Owners and Admins).
#[utoipa::path(post, path = "/v1/org/keys/rotate", tag = "keys", security(("bearer" = [])),
    responses((status = 202, body = KeyStatusDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rotate(
    State(st): State<AppState>,
    Auth(p): Auth,
) -> ApiResult<(StatusCode, Json<KeyStatusDto>)> {
    let s = st.coffer.rotate_key(&p).await?;
    Ok((StatusCode::ACCEPTED, Json(s.into())))
}
