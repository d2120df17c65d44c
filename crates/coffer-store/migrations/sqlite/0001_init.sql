-- Coffer schema, SQLite. Times are Unix milliseconds (UTC). Ids are 16-byte UUIDs.

-- One row per key: how the server is sealed, the root key check value.
CREATE TABLE seal_config (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    kind          TEXT    NOT NULL,
    shares        INTEGER NOT NULL,
    threshold     INTEGER NOT NULL,
    root_check    BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE orgs (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

-- Tenant key-encryption keys, wrapped by the root key. One row per organisation and term.
CREATE TABLE tenant_keys (
    org_id     BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    term       INTEGER NOT NULL,
    wrapped    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, term)
) STRICT;

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE memberships (
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id     BLOB NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, org_id)
) STRICT;

-- Sessions are found by the SHA-256 of their bearer token; the token itself is never stored.
CREATE TABLE sessions (
    token_hash   BLOB    PRIMARY KEY,
    user_id      BLOB    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id       BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE projects (
    id         BLOB PRIMARY KEY,
    org_id     BLOB NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
) STRICT;

CREATE TABLE environments (
    id         BLOB PRIMARY KEY,
    org_id     BLOB NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id BLOB NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    parent_id  BLOB REFERENCES environments(id) ON DELETE RESTRICT,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (project_id, name)
) STRICT;

-- Parameter metadata. The value of every version lives in `credentials`, encrypted.
CREATE TABLE params (
    id              BLOB    PRIMARY KEY,
    org_id          BLOB    NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    env_id          BLOB    NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    UNIQUE (env_id, name)
) STRICT;

-- Immutable history. credential_id is NULL for a deletion marker.
CREATE TABLE param_versions (
    param_id      BLOB    NOT NULL REFERENCES params(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    org_id        BLOB    NOT NULL,
    credential_id BLOB    UNIQUE,
    is_secret     INTEGER NOT NULL,
    action        TEXT    NOT NULL,
    actor_id      BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (param_id, version)
) STRICT;

-- Ciphertexts only: an opaque id, the sealed bytes and the tenant key term. Nothing here
-- says whose value it is or what it is for.
CREATE TABLE credentials (
    id         BLOB    PRIMARY KEY,
    ciphertext BLOB    NOT NULL,
    key_term   INTEGER NOT NULL
) STRICT;

CREATE TRIGGER param_versions_immutable BEFORE UPDATE ON param_versions
BEGIN SELECT RAISE(ABORT, 'param_versions is append-only'); END;
CREATE TRIGGER credentials_immutable BEFORE UPDATE OF id ON credentials
BEGIN SELECT RAISE(ABORT, 'credential ids are immutable'); END;
