use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_core::Principal;
use coffer_core::audit::AuditFilter;
use coffer_core::audit::{EXPORT_FORMAT, ExportLine};

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth};

/// An RFC 3339 time (any offset, any year) in milliseconds since the epoch.
fn parse_time(field: &str, v: Option<&str>) -> ApiResult<Option<i64>> {
    use time::format_description::well_known::Rfc3339;
    v.map(|s| {
        time::OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{field} must be an RFC 3339 time like 2026-01-31T12:00:00Z"
                ))
            })
    })
    .transpose()
}

fn decode_cursor(c: Option<&str>) -> ApiResult<u64> {
    c.map(|c| {
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| ApiError::bad_request("invalid cursor"))
    })
    .transpose()
    .map(Option::unwrap_or_default)
}

/// List the organisation's audit events, oldest first, with filters (Owners and Admins).
#[utoipa::path(get, path = "/v1/audit/events", operation_id = "list_audit_events", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditListResponse), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditListResponse>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=coffer_core::audit::PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {}",
            coffer_core::audit::PAGE
        )));
    }
    if let Some(o) = q.outcome.as_deref()
        && !matches!(o, "success" | "denied" | "failure")
    {
        return Err(ApiError::bad_request(
            "outcome must be success, denied or failure",
        ));
    }
    let f = AuditFilter {
        from: parse_time("from", q.from.as_deref())?,
        to: parse_time("to", q.to.as_deref())?,
        action: q.action,
        actor_id: q.actor,
        outcome: q.outcome,
        target: q.target,
        after_seq: decode_cursor(q.cursor.as_deref())?,
        limit,
    };
    let events = st.coffer.audit().audit_list(&cx, &p, f).await?;
    let next_cursor = (events.len() == limit as usize)
        .then(|| {
            events
                .last()
                .map(|e| URL_SAFE_NO_PAD.encode(e.seq.to_be_bytes()))
        })
        .flatten();
    Ok(Json(AuditListResponse {
        events,
        next_cursor,
    }))
}

/// Record a customer event in the organisation's chain, marked as customer-supplied.
#[utoipa::path(post, path = "/v1/audit/events", tag = "audit", security(("bearer" = [])), request_body = CustomerEventRequest,
    responses((status = 201, body = CustomerEventResponse), (status = 400, body = ErrorBody)))]
pub async fn log(
    State(st): State<AppState>,
    Auth(p): Auth,
    CxOf(cx): CxOf,
    ApiJson(req): ApiJson<CustomerEventRequest>,
) -> ApiResult<(StatusCode, Json<CustomerEventResponse>)> {
    st.coffer
        .audit()
        .audit_log(&cx, &p, &req.action, req.detail)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CustomerEventResponse {
            action: format!("customer.{}", req.action),
            recorded: true,
        }),
    ))
}

