use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use coffer_core::Role;
use coffer_core::members::InvitationView;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Auth, Bearer, PeerAddr};

pub(crate) fn parse_role(s: &str) -> Result<Role, ApiError> {
    Role::parse(&s.to_ascii_lowercase())
        .ok_or_else(|| ApiError::bad_request("role must be owner, admin, contributor or viewer"))
}

fn invitation_dto(v: InvitationView) -> InvitationDto {
    InvitationDto {
        id: v.id,
        email: v.email,
        role: v.role.as_str().to_owned(),
        created_at: ts(v.created_at),
        expires_at: ts(v.expires_at),
        accepted_at: v.accepted_at.map(ts),
    }
}

/// The organisations you belong to.
#[utoipa::path(get, path = "/v1/orgs", operation_id = "list_orgs", tag = "orgs", security(("bearer" = [])), responses((status = 200, body = [OrgDto])))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<OrgDto>>> {
    Ok(Json(
        st.coffer
            .identity()
            .my_orgs(&cx, &p)
            .await?
            .into_iter()
            .map(|o| OrgDto {
                id: o.org_id,
                name: o.name,
                role: o.role.as_str().to_owned(),
                active: o.active,
            })
            .collect(),
    ))
}

/// Create an organisation; you become its Owner.
#[utoipa::path(post, path = "/v1/orgs", operation_id = "create_org", tag = "orgs", security(("bearer" = [])), request_body = CreateOrgRequest,
    responses((status = 201, body = OrgDto), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> ApiResult<(StatusCode, Json<OrgDto>)> {
    let id = st
        .coffer
        .identity()
        .create_org_as(&cx, &p, &req.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(OrgDto {
            id,
            name: req.name,
            role: Role::Owner.as_str().to_owned(),
            active: false,
        }),
    ))
}

/// Switch the active organisation: returns a new token bound to it; the old one ends.
#[utoipa::path(post, path = "/v1/auth/switch", tag = "orgs", security(("bearer" = [])), request_body = SwitchOrgRequest,
    responses((status = 200, body = LoginResponse), (status = 404, body = ErrorBody)))]
pub async fn switch(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    Auth(p): Auth,
    Bearer(token): Bearer,
    ApiJson(req): ApiJson<SwitchOrgRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let r = st
        .coffer
        .identity()
        .switch_org(&cx, &p, &token, &req.org, &addr.label())
        .await?;
    Ok(Json(crate::routes::auth::login_response(
        coffer_core::LoginOutcome::Session(r),
    )))
}

#[utoipa::path(get, path = "/v1/org/members", tag = "orgs", security(("bearer" = [])), responses((status = 200, body = [MemberDto])))]
pub async fn members(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<MemberDto>>> {
    Ok(Json(
        st.coffer
            .identity()
            .members(&cx, &p)
            .await?
            .into_iter()
            .map(|m| MemberDto {
                user_id: m.user_id,
                username: m.username,
                email: m.email,
                role: m.role.as_str().to_owned(),
                mfa_enabled: m.mfa_enabled,
                joined_at: ts(m.joined_at),
            })
            .collect(),
    ))
}

/// Change a member's role.
#[utoipa::path(put, path = "/v1/org/members/{username}", tag = "orgs", security(("bearer" = [])), request_body = SetRoleRequest,
    params(("username" = String, Path, min_length = 1, max_length = 320, description = "the member's username or e-mail address")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_role(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<SetRoleRequest>,
) -> ApiResult<StatusCode> {
    let role = parse_role(&req.role)?;
    st.coffer
        .identity()
        .set_member_role(&cx, &p, &username, role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (their sessions and API keys here end too).
#[utoipa::path(delete, path = "/v1/org/members/{username}", tag = "orgs", security(("bearer" = [])),
    params(("username" = String, Path, min_length = 1, max_length = 320, description = "the member's username or e-mail address")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.coffer
        .identity()
        .remove_member(&cx, &p, &username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invite someone by e-mail.
#[utoipa::path(post, path = "/v1/org/invitations", tag = "orgs", security(("bearer" = [])), request_body = InviteRequest,
    responses((status = 201, body = InviteResponse), (status = 403, body = ErrorBody)))]
pub async fn invite(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<InviteRequest>,
) -> ApiResult<(StatusCode, Json<InviteResponse>)> {
    let role = parse_role(&req.role)?;
    let inv = st
        .coffer
        .identity()
        .invite(&cx, &p, &req.email, role)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(InviteResponse {
            invitation: invitation_dto(inv.view),
            token: inv.token.map(|t| t.expose_secret().to_owned()),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/org/invitations", tag = "orgs", security(("bearer" = [])), responses((status = 200, body = [InvitationDto])))]
pub async fn invitations(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<InvitationDto>>> {
    Ok(Json(
        st.coffer
            .identity()
            .list_invitations(&cx, &p)
            .await?
            .into_iter()
            .map(invitation_dto)
            .collect(),
    ))
}

/// Accept an invitation with its one-time token (no login needed).
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "orgs", request_body = AcceptInvitationRequest,
    responses((status = 200, body = AcceptInvitationResponse), (status = 400, body = ErrorBody),
        (status = 401, description = "the invited address has an account and the password is not its password (bad_credentials)", body = ErrorBody),
        (status = 404, description = "the token is unknown, used or expired (not_found)", body = ErrorBody),
        (status = 409, description = "a newcomer's username is taken (already_exists)", body = ErrorBody)))]
pub async fn accept(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    ApiJson(req): ApiJson<AcceptInvitationRequest>,
) -> ApiResult<Json<AcceptInvitationResponse>> {
    st.limiter.check(&addr)?;
    let user_id = st
        .coffer
        .identity()
        .accept_invitation(&cx, &req.token.0, req.username.as_deref(), &req.password.0)
        .await?;
    Ok(Json(AcceptInvitationResponse { user_id }))
}

#[utoipa::path(get, path = "/v1/org/settings", tag = "orgs", security(("bearer" = [])), responses((status = 200, body = OrgSettingsDto)))]
pub async fn settings(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<OrgSettingsDto>> {
    let s = st.coffer.identity().org_settings(&cx, &p).await?;
    Ok(Json(OrgSettingsDto {
        require_mfa: s.require_mfa,
    }))
}

/// Change organisation settings (Owners and Admins).
#[utoipa::path(put, path = "/v1/org/settings", tag = "orgs", security(("bearer" = [])), request_body = OrgSettingsDto,
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn update_settings(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<OrgSettingsDto>,
) -> ApiResult<StatusCode> {
    st.coffer
        .identity()
        .set_org_require_mfa(&cx, &p, req.require_mfa)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete the organisation of this session (Owners, in person). Its keys are destroyed
/// first; its values can never be decrypted again. The audit chain stays.
#[utoipa::path(delete, path = "/v1/org", operation_id = "delete_org", tag = "orgs", security(("bearer" = [])), request_body = DeleteOrgRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<DeleteOrgRequest>,
) -> ApiResult<StatusCode> {
    st.coffer.delete_org(&cx, &p, &req.confirm).await?;
    Ok(StatusCode::NO_CONTENT)
}
