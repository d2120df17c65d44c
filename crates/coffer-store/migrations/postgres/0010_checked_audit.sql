-- Audit appends that confirm reads answered from a node's cache, in fewer statements.
--
-- A node may answer a secret read from its own cache of current values; the read is only
-- released if, when its audit event is appended, the database still holds what the cache
-- said. This function checks that and appends one organisation's batch of events in one
-- call and one transaction: events of requests whose reads no longer hold are not appended
-- (those requests are answered again from the database and audited then); the others are
-- numbered and chained exactly as coffer_append_audit (0008) does. That function stays for
-- nodes of the previous release during a rolling upgrade.
--
-- Why one organisation per call: row-level security needs the organisation set before the
-- statements that touch its rows, and a transaction that holds one chain's lock at a time
-- cannot deadlock with another node's. (A recursive query computing the chain instead of
-- the loop below was measured slower: its hash joins and executor start-up cost more than
-- the loop.)
--
-- Events (e_*, one element each) belong to p_org. Checks (c_*, one element per row): event
-- c_event (1-based) read the parameter c_name as seen through environment c_env; c_param
-- NULL means no live parameter of that name may exist there, otherwise the live one must be
-- c_param at version c_version.
--
-- The caller may propose the chain: p_hashes[i] is event i's hash if the head is still
-- (p_head_seq, p_head_hash) and every event is appended (a node that appended last to a
-- chain knows its head, and computes the hashes as verification does). If so they are
-- stored as proposed, without hashing here, and the result is an empty array. Otherwise
-- the function numbers and hashes the events itself, and element i of the result is event
-- i's sequence number (8 bytes, big-endian) followed by its chain hash, or NULL for an
-- event that was not appended. (One array returned as a plain value: a table of results
-- would be materialised on every call.)
-- Events are identified by their place in the chain (org_id, seq, the primary key); no
-- query looks one up by its id, which is a UUIDv7 made per event and part of the hashed
-- body. Its unique index was maintained on every append for nothing: about a tenth of the
-- audit writer's database time.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_id_key;

CREATE FUNCTION coffer_append_audit_checked(
    p_org BYTEA, p_genesis BYTEA,
    e_id BYTEA[], e_time BIGINT[], e_action TEXT[], e_actor BYTEA[],
    e_outcome TEXT[], e_target TEXT[], e_body TEXT[],
    c_event INT[], c_env BYTEA[], c_name TEXT[], c_param BYTEA[], c_version BIGINT[],
    p_head_seq BIGINT, p_head_hash BYTEA, p_hashes BYTEA[]
)
RETURNS BYTEA[]
LANGUAGE plpgsql AS $$
DECLARE
    v_stale INT[] := '{}';
    v_seqs BIGINT[] := '{}';
    v_prev BYTEA[] := '{}';
    v_hashes BYTEA[] := '{}';
    v_out BYTEA[] := '{}';
    v_seq BIGINT;
    v_hash BYTEA;
    v_scope TEXT;
    v_body TEXT;
    i INT := 0;
BEGIN
    -- The chain's head, locked until commit (appends to one chain, from any node, queue
    -- here), and the organisation for row-level security, set in the same statement: every
    -- statement costs an executor start-up, a large part of an append.
    SELECT a.seq, a.hash, set_config('coffer.org_id', encode(p_org, 'hex'), true)
      INTO v_seq, v_hash, v_scope
      FROM audit_heads a WHERE a.org_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
        INSERT INTO audit_heads (org_id, seq, hash) VALUES (p_org, 0, p_genesis)
            ON CONFLICT (org_id) DO NOTHING;
        SELECT a.seq, a.hash INTO v_seq, v_hash FROM audit_heads a WHERE a.org_id = p_org FOR UPDATE;
    END IF;
    IF cardinality(c_event) > 0 THEN
        SELECT coalesce(array_agg(c.ev), '{}') INTO v_stale
          FROM unnest(c_event, c_env, c_name, c_param, c_version) AS c(ev, env, pname, param, ver)
          LEFT JOIN params p ON p.org_id = p_org AND p.env_id = c.env AND p.name = c.pname
                            AND NOT p.deleted
         WHERE CASE WHEN c.param IS NULL THEN p.id IS NOT NULL
                    ELSE p.id IS NULL OR p.id <> c.param OR p.current_version <> c.ver
               END;
    END IF;
    IF v_seq = p_head_seq AND v_hash = p_head_hash AND cardinality(v_stale) = 0
       AND cardinality(p_hashes) = cardinality(e_body) AND cardinality(e_body) > 0 THEN
        WITH appended AS (
            INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target,
                                      body, prev_hash, hash)
            SELECT p_org, v_seq + u.o, u.id, u.time, u.action, u.actor, u.outcome, u.target,
                   u.body, CASE WHEN u.o = 1 THEN v_hash ELSE p_hashes[u.o - 1] END, u.hash
              FROM unnest(e_id, e_time, e_action, e_actor, e_outcome, e_target, e_body, p_hashes)
                   WITH ORDINALITY AS u(id, time, action, actor, outcome, target, body, hash, o)
        )
        UPDATE audit_heads SET seq = v_seq + cardinality(p_hashes),
                               hash = p_hashes[cardinality(p_hashes)]
         WHERE org_id = p_org;
        RETURN '{}';
    END IF;
    FOREACH v_body IN ARRAY e_body LOOP
        i := i + 1;
        IF i = ANY (v_stale) THEN
            v_seqs[i] := 0;
            v_prev[i] := NULL;
            v_hashes[i] := NULL;
            v_out[i] := NULL;
        ELSE
            v_prev[i] := v_hash;
            v_seq := v_seq + 1;
            -- The hash coffer_crypto::audit defines (see 0008).
            v_hash := sha256('coffer/audit/v1'::bytea || v_hash || int8send(v_seq)
                             || convert_to(v_body, 'UTF8'));
            v_seqs[i] := v_seq;
            v_hashes[i] := v_hash;
            v_out[i] := int8send(v_seq) || v_hash;
        END IF;
    END LOOP;
    WITH appended AS (
        INSERT INTO audit_events (org_id, seq, id, time, action, actor_id, outcome, target,
                                  body, prev_hash, hash)
        SELECT p_org, u.seq, u.id, u.time, u.action, u.actor, u.outcome, u.target, u.body,
               u.prev, u.hash
          FROM unnest(v_seqs, e_id, e_time, e_action, e_actor, e_outcome, e_target, e_body,
                      v_prev, v_hashes)
               AS u(seq, id, time, action, actor, outcome, target, body, prev, hash)
         WHERE u.seq > 0
    )
    UPDATE audit_heads SET seq = v_seq, hash = v_hash WHERE org_id = p_org;
    RETURN v_out;
END
$$;
