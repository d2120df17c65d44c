-- Identity: e-mail, lockout counters and MFA on users; sessions with idle timeout and
-- stages; API keys; invitations; recovery codes; external identities; the mail outbox.

ALTER TABLE users ADD COLUMN email TEXT;
CREATE UNIQUE INDEX users_email ON users(email);
-- Lockout state lives in the database so it survives restarts and is shared by every node.
ALTER TABLE users ADD COLUMN failed_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT NOT NULL DEFAULT 0;
-- TOTP secret sealed with a key derived from the root key; never stored in clear.
ALTER TABLE users ADD COLUMN mfa_secret BYTEA;
ALTER TABLE users ADD COLUMN mfa_enabled BOOLEAN NOT NULL DEFAULT FALSE;
-- Last accepted TOTP time step: a code is accepted once only.
ALTER TABLE users ADD COLUMN mfa_last_step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orgs ADD COLUMN require_mfa BOOLEAN NOT NULL DEFAULT FALSE;

-- Sessions change shape (public id, stage, idle timeout): existing sessions end.
DROP TABLE sessions;
CREATE TABLE sessions (
    id           BYTEA    PRIMARY KEY,
    token_hash   BYTEA    NOT NULL UNIQUE,
    user_id      BYTEA    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id       BYTEA    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    -- 'full', 'mfa' (second factor pending) or 'enroll' (must enrol MFA first)
    stage        TEXT    NOT NULL,
    -- 'password', 'oidc', 'apikey'
    method       TEXT    NOT NULL,
    api_key_id   BYTEA,
    address      TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_keys (
    id           BYTEA    PRIMARY KEY,
    org_id       BYTEA    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    user_id      BYTEA    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    key_hash     BYTEA    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    read_only    BOOLEAN NOT NULL,
    -- JSON arrays of names; empty array = no restriction
    projects     TEXT    NOT NULL,
    envs         TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_org ON api_keys(org_id);

CREATE TABLE invitations (
    id          BYTEA    PRIMARY KEY,
    org_id      BYTEA    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    email       TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    token_hash  BYTEA    NOT NULL UNIQUE,
    invited_by  BYTEA    NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    accepted_at BIGINT
);

CREATE TABLE recovery_codes (
    user_id   BYTEA    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash BYTEA    NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE identities (
    issuer     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    user_id    BYTEA    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);

-- Addresses a user has logged in from, to notify on a new one.
CREATE TABLE login_addresses (
    user_id    BYTEA    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address    TEXT    NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (user_id, address)
);

-- Mail waiting for delivery. The message is sealed (it may carry an invitation token).
CREATE TABLE outbox (
    id              BYTEA    PRIMARY KEY,
    sealed          BYTEA    NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    sent_at         BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox(sent_at, next_attempt_at);
