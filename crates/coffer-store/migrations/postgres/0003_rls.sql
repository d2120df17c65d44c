-- Row-level security: a second wall behind the application's own scoping. Every tenant
-- table row is visible and writable only while the transaction's `coffer.org_id` setting
-- (hex of the organisation id, set with set_config(..., true)) names its organisation.
-- Without the setting nothing is visible. FORCE applies the policies to the table owner too.

CREATE FUNCTION coffer_current_org() RETURNS BYTEA LANGUAGE sql STABLE AS $$
    SELECT decode(NULLIF(current_setting('coffer.org_id', true), ''), 'hex')
$$;

ALTER TABLE tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_keys USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON projects USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

ALTER TABLE environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE environments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON environments USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

ALTER TABLE params ENABLE ROW LEVEL SECURITY;
ALTER TABLE params FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON params USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());

ALTER TABLE param_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE param_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON param_versions USING (org_id = coffer_current_org()) WITH CHECK (org_id = coffer_current_org());
