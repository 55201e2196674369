"""A small laboratory of materialized views, one per case the engine must tell apart.

Built by the tests themselves (not the demo warehouse) so each case is induced deliberately.
"""

from __future__ import annotations

import threading
import time

from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect

LAB_SQL = """
CREATE SCHEMA lab;
CREATE TABLE lab.src (id integer PRIMARY KEY, grp integer NOT NULL, payload text NOT NULL);
INSERT INTO lab.src SELECT g, g % 10, 'row ' || g FROM generate_series(1, 1000) AS g;

-- Populated, with a unique index on plain columns: CONCURRENTLY.
CREATE MATERIALIZED VIEW lab.mv_conc AS SELECT id, grp, payload FROM lab.src;
CREATE UNIQUE INDEX mv_conc_id ON lab.mv_conc (id);

-- No unique index: PLAIN.
CREATE MATERIALIZED VIEW lab.mv_noidx AS SELECT id, grp FROM lab.src;

-- A unique index with WHERE, and one on an expression: neither lets CONCURRENTLY run: PLAIN.
CREATE MATERIALIZED VIEW lab.mv_partial AS SELECT id, grp FROM lab.src;
CREATE UNIQUE INDEX mv_partial_id ON lab.mv_partial (id) WHERE grp > 0;
CREATE UNIQUE INDEX mv_partial_expr ON lab.mv_partial ((id + 0));

-- Never populated (WITH NO DATA), with a unique index: PLAIN first, CONCURRENTLY afterwards.
CREATE MATERIALIZED VIEW lab.mv_unpop AS SELECT id, grp FROM lab.src WITH NO DATA;
CREATE UNIQUE INDEX mv_unpop_id ON lab.mv_unpop (id);

-- Its grain can be broken from outside: duplicate keys in lab.keyed.
CREATE TABLE lab.keyed (k integer NOT NULL, v text NOT NULL);
INSERT INTO lab.keyed SELECT g, 'v' || g FROM generate_series(1, 100) AS g;
CREATE MATERIALIZED VIEW lab.mv_keyed AS SELECT k, v FROM lab.keyed;
CREATE UNIQUE INDEX mv_keyed_k ON lab.mv_keyed (k);

-- Takes about as long as lab.sleep_seconds says (statement timeouts, overlaps, terminations).
CREATE TABLE lab.sleep_seconds (s double precision NOT NULL);
INSERT INTO lab.sleep_seconds VALUES (0);
CREATE MATERIALIZED VIEW lab.mv_slow AS
    SELECT g AS id FROM lab.sleep_seconds AS s, LATERAL pg_sleep(s.s) AS z, generate_series(1, 10) AS g;
CREATE UNIQUE INDEX mv_slow_id ON lab.mv_slow (id);

-- A plain table and a plain view: not materialized views.
CREATE TABLE lab.a_table (id integer);
CREATE VIEW lab.a_view AS SELECT 1 AS id;

-- A name that needs quoting.
CREATE MATERIALIZED VIEW lab."Weird MV" AS SELECT id FROM lab.src WHERE id <= 10;
CREATE UNIQUE INDEX weird_id ON lab."Weird MV" (id);
"""

LAB_CATALOG = """
version: 1
defaults:
  lock_timeout_seconds: 10
  statement_timeout_seconds: 60
views:
  - name: lab.mv_conc
  - name: lab.mv_noidx
  - name: lab.mv_partial
  - name: lab.mv_unpop
  - name: lab.mv_keyed
    grain: [k]
  - name: lab.mv_slow
  - name: lab.a_table
  - name: lab.a_view
  - name: lab.mv_missing
  - name: lab."Weird MV"
"""


def lab_catalog():
    return parse_catalog(LAB_CATALOG, source="lab catalog")


def scalar(dsn: str, query: str, params=None):
    """One value from a fresh autocommit connection."""
    with connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def set_sleep(dsn: str, seconds: float) -> None:
    """How long a refresh of lab.mv_slow takes."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.sleep_seconds SET s = %s", (seconds,))


def refresh_in_thread(dsn, catalog, view, **kwargs):
    """Start ``refresh_view`` in a thread; the outcome dict gets "result" or "error"."""
    from mv_refresh.engine import refresh_view

    outcome: dict = {}

    def run():
        try:
            outcome["result"] = refresh_view(dsn, catalog, view, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")
