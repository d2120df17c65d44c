-- The two statements every secret read needs, each in one round trip and shared by all the
-- requests a node has under way.
--
-- Row-level security needs `coffer.org_id` set in the transaction before a tenant table is
-- touched. As separate statements that is BEGIN, set_config, the query and COMMIT: four
-- round trips. These functions set the organisation and run the statement inside one call,
-- in the caller's (implicit) transaction; they run with the caller's rights
-- (SECURITY INVOKER), so the policies still apply.

-- Append one batch of audit events (the `e_*` arrays, one element per event, in order) to
-- the chains of `p_orgs` (ascending). Each chain's head row is locked (in that order, so
-- writers on several nodes queue instead of deadlocking), the events get the next sequence
-- numbers and their chain hashes here, under the lock, and the heads move on; the result is
-- (seq, hash) per event, in input order. The hash is the one coffer_crypto::audit defines:
-- SHA-256("coffer/audit/v1" || previous hash || seq as 8 bytes big-endian || body as UTF-8);
-- every verification recomputes it in Rust, so a difference could not go unnoticed.
CREATE FUNCTION coffer_append_audit(
    p_orgs BYTEA[], p_genesis BYTEA,
    e_org BYTEA[], e_id BYTEA[], e_time BIGINT[], e_action TEXT[], e_actor BYTEA[],
    e_outcome TEXT[], e_target TEXT[], e_body TEXT[]
)
RETURNS TABLE (seq BIGINT, hash BYTEA)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_orgs INT := coalesce(array_length(p_orgs, 1), 0);
    n INT := coalesce(array_length(e_org, 1), 0);
    head_seq BIGINT[] := '{}';
    head_hash BYTEA[] := '{}';
    out_seq BIGINT[] := '{}';
    out_prev BYTEA[] := '{}';
    out_hash BYTEA[] := '{}';
    i INT;
    k INT;
    h RECORD;
BEGIN
    FOR k IN 1 .. n_orgs LOOP
        INSERT INTO audit_heads (org_id, seq, hash) VALUES (p_orgs[k], 0, p_genesis)
            ON CONFLICT (org_id) DO NOTHING;
        SELECT a.seq, a.hash INTO h FROM audit_heads a WHERE a.org_id = p_orgs[k] FOR UPDATE;
        head_seq := head_seq || h.seq;
        head_hash := head_hash || h.hash;
    END LOOP;
    FOR i IN 1 .. n LOOP
        k := array_position(p_orgs, e_org[i]);
        IF k IS NULL THEN
            RAISE EXCEPTION 'audit batch: event % belongs to no chain of the batch', i;
        END IF;
        head_seq[k] := head_seq[k] + 1;
        out_seq := out_seq || head_seq[k];
        out_prev := out_prev || head_hash[k];
        head_hash[k] := sha256('coffer/audit/v1'::bytea || head_hash[k] || int8send(head_seq[k])
                               || convert_to(e_body[i], 'UTF8'));
        out_hash := out_hash || head_hash[k];
    END LOOP;
    FOR k IN 1 .. n_orgs LOOP
        PERFORM set_config('coffer.org_id', encode(p_orgs[k], 'hex'), true);
        INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target, body,
                                  prev_hash, hash)
            SELECT u.org, u.seq, u.id, u.time, u.action, u.actor, u.outcome, u.target, u.body,
                   u.prev, u.hash
              FROM unnest(e_org, out_seq, e_id, e_time, e_action, e_actor, e_outcome, e_target,
                          e_body, out_prev, out_hash)
                   AS u(org, seq, id, time, action, actor, outcome, target, body, prev, hash)
             WHERE u.org = p_orgs[k];
        UPDATE audit_heads SET seq = head_seq[k], hash = head_hash[k] WHERE org_id = p_orgs[k];
    END LOOP;
    PERFORM set_config('coffer.org_id', '', true);
    RETURN QUERY SELECT u.s, u.h FROM unnest(out_seq, out_hash) WITH ORDINALITY AS u(s, h, o)
                  ORDER BY u.o;
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
