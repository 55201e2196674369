"""Event-driven runs end to end, in a real Airflow: ``make airflow`` (``airflow standalone``: scheduler,
dag-processor, API server and the triggerer that runs SourceChangeTrigger) on a demo warehouse whose sources
are tracked. One server for every check of this file (it takes a minute or two to start).

1. A committed claim starts an ``asset_triggered`` run that refreshes the chain: the critical view shows the
   claim; the views that do not read claims are UNCHANGED.
2. Independent views refresh in parallel, bounded by the pool (2 slots here): a probe DAG over a catalog with
   independent branches and a diamond, the project's operator in the refresh pool, wired as ops_mv_refresh.
3. Then nothing: no run for two minutes while nothing is committed (an open transaction that writes a claim
   and rolls back included), though the runs just refreshed views (their own markers) - except the hourly
   run, should the hour strike meanwhile.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_standalone import DAG_ID, NEW_CLAIM_SQL, MakeAirflow, critical_view_has_claim, insert_claim

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect
from mv_refresh.engine import Sessions, refresh_view
from mv_refresh.tracking import install

pytestmark = [pytest.mark.timeout(900), pytest.mark.standalone]

QUIET_SECONDS = 3
POOL_SLOTS = 2
EVENT_ENV = {"MV_REFRESH_EVENTS": "on", "MV_REFRESH_EVENTS_QUIET_SECONDS": str(QUIET_SECONDS),
             "MV_REFRESH_EVENTS_MAX_WAIT_SECONDS": "60", "MV_REFRESH_EVENTS_POLL_SECONDS": "1",
             "MV_REFRESH_POOL_SLOTS": str(POOL_SLOTS), "AIRFLOW__CORE__PARALLELISM": "4"}
PROBE = "mvr_probe_parallel"
# Each view of the parallel catalog takes 5 s to refresh. a -> b, a -> c, (b, c) -> d: a diamond; e -> f: an
# independent branch.
PARALLEL_SQL = """
CREATE SCHEMA par;
CREATE MATERIALIZED VIEW par.a AS SELECT 1 AS k FROM (SELECT pg_sleep(5)) AS s WITH NO DATA;
CREATE MATERIALIZED VIEW par.e AS SELECT 1 AS k FROM (SELECT pg_sleep(5)) AS s WITH NO DATA;
CREATE MATERIALIZED VIEW par.b AS SELECT a.k FROM par.a, (SELECT pg_sleep(5)) AS s WITH NO DATA;
CREATE MATERIALIZED VIEW par.c AS SELECT a.k FROM par.a, (SELECT pg_sleep(5)) AS s WITH NO DATA;
CREATE MATERIALIZED VIEW par.f AS SELECT e.k FROM par.e, (SELECT pg_sleep(5)) AS s WITH NO DATA;
CREATE MATERIALIZED VIEW par.d AS SELECT b.k FROM par.b, par.c, (SELECT pg_sleep(5)) AS s WITH NO DATA;
"""
PARALLEL_CATALOG = """
version: 1
connection_id: mvr_parallel
defaults: {lock_timeout_seconds: 30, statement_timeout_seconds: 300}
views:
  - name: par.a
  - name: par.e
  - name: par.b
    upstream: [par.a]
  - name: par.c
    upstream: [par.a]
  - name: par.f
    upstream: [par.e]
  - name: par.d
    upstream: [par.b, par.c]
