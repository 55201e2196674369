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
    assert states == {**{v.task_id: "success" for v in catalog.views}, "health_check": "success",
                      "fail_run_if_any_task_failed": "skipped"}
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
    # Each refresh's asset event tells its story.
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = {e.extra["view"]: e.extra for e in session.query(AssetEvent).filter(
            AssetEvent.source_run_id == run.run_id)}
    assert set(events) == {v.display_name for v in catalog.views}
    assert all(e["status"] == "OK" and e["method"] == "PLAIN" and e["rows"] > 0 and e["duration_ms"] >= 0
               for e in events.values())
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


def _catalog_with(tmp_path, monkeypatch, edit) -> object:
    """The project's catalog with ``edit(text)`` applied, as MV_REFRESH_CONFIG."""
    from mv_refresh.paths import DEFAULT_CATALOG

    custom = tmp_path / "catalog.yaml"
    custom.write_text(edit(DEFAULT_CATALOG.read_text()))
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(custom))
    return load_catalog()


def test_a_catalog_view_missing_from_the_database_fails_the_run_and_shows_in_health(
        demo_dsn, airflow_db, airflow_conn, monkeypatch, tmp_path):
    airflow_conn(demo_dsn)
    catalog = _catalog_with(tmp_path, monkeypatch,
                            lambda text: text + "  - name: ops.mv_not_created_yet\n    description: typo'd\n")
    missing = catalog.get("ops.mv_not_created_yet")
    run = _dag().test()
    states = _states(run)
    assert run.state == "failed"
    assert states[missing.task_id] == "failed"
    assert all(states[v.task_id] == "success" for v in catalog.views if v is not missing)
    with connect(demo_dsn) as conn:
        from mv_refresh.health import read_health

        [health] = read_health(conn, catalog, [missing])
    assert (health.status_bucket, health.last_status) == ("NO_REFRESH", "ERROR")
    assert "does not exist in the database" in health.last_error


def test_a_failure_that_writes_no_log_row_still_fails_the_run(demo_dsn, airflow_db, airflow_conn, pg_server):
    """A refresher whose INSERT on the log was revoked: every refresh is refused before it starts (no row),
    the critical view is still fresh, so health_check passes; the run must fail all the same."""
    import uuid

    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    catalog = load_catalog()
    role, password = f"mvr_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA ops TO {0}; GRANT SELECT ON ops.mv_refresh_log, ops.mv_catalog"
                             " TO {0}").format(sql.Identifier(role)))
        conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_finished_at, refreshed_at)"
                     " SELECT schema_name, mv_name, 'OK', clock_timestamp(), clock_timestamp() FROM ops.mv_catalog")
    try:
        params = conninfo_to_dict(demo_dsn)
        params.update(user=role, password=password)
        airflow_conn(make_conninfo(**params))
        run = _dag().test()
        states = _states(run)
        assert states[catalog.views[0].task_id] == "failed"
        assert states["health_check"] == "success"  # the views are fresh: health alone would say green
        assert states["fail_run_if_any_task_failed"] == "failed"
        assert run.state == "failed"
        with connect(demo_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM ops.mv_refresh_log WHERE run_id = %s",
                                (run.run_id,)).fetchone() == (0,)
    finally:
        with connect(demo_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_an_abandoned_running_row_does_not_mute_health_check(demo_dsn, airflow_db, airflow_conn, monkeypatch,
                                                              tmp_path):
    """A RUNNING row left by a killed refresh, a CRIT critical view and a failed upstream in the run: the
    sensor judges at once (its backend is gone) instead of poking until its one-hour timeout."""
    airflow_conn(demo_dsn)
    catalog = _catalog_with(tmp_path, monkeypatch, lambda text: text.replace(
        f"- name: {load_catalog().views[2].display_name}\n",
        f"- name: {load_catalog().views[2].display_name}\n    mode: concurrently\n", 1))
    critical = catalog.critical_views[0]
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
                     " refresh_finished_at, refreshed_at) VALUES (%s, %s, 'OK', now() - interval '50 hours',"
                     " now() - interval '50 hours', now() - interval '50 hours')", critical.key)
        conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid, backend_start)"
                     " VALUES (%s, %s, 'RUNNING', 2147483000, now() - interval '1 hour')", critical.key)
    run = _dag().test()
    states = _states(run)
    assert run.state == "failed"
    assert states[catalog.views[2].task_id] == "failed" and states[critical.task_id] == "upstream_failed"
    assert states["health_check"] == "failed"
    [health] = [ti for ti in run.get_task_instances() if ti.task_id == "health_check"]
    assert (health.end_date - health.start_date).total_seconds() < 60  # judged at once, not after an hour


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
    assert _states(run) == {"audit": "success", "prune_log": "success"}  # the test's role may DELETE
    # A CRIT finding: the critical view emptied (WITH NO DATA) behind our back.
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute(f"REFRESH MATERIALIZED VIEW {CRITICAL} WITH NO DATA")
    run = dag.test()
    assert run.state == "failed" and _states(run) == {"audit": "failed", "prune_log": "success"}
