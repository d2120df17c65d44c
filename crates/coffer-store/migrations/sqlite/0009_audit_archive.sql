-- Archive and prune (issue 24; docs/audit.md, "Archive segments"). Events leave the database
-- only after a segment file holding them was written and verified, and only up to the
-- chain's anchor: a checkpoint, signed by the node that wrote the event, at the end of the
-- archived range. Verification of the live chain starts from the anchor.

-- Segments written and verified, in order. `sha256` is the digest of the whole file (its
-- plaintext); the next segment's header names it, so the files form a chain of their own.
-- `location` is where the server keeps a segment it wrote itself (scheduled archiving);
-- none for a segment an operator wrote elsewhere.
CREATE TABLE audit_segments (
    number      INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    cut_ms      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      BLOB    NOT NULL,
    location    TEXT,
    verified_at INTEGER NOT NULL
) STRICT;

-- The range of each chain a segment holds: from_seq..to_seq, ending at to_hash.
CREATE TABLE audit_segment_chains (
    number   INTEGER NOT NULL REFERENCES audit_segments (number),
    org_id   BLOB    NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER NOT NULL,
    to_hash  BLOB    NOT NULL,
    PRIMARY KEY (org_id, number)
) STRICT;

-- Each chain's anchor: the signed checkpoint at the end of its pruned part. Events at or
-- below it may be deleted; the event after it links to its hash.
CREATE TABLE audit_anchors (
    org_id     BLOB    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    signature  BLOB    NOT NULL,
    segment    INTEGER NOT NULL REFERENCES audit_segments (number)
) STRICT;

CREATE TRIGGER audit_segments_no_update BEFORE UPDATE ON audit_segments
BEGIN SELECT RAISE(ABORT, 'audit_segments is append-only'); END;
CREATE TRIGGER audit_segments_no_delete BEFORE DELETE ON audit_segments
BEGIN SELECT RAISE(ABORT, 'audit_segments is append-only'); END;
CREATE TRIGGER audit_segment_chains_no_update BEFORE UPDATE ON audit_segment_chains
BEGIN SELECT RAISE(ABORT, 'audit_segment_chains is append-only'); END;
CREATE TRIGGER audit_segment_chains_no_delete BEFORE DELETE ON audit_segment_chains
BEGIN SELECT RAISE(ABORT, 'audit_segment_chains is append-only'); END;
-- An anchor only moves forward, to the end of a recorded segment's range of its chain.
CREATE TRIGGER audit_anchors_no_delete BEFORE DELETE ON audit_anchors
BEGIN SELECT RAISE(ABORT, 'audit_anchors only move forward'); END;
CREATE TRIGGER audit_anchors_forward BEFORE UPDATE ON audit_anchors
WHEN NEW.org_id IS NOT OLD.org_id OR NEW.seq <= OLD.seq
BEGIN SELECT RAISE(ABORT, 'audit_anchors only move forward'); END;
CREATE TRIGGER audit_anchors_archived_insert BEFORE INSERT ON audit_anchors
WHEN NOT EXISTS (SELECT 1 FROM audit_segment_chains s WHERE s.number = NEW.segment
                 AND s.org_id = NEW.org_id AND s.to_seq = NEW.seq AND s.to_hash = NEW.hash)
BEGIN SELECT RAISE(ABORT, 'an anchor must end a recorded segment'); END;
CREATE TRIGGER audit_anchors_archived_update BEFORE UPDATE ON audit_anchors
WHEN NOT EXISTS (SELECT 1 FROM audit_segment_chains s WHERE s.number = NEW.segment
                 AND s.org_id = NEW.org_id AND s.to_seq = NEW.seq AND s.to_hash = NEW.hash)
BEGIN SELECT RAISE(ABORT, 'an anchor must end a recorded segment'); END;

-- Deleting events: only at or below the chain's anchor (the blanket refusals of 0002 and
-- 0008 are replaced).
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > COALESCE((SELECT a.seq FROM audit_anchors a WHERE a.org_id = OLD.org_id), 0)
BEGIN SELECT RAISE(ABORT, 'audit_events: only archived events before the anchor can be deleted'); END;
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.seq > COALESCE((SELECT a.seq FROM audit_anchors a
                         WHERE a.org_id = (SELECT c.org_id FROM audit_chains c WHERE c.chain = OLD.chain)), 0)
BEGIN SELECT RAISE(ABORT, 'audit_log: only archived events before the anchor can be deleted'); END;
