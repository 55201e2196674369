"""A large ops.mv_refresh_log, fast: for the test that health does not grow with the log, and its benchmark."""

from __future__ import annotations

from psycopg import sql

VIEWS = ["mv_a", "mv_b", "mv_c", "mv_d", "mv_e", "mv_yango_cabinet_claims_for_collection"]

# One row a minute, oldest first, across six views: mostly OK, some ERROR and SKIPPED; the newest 600
# rows are OK, so "the newest error since the last OK" finds none: the case that used to scan the whole
# log of a view. A few RUNNING rows of dead backends, too.
_FILL = """
INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at, refresh_finished_at,
    refreshed_at, method, rows_after_refresh, duration_ms, error_sqlstate, error_message)
SELECT 'ops', (%(views)s::text[])[1 + g %% 6], s.status, t, t + interval '5 seconds',
       CASE WHEN s.status = 'OK' THEN t + interval '5 seconds' END,
       CASE WHEN s.status = 'OK' THEN 'CONCURRENTLY' END, CASE WHEN s.status = 'OK' THEN 1000 END, 5000,
       CASE WHEN s.status <> 'OK' THEN '55P03' END,
       CASE WHEN s.status <> 'OK' THEN 'canceling statement due to lock timeout' END
FROM generate_series(1, %(n)s) AS g
CROSS JOIN LATERAL (SELECT now() - interval '1 hour' - (%(n)s - g) * interval '1 minute' AS t) AS tt
CROSS JOIN LATERAL (SELECT CASE WHEN g > %(n)s - 600 THEN 'OK' WHEN g %% 50 = 0 THEN 'ERROR'
                                WHEN g %% 97 = 0 THEN 'SKIPPED' ELSE 'OK' END AS status) AS s
"""


def fill_log(conn, rows: int) -> None:
    """``rows`` log rows, loaded without the secondary indexes and indexed afterwards (their definitions
    are the migrations' own, read back from pg_indexes): minutes faster than row-by-row maintenance."""
    conn.execute("TRUNCATE ops.mv_refresh_log")
    indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'ops'"
                           " AND tablename = 'mv_refresh_log' AND indexname <> 'mv_refresh_log_pkey'").fetchall()
    for name, _definition in indexes:
        conn.execute(sql.SQL("DROP INDEX ops.{}").format(sql.Identifier(name)))
    conn.execute(_FILL, {"n": rows, "views": VIEWS})
    conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid, backend_start)"
                 " SELECT 'ops', v, 'RUNNING', 2147483000, now() FROM unnest(%s::text[]) AS v", (VIEWS[:2],))
    for _name, definition in indexes:
        conn.execute(definition)  # noqa: S608 - PostgreSQL's own text of the migrations' indexes
    conn.execute("ANALYZE ops.mv_refresh_log")
