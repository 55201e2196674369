"""The whole ops_mv_refresh DAG, run by Airflow itself (dag.test) against the demo warehouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = pytest.mark.airflow
DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def _dag(dag_id: str = "ops_mv_refresh"):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


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


CRITICAL = "ops.mv_yango_cabinet_claims_for_collection"
CRITICAL_INDEX = "ops.ux_mv_yango_cabinet_claims_for_collection_grain"


def test_prerequisites_dag_builds_the_missing_index(demo_dsn, airflow_db, airflow_conn):
    from mv_refresh.engine import refresh_view

    airflow_conn(demo_dsn)
    catalog = load_catalog()
    for spec in catalog.views:
        refresh_view(demo_dsn, catalog, spec)
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {CRITICAL_INDEX}")
    run = _dag("ops_mv_concurrently_prerequisites").test(run_conf={"view": CRITICAL})
    assert run.state == "success", _states(run)
    assert _states(run) == {"check_duplicates": "success", "create_unique_index": "success",
                            "verify_unique_index": "success"}
    with connect(demo_dsn) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                            (CRITICAL_INDEX,)).fetchone() == (True,)
    assert refresh_view(demo_dsn, catalog, CRITICAL).method == "CONCURRENTLY"


def test_prerequisites_dag_stops_on_duplicates_and_lists_them(lab_dsn, airflow_db, airflow_conn, monkeypatch,
                                                               tmp_path, capsys):
    airflow_conn(lab_dsn)
    path = tmp_path / "catalog.yaml"
    path.write_text("version: 1\nviews:\n  - name: lab.mv_grain\n    grain: [k]\n")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (42, 'again'), (42, 'and again')")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_grain AS SELECT k, v FROM lab.keyed")
    run = _dag("ops_mv_concurrently_prerequisites").test(run_conf={"view": "lab.mv_grain"})
    assert run.state == "failed"
    assert _states(run) == {"check_duplicates": "failed", "create_unique_index": "upstream_failed",
                            "verify_unique_index": "upstream_failed"}
    captured = capsys.readouterr()
    assert "k=42: 3 rows" in captured.out + captured.err
    with connect(lab_dsn) as conn:
        assert conn.execute("SELECT to_regclass('lab.ux_mv_grain_grain')").fetchone() == (None,)


def test_health_audit_dag_passes_when_healthy_and_fails_naming_a_crit(demo_dsn, airflow_db, airflow_conn):
    from mv_refresh.engine import refresh_view

    airflow_conn(demo_dsn)
    catalog = load_catalog()
    for spec in catalog.views:
        refresh_view(demo_dsn, catalog, spec)
    dag = _dag("ops_mv_health_audit")
    run = dag.test()
    assert run.state == "success", _states(run)
    # A CRIT finding: the critical view emptied (WITH NO DATA) behind our back.
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute(f"REFRESH MATERIALIZED VIEW {CRITICAL} WITH NO DATA")
    run = dag.test()
    assert run.state == "failed" and _states(run) == {"audit": "failed"}
