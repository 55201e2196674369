-- Runbook step 1: are there duplicates on the grain of ops.mv_yango_cabinet_claims_for_collection?
-- Run: psql -d <database> -f include/sql/ops/yango_cabinet_claims_mv_duplicates.sql
-- (Same check as `mv-refresh prepare-concurrently ops.mv_yango_cabinet_claims_for_collection`, step 1.)
-- Expected: duplicate_grains = 0 and Query 2 returns 0 rows. Otherwise resolve the duplicates before
-- creating the unique index (REFRESH ... CONCURRENTLY needs it).

-- Query 1: summary
SELECT count(*)                                      AS total_rows,
       count(DISTINCT (driver_id, milestone_value))  AS distinct_grains,
       count(*) - count(DISTINCT (driver_id, milestone_value)) AS extra_rows,
       (SELECT count(*) FROM (
            SELECT 1
            FROM ops.mv_yango_cabinet_claims_for_collection
            GROUP BY driver_id, milestone_value
            HAVING COUNT(*) > 1) AS d)               AS duplicate_grains
FROM ops.mv_yango_cabinet_claims_for_collection;

-- Query 2: grains with more than one row (top 200)
SELECT 
    driver_id,
    milestone_value,
    COUNT(*) AS count_duplicates
FROM ops.mv_yango_cabinet_claims_for_collection
GROUP BY driver_id, milestone_value
HAVING COUNT(*) > 1
ORDER BY count_duplicates DESC
LIMIT 200;
