-- A parameter version appended in one statement.
--
-- A write used to be a transaction of eight statements (begin, set the organisation for
-- row-level security, update or insert the parameter, lock the organisation, read the
-- newest key term, insert the ciphertext, insert the version, commit), each a round trip.
-- This function does the same in one call, run as its own transaction: a failure anywhere
-- (a unique violation when another writer created the parameter first, say) leaves nothing
-- behind.
--
-- Returns 'ok', 'conflict' (the parameter is no longer at p_expected: another writer was
-- first) or 'stale_term' (p_term is no longer the organisation's newest key term: another
-- node rotated it; nothing was written and the caller seals the value again). The newest
-- term is read under a share lock on the organisation's row, which a rotation takes
-- exclusively, so no value can be sealed under a term a committed rotation superseded.
CREATE FUNCTION coffer_append_version(
    p_org BYTEA, p_env BYTEA, p_param BYTEA, p_name TEXT, p_expected BIGINT,
    p_version BIGINT, p_deleted BOOLEAN, p_created_at BIGINT,
    p_credential BYTEA, p_ciphertext BYTEA, p_term BIGINT,
    p_is_secret BOOLEAN, p_action TEXT, p_actor BYTEA
)
RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_newest BIGINT;
    n INT;
BEGIN
    PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
    IF p_ciphertext IS NOT NULL THEN
        PERFORM 1 FROM orgs WHERE id = p_org FOR SHARE;
        SELECT MAX(term) INTO v_newest FROM tenant_keys WHERE org_id = p_org;
        IF v_newest IS DISTINCT FROM p_term THEN
            RETURN 'stale_term';
        END IF;
    END IF;
    IF p_expected = 0 THEN
        INSERT INTO params (id, org_id, env_id, name, current_version, deleted, updated_at)
        VALUES (p_param, p_org, p_env, p_name, p_version, p_deleted, p_created_at);
    ELSE
        UPDATE params SET current_version = p_version, deleted = p_deleted,
                          updated_at = p_created_at
         WHERE id = p_param AND org_id = p_org AND env_id = p_env
           AND current_version = p_expected;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n <> 1 THEN
            RETURN 'conflict';
        END IF;
    END IF;
    IF p_ciphertext IS NOT NULL THEN
        INSERT INTO credentials (id, ciphertext, key_term, org_id)
        VALUES (p_credential, p_ciphertext, p_term, p_org);
    END IF;
    INSERT INTO param_versions (param_id, version, org_id, credential_id, is_secret, action,
                                actor_id, created_at)
    VALUES (p_param, p_version, p_org, CASE WHEN p_ciphertext IS NULL THEN NULL ELSE p_credential END,
            p_is_secret, p_action, p_actor, p_created_at);
    PERFORM set_config('coffer.org_id', '', true);
    RETURN 'ok';
END
$$;

-- What a write needs to know first, in one call: the parameter's row in its environment
-- (deleted or not) and whether its current version is a secret (false when deleted).
CREATE FUNCTION coffer_param_state(p_org BYTEA, p_env BYTEA, p_name TEXT)
RETURNS TABLE (
    id BYTEA, org_id BYTEA, env_id BYTEA, name TEXT, current_version BIGINT, deleted BOOLEAN,
    updated_at BIGINT, is_secret BOOLEAN
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
    RETURN QUERY
        SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at,
               NOT p.deleted AND coalesce(v.is_secret, false)
          FROM params p
          LEFT JOIN param_versions v ON v.param_id = p.id AND v.version = p.current_version
         WHERE p.org_id = p_org AND p.env_id = p_env AND p.name = p_name;
    PERFORM set_config('coffer.org_id', '', true);
END
$$;
