"""Interrupts: Ctrl-C and SIGTERM of the CLI, Airflow's on_kill and task timeout, mid-refresh.

In every case the statement is cancelled on the server (no backend refreshing on for nobody, and nothing
committed), the log row ends ERROR ("interrupted ...", SQLSTATE 57014, retryable) instead of RUNNING, the
old data stays readable, and the process says so in one line, without a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from lab import scalar, set_sleep, wait_for

from mv_refresh.db import connect

BIN = Path(sys.executable).parent


def _rows(dsn: str) -> list[tuple]:
    with connect(dsn) as conn:
        return conn.execute("SELECT status, error_sqlstate, error_message, backend_pid FROM ops.mv_refresh_log"
                            " WHERE mv_name = 'mv_slow' ORDER BY id").fetchall()


def _refresh_running(dsn: str) -> int:
    """Wait until the REFRESH of lab.mv_slow runs on the server; its backend pid."""
    pid = wait_for(lambda: scalar(dsn, "SELECT max(backend_pid) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"),
                   timeout=60, what="the RUNNING row")
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                                 " AND query LIKE 'REFRESH%%'", (pid,)), what="the REFRESH statement running")
    return pid


def _statement_stopped(dsn: str, pid: int) -> None:
    """The server is no longer refreshing for the interrupted client (cancelled, not left to commit)."""
    wait_for(lambda: scalar(dsn, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                            (pid,)), timeout=10, what="the server-side REFRESH to stop")


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_cli_interrupted_mid_refresh_cancels_and_logs_it(lab_files, sig, code, name):
    dsn = lab_files
    set_sleep(dsn, 60)
    cli = subprocess.Popen([str(BIN / "mv-refresh"), "refresh", "lab.mv_slow"], env=os.environ.copy(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = _refresh_running(dsn)
    cli.send_signal(sig)
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == code, (out, err)
    assert "Traceback" not in err and f"{name}: interrupted" in err
    _statement_stopped(dsn, pid)
    [(status, sqlstate, message, logged_pid)] = _rows(dsn)
    assert (status, sqlstate, logged_pid) == ("ERROR", "57014", pid)
    assert message == f"interrupted by {name}"
    # Nothing was committed: the old rows are still there and readable, and the next refresh has no
    # RUNNING row to reap.
    assert scalar(dsn, "SELECT count(*) FROM lab.mv_slow") == 10
    set_sleep(dsn, 0)
    assert subprocess.run([str(BIN / "mv-refresh"), "refresh", "lab.mv_slow"], env=os.environ.copy(),
                          capture_output=True, timeout=60).returncode == 0
    assert [r[0] for r in _rows(dsn)] == ["ERROR", "OK"]


@pytest.mark.airflow
def test_on_kill_cancels_the_refresh_and_the_task_fails_retryably(lab_files, airflow_conn):
    """What Airflow's task runner does on SIGTERM: it calls the operator's on_kill in the task's thread."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

    dsn = lab_files
    airflow_conn(dsn)
    set_sleep(dsn, 60)
    op = MaterializedViewRefreshOperator(task_id="refresh_mv_slow", view="lab.mv_slow")
    context = {"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="refresh_mv_slow", try_number=1)}
    outcome: dict = {}

    def run() -> None:
        try:
            op.execute(context)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    pid = _refresh_running(dsn)
    op.on_kill()
    thread.join(30)
    error = outcome["error"]
    assert isinstance(error, AirflowException) and not isinstance(error, AirflowFailException)
    assert "interrupted: the Airflow task was stopped (on_kill)" in str(error)
    _statement_stopped(dsn, pid)
    assert [r[:3] for r in _rows(dsn)] == [("ERROR", "57014", "interrupted: the Airflow task was stopped (on_kill)")]


TIMEOUT_DAG = """
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

with DAG("timeout_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), tags=["test"]):
    MaterializedViewRefreshOperator(task_id="refresh_mv_slow", view="lab.mv_slow", retries=0,
                                    execution_timeout=timedelta(seconds=3))
"""


@pytest.mark.airflow
def test_a_task_timeout_cancels_the_refresh_through_airflow(lab_files, airflow_db, airflow_conn, monkeypatch,
                                                            tmp_path):
    """execution_timeout fires inside the running statement (AirflowTaskTimeout, which psycopg does not
    treat as an interrupt): the engine cancels the server-side statement itself and logs the row."""
    from probes import probe_dag

    dsn = lab_files
    airflow_conn(dsn)
    set_sleep(dsn, 120)
    dag = probe_dag(tmp_path, monkeypatch, "timeout_probe", TIMEOUT_DAG)
    run = dag.test()
    [ti] = run.get_task_instances()
    assert (run.state, ti.state) == ("failed", "failed")
    [(status, sqlstate, message, pid)] = _rows(dsn)
    assert (status, sqlstate, message) == ("ERROR", "57014", "interrupted (AirflowTaskTimeout)")
    _statement_stopped(dsn, pid)
    assert timedelta(seconds=0) < (ti.end_date - ti.start_date) < timedelta(seconds=60)
