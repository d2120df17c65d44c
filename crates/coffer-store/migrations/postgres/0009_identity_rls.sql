-- Row-level security on every table that belongs to an organisation, not only its data:
-- organisations themselves, memberships, sessions, API keys, invitations, and the stored
-- ciphertexts. A transaction sees rows only through the scope it set (set_config(..., true)):
--
--   coffer.org_id      one organisation's rows;
--   coffer.user_id     one user's memberships and sessions, and the organisations they
--                      belong to (listing your organisations, your sessions);
--   coffer.token_hash  the one session, API key or invitation with that token hash (the
--                      lookup that comes before the organisation is known: whoever can set
--                      it already holds the token);
--   coffer.system      identity rows of all organisations, for maintenance jobs (purging
--                      expired sessions, listing organisations for key maintenance).
--
-- Tenant data (projects, values, keys, audit) stays scoped by organisation only. Without
-- a scope nothing is visible.

CREATE FUNCTION coffer_current_user() RETURNS BYTEA LANGUAGE sql STABLE AS $$
    SELECT decode(NULLIF(current_setting('coffer.user_id', true), ''), 'hex')
$$;
CREATE FUNCTION coffer_current_token() RETURNS BYTEA LANGUAGE sql STABLE AS $$
    SELECT decode(NULLIF(current_setting('coffer.token_hash', true), ''), 'hex')
$$;
CREATE FUNCTION coffer_system_scope() RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('coffer.system', true), '') = 'on'
$$;

-- Ciphertexts carry their organisation, so they can be walled off like everything else.
-- (The owner reads param_versions past its policy for the backfill, once.)
ALTER TABLE credentials ADD COLUMN org_id BYTEA;
ALTER TABLE param_versions NO FORCE ROW LEVEL SECURITY;
UPDATE credentials c SET org_id = v.org_id FROM param_versions v WHERE v.credential_id = c.id;
ALTER TABLE param_versions FORCE ROW LEVEL SECURITY;
-- A ciphertext no version refers to cannot be read by anything.
DELETE FROM credentials WHERE org_id IS NULL;
ALTER TABLE credentials ALTER COLUMN org_id SET NOT NULL;
ALTER TABLE credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON credentials
    USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

-- Each table has a read policy for every scope that may look, and a narrower write policy
-- (insert, update, delete): only the organisation's own scope or maintenance may change
-- rows, except that the user and token scopes may end sessions (logout, "sign out
-- everywhere"). Permissive policies add up: reading passes either.

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON memberships FOR SELECT
    USING (org_id = coffer_current_org() OR user_id = coffer_current_user() OR coffer_system_scope());
CREATE POLICY tenant_write ON memberships
    USING (org_id = coffer_current_org() OR coffer_system_scope())
    WITH CHECK (org_id = coffer_current_org() OR coffer_system_scope());

ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON orgs FOR SELECT
    USING (id = coffer_current_org() OR coffer_system_scope()
           OR EXISTS (SELECT 1 FROM memberships m
                       WHERE m.org_id = orgs.id AND m.user_id = coffer_current_user()));
CREATE POLICY tenant_write ON orgs
    USING (id = coffer_current_org() OR coffer_system_scope())
    WITH CHECK (id = coffer_current_org() OR coffer_system_scope());

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON sessions FOR SELECT
    USING (org_id = coffer_current_org() OR user_id = coffer_current_user()
           OR token_hash = coffer_current_token() OR coffer_system_scope());
CREATE POLICY tenant_write ON sessions
    USING (org_id = coffer_current_org() OR coffer_system_scope())
    WITH CHECK (org_id = coffer_current_org() OR coffer_system_scope());
CREATE POLICY session_end ON sessions FOR DELETE
    USING (user_id = coffer_current_user() OR token_hash = coffer_current_token());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON api_keys FOR SELECT
    USING (org_id = coffer_current_org() OR key_hash = coffer_current_token() OR coffer_system_scope());
CREATE POLICY tenant_write ON api_keys
    USING (org_id = coffer_current_org() OR coffer_system_scope())
    WITH CHECK (org_id = coffer_current_org() OR coffer_system_scope());

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON invitations FOR SELECT
    USING (org_id = coffer_current_org() OR token_hash = coffer_current_token() OR coffer_system_scope());
CREATE POLICY tenant_write ON invitations
    USING (org_id = coffer_current_org() OR coffer_system_scope())
    WITH CHECK (org_id = coffer_current_org() OR coffer_system_scope());
