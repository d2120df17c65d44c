-- A parameter version and its audit event, appended in one statement and so in one
-- transaction: both commit or neither does. The event is appended only when the version
-- was ('ok'); after a 'conflict' or 'stale_term' nothing was written and the caller tries
-- again or records the failure on its own.
CREATE FUNCTION coffer_append_version_audited(
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
BEGIN
    v_outcome := coffer_append_version(p_org, p_env, p_param, p_name, p_expected, p_version,
        p_deleted, p_created_at, p_credential, p_ciphertext, p_term, p_is_secret, p_action,
        p_actor);
    IF v_outcome <> 'ok' THEN
        RETURN v_outcome;
    END IF;
    PERFORM coffer_append_audit_checked(p_org, p_genesis,
        ARRAY[e_id], ARRAY[e_time], ARRAY[e_action], ARRAY[e_actor], ARRAY[e_outcome],
        ARRAY[e_target], ARRAY[e_body],
        '{}'::INT[], '{}'::BYTEA[], '{}'::TEXT[], '{}'::BYTEA[], '{}'::BIGINT[],
        NULL, NULL, NULL);
    RETURN 'ok';
END
$$;
