"""Change tracking and UNCHANGED, on a real PostgreSQL: what is proven unchanged, and everything that is not."""

from __future__ import annotations

import json

import psycopg
import pytest
from lab import scalar

from mv_refresh.catalog import parse_catalog
from mv_refresh.cli import main
from mv_refresh.db import connect
from mv_refresh.engine import refresh_view
from mv_refresh.tracking import install, remove, status

WAREHOUSE = """
CREATE SCHEMA wh;
CREATE TABLE wh.drivers (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE wh.claims (id integer PRIMARY KEY, driver integer NOT NULL, amount numeric NOT NULL);
CREATE TABLE wh.events (id integer NOT NULL, at date NOT NULL, note text) PARTITION BY RANGE (at);
CREATE TABLE wh.events_2026 PARTITION OF wh.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE wh.events_2027 PARTITION OF wh.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
INSERT INTO wh.drivers SELECT g, 'driver ' || g FROM generate_series(1, 20) AS g;
INSERT INTO wh.claims SELECT g, 1 + g % 20, g * 1.5 FROM generate_series(1, 200) AS g;
INSERT INTO wh.events SELECT g, DATE '2026-03-01' + g, 'e' || g FROM generate_series(1, 50) AS g;
CREATE VIEW wh.v_claims AS SELECT c.id, c.driver, c.amount, d.name FROM wh.claims AS c JOIN wh.drivers AS d ON d.id = c.driver;
CREATE MATERIALIZED VIEW wh.mv_claims AS SELECT id, driver, amount, name FROM wh.v_claims;
CREATE UNIQUE INDEX ON wh.mv_claims (id);
CREATE MATERIALIZED VIEW wh.mv_totals AS SELECT driver, sum(amount) AS total, count(*) AS n FROM wh.mv_claims GROUP BY driver;
CREATE UNIQUE INDEX ON wh.mv_totals (driver);
CREATE MATERIALIZED VIEW wh.mv_events AS SELECT id, at, note FROM wh.events;
CREATE UNIQUE INDEX ON wh.mv_events (id, at);
CREATE MATERIALIZED VIEW wh.mv_recent AS SELECT id FROM wh.claims WHERE now() > TIMESTAMPTZ '2000-01-01';
CREATE MATERIALIZED VIEW wh.mv_today AS SELECT id, current_date AS d FROM wh.claims;
CREATE MATERIALIZED VIEW wh.mv_outside AS SELECT id FROM wh.claims;
CREATE MATERIALIZED VIEW wh.mv_reads_outside AS SELECT id FROM wh.mv_outside;
"""

CATALOG = parse_catalog("""
version: 1
defaults:
  lock_timeout_seconds: 10
  statement_timeout_seconds: 60
views:
  - name: wh.mv_claims
  - name: wh.mv_totals
    upstream: [wh.mv_claims]
  - name: wh.mv_events
  - name: wh.mv_recent
  - name: wh.mv_today
  - name: wh.mv_reads_outside
""", source="tracking catalog")


@pytest.fixture
def wh(ops_dsn):
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(WAREHOUSE)
    return ops_dsn


