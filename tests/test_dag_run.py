"""The whole ops_mv_refresh DAG, run by Airflow itself (dag.test) against the demo warehouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = pytest.mark.airflow
DAGS_DIR = Path(__file__).resolve().parents[1] / "dags"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags["ops_mv_refresh"]


def test_full_run_refreshes_every_view_in_order_and_passes_health(demo_dsn, airflow_db, airflow_conn):
    airflow_conn(demo_dsn)
    catalog = load_catalog()
    run = _dag().test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == {**{v.task_id: "success" for v in catalog.views}, "health_check": "success"}
    with connect(demo_dsn) as conn:
        rows = conn.execute(
            "SELECT mv_name, status, method, run_by, dag_id, task_id, rows_after_refresh, refresh_started_at,"
            " refresh_finished_at FROM ops.mv_refresh_log ORDER BY refresh_started_at").fetchall()
        buckets = conn.execute("SELECT mv_name, status_bucket FROM ops.v_mv_health").fetchall()
    assert [r[0] for r in rows] == [v.name for v in catalog.views]
    assert {r[1] for r in rows} == {"OK"}
    assert all(r[3] == "airflow" and r[4] == "ops_mv_refresh" and r[5].startswith("refresh_") for r in rows)
    assert all(r[6] > 0 for r in rows)
    # Canonical order is real: each view started after its upstream finished.
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert later[7] >= earlier[8]
    assert buckets == [(v.name, "OK") for v in catalog.views]
    # First refresh of a view created WITH NO DATA is PLAIN; the second run goes CONCURRENTLY.
    assert {r[2] for r in rows} == {"PLAIN"}
    run2 = _dag().test()
    assert run2.state == "success"
    with connect(demo_dsn) as conn:
        methods = conn.execute(
            "SELECT DISTINCT method FROM ops.mv_refresh_log WHERE run_id = %s", (run2.run_id,)).fetchall()
    assert methods == [("CONCURRENTLY",)]


def test_a_failed_refresh_fails_the_run_and_spares_downstream(demo_dsn, airflow_db, airflow_conn, monkeypatch,
                                                              tmp_path):
    airflow_conn(demo_dsn)
    from mv_refresh.paths import DEFAULT_CATALOG

    # The third view demands CONCURRENTLY, which PostgreSQL cannot do on a view never populated:
    # a permanent failure (no retry), logged as ERROR.
    text = DEFAULT_CATALOG.read_text()
    third_name = load_catalog().views[2].display_name
    text = text.replace(f"- name: {third_name}\n", f"- name: {third_name}\n    mode: concurrently\n", 1)
    custom = tmp_path / "catalog.yaml"
    custom.write_text(text)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(custom))
    catalog = load_catalog()
    third = catalog.views[2]
    assert third.mode == "concurrently"
    run = _dag().test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states[catalog.views[0].task_id] == "success"
    assert states[third.task_id] == "failed"
    for downstream in catalog.downstream_of(third):
        assert states[downstream.task_id] == "upstream_failed"
    assert states["health_check"] == "failed"
    with connect(demo_dsn) as conn:
        logged = conn.execute("SELECT mv_name, status FROM ops.mv_refresh_log ORDER BY id").fetchall()
    assert logged == [(v.name, "OK") for v in catalog.views[:2]] + [(third.name, "ERROR")]
