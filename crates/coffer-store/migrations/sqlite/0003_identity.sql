-- Identity: e-mail, lockout counters and MFA on users; sessions with idle timeout and
-- stages; API keys; invitations; recovery codes; external identities; the mail outbox.

ALTER TABLE users ADD COLUMN email TEXT;
CREATE UNIQUE INDEX users_email ON users(email);
-- Lockout state lives in the database so it survives restarts and is shared by every node.
ALTER TABLE users ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0;
-- TOTP secret sealed with a key derived from the root key; never stored in clear.
ALTER TABLE users ADD COLUMN mfa_secret BLOB;
ALTER TABLE users ADD COLUMN mfa_enabled INTEGER NOT NULL DEFAULT 0;
-- Last accepted TOTP time step: a code is accepted once only.
ALTER TABLE users ADD COLUMN mfa_last_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orgs ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;

-- Sessions change shape (public id, stage, idle timeout): existing sessions end.
DROP TABLE sessions;
CREATE TABLE sessions (
    id           BLOB    PRIMARY KEY,
    token_hash   BLOB    NOT NULL UNIQUE,
    user_id      BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id       BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    -- 'full', 'mfa' (second factor pending) or 'enroll' (must enrol MFA first)
    stage        TEXT    NOT NULL,
    -- 'password', 'oidc', 'apikey'
    method       TEXT    NOT NULL,
    api_key_id   BLOB,
    address      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_keys (
    id           BLOB    PRIMARY KEY,
    org_id       BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    user_id      BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    key_hash     BLOB    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    read_only    INTEGER NOT NULL,
    -- JSON arrays of names; empty array = no restriction
    projects     TEXT    NOT NULL,
    envs         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
CREATE INDEX api_keys_org ON api_keys(org_id);

CREATE TABLE invitations (
    id          BLOB    PRIMARY KEY,
    org_id      BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    email       TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    token_hash  BLOB    NOT NULL UNIQUE,
    invited_by  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    accepted_at INTEGER
) STRICT;

CREATE TABLE recovery_codes (
    user_id   BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash BLOB    NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
) STRICT;

CREATE TABLE identities (
    issuer     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    user_id    BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
) STRICT;

-- Addresses a user has logged in from, to notify on a new one.
CREATE TABLE login_addresses (
    user_id    BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address    TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (user_id, address)
) STRICT;

-- Mail waiting for delivery. The message is sealed (it may carry an invitation token).
CREATE TABLE outbox (
    id              BLOB    PRIMARY KEY,
    sealed          BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    sent_at         INTEGER,
    last_error      TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox(sent_at, next_attempt_at);
