-- Row-level security on the audit log: an organisation's events and checkpoints are visible
-- and writable only while the transaction's `coffer.org_id` names it (the system chain is
-- the nil organisation). audit_heads keeps one sequence number and hash per chain, no event
-- content, and stays readable across chains for the checkpoint job, which now finds the
-- chains to sign from the head alone.

ALTER TABLE audit_heads ADD COLUMN checkpoint_seq BIGINT NOT NULL DEFAULT 0;
UPDATE audit_heads h
   SET checkpoint_seq = COALESCE((SELECT MAX(c.seq) FROM audit_checkpoints c WHERE c.org_id = h.org_id), 0);

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_events USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_checkpoints USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());
