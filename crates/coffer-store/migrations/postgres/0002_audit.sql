CREATE TABLE audit_events (
    org_id    BYTEA  NOT NULL,
    seq       BIGINT NOT NULL,
    id        BYTEA  NOT NULL UNIQUE,
    time      BIGINT NOT NULL,
    action    TEXT   NOT NULL,
    actor_id  BYTEA,
    outcome   TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    prev_hash BYTEA  NOT NULL,
    hash      BYTEA  NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX audit_events_time ON audit_events(org_id, time);

-- The end of each chain; appenders lock the row (SELECT ... FOR UPDATE), which serialises
-- appends to one chain across server nodes.
CREATE TABLE audit_heads (
    org_id BYTEA  PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   BYTEA  NOT NULL
);

CREATE TABLE audit_checkpoints (
    org_id     BYTEA  NOT NULL,
    seq        BIGINT NOT NULL,
    hash       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    signature  BYTEA  NOT NULL,
    PRIMARY KEY (org_id, seq)
);

CREATE TABLE audit_keys (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    public_key  BYTEA  NOT NULL,
    wrapped_key BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
