-- Runbook step 2: the unique index on the grain, which REFRESH MATERIALIZED VIEW CONCURRENTLY needs.
-- Run: psql -d <database> -f include/sql/ops/mv_yango_cabinet_claims_unique_index.sql
-- CONCURRENTLY cannot run inside a transaction block: run this file as is (psql autocommit), not in
-- BEGIN ... COMMIT and not with psql -1.
-- Caution: if a build fails (e.g. duplicates appeared), PostgreSQL leaves an INVALID index behind and
-- IF NOT EXISTS then silently accepts it. `mv-refresh prepare-concurrently` checks pg_index.indisvalid,
-- drops an invalid leftover and rebuilds; by hand, check with step 3 below and
-- DROP INDEX CONCURRENTLY ops.ux_mv_yango_cabinet_claims_for_collection_grain before retrying.

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ux_mv_yango_cabinet_claims_for_collection_grain ON ops.mv_yango_cabinet_claims_for_collection (driver_id, milestone_value);

-- Runbook step 3: the index exists (1 row) and is valid (indisvalid = true).
SELECT 
    schemaname,
    indexname,
    indexdef
FROM pg_indexes
WHERE schemaname = 'ops'
  AND tablename = 'mv_yango_cabinet_claims_for_collection'
  AND indexname = 'ux_mv_yango_cabinet_claims_for_collection_grain';

SELECT indisvalid
FROM pg_index
WHERE indexrelid = 'ops.ux_mv_yango_cabinet_claims_for_collection_grain'::regclass;
