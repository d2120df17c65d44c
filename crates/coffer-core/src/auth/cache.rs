//! The short-lived cache of verified principals.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::Principal;

/// Verified principals, keyed by token digest. Every change of access clears the cache on
/// every node (its notice commits with it); entries also expire after the lifetime the
/// caller gives (`Identity::principal_ttl`).
#[derive(Debug)]
pub(crate) struct SessionCache {
    map: RwLock<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Bumped by every clear: a principal read from the database before a clear (a
    /// revocation on this node) is not cached after it.
    generation: std::sync::atomic::AtomicU64,
    /// One database refresh at a time per token when its entry expires under load.
    pub(super) refreshing: crate::flight::Flights<[u8; 32]>,
}

const SESSION_CACHE_MAX: usize = 100_000;

impl SessionCache {
    pub(crate) fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            refreshing: crate::flight::Flights::default(),
        }
    }

    pub(super) fn get(&self, h: &[u8; 32], now_ms: i64, ttl: Duration) -> Option<Principal> {
        let map = self.map.read().ok()?;
        let (p, at) = map.get(h)?;
        (at.elapsed() < ttl && p.expires_at > now_ms).then(|| p.clone())
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cache `p`, read from the database at `generation`, unless the cache was cleared since.
    pub(super) fn put(&self, h: [u8; 32], p: Principal, generation: u64) {
        if let Ok(mut map) = self.map.write() {
            if self.generation() != generation {
                return;
            }
            if map.len() >= SESSION_CACHE_MAX {
                map.clear();
            }
            map.insert(h, (p, Instant::now()));
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::auth::{AuthMethod, Scope};
    use uuid::Uuid;

    #[test]
    fn a_principal_read_before_a_clear_is_not_cached_after_it() {
        let cache = SessionCache::new();
        let p = Principal {
            user_id: Uuid::nil(),
            username: "u".into(),
            org_id: Uuid::nil(),
            org_name: "o".into(),
            role: Role::Viewer,
            expires_at: i64::MAX,
            session_id: None,
            method: AuthMethod::Password,
            api_key_id: None,
            scope: Scope::default(),
            mfa_enrollment_pending: false,
        };
        let read_at = cache.generation();
        cache.clear(); // a revocation while the refresh was under way
        cache.put([1; 32], p.clone(), read_at);
        assert!(cache.get(&[1; 32], 0, Duration::from_secs(60)).is_none());
        cache.put([1; 32], p, cache.generation());
        assert!(cache.get(&[1; 32], 0, Duration::from_secs(60)).is_some());
    }
}
