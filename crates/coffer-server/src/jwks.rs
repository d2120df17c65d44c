//! Signing keys of external OpenID providers: fetched from the issuer's `jwks_uri` (over
//! HTTPS, or HTTP on loopback for tests) or read from a file, and cached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coffer_core::oidc::JwksSource;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;

/// Where one issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksLocation {
    Url(String),
    File(PathBuf),
}

#[derive(Debug)]
pub struct JwksCache {
    locations: HashMap<String, JwksLocation>,
    ttl: Duration,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (JwkSet, Instant)>>,
}

impl JwksCache {
    pub fn new(locations: HashMap<String, JwksLocation>, ttl: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            locations,
            ttl,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn load(&self, loc: &JwksLocation) -> Result<JwkSet, String> {
        let bytes = match loc {
            JwksLocation::File(p) => tokio::fs::read(p).await.map_err(|e| e.to_string())?,
            JwksLocation::Url(u) => {
                let r = self.http.get(u).send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("JWKS endpoint answered {}", r.status()));
                }
                r.bytes().await.map_err(|e| e.to_string())?.to_vec()
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| format!("invalid JWKS: {e}"))
    }
}

#[async_trait]
impl JwksSource for JwksCache {
    async fn jwks(&self, issuer: &str, refresh: bool) -> Result<JwkSet, String> {
        let loc = self
            .locations
            .get(issuer)
            .ok_or_else(|| "issuer not configured".to_owned())?;
        let mut cache = self.cache.lock().await;
        if let Some((set, at)) = cache.get(issuer) {
            // A refresh for an unknown `kid` is honoured at most every 10 s, so forged
            // tokens with random key ids cannot hammer the provider.
            let fresh = at.elapsed() < self.ttl;
            if (fresh && !refresh) || at.elapsed() < Duration::from_secs(10) {
                return Ok(set.clone());
            }
        }
        let set = self.load(loc).await?;
        cache.insert(issuer.to_owned(), (set.clone(), Instant::now()));
        Ok(set)
    }
}
