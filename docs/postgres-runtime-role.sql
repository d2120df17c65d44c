-- Privileges of Coffer's runtime role on PostgreSQL. Run as the schema owner after
-- `coffer migrate`, in the Coffer database; replace coffer_app with your runtime role.
-- Run it again after every `coffer migrate`: a migration may add or recreate tables.
-- The runtime role can read and write rows but cannot change the schema (no DDL: it owns
-- nothing and, from PostgreSQL 15 on, has no CREATE on the public schema), cannot drop the
-- append-only triggers or the row-level security policies, and cannot UPDATE or DELETE
-- audit rows or UPDATE or DELETE value history directly (deleting a parameter, environment,
-- project or organisation removes its versions by cascade). Functions are called through
-- PostgreSQL's default EXECUTE grant to PUBLIC.
GRANT USAGE ON SCHEMA public TO coffer_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO coffer_app;
REVOKE UPDATE, DELETE ON audit_events, audit_log, audit_strings, audit_chains, audit_checkpoints, param_versions FROM coffer_app;
REVOKE INSERT, UPDATE, DELETE ON _sqlx_migrations FROM coffer_app;
-- Archive records and anchors are written by whoever prunes (the owner role): the runtime
-- role may read them only, so it can neither move an anchor nor delete events.
REVOKE INSERT, UPDATE, DELETE ON audit_segments, audit_segment_chains, audit_anchors FROM coffer_app;
