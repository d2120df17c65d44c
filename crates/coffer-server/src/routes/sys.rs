use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use coffer_core::{SealStatus, UnsealOutcome};

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::extract::{ApiJson, Auth};

fn status_dto(s: SealStatus) -> SealStatusResponse {
    SealStatusResponse {
        initialized: s.initialized,
        sealed: s.sealed,
        seal_type: s.seal_type.map(str::to_owned),
        shares: s.shares,
        threshold: s.threshold,
        progress: s.progress,
        version: s.version.to_owned(),
    }
}

/// Health for load balancers: 200 unsealed, 503 sealed, 501 not initialised.
#[utoipa::path(get, path = "/v1/sys/health", tag = "sys",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse), (status = 501, body = HealthResponse)))]
pub async fn health(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let s = st.coffer.seal_status().await?;
    let code = if !s.initialized {
        StatusCode::NOT_IMPLEMENTED
    } else if s.sealed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let a = st.coffer.audit().audit_health();
    let audit = AuditHealth {
        events: a.events,
        store_failures: a.store_failures,
        file_ok: a.file,
        file_failures: a.file_failures,
    };
    Ok((
        code,
        Json(HealthResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            version: s.version.to_owned(),
            audit,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/sys/seal-status", tag = "sys", responses((status = 200, body = SealStatusResponse)))]
pub async fn seal_status(State(st): State<AppState>) -> ApiResult<Json<SealStatusResponse>> {
    Ok(Json(status_dto(st.coffer.seal_status().await?)))
}

/// Initialise a new server. Returns the shares (recovery shares with a KMS or HSM seal, which
/// also unseals the server) and the first account, once.
#[utoipa::path(post, path = "/v1/sys/init", tag = "sys", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn init(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    ApiJson(req): ApiJson<InitRequest>,
) -> ApiResult<Json<InitResponse>> {
    let r = st.coffer.init(&cx, req.shares, req.threshold).await?;
    Ok(Json(InitResponse {
        shares: r.shares.iter().map(|s| s.to_string()).collect(),
        threshold: r.threshold,
        unsealed: r.unsealed,
        bootstrap: BootstrapAccount {
            org: r.bootstrap.org_name,
            username: r.bootstrap.username,
            password: r.bootstrap.password.expose_secret().to_owned(),
        },
    }))
}

/// Submit one unseal share (or reset progress).
#[utoipa::path(post, path = "/v1/sys/unseal", tag = "sys", request_body = UnsealRequest,
    responses((status = 200, body = SealStatusResponse), (status = 400, body = ErrorBody),
        (status = 409, description = "already unsealed (already_unsealed), or not a Shamir seal (wrong_seal_type)", body = ErrorBody)))]
pub async fn unseal(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    ApiJson(req): ApiJson<UnsealRequest>,
) -> ApiResult<Json<SealStatusResponse>> {
    if req.reset {
        st.coffer.reset_unseal_by(&cx).await?;
    } else {
        let share = req
            .share
            .ok_or_else(|| ApiError::bad_request("provide `share` or `reset: true`"))?;
        if st.coffer.unseal(&cx, &share).await? == UnsealOutcome::WrongShares {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "the submitted shares do not reconstruct the root key; progress was reset, start again",
            ));
        }
    }
    Ok(Json(status_dto(st.coffer.seal_status().await?)))
}

/// Seal the server: wipe the root key and all tenant keys from memory. Owners only.
#[utoipa::path(post, path = "/v1/sys/seal", tag = "sys", security(("bearer" = [])),
    responses((status = 200, body = SealStatusResponse), (status = 403, body = ErrorBody)))]
