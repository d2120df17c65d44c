-- Audit log. One hash chain per organisation (the nil UUID holds events outside any
-- organisation: failed logins of unknown users, calls to a sealed server). `body` is the
-- event's JSON exactly as hashed; the other columns are copies for filtering.
CREATE TABLE audit_events (
    org_id    BLOB    NOT NULL,
    seq       INTEGER NOT NULL,
    id        BLOB    NOT NULL UNIQUE,
    time      INTEGER NOT NULL,
    action    TEXT    NOT NULL,
    actor_id  BLOB,
    outcome   TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL,
    PRIMARY KEY (org_id, seq)
) STRICT;
CREATE INDEX audit_events_time ON audit_events(org_id, time);

-- The end of each chain, updated in the same transaction as each append.
CREATE TABLE audit_heads (
    org_id BLOB    PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   BLOB    NOT NULL
) STRICT;

-- Signed statements "the chain of org X had hash H at seq N".
CREATE TABLE audit_checkpoints (
    org_id     BLOB    NOT NULL,
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (org_id, seq)
) STRICT;

-- The checkpoint signing key: public half in clear, private half sealed by the root key.
CREATE TABLE audit_keys (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    public_key  BLOB    NOT NULL,
    wrapped_key BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
