"""ops_mv_refresh end to end on the deployment its users run: CeleryExecutor, Redis, PostgreSQL metadata.

The deployment (tests/faults/conftest.py, tests/support/celery_stack.py) has two Celery workers, each a
"machine" of its own (its own hostname). These tests trigger the project's real DAG through the REST
API and read what happened from Airflow's metadata database and from ops.mv_refresh_log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery_stack import REFRESH_DAG_LEAVES
from lab import scalar, wait_for
from psycopg import sql
from refresh_log import log_rows, overlaps, running_left

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = pytest.mark.timeout(900)

DAG = "ops_mv_refresh"
BIN = Path(sys.executable).parent


def test_the_hourly_run_lands_on_both_workers_and_refreshes_every_view_once(celery_stack):
    """The session unpaused the hourly DAG (catchup off): the scheduler starts the latest hourly run at
    once, as on a fresh deployment; that run is checked here."""
    stack = celery_stack
    first = stack.runs(DAG)[0]
    assert first["run_type"] == "scheduled", first
    run_id = first["dag_run_id"]
    assert stack.wait_for_run(DAG, run_id, timeout=300) == "success"

    catalog = load_catalog()
    tries = stack.task_tries(DAG, run_id)
    assert {t["task_id"] for t in tries} == {*(v.task_id for v in catalog.views), *REFRESH_DAG_LEAVES}
    watcher = [t for t in tries if t["task_id"] == "fail_run_if_any_task_failed"]
    assert [t["state"] for t in watcher] == ["skipped"], watcher
    ran = [t for t in tries if t not in watcher]
    assert all((t["state"], t["try_number"]) == ("success", 1) for t in ran), ran
    hosts = {t["task_id"]: t["hostname"] for t in ran}
    assert set(hosts.values()) == set(stack.worker_hostnames.values()), f"tasks did not use both workers: {hosts}"

    rows = [r for r in log_rows(stack.demo_dsn) if r["run_id"] == run_id]
    assert sorted(r["mv_name"] for r in rows) == sorted(v.name for v in catalog.views)
    for row in rows:
        assert (row["status"], row["run_by"], row["dag_id"], row["try_number"]) == ("OK", "airflow", DAG, 1)
        # The log says which machine refreshed: the same worker Airflow ran the task on.
        assert row["client_hostname"] == hosts[row["task_id"]]
    assert overlaps(stack.demo_dsn) == [] and running_left(stack.demo_dsn) == 0


def _unique_index(dsn: str, view: str) -> tuple[str, str]:
    with connect(dsn) as conn:
        return conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = %s::regclass AND indisunique", (view,)).fetchone()


def test_sensor_reschedules_while_a_refresh_runs_and_a_failed_run_alerts(celery_stack):
    """Run with one view forced CONCURRENTLY after its unique index was dropped (a permanent failure),
    while a CLI refresh of the critical view is held up by a long reader: the health sensor must
    reschedule (not fail) while that refresh is RUNNING, then fail the run on the failed refresh, and the
    failure notifier must fire for both failed tasks."""
    stack = celery_stack
    dsn = stack.demo_dsn
    catalog = load_catalog()
    broken, critical = catalog.views[0], catalog.critical_views[0]
    index_name, index_def = _unique_index(dsn, broken.display_name)
    env = {**os.environ, "MV_REFRESH_DSN": dsn, "MV_REFRESH_CONFIG": str(stack.catalog_path)}
    stack.wait_idle(DAG)
    # Every view populated, whichever test ran before (the reader below must be able to read).
    subprocess.run([str(BIN / "mv-refresh"), "refresh", "--all"], env=env, check=True, capture_output=True)
    reader = connect(dsn)
    cli = None
    try:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(*index_name.split("."))))
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(critical.schema, critical.name)))
        # Another process refreshes the critical view (PLAIN: it waits for the reader's lock).
        cli = subprocess.Popen([str(BIN / "mv-refresh"), "refresh", critical.display_name, "--mode", "plain",
                                "--lock-timeout", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        wait_for(lambda: scalar(dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING' "
                                     "AND mv_name = %s", (critical.name,)), timeout=60, what="the CLI's RUNNING row")
        run_id = stack.trigger(DAG, {"views": [broken.display_name], "mode": "concurrently"})
        wait_for(lambda: stack.reschedules(DAG, run_id, "health_check") >= 1, timeout=180,
                 what="health_check rescheduled while the critical view is RUNNING")
        reader.rollback()  # the reader leaves: the CLI refresh goes through
        assert cli.wait(120) == 0, cli.stdout.read()
        assert stack.wait_for_run(DAG, run_id, timeout=300) == "failed"
    finally:
        reader.close()
        if cli is not None and cli.poll() is None:
            cli.kill()
        with connect(dsn, autocommit=True) as conn:
            conn.execute(index_def)

    tries = {t["task_id"]: t for t in stack.task_tries(DAG, run_id)}
    failed = tries[broken.task_id]
    assert (failed["state"], failed["try_number"]) == ("failed", 1), "a permanent failure is not retried"
    assert tries["health_check"]["state"] == "failed"
    assert stack.reschedules(DAG, run_id, "health_check") >= 1
    [error] = [r for r in log_rows(dsn, broken.name) if r["run_id"] == run_id]
    assert (error["status"], error["error_sqlstate"]) == ("ERROR", "55000")
    assert log_rows(dsn, critical.name)[-1]["status"] == "OK"  # the CLI's refresh, judged by the sensor
    for task_id in (broken.task_id, "health_check"):
        text = stack.task_log(DAG, run_id, task_id, 1)
        assert f"[mv-refresh] {DAG}.{task_id} failed in run {run_id}" in text, f"no alert in {task_id}'s log"
    assert overlaps(dsn) == [] and running_left(dsn) == 0
