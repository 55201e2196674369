"""Faults of a real Celery deployment, induced for real (tests/support/celery_stack.py).

* a worker SIGKILLed in the middle of a refresh (the machine gone: every process of the worker at once);
* the network between a worker and the warehouse going silent mid-refresh (packets dropped both ways,
  tests/support/silent_network.py; needs root);
* a long reader blocking a PLAIN refresh while other refreshes run;
* Redis and the scheduler restarted in the middle of a run of ops_mv_refresh.

Each test asserts what Airflow did (tries, states, hostnames in its metadata database), what the server
did (the orphaned backend, its locks) and what the refresh log says afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from lab import LAB_SQL, scalar, set_sleep, wait_for
from refresh_log import log_rows, overlaps, running_left

from mv_refresh.db import connect

pytestmark = pytest.mark.timeout(900)

SLOW = "mvr_probe_slow_refresh"
BIN = Path(sys.executable).parent


def _running_refresh(dsn: str, timeout: float = 120.0) -> dict:
    """The RUNNING log row of lab.mv_slow, once its REFRESH statement is active on the server."""
    row = wait_for(lambda: next((r for r in log_rows(dsn, "mv_slow") if r["status"] == "RUNNING"), None),
                   timeout=timeout, what="the RUNNING row of lab.mv_slow")
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                            (row["backend_pid"],)), timeout=30, what="the REFRESH statement active")
    return row


def _backend_alive(dsn: str, pid: int) -> bool:
    return bool(scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)))


def _locks_of_view(dsn: str) -> int:
    """Locks anyone holds on lab.mv_slow or on its advisory key (mv_refresh.pg.ADVISORY_LOCK_CLASS)."""
    from mv_refresh.pg import ADVISORY_LOCK_CLASS

    return scalar(dsn, """
        SELECT count(*) FROM pg_locks
        WHERE granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND (relation = 'lab.mv_slow'::regclass OR (locktype = 'advisory' AND classid::bigint = %s))""",
                  (ADVISORY_LOCK_CLASS & 0xFFFFFFFF,))


def test_worker_killed_mid_refresh_is_retried_on_the_other_worker(celery_stack, lab_connection):
    stack = celery_stack
    conn_id, dsn = lab_connection
    set_sleep(dsn, 120)  # a REFRESH of two minutes: the statement timeout (600 s) is far away
    run_id = stack.trigger(SLOW, {"conn_id": conn_id})
    orphan = _running_refresh(dsn)
    victim = stack.worker_of(orphan["client_hostname"])
    try:
        killed, killed_at = time.monotonic(), datetime.now(timezone.utc)
        stack.kill_worker(victim)
        set_sleep(dsn, 0.5)  # what the retry will find: a quick refresh
        wait_for(lambda: not _backend_alive(dsn, orphan["backend_pid"]), timeout=60,
                 what="the orphaned backend gone")
        orphan_seconds = time.monotonic() - killed
        assert stack.wait_for_run(SLOW, run_id, timeout=300) == "success"
    finally:
        stack.start_worker(victim)

    first, retry = stack.task_tries(SLOW, run_id)
    noticed = (first["end_date"] - killed_at).total_seconds()
    print(f"killed worker: orphaned REFRESH stopped after {orphan_seconds:.1f} s; Airflow failed try 1 after "
          f"{noticed:.1f} s (task_instance_heartbeat_timeout {stack.heartbeat_timeout} s)")
    # The orphan stopped within client_connection_check_interval (5 s), not after its two minutes.
    assert orphan_seconds < 20, f"the orphaned REFRESH went on for {orphan_seconds:.0f} s"
    assert (first["try_number"], first["state"], first["hostname"]) == (1, "failed", orphan["client_hostname"])
    assert (retry["try_number"], retry["state"]) == (2, "success")
    assert retry["hostname"] != first["hostname"], "the retry ran on the killed worker"
    rows = log_rows(dsn, "mv_slow")
    assert [(r["status"], r["try_number"]) for r in rows] == [("ABANDONED", 1), ("OK", 2)]
    assert rows[0]["backend_pid"] == orphan["backend_pid"] and "is gone" in rows[0]["error_message"]
    assert rows[1]["client_hostname"] == retry["hostname"]
    assert rows[1]["refresh_started_at"] >= rows[0]["refresh_finished_at"]
    assert running_left(dsn) == 0 and overlaps(dsn) == []


@pytest.fixture
def warehouse_behind_link(celery_stack, pg_server):
    """A lab warehouse on a private server behind a link the test can silence, and a connection to it.

    The connection's extras shorten the dead-peer detection on both ends (the documented way to tune
    it, docs/at-scale.md), so the test takes seconds; the defaults' figures are in that page too.
    """
    from silent_network import SilentNetwork

    from mv_refresh.migrations import apply_migrations

    if os.geteuid() != 0:
        pytest.fail("the silent-network test needs root (ip netns, routes): run the suite as CI does, as root")
    with SilentNetwork(pg_server.version_num // 10000) as net:
        observer = net.socket_dsn()
        apply_migrations(observer)
        with connect(observer) as conn:
            conn.execute(LAB_SQL)
        conn_id = f"link_{net.name}"
        celery_stack.add_connection(conn_id, net.tcp_dsn(), extra={
            "keepalives_idle": "2", "keepalives_interval": "1", "tcp_user_timeout": "5000",
            "options": "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_user_timeout=5000 "
                       "-c client_connection_check_interval=1s"})
        try:
            yield net, conn_id, observer
        finally:
            celery_stack.api("DELETE", f"/api/v2/connections/{conn_id}", ok=(204, 404))


def test_silent_network_mid_refresh_gives_up_retries_and_cancels_the_server_side(celery_stack,
                                                                                 warehouse_behind_link):
    stack = celery_stack
    net, conn_id, observer = warehouse_behind_link
    set_sleep(observer, 300)
    run_id = stack.trigger(SLOW, {"conn_id": conn_id})
    orphan = _running_refresh(observer)
    net.silence()
    cut, cut_at = time.monotonic(), datetime.now(timezone.utc)
    try:
        wait_for(lambda: not _backend_alive(observer, orphan["backend_pid"]), timeout=60,
                 what="the server giving up on the silent client")
        server_seconds = time.monotonic() - cut
        wait_for(lambda: any(t["try_number"] == 1 and t["end_date"] for t in stack.task_tries(SLOW, run_id)),
                 timeout=90, what="try 1 giving up")
        # The cancelled REFRESH left nothing behind: no lock on the view, no advisory lock.
        assert _locks_of_view(observer) == 0
        set_sleep(observer, 0.5)
    finally:
        net.restore()
    assert stack.wait_for_run(SLOW, run_id, timeout=300) == "success"

    tries = stack.task_tries(SLOW, run_id)
    first = tries[0]
    client_seconds = (first["end_date"] - cut_at).total_seconds()
    print(f"silent network: server gave up after {server_seconds:.1f} s, the task's try 1 after "
          f"{client_seconds:.1f} s")
    assert server_seconds < 20, f"the server went on refreshing for {server_seconds:.0f} s"
    assert client_seconds < 40, f"the client waited {client_seconds:.0f} s on a silent network"
    assert (first["try_number"], first["state"]) == (1, "failed")
    assert tries[-1]["state"] == "success" and tries[-1]["try_number"] >= 2
    rows = log_rows(observer, "mv_slow")
    # Try 1's row could not be finished over the dead link: the retry found its backend gone.
    assert [(r["status"], r["try_number"]) for r in rows] == [("ABANDONED", 1), ("OK", tries[-1]["try_number"])]
    assert running_left(observer) == 0


def test_long_reader_blocks_a_plain_refresh_until_it_leaves(celery_stack, lab_connection):
    """Lock timeout (55P03, naming the reader), Airflow retries, success once the reader has gone, while
    other refreshes of the run and a CLI loop keep both workers and the server busy."""
    stack = celery_stack
    conn_id, dsn = lab_connection
    stop_cli = threading.Event()
    env = {**os.environ, "MV_REFRESH_DSN": dsn, "MV_REFRESH_CONFIG": str(stack.extra_dags / "lab.yaml")}

    def cli_loop():
        while not stop_cli.is_set():
            subprocess.run([str(BIN / "mv-refresh"), "refresh", "lab.mv_noidx", "lab.mv_keyed"], env=env,
                           capture_output=True, timeout=120)

    reader = connect(dsn)
    reader_pid = reader.execute("SELECT pg_backend_pid()").fetchone()[0]
    reader.execute("SELECT count(*) FROM lab.mv_conc")  # ACCESS SHARE, held until the reader ends
    loop = threading.Thread(target=cli_loop)
    loop.start()
    try:
        run_id = stack.trigger("mvr_probe_blocked_plain", {"conn_id": conn_id, "lock_timeout": 2})
        wait_for(lambda: sum(r["status"] == "ERROR" for r in log_rows(dsn, "mv_conc")) >= 2, timeout=180,
                 what="two tries timed out on the reader's lock")
        reader.rollback()
        state = stack.wait_for_run("mvr_probe_blocked_plain", run_id, timeout=300)
    finally:
        reader.close()
        stop_cli.set()
        loop.join(180)
    assert state == "success"
    rows = log_rows(dsn, "mv_conc")
    *errors, ok = rows
    assert ok["status"] == "OK" and ok["method"] == "PLAIN" and len(errors) >= 2
    for row in errors:
        assert (row["status"], row["error_sqlstate"]) == ("ERROR", "55P03")
        assert f"pid {reader_pid}" in row["error_message"], row["error_message"]
    tries = [t for t in stack.task_tries("mvr_probe_blocked_plain", run_id) if t["task_id"] == "refresh_mv_conc"]
    assert [t["try_number"] for t in tries] == list(range(1, len(rows) + 1)), "one log row per try"
    assert len({t["hostname"] for t in stack.task_tries("mvr_probe_blocked_plain", run_id)}) == 2
    assert overlaps(dsn) == [] and running_left(dsn) == 0


def test_redis_and_scheduler_restarted_mid_run(celery_stack):
    """ops_mv_refresh while its broker and then its scheduler are restarted: the run completes (tasks may
    be retried), no view is refreshed twice at once, nothing stays RUNNING."""
    from mv_refresh.catalog import load_catalog

    stack = celery_stack
    dsn = stack.demo_dsn
    catalog = load_catalog()
    dag = "ops_mv_refresh"
    stack.wait_idle(dag)
    run_id = stack.trigger(dag)

    def done(count: int) -> bool:
        return sum(t["state"] == "success" for t in stack.task_tries(dag, run_id)) >= count

    wait_for(lambda: done(1), timeout=180, what="the first refresh of the run done")
    redis_restarted = time.monotonic()
    stack.restart_redis(down_seconds=3)
    wait_for(lambda: done(3), timeout=300, what="the third refresh done after Redis came back")
    after_redis = time.monotonic() - redis_restarted
    scheduler_restarted = time.monotonic()
    stack.restart_scheduler(down_seconds=3)
    assert stack.wait_for_run(dag, run_id, timeout=600) == "success"
    print(f"Redis restart: two more refreshes done {after_redis:.0f} s later; scheduler restart: the run ended "
          f"{time.monotonic() - scheduler_restarted:.0f} s later")
    for task in stack.task_tries(dag, run_id):
        print(f"  {task['task_id']}: try {task['try_number']} {task['state']} on {task['hostname']}, "
              f"{task['start_date']:%H:%M:%S}-{task['end_date']:%H:%M:%S}")

    rows = [r for r in log_rows(dsn) if r["run_id"] == run_id]
    ok = sorted(r["mv_name"] for r in rows if r["status"] == "OK")
    assert ok == sorted(v.name for v in catalog.views), "every view refreshed OK exactly once in the run"
    assert overlaps(dsn) == [] and running_left(dsn) == 0
