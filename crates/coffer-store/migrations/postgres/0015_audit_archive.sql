-- Archive and prune (issue 24; docs/audit.md, "Archive segments"); the same tables and
-- rules as SQLite's 0009. Events leave the database only after a segment file holding them
-- was written and verified, and only up to the chain's anchor: a checkpoint, signed by the
-- node that wrote the event, at the end of the archived range.
--
-- Rights: docs/postgres-runtime-role.sql leaves the runtime role without DELETE on the
-- events and without INSERT/UPDATE on the anchors, so only the schema owner (or a role an
-- operator grants those rights) prunes.

CREATE TABLE audit_segments (
    number      BIGINT PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    cut_ms      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    events      BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      BYTEA  NOT NULL,
    location    TEXT,
    verified_at BIGINT NOT NULL
);

CREATE TABLE audit_segment_chains (
    number   BIGINT NOT NULL REFERENCES audit_segments (number),
    org_id   BYTEA  NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT NOT NULL,
    to_hash  BYTEA  NOT NULL,
    PRIMARY KEY (org_id, number)
);

CREATE TABLE audit_anchors (
    org_id     BYTEA  PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    signature  BYTEA  NOT NULL,
    segment    BIGINT NOT NULL REFERENCES audit_segments (number)
);

CREATE TRIGGER audit_segments_no_update BEFORE UPDATE OR DELETE ON audit_segments
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_segment_chains_no_update BEFORE UPDATE OR DELETE ON audit_segment_chains
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_anchors_no_delete BEFORE DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();

-- An anchor only moves forward, to the end of a recorded segment's range of its chain.
CREATE FUNCTION coffer_audit_anchor_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.org_id <> OLD.org_id OR NEW.seq <= OLD.seq) THEN
        RAISE EXCEPTION 'audit_anchors only move forward';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_segment_chains s WHERE s.number = NEW.segment
                   AND s.org_id = NEW.org_id AND s.to_seq = NEW.seq AND s.to_hash = NEW.hash) THEN
        RAISE EXCEPTION 'an anchor must end a recorded segment';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_anchors_check BEFORE INSERT OR UPDATE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION coffer_audit_anchor_check();

-- Deleting events: only at or below the chain's anchor. Updates stay refused.
CREATE FUNCTION coffer_audit_prunable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_org BYTEA;
BEGIN
    IF TG_TABLE_NAME = 'audit_log' THEN
        SELECT org_id INTO v_org FROM audit_chains WHERE chain = OLD.chain;
    ELSE
        v_org := OLD.org_id;
    END IF;
    IF OLD.seq > COALESCE((SELECT seq FROM audit_anchors WHERE org_id = v_org), 0) THEN
        RAISE EXCEPTION '%: only archived events before the anchor can be deleted', TG_TABLE_NAME;
    END IF;
    RETURN OLD;
END
$$;

DROP TRIGGER audit_events_no_update ON audit_events;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_events_prune_guard BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION coffer_audit_prunable();
DROP TRIGGER audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_log_prune_guard BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION coffer_audit_prunable();