def _sql(dsn: str, *statements: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _install(dsn: str, views=None) -> None:
    with connect(dsn, autocommit=True) as conn:
        changes = install(conn, CATALOG, CATALOG.select(views) if views else list(CATALOG.views))
    assert all(c.action in ("installed", "already", "enabled always") for c in changes), changes


def _refresh(dsn: str, view: str, **kwargs):
    return refresh_view(dsn, CATALOG, view, **kwargs)


def _method(dsn: str, view: str, **kwargs) -> str:
    return _refresh(dsn, view, **kwargs).method


def _equals_its_query(dsn: str, view: str) -> bool:
    """The view holds exactly what its defining query returns now (EXCEPT ALL both ways is empty)."""
    with connect(dsn) as conn:
        oid = conn.execute("SELECT %s::regclass::oid", (view,)).fetchone()[0]
        definition = conn.execute("SELECT pg_get_viewdef(%s::oid)", (oid,)).fetchone()[0].strip().rstrip(";")
        query = psycopg.sql.SQL("SELECT count(*) FROM ((TABLE {v} EXCEPT ALL ({q})) UNION ALL (({q}) EXCEPT ALL "
                                "TABLE {v})) AS d").format(v=psycopg.sql.SQL(view), q=psycopg.sql.SQL(definition))
        return conn.execute(query).fetchone()[0] == 0


def test_install_puts_one_always_enabled_trigger_on_every_table_read(wh):
    with connect(wh, autocommit=True) as conn:
        before = status(conn, CATALOG, CATALOG.select(["wh.mv_claims"]))
        assert before[0]["provable"] is False and "wh.claims" in before[0]["why_not"][0]
        changes = install(conn, CATALOG, CATALOG.select(["wh.mv_claims", "wh.mv_events"]))
        assert sorted((c.table, c.action) for c in changes) == [
            ("wh.claims", "installed"), ("wh.drivers", "installed"), ("wh.events", "installed"),
            ("wh.events_2026", "installed"), ("wh.events_2027", "installed")]
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgenabled FROM pg_trigger WHERE tgname = 'mv_refresh_track' ORDER BY 1"
        ).fetchall()
        assert triggers == [("wh.claims", "A"), ("wh.drivers", "A"), ("wh.events", "A"),
                            ("wh.events_2026", "A"), ("wh.events_2027", "A")]
        assert [c.action for c in install(conn, CATALOG, CATALOG.select(["wh.mv_claims"]))] == ["already"] * 2
        after = {row["view"]: row for row in status(conn, CATALOG, list(CATALOG.views))}
    assert after["wh.mv_claims"]["provable"] and after["wh.mv_events"]["provable"]
    sources = {s["source"]: s["state"] for s in after["wh.mv_claims"]["sources"]}
    assert sources == {"wh.claims (through the plain view wh.v_claims)": "tracked",
                       "wh.drivers (through the plain view wh.v_claims)": "tracked"}
    # mv_totals reads a catalog view (its refreshes leave markers) and the same tables, through it? No: only
    # what its own rule reads, down through plain views; a materialized view is a leaf.
    assert {s["source"] for s in after["wh.mv_totals"]["sources"]} == {"wh.mv_claims"}
    with connect(wh, autocommit=True) as conn:
        removed = remove(conn, CATALOG, CATALOG.select(["wh.mv_claims"]))
        assert sorted((c.table, c.action, c.detail) for c in removed) == [
            ("wh.claims", "kept", "wh.mv_recent reads it too"), ("wh.drivers", "removed", None)]


def test_an_unchanged_view_is_logged_unchanged_and_every_kind_of_write_forces_a_refresh(wh):
    _install(wh)
    assert _method(wh, "wh.mv_claims") == "CONCURRENTLY"  # the first refresh records what it saw
    unchanged = _refresh(wh, "wh.mv_claims")
    assert (unchanged.status, unchanged.method, unchanged.rows_after_refresh) == ("OK", "UNCHANGED", 200)
    first_id = scalar(wh, "SELECT min(id) FROM ops.mv_refresh_log WHERE method = 'CONCURRENTLY'")
    assert unchanged.method_reason.startswith(f"unchanged since refresh #{first_id}: no committed change to its 2 ")
    writes = [
        "INSERT INTO wh.claims VALUES (1001, 3, 9.5)",
        "UPDATE wh.drivers SET name = 'renamed' WHERE id = 3",
        "DELETE FROM wh.claims WHERE id = 1001",
        "COPY wh.claims FROM PROGRAM 'echo 1002,4,1.25' WITH (FORMAT csv)",
        "UPDATE wh.claims SET amount = amount WHERE false",  # touches no row: still a statement, still a marker
    ]
    for write in writes:
        _sql(wh, write)
        refreshed = _refresh(wh, "wh.mv_claims")
        assert refreshed.method == "CONCURRENTLY", write
        assert refreshed.method_reason.startswith("changed: wh."), (write, refreshed.method_reason)
        assert _equals_its_query(wh, "wh.mv_claims"), write
        assert _method(wh, "wh.mv_claims") == "UNCHANGED", write
    # A rolled-back transaction leaves no marker: nothing to refresh.
    with connect(wh) as conn:
        conn.execute("INSERT INTO wh.claims VALUES (2001, 1, 1)")
        conn.rollback()
    assert _method(wh, "wh.mv_claims") == "UNCHANGED"
    # TRUNCATE too.
    _sql(wh, "TRUNCATE wh.claims")
    assert _method(wh, "wh.mv_claims") in ("CONCURRENTLY", "PLAIN")
    assert scalar(wh, "SELECT count(*) FROM wh.mv_claims") == 0
    # Health counts UNCHANGED as OK: the last OK refresh advances.
    _refresh(wh, "wh.mv_claims")
    with connect(wh) as conn:
        health = conn.execute("SELECT status_bucket, last_status, rows_after_refresh FROM ops.mv_health_of('wh', 'mv_claims')"
                              ).fetchone()
    assert health == ("OK", "OK", 0)


