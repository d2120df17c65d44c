use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use coffer_core::apikeys::{ApiKeyView, NewApiKey};
use uuid::Uuid;

use crate::AppState;
use crate::audit::CxOf;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Auth};
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
#[utoipa::path(post, path = "/v1/org/api-keys", operation_id = "create_api_key", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKeyResponse), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKeyResponse>)> {
    let ttl = match &req.expires_in {
        None => Duration::from_secs(90 * 86_400),
        Some(s) => parse_lifetime(s).ok_or_else(|| {
            ApiError::bad_request("expires_in must be 1-366 days (like 30d) or 1-8784 hours (12h)")
        })?,
    };
    let created = st
        .coffer
        .identity()
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

#[utoipa::path(get, path = "/v1/org/api-keys", operation_id = "list_api_keys", tag = "api-keys", security(("bearer" = [])), responses((status = 200, body = [ApiKeyDto])))]
pub async fn list(
    State(st): State<AppState>,
    CxOf(cx): CxOf,
    Auth(p): Auth,
) -> ApiResult<Json<Vec<ApiKeyDto>>> {
    Ok(Json(
        st.coffer
            .identity()
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
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    st.coffer.identity().revoke_api_key(&cx, &p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `30d` or `12h`, within the longest lifetime a key may have: the document's pattern
/// (crate::schema::LIFETIME_PATTERN) says the same.
fn parse_lifetime(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let per_unit = match unit {
        "d" => 86_400,
        "h" => 3_600,
        _ => return None,
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ttl = Duration::from_secs(digits.parse::<u64>().ok()?.checked_mul(per_unit)?);
    (ttl <= coffer_core::apikeys::MAX_KEY_TTL).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;
    use std::time::Duration;

    #[test]
    fn lifetimes_are_days_or_hours_up_to_366_days() {
        assert_eq!(
            parse_lifetime("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_lifetime("366d"),
            Some(Duration::from_secs(366 * 86_400))
        );
        assert_eq!(
            parse_lifetime("8784h"),
            Some(Duration::from_secs(8784 * 3_600))
        );
        assert_eq!(parse_lifetime("1h"), Some(Duration::from_secs(3_600)));
        for bad in [
            "",
            "d",
            "0d",
            "030d",
            "367d",
            "8785h",
            "1.5d",
            "-1d",
            "1m",
            "1 d",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_lifetime(bad), None, "{bad:?}");
        }
    }

    /// The document's pattern and the parser agree on every lifetime up to past the limit.
    #[test]
    fn the_documented_pattern_is_the_parser() {
        let days = |n: u64| format!("{n}d");
        let hours = |n: u64| format!("{n}h");
        let re = regex_automata::meta::Regex::new(crate::schema::LIFETIME_PATTERN).unwrap();
        for s in (0..400).map(days).chain((0..9000).map(hours)) {
            assert_eq!(parse_lifetime(&s).is_some(), re.is_match(&s), "{s}");
        }
    }
}