"""


@pytest.fixture(scope="module")
def airflow(pg_server, demo_template, ops_template, tmp_path_factory) -> Iterator[MakeAirflow]:
    from mv_refresh.airflow.connection import airflow_connection_json
    from mv_refresh.airflow.standalone import free_port

    name = pg_server.create_database(f"ev{uuid.uuid4().hex[:8]}", template=demo_template)
    dsn = pg_server.dsn(name)
    par_name = pg_server.create_database(f"par{uuid.uuid4().hex[:8]}", template=ops_template)
    with connect(pg_server.dsn(par_name), autocommit=True) as conn:
        conn.execute(PARALLEL_SQL)
    probes = tmp_path_factory.mktemp("events-dags")
    shutil.copy(Path(__file__).parent / "events_dags" / f"{PROBE}.py", probes)
    (probes / "parallel.yaml").write_text(PARALLEL_CATALOG)
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
               {"name": "mvr-events-probes", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(probes)}}]
    env = {**EVENT_ENV, "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
           "AIRFLOW_CONN_MVR_PARALLEL": airflow_connection_json(pg_server.dsn(par_name))}
    catalog = load_catalog()
    with connect(dsn, autocommit=True) as conn:
        install(conn, catalog, list(catalog.views))
    with Sessions(dsn) as sessions:  # populated, and what each view saw recorded: a steady warehouse
        for spec in catalog.views:
            refresh_view(dsn, catalog, spec, sessions=sessions)
    server = MakeAirflow(dsn=dsn, home=tmp_path_factory.mktemp("events") / "home", port=free_port(),
                         extra_env=env)
    server.parallel_dsn = pg_server.dsn(par_name)
    try:
        server.start()
        server.wait_for_dag()
        server.unpause()
        # An unpaused DAG's asset watchers get their trigger, which a triggerer then runs: it is watching
        # once its session is in the warehouse (and has polled since).
        server.wait(lambda: any(t["triggerer_id"] for t in server.watcher_triggers()), 180,
                    "the source watcher assigned to the triggerer")
        server.wait(lambda: _watching(dsn), 180, "the source watcher's session in the warehouse")
        time.sleep(3)
        # Unpausing (catchup off) starts the latest hourly run at once: let it finish first.
        server.wait(lambda: server.runs(), 180, "the first hourly run")
        server.wait_idle(timeout=600)
        yield server
    finally:
        server.stop()
        pg_server.drop_database(name)
        pg_server.drop_database(par_name)


def _watching(dsn: str) -> bool:
    with connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = 'mv-refresh events')").fetchone()[0]


def _log_rows(dsn: str, run_id: str) -> dict[str, tuple[str, str]]:
    with connect(dsn) as conn:
        rows = conn.execute("SELECT schema_name || '.' || mv_name, status, method FROM ops.mv_refresh_log "
                            "WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()
    return {view: (status, method) for view, status, method in rows}


def test_a_committed_claim_starts_an_asset_triggered_run_that_refreshes_the_chain(airflow):
    before = {r["dag_run_id"] for r in airflow.runs()}
    assert [r["run_type"] for r in airflow.runs()][:1] == ["scheduled"]
    committed = time.monotonic()
    claim = insert_claim(airflow.dsn)

    def new_event_run():
        return next((r for r in airflow.runs() if r["dag_run_id"] not in before
                     and r["run_type"] == "asset_triggered"), None)

    run = airflow.wait(new_event_run, 300, "an asset_triggered run after the committed claim", poll=1.0)
    started_in = time.monotonic() - committed
    assert airflow.wait_for_run(DAG_ID, run["dag_run_id"], timeout=600) == "success"
    shown_in = time.monotonic() - committed
    assert critical_view_has_claim(airflow.dsn, claim)
    print(f"\nclaim {claim}: run {run['dag_run_id']} created {started_in:.1f} s after the commit; "
          f"run done {shown_in:.1f} s after it (quiet period {QUIET_SECONDS} s)")
    # Not before the quiet period (it debounces), and well within the hour.
    assert started_in >= QUIET_SECONDS

    rows = _log_rows(airflow.dsn, run["dag_run_id"])
    catalog = load_catalog()
    critical = catalog.critical_views[0].display_name
    assert rows[critical][0] == "OK" and rows[critical][1] != "UNCHANGED", rows
    # The payments views read no claim: proven unchanged, not refreshed.
    assert rows[catalog.views[0].display_name] == ("OK", "UNCHANGED"), rows
    # The asset event carries what the trigger saw.
    events = airflow.api("GET", "/api/v2/assets/events", params={"order_by": "-timestamp", "limit": 100})
    payloads = [e["extra"].get("payload") for e in events["asset_events"] if e["extra"].get("from_trigger")]
    assert payloads and payloads[0]["sources"] == ["yango.cabinet_claims"], payloads


def _most_at_once(intervals: list[tuple]) -> int:
    """The largest number of intervals open at one instant (an end at the instant another starts: not both)."""
    edges = sorted([(start, 1) for start, _end in intervals] + [(end, -1) for _start, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    most = current = 0
    for _at, step in edges:
        current += step
        most = max(most, current)
    return most


def test_independent_views_refresh_in_parallel_bounded_by_the_pool(airflow):
    airflow.wait_for_dag(PROBE)
    airflow.unpause(PROBE)
    run_id = airflow.api("POST", f"/api/v2/dags/{PROBE}/dagRuns", json={"logical_date": None})["dag_run_id"]
    assert airflow.wait_for_run(PROBE, run_id, timeout=600) == "success"
    tis = airflow.task_instances(PROBE, run_id)
    assert {(t["state"], t["pool"]) for t in tis} == {("success", "mv_refresh")}, tis
    with connect(airflow.parallel_dsn) as conn:
        rows = conn.execute("SELECT mv_name, refresh_started_at, refresh_finished_at FROM ops.mv_refresh_log "
                            "WHERE run_id = %s AND status = 'OK'", (run_id,)).fetchall()
    assert sorted(r[0] for r in rows) == ["a", "b", "c", "d", "e", "f"]
    intervals = {name: (start, end) for name, start, end in rows}
    most = _most_at_once(list(intervals.values()))
    print(f"\nparallel catalog, pool of {POOL_SLOTS}: at most {most} refreshes at once; "
          + ", ".join(f"{n} {s:%H:%M:%S.%f}-{e:%H:%M:%S.%f}" for n, (s, e) in sorted(intervals.items())))
    assert most == POOL_SLOTS, intervals
    # The graph is kept: the diamond's bottom after both its sides, each side after the top.
    assert intervals["d"][0] >= max(intervals["b"][1], intervals["c"][1])
    assert min(intervals["b"][0], intervals["c"][0]) >= intervals["a"][1] and intervals["f"][0] >= intervals["e"][1]


def test_no_run_while_nothing_is_committed(airflow):
    """After the run above (whose refreshes wrote markers of their own views), with a writer holding an
    uncommitted claim and then rolling it back: two minutes and no new run but the hourly one."""
    airflow.wait_idle(timeout=300)
    before = {r["dag_run_id"] for r in airflow.runs()}
    with connect(airflow.dsn) as writer:
        writer.execute(NEW_CLAIM_SQL)  # open: its marker exists, uncommitted
        time.sleep(60)
        writer.rollback()
    time.sleep(60)
    new = [r for r in airflow.runs() if r["dag_run_id"] not in before]
    assert [r for r in new if r["run_type"] != "scheduled"] == [], new
