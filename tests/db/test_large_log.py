"""Health costs the same with a log of 20 thousand rows or 2 million.

Cost is counted as the buffers PostgreSQL touches (EXPLAIN ANALYZE BUFFERS), not as time: a count that
does not depend on the machine or its load. The milliseconds are for `make bench`.
"""

from __future__ import annotations

from psycopg import sql

from mv_refresh import audit, health
from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.migrations import sync_catalog

VIEWS = ["mv_a", "mv_b", "mv_c", "mv_d", "mv_e", "mv_yango_cabinet_claims_for_collection"]
CATALOG = parse_catalog("version: 1\nviews:\n" + "".join(f"  - name: ops.{v}\n" for v in VIEWS), source="big")

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


def _fill(conn, rows: int) -> None:
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


def _buffers(conn, query, params=None) -> int:
    explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + (
        query if isinstance(query, sql.Composable) else sql.SQL(query))
    conn.execute(explain, params)  # once to warm the catalog caches
    plan = conn.execute(explain, params).fetchone()[0][0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def _costs(conn) -> dict[str, int]:
    params = {"schemas": [v.schema for v in CATALOG.views], "names": [v.name for v in CATALOG.views]}
    read_health_params = {**params, "critical": [False] * 6, "warn": [24] * 6, "crit": [48] * 6}
    return {
        "the runbook's view": _buffers(conn, "SELECT * FROM ops.v_yango_cabinet_claims_mv_health"),
        "ops.v_mv_health": _buffers(conn, "SELECT * FROM ops.v_mv_health"),
        "mv-refresh health / the sensor": _buffers(conn, health._QUERY, read_health_params),
        "the audit's log query": _buffers(conn, audit._LOG, params),
        "the audit's RUNNING query": _buffers(conn, audit._RUNNING, params),
    }


def test_health_reads_the_same_few_buffers_at_two_million_rows(ops_dsn):
    with connect(ops_dsn, autocommit=True) as conn:
        sync_catalog(conn, CATALOG)
        _fill(conn, 20_000)
        small = _costs(conn)
        yango_small = conn.execute("SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchone()
        _fill(conn, 2_000_000)
        assert conn.execute("SELECT count(*) FROM ops.mv_refresh_log").fetchone()[0] == 2_000_002
        big = _costs(conn)
        yango_big = conn.execute("SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchone()
        rows = health.read_health(conn, CATALOG)
    # A hundred times the rows: one more level in each B-tree at most, never a scan of a view's history.
    for what, buffers in big.items():
        assert buffers <= small[what] + 12, (what, small[what], buffers)
    # The same answer either way: fresh, OK, no error since the last OK (the errors are all older).
    assert yango_small[2:5] == yango_big[2:5] == ("OK", "OK", None)
    assert [r.last_status for r in rows] == ["ABANDONED", "ABANDONED", "OK", "OK", "OK", "OK"]
