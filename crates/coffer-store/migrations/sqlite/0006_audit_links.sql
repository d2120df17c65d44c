-- Two connections append to the chains (the audit writer's own and the one that commits a
-- change with its event), each with its own idea of where a chain ends. The database
-- decides: an event must continue its chain's head exactly (the next sequence number, the
-- head's hash as its predecessor; the zero hash for a chain's first event), and the head
-- follows every append in the same statement. An appender whose idea was stale fails, reads
-- the head again and retries.
CREATE TRIGGER audit_events_link BEFORE INSERT ON audit_events
WHEN NEW.seq IS NOT COALESCE((SELECT seq FROM audit_heads WHERE org_id = NEW.org_id), 0) + 1
  OR NEW.prev_hash IS NOT COALESCE((SELECT hash FROM audit_heads WHERE org_id = NEW.org_id), zeroblob(32))
BEGIN SELECT RAISE(ABORT, 'audit chain moved'); END;

CREATE TRIGGER audit_events_head AFTER INSERT ON audit_events
BEGIN
    INSERT INTO audit_heads (org_id, seq, hash) VALUES (NEW.org_id, NEW.seq, NEW.hash)
    ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
END;
