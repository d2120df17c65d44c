use std::time::Duration;

use crate::oidc::OidcIssuer;

/// Domain settings, validated by the binary before the service starts.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Absolute lifetime of a login session.
    pub session_ttl: Duration,
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// How long a verified session stays in the in-memory cache before it is read again
    /// from the database while this node cannot hear other nodes' change notices (its
    /// PostgreSQL listener is reconnecting): then it bounds how long a revocation on another
    /// node can go unseen.
    pub session_cache_ttl: Duration,
    /// How long verified sessions and project metadata stay cached while this node hears
    /// every change's notice (always on SQLite; on PostgreSQL while its listener is
    /// connected): a change clears them at once on every node, so this only bounds a cache
    /// against a change that sent none. Sessions are re-read at least every eighth of
    /// `idle_timeout`, which keeps their activity recorded.
    pub notified_cache_ttl: Duration,
    /// Lifetime of an access token exchanged for an API key.
    pub access_token_ttl: Duration,
    /// Time to enter the second factor after the password.
    pub mfa_pending_ttl: Duration,
    /// Consecutive failed attempts (password or MFA code) before the account locks.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    pub lockout: Duration,
    /// Delay after the n-th consecutive failure before the next attempt: n × this.
    pub login_delay_step: Duration,
    /// Lifetime of an invitation.
    pub invitation_ttl: Duration,
    /// Whether a mail transport is configured (invitation tokens then go by mail only).
    pub mail_enabled: bool,
    /// Trusted external identity providers.
    pub oidc: Vec<OidcIssuer>,
    /// Largest accepted parameter value.
    pub max_value_bytes: usize,
    /// How long unwrapped tenant keys stay in memory before they are unwrapped again.
    /// Bounds how long a rotation or deletion on another node can go unseen here.
    pub key_cache_ttl: Duration,
    /// Rotate an organisation's key automatically once its newest term is this old
    /// (NIST SP 800-57 suggests at most one to two years for a key-wrapping key).
    pub key_rotate_after: Duration,
    /// ...or once this many values were newly sealed under it. A GCM key with random nonces
    /// must stay well below 2^32 encryptions.
    pub key_rotate_after_encryptions: u64,
    /// Values per rewrap batch (one transaction each).
    pub rewrap_batch: u32,
    /// Pause between rewrap batches, to leave the database room for requests.
    pub rewrap_pause: Duration,
    /// How new values are encrypted. Every stored value opens with the scheme it names,
    /// so this can change at any time.
    pub value_scheme: coffer_crypto::ValueScheme,
    /// `audit.read_sync = "always"`: the events of operations that change nothing (reads,
    /// lists, denials) are on stable storage before their answer, like changes. Otherwise
    /// they have reached the operating system (or the database server) before the answer
    /// and stable storage within `coffer_store::READ_SYNC_BOUND`.
    pub read_sync_always: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(30 * 60),
            session_cache_ttl: Duration::from_secs(1),
            notified_cache_ttl: Duration::from_secs(60),
            access_token_ttl: Duration::from_secs(15 * 60),
            mfa_pending_ttl: Duration::from_secs(5 * 60),
            max_failed_logins: 3,
            lockout: Duration::from_secs(30 * 60),
            login_delay_step: Duration::from_secs(1),
            invitation_ttl: Duration::from_secs(7 * 86_400),
            mail_enabled: false,
            oidc: Vec::new(),
            max_value_bytes: 512 * 1024,
            key_cache_ttl: Duration::from_secs(60),
            key_rotate_after: Duration::from_secs(365 * 86_400),
            key_rotate_after_encryptions: 1 << 28,
            rewrap_batch: 2_000,
            rewrap_pause: Duration::ZERO,
            value_scheme: coffer_crypto::ValueScheme::default(),
            read_sync_always: false,
        }
    }
}