def test_one_marker_per_table_and_transaction(wh):
    _install(wh)
    with connect(wh) as conn:
        for i in range(100):
            conn.execute("INSERT INTO wh.claims VALUES (%s, 1, 1)", (5000 + i,))
        conn.execute("UPDATE wh.drivers SET name = name WHERE id < 3")
        conn.commit()
    per_table = dict(scalar(wh, "SELECT array_agg(array[c.relname::text, n::text]) FROM (SELECT source_oid, count(*) AS n"
                                " FROM ops.mv_source_change GROUP BY source_oid) AS m JOIN pg_class AS c ON c.oid = m.source_oid"))
    assert per_table == {"claims": "1", "drivers": "1"}


def test_a_writer_that_commits_while_a_refresh_runs_is_never_lost(wh):
    _install(wh)
    _refresh(wh, "wh.mv_claims")
    # Held open across the whole refresh: its change is not in the refresh's snapshot.
    with connect(wh) as writer:
        writer.execute("INSERT INTO wh.claims VALUES (3001, 2, 7)")
        assert _method(wh, "wh.mv_claims") == "UNCHANGED"  # nothing committed yet
        writer.commit()
    assert scalar(wh, "SELECT count(*) FROM wh.mv_claims WHERE id = 3001") == 0
    assert _method(wh, "wh.mv_claims") == "CONCURRENTLY"
    assert scalar(wh, "SELECT count(*) FROM wh.mv_claims WHERE id = 3001") == 1
    # Committed while the refresh waits for its lock, after its snapshot was taken.
    import threading

    from lab import wait_for

    with connect(wh) as blocker:
        blocker.execute("SELECT count(*) FROM wh.mv_claims")  # a reader: a PLAIN refresh waits for it
        _sql(wh, "INSERT INTO wh.claims VALUES (3002, 2, 7)")
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(result=_refresh(wh, "wh.mv_claims", mode="plain")))
        thread.start()
        wait_for(lambda: scalar(wh, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                                    " AND query LIKE 'REFRESH%%'"), what="the refresh waiting for its lock")
        _sql(wh, "INSERT INTO wh.claims VALUES (3003, 2, 7)")  # after the snapshot, before the REFRESH ran
        blocker.rollback()
        thread.join(30)
    assert outcome["result"].method == "PLAIN"
    assert scalar(wh, "SELECT array_agg(id ORDER BY id) FROM wh.mv_claims WHERE id > 3001") == [3002]
    assert _method(wh, "wh.mv_claims") == "CONCURRENTLY"  # 3003's marker was not seen: refreshed again
    assert scalar(wh, "SELECT array_agg(id ORDER BY id) FROM wh.mv_claims WHERE id > 3001") == [3002, 3003]
    assert _method(wh, "wh.mv_claims") == "UNCHANGED"


@pytest.mark.parametrize(("view", "reason"), [
    ("wh.mv_recent", "it calls now() (stable)"),
    ("wh.mv_today", "reads the clock or the session"),
    ("wh.mv_reads_outside", "wh.mv_outside, which is not in the catalog"),
])
def test_what_cannot_be_proven_is_always_refreshed_saying_why(wh, view, reason):
    _install(wh)
    for _ in range(3):
        result = _refresh(wh, view)
        assert result.method in ("CONCURRENTLY", "PLAIN") and reason in result.method_reason


