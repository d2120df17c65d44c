-- Compact audit events (issue 24; docs/audit.md, "How events are stored"). New events are
-- appended here instead of audit_events, which keeps the events written before this
-- migration; the two tables form one chain per organisation (audit_heads stays its single
-- head), and readers merge them by sequence number.
--
-- A chain is a small integer here rather than a 16-byte organisation id in every row and
-- index entry.
CREATE TABLE audit_chains (
    chain  INTEGER PRIMARY KEY,
    org_id BLOB    NOT NULL UNIQUE
) STRICT;

-- Texts that repeat from event to event, interned per chain: the events' templates (their
-- JSON with one-byte markers where the values go) and fragments such as the actor, the
-- target and the user agent, as exact JSON text. Immutable: a stored event refers to them.
CREATE TABLE audit_strings (
    id     INTEGER PRIMARY KEY,
    chain  INTEGER NOT NULL REFERENCES audit_chains (chain),
    digest BLOB    NOT NULL,   -- SHA-256 of text
    text   TEXT    NOT NULL,
    UNIQUE (chain, digest)
) STRICT;

-- One event. `body` is its stored form (format byte 0: the JSON itself; 1: a template id
-- and the values of its holes), which renders to exactly the JSON that was hashed. The
-- event's predecessor hash is the hash of the row before it (or of the last row in
-- audit_events), so it is not stored again. action, actor_id, outcome and target are
-- copies for filtering.
CREATE TABLE audit_log (
    chain    INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    time     INTEGER NOT NULL,
    action   TEXT    NOT NULL,
    actor_id BLOB,
    outcome  TEXT    NOT NULL,
    target   TEXT    NOT NULL,
    hash     BLOB    NOT NULL,
    body     BLOB    NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT, WITHOUT ROWID;
-- No index on time: the listing's optional time bounds (`$3 IS NULL OR time >= $3`) are not
-- something SQLite's planner can use an index for (it walks the chain by the primary key
-- either way), and one would cost about a tenth of every event's bytes.

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_strings_no_update BEFORE UPDATE ON audit_strings
BEGIN SELECT RAISE(ABORT, 'audit_strings is immutable'); END;
CREATE TRIGGER audit_strings_no_delete BEFORE DELETE ON audit_strings
BEGIN SELECT RAISE(ABORT, 'audit_strings is immutable'); END;
CREATE TRIGGER audit_chains_no_update BEFORE UPDATE ON audit_chains
BEGIN SELECT RAISE(ABORT, 'audit_chains is immutable'); END;
CREATE TRIGGER audit_chains_no_delete BEFORE DELETE ON audit_chains
BEGIN SELECT RAISE(ABORT, 'audit_chains is immutable'); END;

-- As for audit_events (0006): an event must continue its chain's head, and the head follows
-- every append. Every append moves the head's sequence number, so an appender whose idea of
-- the head is stale fails this check and retries with the head read again.
CREATE TRIGGER audit_log_link BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT COALESCE((SELECT h.seq FROM audit_heads h
                              WHERE h.org_id = (SELECT c.org_id FROM audit_chains c WHERE c.chain = NEW.chain)), 0) + 1
BEGIN SELECT RAISE(ABORT, 'audit chain moved'); END;

CREATE TRIGGER audit_log_head AFTER INSERT ON audit_log
BEGIN
    INSERT INTO audit_heads (org_id, seq, hash)
    VALUES ((SELECT org_id FROM audit_chains WHERE chain = NEW.chain), NEW.seq, NEW.hash)
    ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
END;