pub async fn seal(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<SealStatusResponse>> {
    st.coffer.seal_by(&cx, &p).await?;
    Ok(Json(status_dto(st.coffer.seal_status().await?)))
}

/// Prometheus text metrics.
#[utoipa::path(get, path = "/v1/sys/metrics", tag = "sys", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let a = st.coffer.audit().audit_health();
    let (confirmed, stale) = st.coffer.audit().cached_read_counts();
    let sealed = st
        .coffer
        .seal_status()
        .await
        .map(|s| s.sealed)
        .unwrap_or(true);
    let body = format!(
        "# TYPE coffer_sealed gauge\ncoffer_sealed {}\n\
         # TYPE coffer_audit_events_total counter\ncoffer_audit_events_total {}\n\
         # TYPE coffer_audit_store_failures_total counter\ncoffer_audit_store_failures_total {}\n\
         # TYPE coffer_audit_file_failures_total counter\ncoffer_audit_file_failures_total {}\n\
         # TYPE coffer_audit_file_sink_up gauge\ncoffer_audit_file_sink_up {}\n\
         # TYPE coffer_cached_reads_confirmed_total counter\ncoffer_cached_reads_confirmed_total {}\n\
         # TYPE coffer_cached_reads_stale_total counter\ncoffer_cached_reads_stale_total {}\n\
         # TYPE coffer_audit_compact_fallbacks_total counter\ncoffer_audit_compact_fallbacks_total {}\n",
        u8::from(sealed),
        a.events,
        a.store_failures,
        a.file_failures,
        a.file.map_or(-1, i8::from),
        confirmed,
        stale,
        st.coffer.audit().compact_fallbacks(),
    );
    // What the audit log holds in the database and what is archived (a few small reads;
    // left out if the database does not answer).
    let mut body = body;
    let settings = coffer_core::audit::ArchiveSettings::default();
    if let Ok(s) = st.coffer.audit().archive_status(false, &settings).await {
        body.push_str(&format!(
            "# TYPE coffer_audit_live_events gauge\ncoffer_audit_live_events {}\n\
             # TYPE coffer_audit_bytes gauge\ncoffer_audit_bytes {}\n\
             # TYPE coffer_audit_archived_events gauge\ncoffer_audit_archived_events {}\n\
             # TYPE coffer_audit_last_archive_timestamp_seconds gauge\ncoffer_audit_last_archive_timestamp_seconds {}\n\
             # TYPE coffer_audit_archive_failures_total counter\ncoffer_audit_archive_failures_total {}\n\
             # TYPE coffer_audit_archive_next_run_timestamp_seconds gauge\ncoffer_audit_archive_next_run_timestamp_seconds {}\n",
            s.live_events,
            s.bytes,
            s.archived_events,
            s.last_archive_ms.map_or(0, |m| m / 1000),
            s.archive_failures,
            s.next_run_ms.map_or(0, |m| m / 1000),
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

/// Replace the root key and issue new unseal shares (new threshold allowed). Needs an Owner's
/// session and a quorum of the current shares. Everything the old root key sealed is
/// resealed; stored values are not touched. Other nodes seal themselves and must be
/// unsealed with the new shares.
#[utoipa::path(post, path = "/v1/sys/rekey", tag = "sys", security(("bearer" = [])), request_body = RekeyRequest,
    responses((status = 200, body = RekeyResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn rekey(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<RekeyRequest>,
) -> ApiResult<Json<RekeyResponse>> {
    let r = st
        .coffer
        .rekey(&cx, &p, &req.current_shares, req.shares, req.threshold)
        .await?;
    Ok(Json(RekeyResponse {
        shares: r.shares.iter().map(|s| s.to_string()).collect(),
        threshold: r.threshold,
    }))
}

/// Move to the seal in the server's configuration (Shamir, AWS KMS or PKCS#11) with a
/// quorum of the current shares. The root key stays; the server is unsealed afterwards.
#[utoipa::path(post, path = "/v1/sys/migrate-seal", tag = "sys", request_body = MigrateSealRequest,
    responses((status = 200, body = SealStatusResponse), (status = 400, body = ErrorBody),
        (status = 409, description = "nothing to migrate for this server's seal (wrong_seal_type)", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn migrate_seal(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    ApiJson(req): ApiJson<MigrateSealRequest>,
) -> ApiResult<Json<SealStatusResponse>> {
    st.coffer.migrate_seal(&cx, &req.shares).await?;
    Ok(Json(status_dto(st.coffer.seal_status().await?)))
}
