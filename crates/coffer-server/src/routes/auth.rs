use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use coffer_core::Principal;

use crate::AppState;
use crate::dto::*;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, Auth, Bearer};

pub fn whoami_dto(p: Principal) -> WhoamiResponse {
    WhoamiResponse {
        user_id: p.user_id,
        username: p.username,
        org_id: p.org_id,
        org: p.org_name,
        role: p.role.as_str().to_owned(),
        session_expires_at: ts(p.expires_at),
    }
}

/// Log in with a username and password. The same 401 for every failure.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
pub async fn login(
    State(st): State<AppState>,
    slot: crate::audit::AuditSlot,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let r = match st.coffer.login(&req.username, &req.password).await {
        Ok(r) => r,
        Err(e) => {
            // Users sometimes type a password into the username field: record only an HMAC.
            slot.add_hmac(
                "username",
                st.coffer
                    .audit_hmac(None, req.username.trim().to_lowercase().as_bytes()),
            );
            return Err(e.into());
        }
    };
    slot.set_principal(&r.principal, "password");
    Ok(Json(LoginResponse {
        token: r.token.expose_secret().to_owned(),
        whoami: whoami_dto(r.principal),
    }))
}

/// End the current session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses((status = 204)))]
pub async fn logout(
    State(st): State<AppState>,
    slot: crate::audit::AuditSlot,
    Bearer(token): Bearer,
) -> ApiResult<StatusCode> {
    // Attribute the event to the session's user when the token is still valid; logging out
    // with a dead token is harmless and stays anonymous.
    if let Ok(p) = st.coffer.authenticate(&token).await {
        slot.set_principal(&p, "session");
        slot.add_hmac(
            "session",
            st.coffer.audit_hmac(Some(p.org_id), token.as_bytes()),
        );
    }
    st.coffer.logout(&token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = WhoamiResponse), (status = 401, body = ErrorBody)))]
pub async fn whoami(Auth(p): Auth) -> Json<WhoamiResponse> {
    Json(whoami_dto(p))
}
