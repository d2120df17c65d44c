-- coffer_append_version_audited (0012), answering where the event went: 'ok:' followed by
-- the hex of its sequence number (8 bytes, big-endian) and hash, so that the node can
-- remember the head it wrote (online verification compares the chain with it). Other
-- answers as before: 'conflict', 'stale_term'.
CREATE FUNCTION coffer_append_version_audited_at(
    p_org BYTEA, p_env BYTEA, p_param BYTEA, p_name TEXT, p_expected BIGINT,
    p_version BIGINT, p_deleted BOOLEAN, p_created_at BIGINT,
    p_credential BYTEA, p_ciphertext BYTEA, p_term BIGINT,
    p_is_secret BOOLEAN, p_action TEXT, p_actor BYTEA,
    p_genesis BYTEA, e_id BYTEA, e_time BIGINT, e_action TEXT, e_actor BYTEA,
    e_outcome TEXT, e_target TEXT, e_body TEXT
)
RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome TEXT;
    v_at BYTEA[];
BEGIN
    v_outcome := coffer_append_version(p_org, p_env, p_param, p_name, p_expected, p_version,
        p_deleted, p_created_at, p_credential, p_ciphertext, p_term, p_is_secret, p_action,
        p_actor);
    IF v_outcome <> 'ok' THEN
        RETURN v_outcome;
    END IF;
    v_at := coffer_append_audit_checked(p_org, p_genesis,
        ARRAY[e_id], ARRAY[e_time], ARRAY[e_action], ARRAY[e_actor], ARRAY[e_outcome],
        ARRAY[e_target], ARRAY[e_body],
        '{}'::INT[], '{}'::BYTEA[], '{}'::TEXT[], '{}'::BYTEA[], '{}'::BIGINT[],
        NULL, NULL, NULL);
    RETURN 'ok:' || encode(v_at[1], 'hex');
END
$$;

-- The latest signed head of each chain: (seq, hash) signed with the audit key by the node
-- that wrote it, at most a second after. A checkpoint kept once per chain and replaced as
-- the chain grows (never by an older one), so that everything older than a second is
-- covered by a signature, without a row per signature. Like audit_heads it holds no event
-- content and is readable across chains.
CREATE TABLE audit_signed_heads (
    org_id     BYTEA  PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    signature  BYTEA  NOT NULL
);
