-- V002: the catalog as the database sees it, and the health views (docs/architecture.md).
--
-- ops.mv_catalog mirrors include/mv_refresh.yaml (written by `mv-refresh init-db` and by every refresh
-- task), so health is computed in SQL, from the database clock, with each view's own thresholds, and
-- anything that can run SQL (psql, a dashboard, an API) reads the same answer as the DAG's sensor.

CREATE TABLE IF NOT EXISTS ops.mv_catalog (
    schema_name      text    NOT NULL,
    mv_name          text    NOT NULL,
    position         integer NOT NULL,
    is_critical      boolean NOT NULL DEFAULT false,
    refresh_mode     text    NOT NULL DEFAULT 'auto',
    grain            text[],
    upstream         text[]  NOT NULL DEFAULT '{}',
    warn_after_hours numeric NOT NULL DEFAULT 24,
    crit_after_hours numeric NOT NULL DEFAULT 48,
    synced_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schema_name, mv_name),
    CONSTRAINT mv_catalog_mode_check CHECK (refresh_mode IN ('auto', 'concurrently', 'plain')),
    CONSTRAINT mv_catalog_thresholds_check CHECK (0 < warn_after_hours AND warn_after_hours < crit_after_hours)
);

COMMENT ON TABLE ops.mv_catalog IS
    'The materialized views mv-refresh manages (mirror of include/mv_refresh.yaml), in canonical order.';

-- The health of one view, as one row. Buckets (docs/architecture.md): OK below warn (24 h), WARN from warn to
-- crit inclusive (24-48 h), CRIT above crit, NO_REFRESH when there has never been an OK refresh.
-- last_error is the error of the newest failed attempt since the last OK refresh (NULL once an OK
-- refresh followed it): an error that has been fixed is not news.
CREATE OR REPLACE FUNCTION ops.mv_health_of(
    p_schema_name text,
    p_mv_name text,
    p_warn_after_hours numeric DEFAULT 24,
    p_crit_after_hours numeric DEFAULT 48
)
RETURNS TABLE (
    last_ok_refresh_finished_at timestamptz,
    hours_since_ok_refresh numeric,
    status_bucket text,
    last_status text,
    last_error text,
    rows_after_refresh bigint
)
LANGUAGE sql
STABLE
AS $$
    SELECT ok.refresh_finished_at,
           round(extract(epoch FROM now() - ok.refresh_finished_at) / 3600, 2),
           CASE
               WHEN ok.refresh_finished_at IS NULL THEN 'NO_REFRESH'
               WHEN now() - ok.refresh_finished_at < p_warn_after_hours * interval '1 hour' THEN 'OK'
               WHEN now() - ok.refresh_finished_at <= p_crit_after_hours * interval '1 hour' THEN 'WARN'
               ELSE 'CRIT'
           END,
           latest.status,
           failed.error_message,
           ok.rows_after_refresh
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT l.refresh_started_at, l.refresh_finished_at, l.rows_after_refresh
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name AND l.status = 'OK'
        ORDER BY l.refresh_finished_at DESC, l.id DESC
        LIMIT 1
    ) AS ok ON true
    LEFT JOIN LATERAL (
        SELECT l.status
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name
        ORDER BY l.refresh_started_at DESC, l.id DESC
        LIMIT 1
    ) AS latest ON true
    LEFT JOIN LATERAL (
        SELECT l.error_message
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name
          AND l.status IN ('ERROR', 'SKIPPED', 'ABANDONED')
          AND (ok.refresh_started_at IS NULL OR l.refresh_started_at > ok.refresh_started_at)
        ORDER BY l.refresh_started_at DESC, l.id DESC
        LIMIT 1
    ) AS failed ON true
$$;

-- Every view of the catalog, in canonical order. The first columns are those of the Yango view (with
-- schema_name and mv_name first); the thresholds and flags follow.
CREATE OR REPLACE VIEW ops.v_mv_health AS
SELECT c.schema_name,
       c.mv_name,
       h.last_ok_refresh_finished_at,
       h.hours_since_ok_refresh,
       h.status_bucket,
       h.last_status,
       h.last_error,
       h.rows_after_refresh,
       c.is_critical,
       c.warn_after_hours,
       c.crit_after_hours,
       c.position
FROM ops.mv_catalog AS c
CROSS JOIN LATERAL ops.mv_health_of(c.schema_name, c.mv_name, c.warn_after_hours, c.crit_after_hours) AS h
ORDER BY c.position;

-- The runbook's view: exactly one row, columns in this order (its Python snippet reads them by
-- position). Exactly one row even before the catalog is synced (then with the default thresholds).
CREATE OR REPLACE VIEW ops.v_yango_cabinet_claims_mv_health AS
SELECT h.last_ok_refresh_finished_at,
       h.hours_since_ok_refresh,
       h.status_bucket,
       h.last_status,
       h.last_error,
       h.rows_after_refresh
FROM (VALUES ('ops'::text, 'mv_yango_cabinet_claims_for_collection'::text)) AS v (schema_name, mv_name)
LEFT JOIN ops.mv_catalog AS c ON c.schema_name = v.schema_name AND c.mv_name = v.mv_name
CROSS JOIN LATERAL ops.mv_health_of(
    v.schema_name, v.mv_name, coalesce(c.warn_after_hours, 24), coalesce(c.crit_after_hours, 48)
) AS h;

COMMENT ON VIEW ops.v_mv_health IS 'Freshness of every catalog view: OK / WARN / CRIT / NO_REFRESH, from the database clock.';
COMMENT ON VIEW ops.v_yango_cabinet_claims_mv_health IS 'The runbook''s health row for ops.mv_yango_cabinet_claims_for_collection.';
