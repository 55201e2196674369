"""Faults induced for real: a killed worker, a crashed server, a deadlock, a sensor racing a refresh.

Each test says how the fault is induced and asserts what the log, the exception (task state), the
exit code and the data must be afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from lab import scalar, wait_for

from mv_refresh.db import connect
from mv_refresh.engine import RefreshFailed, is_retryable, refresh_view

BIN = Path(sys.executable).parent


def _statuses(dsn: str, mv: str) -> list[str]:
    with connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT status FROM ops.mv_refresh_log WHERE mv_name = %s ORDER BY id", (mv,))]


def test_killed_worker_backend_goes_on_and_nothing_runs_twice(lab_files, lab):
    """Fault 1: the process running a refresh is SIGKILLed mid-refresh.

    With client_connection_check_interval switched off (a server or a pooler where it cannot be set), the
    orphaned backend goes on: the advisory lock still keeps the next refresh from running beside it.
    With the check (the default, tests/faults/test_orphaned_refresh.py) the orphan stops within 5 s.
    """
    dsn = lab_files
    with connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.sleep_seconds SET s = 3")
    env = {**os.environ, "MV_REFRESH_DSN": f"{dsn} options='-c client_connection_check_interval=0'"}
    worker = subprocess.Popen([str(BIN / "mv-refresh"), "refresh", "lab.mv_slow"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = wait_for(lambda: scalar(dsn, "SELECT max(backend_pid) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"),
                    what="the worker's RUNNING row")
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                              (pid,)), what="the refresh statement running")
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(10) == -signal.SIGKILL
    # The backend goes on without its client: health still says RUNNING, not OK and not ERROR.
    assert scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 1
    with connect(dsn) as conn:
        # The refresh wrote its view's row of ops.mv_catalog (the mirror health readers use) first.
        assert conn.execute("SELECT count(*) FROM ops.mv_catalog WHERE mv_name = 'mv_slow'").fetchone() == (1,)
        assert conn.execute("SELECT last_status FROM ops.v_mv_health WHERE mv_name = 'mv_slow'").fetchone() == (
            "RUNNING",)
    # A new refresh waits for the orphaned backend (advisory lock) instead of running beside it ...
    result = refresh_view(dsn, lab, "lab.mv_slow")
    assert result.status == "OK"
    with connect(dsn) as conn:
        rows = conn.execute("SELECT status, backend_pid, refresh_started_at, refresh_finished_at, error_message "
                            "FROM ops.mv_refresh_log ORDER BY id").fetchall()
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (0,)
    # ... and once that backend is gone its RUNNING row is ABANDONED, judged by the backend, not by age.
    assert [r[0] for r in rows] == ["ABANDONED", "OK"]
    assert rows[0][1] == pid and "is gone" in rows[0][4]
    assert rows[1][2] >= rows[0][3], "the new refresh started only after the orphan was found dead"
    assert scalar(dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'") == 0


@pytest.fixture
def crashable(pg_server):
    """A private server of the same major version, with the ops schema and the lab views."""
    from lab import LAB_SQL
    from own_server import OwnServer

    from mv_refresh.migrations import apply_migrations

    server = OwnServer(pg_server.version_num // 10000)
    server.start()
    try:
        dsn = server.dsn()
        apply_migrations(dsn)
        with connect(dsn) as conn:
            conn.execute(LAB_SQL)
            # A view slow enough to crash the server under it; 1,000 rows of lab.src.
            conn.execute("CREATE MATERIALIZED VIEW lab.mv_slow_src AS SELECT s.id FROM lab.src AS s, "
                         "(SELECT pg_sleep(x.s) FROM lab.sleep_seconds AS x) AS z")
            conn.execute("CREATE UNIQUE INDEX ON lab.mv_slow_src (id)")
        yield server, dsn
    finally:
        server.stop()


def test_server_restarted_mid_refresh_rolls_back_and_is_retried(crashable):
    """Fault 2: `pg_ctl restart -m immediate` while a refresh runs."""
    from mv_refresh.catalog import parse_catalog

    server, dsn = crashable
    catalog = parse_catalog("version: 1\nviews:\n  - name: lab.mv_slow_src\n")
    with connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.sleep_seconds SET s = 5")
        conn.execute("INSERT INTO lab.src SELECT g, 0, 'new' FROM generate_series(1001, 1500) AS g")
    outcome: dict = {}

    def run():
        try:
            refresh_view(dsn, catalog, "lab.mv_slow_src")
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"),
              what="the RUNNING row")
    server.restart_immediate()
    thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, RefreshFailed), error
    assert error.retryable, "a crashed server is worth a retry (the Airflow task retries)"
    assert "ABANDONED" in str(error)
    # Rolled back: the old data (1,000 rows) is intact, the new rows are not in the view.
    assert scalar(dsn, "SELECT count(*) FROM lab.mv_slow_src") == 1000
    assert _statuses(dsn, "mv_slow_src") == ["RUNNING"]  # nobody could finish the row
    with connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.sleep_seconds SET s = 0")
    # The retry: the orphaned row becomes ABANDONED, the refresh is OK with the new data.
    result = refresh_view(dsn, catalog, "lab.mv_slow_src")
    assert result.status == "OK" and result.rows_after_refresh == 1500
    assert _statuses(dsn, "mv_slow_src") == ["ABANDONED", "OK"]


def test_unreachable_server_at_start_is_retryable_and_names_the_target():
    """Fault 3 (engine and CLI side; the operator and sensor are in test_operators.py)."""
    from lab import lab_catalog

    dsn = "postgresql://ops:S3cret@127.0.0.1:1/warehouse?connect_timeout=2"
    with pytest.raises(psycopg.OperationalError) as info:
        refresh_view(dsn, lab_catalog(), "lab.mv_conc")
    assert is_retryable(info.value)
    message = str(info.value)
    assert "warehouse" in message and "127.0.0.1:1" in message and "S3cret" not in message
    proc = subprocess.run([str(BIN / "mv-refresh"), "--dsn", dsn, "health"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3 and "UNKNOWN" in proc.stderr and "S3cret" not in proc.stderr + proc.stdout


def test_deadlock_is_a_retryable_error_and_the_retry_succeeds(lab_dsn, lab, monkeypatch):
    """Fault 4: the refresh and a session that locks in the other order deadlock (40P01).

    The refresh reads the view's definition (and so takes ACCESS SHARE on its sources) in the transaction
    that then refreshes it; a report holding the view and then taking the source exclusively closes a cycle.
    """
    # A backend checks for a deadlock once, deadlock_timeout after it starts to wait: the refresh's check
    # must come after the cycle closes (5 s of room), and the other session's never.
    monkeypatch.setenv("PGOPTIONS", "-c deadlock_timeout=5s")
    with connect(lab_dsn) as other:
        other.execute("SET deadlock_timeout = '60s'")
        # The other session: a report holding the view (a PLAIN refresh then waits for it) ...
        other.execute("SELECT count(*) FROM lab.mv_conc")
        outcome: dict = {}

        def run():
            try:
                refresh_view(lab_dsn, lab, "lab.mv_conc", mode="plain")
            except BaseException as exc:  # noqa: BLE001 - inspected below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: scalar(lab_dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                                           " AND application_name LIKE 'mv-refresh refresh%%'"),
                  what="the refresh waiting for the view")
        # ... then takes the source the refresh has read: a cycle.
        other.execute("LOCK TABLE lab.src IN ACCESS EXCLUSIVE MODE")
        other.rollback()
    thread.join(30)
    error = outcome["error"]
    assert isinstance(error, RefreshFailed) and error.retryable
    assert error.result.error_sqlstate == "40P01"
    assert _statuses(lab_dsn, "mv_conc") == ["ERROR"]
    # What Airflow's retry does: the same refresh again, now without the other session.
    assert refresh_view(lab_dsn, lab, "lab.mv_conc", mode="plain").status == "OK"
    assert _statuses(lab_dsn, "mv_conc") == ["ERROR", "OK"]


PROBE_DAG = """
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from mv_refresh.airflow.operators import MaterializedViewRefreshOperator
from lab import scalar, wait_for