def test_untracked_sources_definitions_triggers_and_lost_markers_force_a_refresh(wh):
    _refresh(wh, "wh.mv_claims")
    assert "wh.claims" in _refresh(wh, "wh.mv_claims").method_reason  # not tracked yet: always refreshed
    _install(wh)
    reason = _refresh(wh, "wh.mv_claims").method_reason
    assert "tracking was not complete at its last refresh" in reason  # installed after the last refresh
    assert _method(wh, "wh.mv_claims") == "UNCHANGED"
    cases = {
        "a plain view in its tree redefined": "CREATE OR REPLACE VIEW wh.v_claims AS SELECT c.id, c.driver, "
                                              "c.amount * 1 AS amount, d.name FROM wh.claims AS c "
                                              "JOIN wh.drivers AS d ON d.id = c.driver",
        "the trigger disabled and enabled again": "ALTER TABLE wh.claims DISABLE TRIGGER mv_refresh_track; "
                                                  "ALTER TABLE wh.claims ENABLE ALWAYS TRIGGER mv_refresh_track",
        "the markers truncated": "TRUNCATE ops.mv_source_change",
        "a source's storage replaced": "VACUUM FULL wh.drivers",
    }
    for case, statement in cases.items():
        _sql(wh, statement)
        result = _refresh(wh, "wh.mv_claims")
        assert result.method == "CONCURRENTLY", case
        assert "changed since its last refresh" in result.method_reason, case
        assert _method(wh, "wh.mv_claims") == "UNCHANGED", case


def test_a_refresh_of_an_upstream_catalog_view_is_a_change_downstream(wh):
    _install(wh)
    for view in ("wh.mv_claims", "wh.mv_totals"):
        _refresh(wh, view)
    assert [_method(wh, v) for v in ("wh.mv_claims", "wh.mv_totals")] == ["UNCHANGED", "UNCHANGED"]
    _sql(wh, "UPDATE wh.claims SET amount = amount + 1 WHERE id = 7")
    assert _method(wh, "wh.mv_claims") == "CONCURRENTLY"
    downstream = _refresh(wh, "wh.mv_totals")
    assert downstream.method == "CONCURRENTLY" and "changed: wh.mv_claims" in downstream.method_reason
    assert _equals_its_query(wh, "wh.mv_totals")
    # A plain REFRESH of the upstream by hand replaces its storage: seen too.
    _sql(wh, "REFRESH MATERIALIZED VIEW wh.mv_claims")
    assert "changed since its last refresh" in _refresh(wh, "wh.mv_totals").method_reason


def test_stale_input_counts_changed_data_and_can_be_limited_to_one_run(wh):
    """An UNCHANGED refresh of an input changes no data: nobody reading it becomes stale. A real one does, and
    ``refreshed_by_run`` keeps only what a given run did (the health sensor fails for that alone)."""
    from mv_refresh.engine import RunContext
    from mv_refresh.health import stale_inputs

    _install(wh)
    for view in ("wh.mv_claims", "wh.mv_totals"):
        _refresh(wh, view)
    assert _method(wh, "wh.mv_claims") == "UNCHANGED"  # after its reader: still not stale
    with connect(wh) as conn:
        assert stale_inputs(conn, CATALOG) == []
    _sql(wh, "UPDATE wh.claims SET amount = amount + 1 WHERE id = 7")
    run = RunContext(run_by="airflow", dag_id="ops_mv_refresh", run_id="manual__1")
    assert _refresh(wh, "wh.mv_claims", context=run).method == "CONCURRENTLY"
    with connect(wh) as conn:
        anyone = stale_inputs(conn, CATALOG)
        by_that_run = stale_inputs(conn, CATALOG, refreshed_by_run=("ops_mv_refresh", "manual__1"))
        by_another = stale_inputs(conn, CATALOG, refreshed_by_run=("ops_mv_refresh", "manual__2"))
    assert [(i.view.display_name, i.upstream.display_name) for i in anyone] == [("wh.mv_totals", "wh.mv_claims")]
    assert by_that_run == anyone and by_another == []
    _refresh(wh, "wh.mv_totals")
    with connect(wh) as conn:
        assert stale_inputs(conn, CATALOG) == []


