-- Compact audit events (issue 24; docs/audit.md, "How events are stored"). New events are
-- appended to audit_log instead of audit_events, which keeps the events written before
-- this migration; the two tables form one chain per organisation (audit_heads stays its
-- single head, locked by every append), and readers merge them by sequence number.

-- A chain is a small integer here rather than a 16-byte organisation id in every row and
-- index entry. No event content: readable across chains, like audit_heads.
CREATE TABLE audit_chains (
    chain  INT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BYTEA NOT NULL UNIQUE
);

-- Texts that repeat from event to event, interned per chain: the events' templates (their
-- JSON with one-byte markers where the values go) and fragments such as the actor, the
-- target and the user agent, as exact JSON text. Immutable: stored events refer to them.
CREATE TABLE audit_strings (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain  INT    NOT NULL REFERENCES audit_chains (chain),
    digest BYTEA  NOT NULL,   -- SHA-256 of text
    text   TEXT   NOT NULL,
    UNIQUE (chain, digest)
);

-- One event. `body` is its stored form (format byte 0: the JSON itself; 1: a template id
-- and the values of its holes), which renders to exactly the JSON that was hashed. The
-- predecessor hash is the hash of the row before it, so it is not stored again. action,
-- actor_id, outcome and target are copies for filtering. Columns are ordered so that the
-- fixed-width ones need no padding.
CREATE TABLE audit_log (
    seq      BIGINT NOT NULL,
    time     BIGINT NOT NULL,
    chain    INT    NOT NULL,
    action   TEXT   NOT NULL,
    actor_id BYTEA,
    outcome  TEXT   NOT NULL,
    target   TEXT   NOT NULL,
    hash     BYTEA  NOT NULL,
    body     BYTEA  NOT NULL,
    PRIMARY KEY (chain, seq)
);
-- Time grows with the table, so a block-range index answers time bounds for a few pages
-- instead of a B-tree entry per event (measured: 47 of ~310 bytes per event).
CREATE INDEX audit_log_time ON audit_log USING brin (time);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_strings_no_update BEFORE UPDATE OR DELETE ON audit_strings
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();
CREATE TRIGGER audit_chains_no_update BEFORE UPDATE OR DELETE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION coffer_append_only();

-- The chain of the organisation the transaction is scoped to (see 0003), once per statement.
CREATE FUNCTION coffer_current_chain() RETURNS INT LANGUAGE sql STABLE AS $$
    SELECT chain FROM audit_chains WHERE org_id = coffer_current_org()
$$;

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_log
    USING (chain = (SELECT coffer_current_chain())) WITH CHECK (chain = (SELECT coffer_current_chain()));
ALTER TABLE audit_strings ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_strings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_strings
    USING (chain = (SELECT coffer_current_chain())) WITH CHECK (chain = (SELECT coffer_current_chain()));

-- The chain of p_org, created on first use.
CREATE FUNCTION coffer_audit_chain(p_org BYTEA) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    v_chain INT;
BEGIN
    SELECT chain INTO v_chain FROM audit_chains WHERE org_id = p_org;
    IF NOT FOUND THEN
        INSERT INTO audit_chains (org_id) VALUES (p_org) ON CONFLICT (org_id) DO NOTHING;
        SELECT chain INTO v_chain FROM audit_chains WHERE org_id = p_org;
    END IF;
    RETURN v_chain;
END
$$;

-- Intern texts in p_org's chain: the result is the chain, then each text's id in input
-- order. Committed on its own, before the events that refer to the texts: an interned text
-- is never removed, so a node may keep the ids whatever becomes of those events.
CREATE FUNCTION coffer_audit_intern(p_org BYTEA, p_digests BYTEA[], p_texts TEXT[])
RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    v_chain INT;
    v_ids BIGINT[];
BEGIN
    PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
    v_chain := coffer_audit_chain(p_org);
    INSERT INTO audit_strings (chain, digest, text)
    SELECT v_chain, u.d, u.t FROM unnest(p_digests, p_texts) AS u(d, t)
    ON CONFLICT (chain, digest) DO NOTHING;
    SELECT array_agg(s.id ORDER BY u.o) INTO v_ids
      FROM unnest(p_digests) WITH ORDINALITY AS u(d, o)
      JOIN audit_strings s ON s.chain = v_chain AND s.digest = u.d;
    IF coalesce(cardinality(v_ids), 0) <> cardinality(p_digests) THEN
        RAISE EXCEPTION 'audit strings not interned';
    END IF;
    RETURN v_chain::BIGINT || v_ids;