with DAG("deadlock_retry_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         tags=["test"]) as dag:
    MaterializedViewRefreshOperator(task_id="refresh_mv_conc", view="lab.mv_conc", mode="plain",
                                    retries=2, retry_delay=timedelta(seconds=1))
"""


@pytest.mark.airflow
def test_deadlocked_task_is_retried_by_airflow(lab_dsn, airflow_db, airflow_conn, monkeypatch, tmp_path):
    """Fault 4 through Airflow: the task fails with 40P01, goes up_for_retry, and the retry succeeds."""
    from lab import LAB_CATALOG
    from probes import probe_dag

    path = tmp_path / "lab.yaml"
    path.write_text(LAB_CATALOG)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    airflow_conn(lab_dsn)
    dag = probe_dag(tmp_path, monkeypatch, "deadlock_retry_probe", PROBE_DAG)
    other = connect(lab_dsn)
    other.execute("SET deadlock_timeout = '60s'")  # the refresh's backend (5 s, below) detects the cycle
    monkeypatch.setenv("PGOPTIONS", "-c deadlock_timeout=5s")
    other.execute("SELECT count(*) FROM lab.mv_conc")  # a report holding the view

    closed: dict = {}

    def close_the_cycle():
        try:
            _close_the_cycle()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            closed["error"] = exc

    def _close_the_cycle():
        wait_for(lambda: scalar(lab_dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                                           " AND application_name LIKE 'mv-refresh refresh%%'"),
                  # dag.test() takes a while to start the task on a busy machine; the refresh then waits
                  # up to its lock timeout (10 s) for the cycle to close, which this thread does at once.
                  timeout=120, what="the task's refresh waiting")
        other.execute("LOCK TABLE lab.src IN ACCESS EXCLUSIVE MODE")  # waits for the refresh: a cycle
        other.rollback()

    closer = threading.Thread(target=close_the_cycle)
    closer.start()
    run = dag.test()
    closer.join(30)
    other.close()
    assert "error" not in closed, closed
    [ti] = run.get_task_instances()
    assert (run.state, ti.state, ti.try_number) == ("success", "success", 2)
    assert _statuses(lab_dsn, "mv_conc") == ["ERROR", "OK"]
    with connect(lab_dsn) as conn:
        assert conn.execute("SELECT error_sqlstate, try_number FROM ops.mv_refresh_log ORDER BY id").fetchall() == [
            ("40P01", 1), (None, 2)]


@pytest.mark.airflow
def test_sensor_waits_for_a_running_refresh_then_judges_it(lab_dsn, lab, airflow_conn, monkeypatch, tmp_path):
    """Fault 5: the health check runs while the critical view is being refreshed."""
    from airflow.sdk.exceptions import AirflowFailException

    from mv_refresh.airflow.sensors import MaterializedViewHealthSensor
    from mv_refresh.catalog import load_catalog
    from mv_refresh.migrations import init_db

    path = tmp_path / "catalog.yaml"
    path.write_text("version: 1\nviews:\n  - name: lab.mv_slow\n    critical: true\n")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    airflow_conn(lab_dsn)
    init_db(lab_dsn, load_catalog())
    sensor = MaterializedViewHealthSensor(task_id="health_check", check_run=False)
    context = {"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="health_check", try_number=1)}
    with pytest.raises(AirflowFailException, match="NO_REFRESH"):
        sensor.poke(context)  # never refreshed, nothing running: fail at once
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.sleep_seconds SET s = 2")
    thread = threading.Thread(target=refresh_view, args=(lab_dsn, load_catalog(), "lab.mv_slow"))
    thread.start()
    wait_for(lambda: _statuses(lab_dsn, "mv_slow") == ["RUNNING"], what="the refresh running")
    assert sensor.poke(context) is False  # still running: keep poking, do not judge yet
    thread.join(30)
    assert sensor.poke(context) is True  # finished OK: fresh