def test_a_write_to_a_partition_directly_is_seen(wh):
    _install(wh)
    _refresh(wh, "wh.mv_events")
    assert _method(wh, "wh.mv_events") == "UNCHANGED"
    _sql(wh, "INSERT INTO wh.events_2027 VALUES (999, DATE '2027-05-01', 'direct')")
    result = _refresh(wh, "wh.mv_events")
    assert result.method == "CONCURRENTLY" and "wh.events_2027" in result.method_reason
    # A partition attached later has no trigger: not provable until tracked.
    _sql(wh, "CREATE TABLE wh.events_2028 PARTITION OF wh.events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')")
    assert "wh.events_2028 is not tracked" in _refresh(wh, "wh.mv_events").method_reason


def test_force_refreshes_an_unchanged_view_and_says_so(wh):
    _install(wh)
    _refresh(wh, "wh.mv_claims")
    forced = _refresh(wh, "wh.mv_claims", force=True)
    assert forced.method == "CONCURRENTLY" and forced.method_reason.startswith("forced (unchanged since refresh #")


def test_cli_track_and_refresh_force(wh, monkeypatch, tmp_path, capsys):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_TEXT)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    monkeypatch.setenv("MV_REFRESH_DSN", wh)
    assert main(["track", "status", "wh.mv_claims"]) == 1
    assert "always refreshed" in capsys.readouterr().out
    assert main(["track", "install", "--all"]) == 0
    assert "wh.claims: installed" in capsys.readouterr().out
    assert main(["track", "status", "wh.mv_claims", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["provable"] is True
    assert main(["refresh", "wh.mv_claims"]) == 0
    capsys.readouterr()
    assert main(["refresh", "wh.mv_claims"]) == 0
    assert "OK (UNCHANGED, 200 rows" in capsys.readouterr().out
    assert main(["refresh", "wh.mv_claims", "--force"]) == 0
    assert "OK (CONCURRENTLY" in capsys.readouterr().out
    assert main(["plan", "--json"]) == 0
    plan = {v["view"]: v for v in json.loads(capsys.readouterr().out)["views"]}
    assert plan["wh.mv_recent"]["provable"] is False and plan["wh.mv_claims"]["provable"] is True
    assert main(["track", "remove", "--all"]) == 0
    assert scalar(wh, "SELECT count(*) FROM pg_trigger WHERE tgname = 'mv_refresh_track'") == 0


CATALOG_TEXT = """
version: 1
views:
  - name: wh.mv_claims
  - name: wh.mv_totals
    upstream: [wh.mv_claims]
  - name: wh.mv_recent
"""


def test_markers_every_view_has_seen_are_cleaned_up(wh):
    _install(wh, ["wh.mv_claims"])
    _refresh(wh, "wh.mv_claims")
    with connect(wh, autocommit=True) as conn:
        for i in range(5):  # five transactions: five markers
            conn.execute("INSERT INTO wh.claims VALUES (%s, 1, 1)", (7000 + i,))
    assert scalar(wh, "SELECT count(*) FROM ops.mv_source_change") >= 5
    _refresh(wh, "wh.mv_claims")
    # Only the refresh's own marker (for views that read wh.mv_claims) can be left.
    assert scalar(wh, "SELECT count(*) FROM ops.mv_source_change WHERE source_oid = 'wh.claims'::regclass") == 0


def test_plan_discover_writes_a_catalog_of_the_demo_warehouse(demo_dsn, monkeypatch, capsys):
    from mv_refresh.catalog import load_catalog

    monkeypatch.setenv("MV_REFRESH_DSN", demo_dsn)
    assert main(["plan", "--discover", "ops"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# yaml-language-server: $schema=")
    discovered = parse_catalog(text, source="discovered")
    demo = load_catalog()
    assert [v.key for v in discovered.views] == [v.key for v in demo.views]
    assert [(v.upstream, v.grain) for v in discovered.views] == [(v.upstream, v.grain) for v in demo.views]
