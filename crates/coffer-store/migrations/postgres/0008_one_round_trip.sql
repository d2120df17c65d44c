-- The two statements every secret read needs, each in one round trip.
--
-- Row-level security needs `coffer.org_id` set in the transaction before a tenant table is
-- touched. As separate statements that is BEGIN, set_config, the query and COMMIT: four
-- round trips. These functions set the organisation and run the statement inside one call,
-- in the caller's (implicit) transaction; they run with the caller's rights
-- (SECURITY INVOKER), so the policies still apply.

-- The current value of `p_name`, looked up in every environment of `p_envs` at once (an
-- environment and its ancestors); the caller picks the nearest.
CREATE FUNCTION coffer_current_value(p_org BYTEA, p_envs BYTEA[], p_name TEXT)
RETURNS TABLE (
    id BYTEA, org_id BYTEA, env_id BYTEA, name TEXT, current_version BIGINT, deleted BOOLEAN,
    updated_at BIGINT, param_id BYTEA, version BIGINT, is_secret BOOLEAN, action TEXT,
    actor_id BYTEA, created_at BIGINT, ciphertext BYTEA
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
    RETURN QUERY
        SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at,
               v.param_id, v.version, v.is_secret, v.action, v.actor_id, v.created_at,
               c.ciphertext
          FROM params p
          JOIN param_versions v ON v.param_id = p.id AND v.version = p.current_version
          LEFT JOIN credentials c ON c.id = v.credential_id
         WHERE p.org_id = p_org AND p.env_id = ANY (p_envs) AND p.name = p_name
           AND NOT p.deleted;
END
$$;

-- Append one batch of audit events (the `e_*` arrays, one element per event) to the chains
-- of `p_orgs` (ascending, so writers lock chains in one order and cannot deadlock). The
-- caller computed sequence numbers and hashes from the heads it believes current
-- (`p_old_seq`, `p_old_hash`); the heads are locked and compared first. If any chain moved
-- (another node appended), nothing is written and the current heads of the chains that
-- moved are returned, for the caller to recompute and retry. An empty result means the
-- whole batch is appended.
CREATE FUNCTION coffer_append_audit(
    p_orgs BYTEA[], p_old_seq BIGINT[], p_old_hash BYTEA[], p_new_seq BIGINT[],
    p_new_hash BYTEA[], p_genesis BYTEA,
    e_org BYTEA[], e_seq BIGINT[], e_id BYTEA[], e_time BIGINT[], e_action TEXT[],
    e_actor BYTEA[], e_outcome TEXT[], e_target TEXT[], e_body TEXT[], e_prev BYTEA[],
    e_hash BYTEA[]
)
RETURNS TABLE (moved_org BYTEA, moved_seq BIGINT, moved_hash BYTEA)
LANGUAGE plpgsql AS $$
DECLARE
    i INT;
    head RECORD;
    moved BOOLEAN := false;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_orgs, 1), 0) LOOP
        INSERT INTO audit_heads (org_id, seq, hash) VALUES (p_orgs[i], 0, p_genesis)
            ON CONFLICT (org_id) DO NOTHING;
        SELECT h.seq, h.hash INTO head FROM audit_heads h WHERE h.org_id = p_orgs[i] FOR UPDATE;
        IF head.seq <> p_old_seq[i] OR head.hash <> p_old_hash[i] THEN
            moved := true;
            moved_org := p_orgs[i];
            moved_seq := head.seq;
            moved_hash := head.hash;
            RETURN NEXT;
        END IF;
    END LOOP;
    IF moved THEN
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_orgs, 1), 0) LOOP
        PERFORM set_config('coffer.org_id', encode(p_orgs[i], 'hex'), true);
        INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target, body,
                                  prev_hash, hash)
            SELECT u.org, u.seq, u.id, u.time, u.action, u.actor, u.outcome, u.target, u.body,
                   u.prev, u.hash
              FROM unnest(e_org, e_seq, e_id, e_time, e_action, e_actor, e_outcome, e_target,
                          e_body, e_prev, e_hash)
                   AS u(org, seq, id, time, action, actor, outcome, target, body, prev, hash)
             WHERE u.org = p_orgs[i];
        UPDATE audit_heads SET seq = p_new_seq[i], hash = p_new_hash[i] WHERE org_id = p_orgs[i];
    END LOOP;
    PERFORM set_config('coffer.org_id', '', true);
END
$$;
