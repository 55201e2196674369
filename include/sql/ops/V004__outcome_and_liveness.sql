-- V004: health judged by the latest *outcome* and by the liveness of RUNNING rows, at a cost that does not
-- grow with the log (docs/architecture.md, "The log contract").
--
-- * ops.mv_refresh_backend_gone(pid, backend_start): NULL while the backend that wrote a RUNNING row is alive,
--   else the message the row is finished with. The one liveness rule of the project: the engine reaps with it,
--   the health views and the audit judge with it. A RUNNING row is dead when no session has its pid or, where
--   both start times are visible, the session with its pid started at another time (the pid was reused).
--   backend_start is hidden from roles without pg_read_all_stats: then the pid alone keeps the row alive
--   (never call dead what cannot be proven dead).
-- * ops.mv_refresh_outcome_of(schema, name): what the log says about one view, read through indexes only, so
--   its cost is the same for 100 rows or 100 million:
--     - the newest OK refresh (by when it finished);
--     - last_status: RUNNING while a refresh's backend is alive; ABANDONED for a RUNNING row whose backend is
--       gone (it is the newest attempt: refreshes of one view run one at a time, and the next one reaps it);
--       otherwise the status of the newest *finished* row. A SKIPPED row written while another refresh held
--       the view finishes before that refresh does, so the later OK wins, as it should.
--     - last_error: the newest failure that finished after the newest OK finished (a fixed error is not news);
--       for a dead RUNNING row, the message saying its backend is gone.
-- * ops.mv_health_of keeps its signature and columns (the runbook reads them by position) and now reads
--   ops.mv_refresh_outcome_of; hours_since_ok_refresh is rounded to 2 decimals except where that would cross
--   the bucket's edge, so the number shown never contradicts the bucket beside it (23.999 h is OK and shows
--   23.99, not 24.00; 48.001 h is CRIT and shows 48.01, not 48.00).

CREATE OR REPLACE FUNCTION ops.mv_refresh_backend_gone(p_backend_pid integer, p_backend_start timestamptz)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT CASE WHEN NOT EXISTS (
                    SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                    WHERE a.pid = p_backend_pid
                      AND (a.backend_start IS NULL OR p_backend_start IS NULL
                           OR a.backend_start = p_backend_start))
                THEN format('backend pid %s (started %s) is gone; the refresh never reported back',
                            coalesce(p_backend_pid::text, '?'), coalesce(p_backend_start::text, '?'))
           END
$$;

COMMENT ON FUNCTION ops.mv_refresh_backend_gone(integer, timestamptz) IS
    'NULL while the backend of a RUNNING log row is alive; else why the row is dead (judged by pid and backend start, never by age).';

-- The newest OK refresh of a view, and the newest outcome: both by when the row finished. The id breaks ties
-- inside the index, so LIMIT 1 reads one index entry.
CREATE INDEX IF NOT EXISTS mv_refresh_log_ok_finished_idx
    ON ops.mv_refresh_log (mv_name, schema_name, refresh_finished_at DESC, id DESC)
    INCLUDE (rows_after_refresh, refreshed_at)
    WHERE status = 'OK';
CREATE INDEX IF NOT EXISTS mv_refresh_log_finished_idx
    ON ops.mv_refresh_log (mv_name, schema_name, refresh_finished_at DESC, id DESC)
    WHERE refresh_finished_at IS NOT NULL;
-- Replaced by mv_refresh_log_ok_finished_idx (same rows, plus the tie-breaker).
DROP INDEX IF EXISTS ops.mv_refresh_log_view_ok_idx;

