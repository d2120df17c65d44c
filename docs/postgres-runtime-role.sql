-- Privileges of Coffer's runtime role on PostgreSQL. Run as the schema owner after
-- `coffer migrate`, in the Coffer database; replace coffer_app with your runtime role.
-- The runtime role can read and write rows but cannot change the schema (no DDL: it owns
-- nothing and has no CREATE on the schema), cannot drop the append-only triggers or the
-- row-level security policies, and cannot UPDATE or DELETE history or audit rows.
GRANT USAGE ON SCHEMA public TO coffer_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO coffer_app;
REVOKE UPDATE, DELETE ON audit_events, audit_checkpoints, param_versions FROM coffer_app;
REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM coffer_app;
