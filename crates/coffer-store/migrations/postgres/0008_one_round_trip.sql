-- The two statements every secret read needs, each in one round trip and shared by all the
-- requests a node has under way.
--
-- Row-level security needs `coffer.org_id` set in the transaction before a tenant table is
-- touched. As separate statements that is BEGIN, set_config, the query and COMMIT: four
-- round trips. These functions set the organisation and run the statement inside one call,
-- in the caller's (implicit) transaction; they run with the caller's rights
-- (SECURITY INVOKER), so the policies still apply.

-- Append one batch of audit events (the `e_*` arrays, one element per event) to the chains
-- of `p_orgs` (ascending, so writers lock chains in one order and cannot deadlock). The
-- caller computed sequence numbers and hashes from the heads it believes current
-- (`p_old_seq`, `p_old_hash`): each head moves to (`p_new_seq`, `p_new_hash`) only if it is
-- still there, which also locks it until the commit.
--
-- Appended: one row with a NULL `moved_org`. If any chain moved (another node appended),
-- nothing is written and the rows name every chain of the batch whose head is not what the
-- caller expected, with its current head, for the caller to recompute and retry once.
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
    j INT;
    n INT := coalesce(array_length(p_orgs, 1), 0);
    added BIGINT := 0;
    rows BIGINT;
BEGIN
    FOR i IN 1 .. n LOOP
        UPDATE audit_heads SET seq = p_new_seq[i], hash = p_new_hash[i]
         WHERE org_id = p_orgs[i] AND seq = p_old_seq[i] AND hash = p_old_hash[i];
        IF NOT FOUND AND p_old_seq[i] = 0 THEN
            -- A new chain: start it, unless another node just did.
            INSERT INTO audit_heads (org_id, seq, hash)
                 VALUES (p_orgs[i], p_new_seq[i], p_new_hash[i])
                ON CONFLICT (org_id) DO NOTHING;
        END IF;
        IF NOT FOUND THEN
            -- Put back the heads this call already moved (still locked by it), and report
            -- every chain of the batch that is not where the caller thought.
            FOR j IN 1 .. i - 1 LOOP
                UPDATE audit_heads SET seq = p_old_seq[j], hash = p_old_hash[j]
                 WHERE org_id = p_orgs[j];
            END LOOP;
            RETURN QUERY
                SELECT u.org, coalesce(h.seq, 0), coalesce(h.hash, p_genesis)
                  FROM unnest(p_orgs, p_old_seq, p_old_hash) AS u(org, seq, hash)
                  LEFT JOIN audit_heads h ON h.org_id = u.org
                 WHERE coalesce(h.seq, 0) <> u.seq OR coalesce(h.hash, p_genesis) <> u.hash;
            RETURN;
        END IF;
    END LOOP;
    FOR i IN 1 .. n LOOP
        PERFORM set_config('coffer.org_id', encode(p_orgs[i], 'hex'), true);
        INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target, body,
                                  prev_hash, hash)
            SELECT u.org, u.seq, u.id, u.time, u.action, u.actor, u.outcome, u.target, u.body,
                   u.prev, u.hash
              FROM unnest(e_org, e_seq, e_id, e_time, e_action, e_actor, e_outcome, e_target,
                          e_body, e_prev, e_hash)
                   AS u(org, seq, id, time, action, actor, outcome, target, body, prev, hash)
             WHERE u.org = p_orgs[i];
        GET DIAGNOSTICS rows = ROW_COUNT;
        added := added + rows;
    END LOOP;
    PERFORM set_config('coffer.org_id', '', true);
    -- Every event belongs to one of the batch's chains: anything else is a caller's bug,
    -- and no event may be dropped silently.
    IF added <> coalesce(array_length(e_org, 1), 0) THEN
        RAISE EXCEPTION 'audit batch: % of % events belong to its chains', added,
            coalesce(array_length(e_org, 1), 0);
    END IF;
    RETURN QUERY SELECT NULL::BYTEA, NULL::BIGINT, NULL::BYTEA;
END
$$;

-- The current values of a batch of reads in one organisation, in one call. The caller
-- asks for every (environment, name) pair its reads need and gets the live values among
-- them (possibly more: any environment of `r_envs` with any name of `r_names`); each read
-- then picks its own pair nearest to its environment.
CREATE FUNCTION coffer_current_values(r_org BYTEA, r_envs BYTEA[], r_names TEXT[])
RETURNS TABLE (
    id BYTEA, org_id BYTEA, env_id BYTEA, name TEXT, current_version BIGINT, deleted BOOLEAN,
    updated_at BIGINT, param_id BYTEA, version BIGINT, is_secret BOOLEAN, action TEXT,
    actor_id BYTEA, created_at BIGINT, ciphertext BYTEA
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('coffer.org_id', encode(r_org, 'hex'), true);
    RETURN QUERY
        SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at,
               v.param_id, v.version, v.is_secret, v.action, v.actor_id, v.created_at,
               c.ciphertext
          FROM params p
          JOIN param_versions v ON v.param_id = p.id AND v.version = p.current_version
          LEFT JOIN credentials c ON c.id = v.credential_id
         WHERE p.org_id = r_org AND p.env_id = ANY (r_envs) AND p.name = ANY (r_names)
           AND NOT p.deleted;
    PERFORM set_config('coffer.org_id', '', true);
END
$$;
