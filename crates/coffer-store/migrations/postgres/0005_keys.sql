-- Key rotation. One rewrap job per organisation: the latest rotation. `cursor` is the last
-- credential id rewrapped, committed with each batch, so a crashed job resumes where it stopped.
CREATE TABLE key_rotations (
    org_id      BYTEA   PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
    target_term BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    total       BIGINT  NOT NULL,
    done        BIGINT  NOT NULL DEFAULT 0,
    cursor      BYTEA,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT
);

ALTER TABLE key_rotations ENABLE ROW LEVEL SECURITY;
ALTER TABLE key_rotations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON key_rotations USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

-- Walks an organisation's credentials in id order (rewrap batches, usage per term).
CREATE INDEX param_versions_org_credential ON param_versions(org_id, credential_id);