/// Verify the organisation's chain and checkpoints.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
pub async fn verify(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<serde_json::Value>> {
    let report = st.coffer.audit().audit_verify(&cx, &p).await?;
    let key = st.coffer.audit().audit_public_key().await?;
    let mut v = serde_json::to_value(report).map_err(|_| ApiError::bad_request("report"))?;
    v["public_key"] = serde_json::json!(key);
    Ok(Json(v))
}

/// Sign the current end of the organisation's chain now.
#[utoipa::path(post, path = "/v1/audit/checkpoints", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
pub async fn checkpoint(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<serde_json::Value>> {
    let c = st.coffer.audit().audit_checkpoint_own(&cx, &p).await?;
    Ok(Json(serde_json::json!({ "checkpoint": c })))
}

enum Phase {
    Header,
    Events(u64, bool),
    Checkpoints,
    Done,
}

struct ExportState {
    st: AppState,
    p: Principal,
    json: bool,
    from: Option<i64>,
    to: Option<i64>,
    phase: Phase,
    /// First and last exported sequence numbers: only checkpoints inside are exported (of
    /// a whole export: every checkpoint from the first, so that one beyond the last event
    /// shows the end was cut off).
    range: Option<(u64, u64)>,
    /// The checkpoints and signed head, read before the events: whatever is appended
    /// meanwhile is exported too, so a checkpoint past the last event is evidence.
    points: Vec<coffer_core::audit::CheckpointRow>,
}

fn line(v: &ExportLine) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

async fn next_chunk(mut s: ExportState) -> Option<(Result<Bytes, std::io::Error>, ExportState)> {
    let sep = if s.json { "" } else { "\n" };
    let chunk = match s.phase {
        Phase::Header => {
            let key = match s.st.coffer.audit().audit_public_key().await {
                Ok(k) => k,
                Err(e) => {
                    return Some((
                        Err(std::io::Error::other(e.to_string())),
                        ExportState {
                            phase: Phase::Done,
                            ..s
                        },
                    ));
                }
            };
            let h = line(&ExportLine::Header {
                format: EXPORT_FORMAT.into(),
                org_id: s.p.org_id,
                public_key: key,
                exported_at: crate::dto::ts(coffer_core::audit::AuditEvent::now("x").time_ms),
            });
            s.phase = Phase::Events(0, true);
            if s.json {
                format!("{{\"header\":{h},\"events\":[")
            } else {
                format!("{h}\n")
            }
        }
        Phase::Events(after, first) => {
            let rows = match s
                .st
                .coffer
                .audit()
                .audit_export_page(&s.p, s.from, s.to, after)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed mid-stream");
                    return Some((
                        Err(std::io::Error::other("export failed")),
                        ExportState {
                            phase: Phase::Done,
                            ..s
                        },
                    ));
                }
            };
            let Some(last) = rows.last().map(|r| r.seq) else {
                s.phase = Phase::Checkpoints;
                return Some((
                    Ok(Bytes::from(if s.json { "],\"checkpoints\":[" } else { "" })),
                    s,
                ));
            };
            let mut out = String::new();
            for (i, r) in rows.iter().enumerate() {
                if s.json && !(first && i == 0) {
                    out.push(',');
                }
                out.push_str(&line(&ExportLine::Event {
                    seq: r.seq,
                    prev_hash: hex::encode(r.prev_hash),
                    hash: hex::encode(r.hash),
                    body: r.body.clone(),
                }));
                out.push_str(sep);
            }
            let lo = s.range.map_or(rows[0].seq, |r| r.0);
            s.range = Some((lo, last));
            s.phase = Phase::Events(last, false);
            out
        }
        Phase::Checkpoints => {
            let whole = s.from.is_none() && s.to.is_none();
            let parts: Vec<String> = s
                .points
                .iter()
                .filter(|c| {
                    s.range
                        .is_some_and(|(lo, hi)| c.seq >= lo && (whole || c.seq <= hi))
                })
                .map(|c| {
                    line(&ExportLine::Checkpoint {
                        seq: c.seq,
                        hash: hex::encode(c.hash),
                        created_at: c.created_at,
                        signature: hex::encode(&c.signature),
                    })
                })
                .collect();
            s.phase = Phase::Done;
            if s.json {
                format!("{}]}}\n", parts.join(","))
            } else {
                parts.iter().map(|p| format!("{p}\n")).collect()
            }
        }
        Phase::Done => return None,
    };
    Some((Ok(Bytes::from(chunk)), s))
}

/// Stream the organisation's events (optionally a time range) with the checkpoints, as NDJSON
/// or JSON; memory use does not grow with the log. Verifies offline with `coffer audit verify --file`.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])), params(ExportQuery),
    responses((status = 200, description = "a header line, the events and the checkpoints; one JSON document with format=json",
        content((String = "application/x-ndjson"), (Object = "application/json"))), (status = 403, body = ErrorBody)))]
pub async fn export(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let json = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("json") => true,
        Some(_) => return Err(ApiError::bad_request("format must be ndjson or json")),
    };
    let (from, to) = (
        parse_time("from", q.from.as_deref())?,
        parse_time("to", q.to.as_deref())?,
    );
    // Recorded, and refused before streaming if the caller may not export (or the server
    // is sealed).
    st.coffer.audit().audit_export_begin(&cx, &p).await?;
    let points = st.coffer.audit().audit_checkpoints(&p).await?;
    let state = ExportState {
        st,
        p,
        json,
        from,
        to,
        phase: Phase::Header,
        range: None,
        points,
    };
    let stream = futures_util::stream::unfold(state, next_chunk);
    let ct = if json {
        "application/json"
    } else {
        "application/x-ndjson"
    };
    Ok(([(header::CONTENT_TYPE, ct)], Body::from_stream(stream)).into_response())
}
