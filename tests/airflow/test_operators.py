"""The Airflow operator and sensor on the engine: what retries, what fails at once, what the sensor says."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest

from mv_refresh.db import connect

pytestmark = pytest.mark.airflow


def _context(run_id: str = "manual__test", task_id: str = "refresh_x") -> dict:
    # Only the identifiers the operator writes into the log row; Airflow itself decides nothing here.
    return {"ti": SimpleNamespace(dag_id="ops_mv_refresh", run_id=run_id, task_id=task_id, try_number=1)}


@pytest.fixture
def lab_airflow(lab_dsn, airflow_conn, monkeypatch, tmp_path):
    from lab import LAB_CATALOG

    path = tmp_path / "lab.yaml"
    path.write_text(LAB_CATALOG)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    airflow_conn(lab_dsn)
    return lab_dsn


def _operator(view: str, **kwargs):
    from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

    return MaterializedViewRefreshOperator(task_id="refresh_x", view=view, **kwargs)


def test_operator_returns_a_summary_and_declares_the_asset(lab_airflow):
    op = _operator("lab.mv_conc")
    assert [o.uri for o in op.outlets] == ["mv-refresh://lab/mv_conc"]
    summary = op.execute(_context())
    assert summary["status"] == "OK" and summary["method"] == "CONCURRENTLY"
    assert summary["rows_after_refresh"] == 1000
    with connect(lab_airflow) as conn:
        row = conn.execute("SELECT run_by, dag_id, run_id, task_id, try_number FROM ops.mv_refresh_log").fetchone()
    assert row == ("airflow", "ops_mv_refresh", "manual__test", "refresh_x", 1)


def test_retryable_failures_raise_airflow_exception(lab_airflow):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    with connect(lab_airflow) as holder:
        holder.execute("SELECT count(*) FROM lab.mv_conc")
        with pytest.raises(AirflowException) as info:
            _operator("lab.mv_conc", mode="plain", lock_timeout=0.2).execute(_context())
        holder.rollback()
    assert not isinstance(info.value, AirflowFailException)
    assert "55P03" in str(info.value)


@pytest.mark.parametrize("view", ["lab.mv_keyed", "lab.a_table", "lab.nope"])
def test_permanent_failures_raise_airflow_fail_exception(lab_airflow, view):
    from airflow.sdk.exceptions import AirflowFailException

    with connect(lab_airflow, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (1, 'clash')")  # lab.mv_keyed: 23505
    with pytest.raises(AirflowFailException):
        _operator(view).execute(_context())


def test_an_injected_name_is_refused_when_the_task_is_built(lab_airflow):
    from mv_refresh.catalog import CatalogError

    with pytest.raises(CatalogError, match="schema.name|identifier|quote"):
        _operator("lab.x; drop table lab.src")
    with connect(lab_airflow) as conn:
        assert conn.execute("SELECT count(*) FROM lab.src").fetchone()[0] == 1000


def test_operator_skips_views_not_asked_for(lab_airflow):
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException):
        _operator("lab.mv_conc", only_views=["lab.mv_noidx"]).execute(_context())
    assert _operator("lab.mv_conc", only_views=["lab.mv_conc"]).execute(_context())["status"] == "OK"


def test_unreachable_database_is_retryable(lab_airflow, monkeypatch):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT",
                       '{"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "u",'
                       ' "password": "s3cr3t", "schema": "warehouse"}')
    with pytest.raises(AirflowException) as info:
        _operator("lab.mv_conc").execute(_context())
    assert not isinstance(info.value, AirflowFailException)
    assert "warehouse" in str(info.value) and "127.0.0.1" in str(info.value)
    assert "s3cr3t" not in str(info.value)


# ------------------------------------------------------------------------------------------- sensor

YANGO_CATALOG = """
version: 1
views:
  - name: ops.critical_mv
    critical: true
  - name: ops.other_mv