CREATE OR REPLACE FUNCTION ops.mv_refresh_outcome_of(p_schema_name text, p_mv_name text)
RETURNS TABLE (
    ok_finished_at timestamptz,
    ok_refreshed_at timestamptz,
    ok_rows bigint,
    ok_method text,
    ok_duration_ms bigint,
    last_status text,
    last_finished_at timestamptz,
    last_sqlstate text,
    last_error text,
    running_log_id bigint,
    running_pid integer,
    running_since timestamptz
)
LANGUAGE sql
STABLE
AS $$
    WITH ok AS (
        SELECT l.refresh_finished_at, l.refreshed_at, l.rows_after_refresh, l.method, l.duration_ms
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name AND l.status = 'OK'
        ORDER BY l.refresh_finished_at DESC, l.id DESC
        LIMIT 1
    ),
    running AS (  -- few rows (mv_refresh_log_running_idx); a live one first
        SELECT r.id, r.backend_pid, r.refresh_started_at, r.gone
        FROM (SELECT l.id, l.backend_pid, l.refresh_started_at,
                     ops.mv_refresh_backend_gone(l.backend_pid, l.backend_start) AS gone
              FROM ops.mv_refresh_log AS l
              WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name AND l.status = 'RUNNING') AS r
        ORDER BY r.gone IS NULL DESC, r.refresh_started_at DESC, r.id DESC
        LIMIT 1
    ),
    finished AS (
        SELECT l.status, l.refresh_finished_at, l.error_sqlstate
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name AND l.refresh_finished_at IS NOT NULL
        ORDER BY l.refresh_finished_at DESC, l.id DESC
        LIMIT 1
    ),
    failed AS (  -- an index range that starts where the newest OK finished
        SELECT l.error_message
        FROM ops.mv_refresh_log AS l
        WHERE l.mv_name = p_mv_name AND l.schema_name = p_schema_name AND l.refresh_finished_at IS NOT NULL
          AND l.refresh_finished_at > coalesce((SELECT ok.refresh_finished_at FROM ok), '-infinity')
          AND l.status IN ('ERROR', 'SKIPPED', 'ABANDONED')
        ORDER BY l.refresh_finished_at DESC, l.id DESC
        LIMIT 1
    )
    SELECT ok.refresh_finished_at, ok.refreshed_at, ok.rows_after_refresh, ok.method, ok.duration_ms,
           CASE WHEN running.id IS NULL THEN finished.status
                WHEN running.gone IS NULL THEN 'RUNNING'
                ELSE 'ABANDONED' END,
           CASE WHEN running.id IS NULL THEN finished.refresh_finished_at END,
           CASE WHEN running.id IS NULL THEN finished.error_sqlstate END,
           coalesce(running.gone, failed.error_message),
           running.id,
           running.backend_pid,
           running.refresh_started_at
    FROM (SELECT 1) AS one
    LEFT JOIN ok ON true
    LEFT JOIN running ON true
    LEFT JOIN finished ON true
    LEFT JOIN failed ON true
$$;

COMMENT ON FUNCTION ops.mv_refresh_outcome_of(text, text) IS
    'What ops.mv_refresh_log says about one view: newest OK, latest outcome (RUNNING only while its backend lives), newest error since that OK.';

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
    SELECT b.ok_finished_at,
           CASE b.bucket
               -- round to 2 decimals, unless that crosses the bucket's edge: then the nearest value inside
               WHEN 'OK' THEN CASE WHEN round(b.hours, 2) < p_warn_after_hours THEN round(b.hours, 2)
                                   ELSE trunc(b.hours, 2) END
               WHEN 'WARN' THEN greatest(p_warn_after_hours, least(p_crit_after_hours, round(b.hours, 2)))
               WHEN 'CRIT' THEN CASE WHEN round(b.hours, 2) > p_crit_after_hours THEN round(b.hours, 2)
                                     ELSE ceil(b.hours * 100) / 100 END
           END,
           b.bucket,
           b.last_status,
           b.last_error,
           b.ok_rows
    FROM (
        SELECT o.ok_finished_at, o.ok_rows, o.last_status, o.last_error,
               greatest(extract(epoch FROM now() - o.ok_finished_at) / 3600, 0) AS hours,
               CASE
                   WHEN o.ok_finished_at IS NULL THEN 'NO_REFRESH'
                   WHEN now() - o.ok_finished_at < p_warn_after_hours * interval '1 hour' THEN 'OK'
                   WHEN now() - o.ok_finished_at <= p_crit_after_hours * interval '1 hour' THEN 'WARN'
                   ELSE 'CRIT'
               END AS bucket
        FROM ops.mv_refresh_outcome_of(p_schema_name, p_mv_name) AS o
    ) AS b
$$;