END
$$;

-- coffer_append_audit_checked (0010) appending to audit_log: e_packed[i] is event i's
-- stored form and e_body[i] its JSON, used only to hash when the proposed hashes do not
-- hold, never stored. Everything else (the locked head, the read checks, the proposal, the
-- result) is as in 0010.
CREATE FUNCTION coffer_append_audit_packed(
    p_org BYTEA, p_genesis BYTEA,
    e_time BIGINT[], e_action TEXT[], e_actor BYTEA[],
    e_outcome TEXT[], e_target TEXT[], e_body TEXT[], e_packed BYTEA[],
    c_event INT[], c_env BYTEA[], c_name TEXT[], c_param BYTEA[], c_version BIGINT[],
    p_head_seq BIGINT, p_head_hash BYTEA, p_hashes BYTEA[]
)
RETURNS BYTEA[]
LANGUAGE plpgsql AS $$
DECLARE
    v_stale INT[] := '{}';
    v_seqs BIGINT[] := '{}';
    v_hashes BYTEA[] := '{}';
    v_out BYTEA[] := '{}';
    v_seq BIGINT;
    v_hash BYTEA;
    v_scope TEXT;
    v_body TEXT;
    v_chain INT;
    i INT := 0;
BEGIN
    SELECT a.seq, a.hash, set_config('coffer.org_id', encode(p_org, 'hex'), true)
      INTO v_seq, v_hash, v_scope
      FROM audit_heads a WHERE a.org_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM set_config('coffer.org_id', encode(p_org, 'hex'), true);
        INSERT INTO audit_heads (org_id, seq, hash) VALUES (p_org, 0, p_genesis)
            ON CONFLICT (org_id) DO NOTHING;
        SELECT a.seq, a.hash INTO v_seq, v_hash FROM audit_heads a WHERE a.org_id = p_org FOR UPDATE;
    END IF;
    v_chain := coffer_audit_chain(p_org);
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
            INSERT INTO audit_log (seq, time, chain, action, actor_id, outcome, target, hash, body)
            SELECT v_seq + u.o, u.time, v_chain, u.action, u.actor, u.outcome, u.target,
                   u.hash, u.packed
              FROM unnest(e_time, e_action, e_actor, e_outcome, e_target, e_packed, p_hashes)
                   WITH ORDINALITY AS u(time, action, actor, outcome, target, packed, hash, o)
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
            v_hashes[i] := NULL;
            v_out[i] := NULL;
        ELSE
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
        INSERT INTO audit_log (seq, time, chain, action, actor_id, outcome, target, hash, body)
        SELECT u.seq, u.time, v_chain, u.action, u.actor, u.outcome, u.target, u.hash, u.packed
          FROM unnest(v_seqs, e_time, e_action, e_actor, e_outcome, e_target, e_packed, v_hashes)
               AS u(seq, time, action, actor, outcome, target, packed, hash)
         WHERE u.seq > 0
    )
    UPDATE audit_heads SET seq = v_seq, hash = v_hash WHERE org_id = p_org;
    RETURN v_out;
END
$$;

-- A parameter's new version with its audit event, as coffer_append_version_audited_at
-- (0013), the event appended to audit_log.
CREATE FUNCTION coffer_append_version_audited_packed(
    p_org BYTEA, p_env BYTEA, p_param BYTEA, p_name TEXT, p_expected BIGINT,
    p_version BIGINT, p_deleted BOOLEAN, p_created_at BIGINT,
    p_credential BYTEA, p_ciphertext BYTEA, p_term BIGINT,
    p_is_secret BOOLEAN, p_action TEXT, p_actor BYTEA,
    p_genesis BYTEA, e_time BIGINT, e_action TEXT, e_actor BYTEA,
    e_outcome TEXT, e_target TEXT, e_body TEXT, e_packed BYTEA
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
    v_at := coffer_append_audit_packed(p_org, p_genesis,
        ARRAY[e_time], ARRAY[e_action], ARRAY[e_actor], ARRAY[e_outcome],
        ARRAY[e_target], ARRAY[e_body], ARRAY[e_packed],
        '{}'::INT[], '{}'::BYTEA[], '{}'::TEXT[], '{}'::BYTEA[], '{}'::BIGINT[],
        NULL, NULL, NULL);
    RETURN 'ok:' || encode(v_at[1], 'hex');
END
$$;
