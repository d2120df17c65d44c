use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use coffer_core::{LoginOutcome, Principal};
use uuid::Uuid;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Auth, AuthAnyStage, Bearer, PeerAddr};

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

pub(crate) fn login_response(out: LoginOutcome) -> LoginResponse {
    match out {
        LoginOutcome::Session(r) => LoginResponse {
            token: Some(r.token.expose_secret().to_owned()),
            mfa_enrollment_required: r.principal.mfa_enrollment_pending,
            whoami: Some(whoami_dto(r.principal)),
            ..Default::default()
        },
        LoginOutcome::MfaRequired { mfa_token, .. } => LoginResponse {
            mfa_required: true,
            mfa_token: Some(mfa_token.expose_secret().to_owned()),
            ..Default::default()
        },
    }
}

/// Log in with a username (or e-mail address) and password. The same 401 for every
/// failure: unknown user, wrong password, locked account.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    st.limiter.check(&addr)?;
    let r = st
        .coffer
        .identity()
        .login(
            &cx,
            &req.username,
            &req.password,
            req.org.as_deref(),
            &addr.label(),
        )
        .await;
    Ok(Json(login_response(r?)))
}

/// Second step of a login: a TOTP or recovery code.
#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "auth", request_body = MfaVerifyRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
pub async fn mfa_verify(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    ApiJson(req): ApiJson<MfaVerifyRequest>,
) -> ApiResult<Json<LoginResponse>> {
    st.limiter.check(&addr)?;
    let out = st
        .coffer
        .identity()
        .verify_mfa_login(&cx, &req.mfa_token.0, &req.code.0, &addr.label())
        .await?;
    Ok(Json(login_response(out)))
}

/// Log in with a JWT from a configured OpenID provider.
#[utoipa::path(post, path = "/v1/auth/oidc", tag = "auth", request_body = OidcLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
pub async fn oidc(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    ApiJson(req): ApiJson<OidcLoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    st.limiter.check(&addr)?;
    let out = st
        .coffer
        .identity()
        .login_oidc(
            &cx,
            &req.token.0,
            &*st.jwks,
            req.org.as_deref(),
            &addr.label(),
        )
        .await?;
    Ok(Json(login_response(out)))
}

/// Exchange an API key for a short-lived access token.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub async fn token(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    addr: PeerAddr,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    st.limiter.check(&addr)?;
    let t = st
        .coffer
        .identity()
        .exchange_api_key(&cx, &req.api_key.0, &addr.label())
        .await?;
    Ok(Json(TokenResponse {
        access_token: t.token.expose_secret().to_owned(),
        expires_at: ts(t.expires_at),
    }))
}

/// End the current session.
/// Idempotent: a token that is already invalid (expired, revoked, unknown) or none at all is
/// answered 204 too, so the document marks the credential optional.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security((), ("bearer" = [])), responses((status = 204)))]
pub async fn logout(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Bearer(token): Bearer,
) -> ApiResult<StatusCode> {
    st.coffer.identity().logout(&cx, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = WhoamiResponse), (status = 401, body = ErrorBody)))]
pub async fn whoami(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    AuthAnyStage(p): AuthAnyStage,
) -> ApiResult<Json<WhoamiResponse>> {
    Ok(Json(whoami_dto(
        st.coffer.identity().whoami(&cx, &p).await?,
    )))
}

/// Change your password (needs the current one); ends your other sessions.
#[utoipa::path(post, path = "/v1/auth/password", tag = "account", security(("bearer" = [])), request_body = PasswordChangeRequest,
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn change_password(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<PasswordChangeRequest>,
) -> ApiResult<StatusCode> {
    st.coffer
        .identity()
        .change_password(&cx, &p, &req.current_password.0, &req.new_password.0)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set or clear your e-mail address (where notifications go).
#[utoipa::path(put, path = "/v1/auth/email", tag = "account", security(("bearer" = [])), request_body = EmailRequest,
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 409, description = "another account has that address (already_exists)", body = ErrorBody)))]
pub async fn set_email(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<EmailRequest>,
) -> ApiResult<StatusCode> {
    st.coffer
        .identity()
        .set_email(&cx, &p, req.email.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Your sessions.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = [SessionDto])))]
pub async fn sessions(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<SessionDto>>> {
    let list = st.coffer.identity().list_sessions(&cx, &p).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SessionDto {
                id: s.id,
                org_id: s.org_id,
                method: s.method,
                address: s.address,
                created_at: ts(s.created_at),
                last_seen_at: ts(s.last_seen_at),
                expires_at: ts(s.expires_at),
                current: s.current,
            })
            .collect(),
    ))
}

/// End one of your sessions.
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_session(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    st.coffer.identity().revoke_session(&cx, &p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start TOTP enrolment (needs your password).
#[utoipa::path(post, path = "/v1/auth/mfa/enroll", tag = "account", security(("bearer" = [])), request_body = PasswordRequest,
    responses((status = 200, body = MfaEnrollResponse)))]
pub async fn mfa_enroll(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    AuthAnyStage(p): AuthAnyStage,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> ApiResult<Json<MfaEnrollResponse>> {
    let e = st
        .coffer
        .identity()
        .mfa_enroll_start(&cx, &p, &req.password.0)
        .await?;
    Ok(Json(MfaEnrollResponse {
        otpauth_uri: e.otpauth_uri.expose_secret().to_owned(),
        secret: e.secret_base32.expose_secret().to_owned(),
    }))
}

/// Confirm TOTP enrolment with a current code; returns one-time recovery codes.
#[utoipa::path(post, path = "/v1/auth/mfa/confirm", tag = "account", security(("bearer" = [])), request_body = MfaCodeRequest,
    responses((status = 200, body = RecoveryCodesResponse)))]
pub async fn mfa_confirm(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    AuthAnyStage(p): AuthAnyStage,
    ApiJson(req): ApiJson<MfaCodeRequest>,
) -> ApiResult<Json<RecoveryCodesResponse>> {
    let codes = st
        .coffer
        .identity()
        .mfa_enroll_confirm(&cx, &p, &req.code.0)
        .await?;
    Ok(Json(RecoveryCodesResponse {
        recovery_codes: codes,
    }))
}

/// Turn TOTP off (needs your password and a code).
#[utoipa::path(post, path = "/v1/auth/mfa/disable", tag = "account", security(("bearer" = [])), request_body = MfaDisableRequest,
    responses((status = 204)))]
pub async fn mfa_disable(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<MfaDisableRequest>,
) -> ApiResult<StatusCode> {
    st.coffer
        .identity()
        .mfa_disable(&cx, &p, &req.password.0, &req.code.0)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
