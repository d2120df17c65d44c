use std::time::Duration;

/// Domain settings, validated by the binary before the service starts.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Absolute lifetime of a login session.
    pub session_ttl: Duration,
    /// How long a verified session stays in the in-memory cache before it is read again
    /// from the database. Bounds how long a revocation on another node can go unseen.
    pub session_cache_ttl: Duration,
    /// Largest accepted parameter value.
    pub max_value_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            session_cache_ttl: Duration::from_secs(1),
            max_value_bytes: 512 * 1024,
        }
    }
}
