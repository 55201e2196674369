-- V003: who may read and write the ops schema is decided by explicit grants (docs/security.md).
--
-- Nothing in ops is readable by PUBLIC. The log and the health views are operational data: no row data
-- of the views (the engine never stores the DETAIL of an error, nor another session's SQL), but error
-- messages name roles, pids and, for a lock timeout, who blocked the refresh and in which lock mode. So
-- readers are granted by name: see
-- include/sql/ops/least_privilege.sql, which also grants the refreshing role what it needs.
--
-- This migration creates no role and grants nothing to a named role: role names are the DBA's, and
-- CREATE ROLE needs CREATEROLE, which the role running `mv-refresh init-db` need not have. It only takes
-- away what PUBLIC could have had, so it runs for any owner of the ops objects, superuser or not.
-- REVOKE is idempotent (revoking what was never granted does nothing), so replaying this file is safe.

-- Nobody may create objects in ops except its owner and whom the owner grants CREATE: an object planted
-- in ops (a table, a function, an operator) could otherwise shadow ours. USAGE is left as it is: readers
-- of the views that live in ops (the Yango chain) may have it through PUBLIC on purpose.
REVOKE CREATE ON SCHEMA ops FROM PUBLIC;

-- The log, the catalog mirror and the migration bookkeeping: by grant only.
REVOKE ALL ON TABLE ops.mv_refresh_log, ops.mv_catalog, ops.schema_migrations FROM PUBLIC;
REVOKE ALL ON SEQUENCE ops.mv_refresh_log_id_seq FROM PUBLIC;

-- The health views: by grant only. They read the log through ops.mv_health_of, which runs with the
-- caller's rights (SECURITY INVOKER), so a health reader needs SELECT on ops.mv_refresh_log as well.
REVOKE ALL ON TABLE ops.v_mv_health, ops.v_yango_cabinet_claims_mv_health FROM PUBLIC;

-- ops.mv_health_of keeps PostgreSQL's default EXECUTE for PUBLIC, on purpose: it is SECURITY INVOKER,
-- so it reads the log with the caller's rights and shows nobody anything their own grants do not. Revoking
-- it would protect nothing and would break readers granted "SELECT ON ALL TABLES IN SCHEMA ops" (the
-- health views call it). least_privilege.sql still grants EXECUTE by name, in case a DBA revokes it.

COMMENT ON TABLE ops.mv_refresh_log IS
    'One row per materialized-view refresh attempt (mv-refresh). RUNNING, then OK / ERROR / SKIPPED / ABANDONED. '
    'Not readable by PUBLIC (V003): grant readers SELECT, the refreshing role SELECT, INSERT, UPDATE.';
