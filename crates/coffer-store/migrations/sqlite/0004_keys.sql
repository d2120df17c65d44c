-- Key rotation. One rewrap job per organisation: the latest rotation. `cursor` is the last
-- credential id rewrapped, committed with each batch, so a crashed job resumes where it stopped.
CREATE TABLE key_rotations (
    org_id      BLOB    PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
    target_term INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    total       INTEGER NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0,
    cursor      BLOB,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;

-- Walks an organisation's credentials in id order (rewrap batches, usage per term).
CREATE INDEX param_versions_org_credential ON param_versions(org_id, credential_id);
