//! Request limits: the size of a request's head ([`cap_head`]), and per-address throttling
//! of login attempts (password, MFA code, OIDC, API key exchange, invitation acceptance). Keyed on the TCP peer address only: forwarding headers are
//! client-controlled and not trusted. The per-account lockout lives in the database; this
//! limits how fast one address can try many accounts.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{ApiError, ErrorCode};
use crate::extract::PeerAddr;

#[derive(Debug)]
pub struct LoginLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl LoginLimiter {
    /// `per_minute` attempts per address, with bursts of the same size.
    pub fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
        }
    }

    pub fn check(&self, addr: &PeerAddr) -> Result<(), ApiError> {
        let Some(ip) = addr.0 else { return Ok(()) };
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|_| {
            ApiError::new(
                ErrorCode::TooManyRequests,
                "too many login attempts from this address; wait a minute",
            )
        })
    }
}

/// Refuse a request whose line and headers together exceed `max` bytes (counted as they
/// were sent: `NAME: value` plus CRLF per header) with 431 and the JSON error. The HTTP
/// layer refuses heads over four times `max` by itself, before any of this runs.
pub async fn cap_head(
    axum::extract::State(max): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The target as it was sent, counted without formatting it (this runs on every
    // request): `scheme://authority` only in the rare absolute form.
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n ".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + ": \r\n".len())
        .sum();
    let size = line + headers;
    if size > max {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request line and headers are {size} bytes; at most {max} are accepted"),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_limited_independently() {
        let l = LoginLimiter::new(2);
        let a = PeerAddr(Some("10.0.0.1".parse().unwrap()));
        let b = PeerAddr(Some("10.0.0.2".parse().unwrap()));
        assert!(l.check(&a).is_ok());
        assert!(l.check(&a).is_ok());
        assert!(l.check(&a).is_err());
        assert!(l.check(&b).is_ok());
    }
}
