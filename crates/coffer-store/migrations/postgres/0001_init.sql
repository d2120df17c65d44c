-- Coffer schema, PostgreSQL. Times are Unix milliseconds (UTC). Ids are 16-byte UUIDs
-- stored as BYTEA, as in the SQLite schema, so both backends share row decoding.

CREATE TABLE seal_config (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    kind       TEXT    NOT NULL,
    shares     BIGINT  NOT NULL,
    threshold  BIGINT  NOT NULL,
    root_check BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE orgs (
    id         BYTEA PRIMARY KEY,
    name       TEXT  NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE tenant_keys (
    org_id     BYTEA  NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    term       BIGINT NOT NULL,
    wrapped    BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, term)
);

CREATE TABLE users (
    id            BYTEA PRIMARY KEY,
    username      TEXT  NOT NULL UNIQUE,
    password_hash TEXT  NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    user_id    BYTEA  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id     BYTEA  NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    role       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, org_id)
);

CREATE TABLE sessions (
    token_hash BYTEA  PRIMARY KEY,
    user_id    BYTEA  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    org_id     BYTEA  NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE projects (
    id         BYTEA PRIMARY KEY,
    org_id     BYTEA NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name       TEXT  NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE environments (
    id         BYTEA PRIMARY KEY,
    org_id     BYTEA NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id BYTEA NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    parent_id  BYTEA REFERENCES environments(id) ON DELETE RESTRICT,
    name       TEXT  NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE params (
    id              BYTEA   PRIMARY KEY,
    org_id          BYTEA   NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    env_id          BYTEA   NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    current_version BIGINT  NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (env_id, name)
);

CREATE TABLE param_versions (
    param_id      BYTEA   NOT NULL REFERENCES params(id) ON DELETE CASCADE,
    version       BIGINT  NOT NULL,
    org_id        BYTEA   NOT NULL,
    credential_id BYTEA   UNIQUE,
    is_secret     BOOLEAN NOT NULL,
    action        TEXT    NOT NULL,
    actor_id      BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (param_id, version)
);

-- Ciphertexts only: an opaque id, the sealed bytes and the tenant key term.
CREATE TABLE credentials (
    id         BYTEA  PRIMARY KEY,
    ciphertext BYTEA  NOT NULL,
    key_term   BIGINT NOT NULL
);

CREATE FUNCTION coffer_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER param_versions_immutable BEFORE UPDATE ON param_versions
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER credentials_immutable BEFORE UPDATE OF id ON credentials
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
