"""Health costs the same with a log of 20 thousand rows or 2 million.

Cost is counted as the buffers PostgreSQL touches (EXPLAIN ANALYZE BUFFERS), not as time: a count that
does not depend on the machine or its load. The milliseconds are for `make bench`.
"""

from __future__ import annotations

from biglog import VIEWS, fill_log
from psycopg import sql

from mv_refresh import audit, health
from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.migrations import sync_catalog

CATALOG = parse_catalog("version: 1\nviews:\n" + "".join(f"  - name: ops.{v}\n" for v in VIEWS), source="big")


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
        fill_log(conn, 20_000)
        small = _costs(conn)
        yango_small = conn.execute("SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchone()
        fill_log(conn, 2_000_000)
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
