-- AWS KMS and PKCS#11 seals keep the root key here, wrapped by their key.
ALTER TABLE seal_config ADD COLUMN sealed_root BYTEA;

-- An organisation's own key (bring your own key) wraps its new tenant key terms. One
-- external key belongs to at most one organisation.
ALTER TABLE orgs ADD COLUMN external_key TEXT;
CREATE UNIQUE INDEX orgs_external_key ON orgs (external_key) WHERE external_key IS NOT NULL;