"""


@pytest.fixture
def sensor_db(ops_dsn, airflow_conn, monkeypatch, tmp_path):
    from mv_refresh.catalog import load_catalog
    from mv_refresh.migrations import init_db

    path = tmp_path / "catalog.yaml"
    path.write_text(YANGO_CATALOG)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    init_db(ops_dsn, load_catalog())
    airflow_conn(ops_dsn)
    return ops_dsn


def _sensor():
    from mv_refresh.airflow.sensors import MaterializedViewHealthSensor

    return MaterializedViewHealthSensor(task_id="health_check")


def _log_ok(dsn: str, hours_ago: float, mv: str = "critical_mv", run_id: str | None = None) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
            " refresh_finished_at, refreshed_at, rows_after_refresh, dag_id, run_id) "
            "SELECT 'ops', %s, 'OK', t, t, t, 5, 'ops_mv_refresh', %s"
            " FROM (SELECT clock_timestamp() - %s * interval '1 hour' AS t) x", (mv, run_id, hours_ago))


@pytest.mark.parametrize(("hours", "bucket"), [(30, "WARN"), (49, "CRIT")])
def test_sensor_fails_at_once_on_warn_and_crit(sensor_db, hours, bucket):
    from airflow.sdk.exceptions import AirflowFailException

    _log_ok(sensor_db, hours)
    with pytest.raises(AirflowFailException, match=rf"ops.critical_mv is {bucket} \({hours}.* h since"):
        _sensor().poke(_context())


def test_sensor_fails_on_no_refresh_with_the_last_error(sensor_db):
    from airflow.sdk.exceptions import AirflowFailException

    with connect(sensor_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_finished_at,"
                     " error_message) VALUES ('ops', 'critical_mv', 'ERROR', clock_timestamp(), 'permission denied')")
    with pytest.raises(AirflowFailException, match="NO_REFRESH.*never refreshed OK.*permission denied"):
        _sensor().poke(_context())


def test_sensor_passes_on_ok_and_ignores_non_critical_views(sensor_db):
    _log_ok(sensor_db, 1)
    _log_ok(sensor_db, 100, mv="other_mv")  # CRIT, but not critical: the sensor does not judge it
    assert _sensor().poke(_context()) is True


_RUNNING = ("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid, backend_start, dag_id,"
            " run_id) SELECT 'ops', 'critical_mv', 'RUNNING', pid, backend_start, %s, %s FROM pg_stat_activity"
            " WHERE pid = %s RETURNING id")


def test_sensor_keeps_poking_while_a_refresh_runs(sensor_db):
    from airflow.sdk.exceptions import AirflowFailException

    _log_ok(sensor_db, 30)
    with connect(sensor_db, autocommit=True) as conn, connect(sensor_db, autocommit=True) as refresher:
        pid = refresher.info.backend_pid
        log_id = conn.execute(_RUNNING, (None, None, pid)).fetchone()[0]
        assert _sensor().poke(_context()) is False
        # The refresh finishes OK: the next poke judges the finished state.
        conn.execute("UPDATE ops.mv_refresh_log SET status = 'OK', refresh_finished_at = clock_timestamp(),"
                     " refreshed_at = clock_timestamp(), rows_after_refresh = 9 WHERE id = %s", (log_id,))
        assert _sensor().poke(_context()) is True
        # ... or it fails: an older OK (30 h) is what is left: WARN.
        conn.execute(_RUNNING, (None, None, pid))
        assert _sensor().poke(_context()) is False
        conn.execute("DELETE FROM ops.mv_refresh_log WHERE id = %s", (log_id,))
        conn.execute("UPDATE ops.mv_refresh_log SET status = 'ERROR', refresh_finished_at = clock_timestamp(),"
                     " error_message = 'deadlock detected' WHERE status = 'RUNNING'")
    with pytest.raises(AirflowFailException, match="WARN.*deadlock detected"):
        _sensor().poke(_context())


def test_a_dead_running_row_never_mutes_the_sensor(sensor_db):
    """A refresh killed in this run (its backend is gone) leaves RUNNING: the sensor judges at once, naming
    the abandoned refresh and the stale view, instead of poking until its timeout."""
    from airflow.sdk.exceptions import AirflowFailException

    _log_ok(sensor_db, 49)  # CRIT
    with connect(sensor_db, autocommit=True) as conn:
        with connect(sensor_db, autocommit=True) as doomed:
            pid = doomed.info.backend_pid
            conn.execute(_RUNNING, ("ops_mv_refresh", "run_1", pid))
            assert _sensor().poke(_context(run_id="run_1")) is False  # alive: a refresh under way
        # The refresh's session is gone (a killed worker, SIGKILL of the CLI).
        from lab import wait_for

        wait_for(lambda: conn.execute("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)",
                                      (pid,)).fetchone()[0], what="the backend to exit")
    with pytest.raises(AirflowFailException) as info:
        _sensor().poke(_context(run_id="run_1"))
    message = str(info.value)
    assert "ops.critical_mv is CRIT" in message
    assert f"refresh of ops.critical_mv in this run ended ABANDONED: backend pid {pid}" in message


def test_sensor_fails_when_a_refresh_of_its_run_failed(sensor_db):
    from airflow.sdk.exceptions import AirflowFailException

    _log_ok(sensor_db, 0.1)
    with connect(sensor_db, autocommit=True) as conn:
        conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_finished_at,"
                     " error_sqlstate, error_message, dag_id, run_id) VALUES ('ops', 'other_mv', 'ERROR',"
                     " clock_timestamp(), '23505', 'duplicate key', 'ops_mv_refresh', 'run_1')")
    assert _sensor().poke(_context(run_id="run_2")) is True  # another run's failure is not this run's
    with pytest.raises(AirflowFailException, match=r"ops.other_mv in this run ended ERROR \[23505\]"):
        _sensor().poke(_context(run_id="run_1"))


def test_an_input_this_run_refreshed_after_its_reader_fails_the_sensor_one_refreshed_elsewhere_does_not(
        sensor_db, monkeypatch, tmp_path, capsys):
    """Stale input the run itself left behind (a subset run without its downstream views) fails it; an input
    refreshed from elsewhere (the CLI, another run) while this run checks is reported: the next run settles it."""
    from airflow.sdk.exceptions import AirflowFailException

    chain = tmp_path / "chain.yaml"
    chain.write_text("version: 1\nviews:\n  - name: ops.other_mv\n  - name: ops.critical_mv\n"
                     "    critical: true\n    upstream: [ops.other_mv]\n")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(chain))
    _log_ok(sensor_db, 0.5)  # the reader
    _log_ok(sensor_db, 0.2, mv="other_mv", run_id="manual__cli")  # its input, refreshed later elsewhere
    assert _sensor().poke(_context(run_id="run_1")) is True
    said = capsys.readouterr()
    assert "is older than ops.other_mv" in said.out + said.err and "refreshed outside this run" in said.out + said.err
    _log_ok(sensor_db, 0.1, mv="other_mv", run_id="run_1")  # ... and now by this very run
    with pytest.raises(AirflowFailException, match=r"ops.critical_mv \(data of .* is older than ops.other_mv"):
        _sensor().poke(_context(run_id="run_1"))


def test_sensor_never_passes_when_the_database_is_unreachable(sensor_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT",
                       '{"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "schema": "x"}')
    with pytest.raises(psycopg.OperationalError, match="cannot connect"):
        _sensor().poke(_context())
