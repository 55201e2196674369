"""Load on the Celery deployment: ops_mv_refresh over many views, runs back to back, CLI refreshes beside them.

    make load-test                                     # 50 views, 10 minutes (LOAD_VIEWS, LOAD_SECONDS)
    .venv/bin/python bench/loadtest.py --views 50 --seconds 600

What runs (tests/support/celery_stack.py): Airflow 3.3 with the CeleryExecutor, the machine's Redis as
the broker (its own key prefix and queue), the metadata database on the PostgreSQL server, a scheduler,
a dag-processor, an API server and two Celery workers of their own hostnames. The project's
``ops_mv_refresh`` DAG runs over a generated catalog of N views with a branching graph (five roots;
every other view reads one or two earlier views), triggered again as soon as its previous run has
ended (the hourly DAG run back to back; ``max_active_runs=1``), while another process runs
``mv-refresh refresh --all`` in a loop on the same views.

Server: ``MV_REFRESH_DSN``'s or ``TEST_DATABASE_URL``'s (a scratch warehouse and the metadata database
are created there and dropped at the end), else the embedded PostgreSQL under ``.demo/load-pg``.

Reported: DAG runs, attempts (Airflow task tries that reached the engine, CLI refreshes), log rows by
status, overlaps of two refreshes of one view (must be 0), RUNNING rows left (must be 0), and the
p50/p95 duration of a refresh task against the bare REFRESH of the same views. The exit status is 1 when
an invariant is broken (overlap, RUNNING left, a log row missing or extra); durations are reported only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROOTS = 5
DAG = "ops_mv_refresh"


def upstream_of(k: int) -> list[int]:
    """The branching graph: views 1-5 are roots; view k reads view k-5, and every third also k-3."""
    if k <= ROOTS:
        return []
    ups = [k - ROOTS]
    if k % 3 == 0:
        ups.append(k - 3)
    return sorted(set(ups))


def view_name(k: int) -> str:
    return f"mv_{k:03d}"


def build_views(dsn: str, count: int) -> str:
    """``load.mv_001..N`` (2,000 rows each, ~50-130 ms of pg_sleep); return their catalog's YAML."""
    from mv_refresh.db import connect

    lines = ["version: 1", "defaults:", "  lock_timeout_seconds: 120", "  statement_timeout_seconds: 300",
             "views:"]
    with connect(dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS load")
        for k in range(1, count + 1):
            ups = upstream_of(k)
            if ups:
                source = sql.SQL("{} AS g").format(sql.Identifier("load", view_name(ups[0])))
                for extra in ups[1:]:
                    source += sql.SQL(" JOIN {} USING (id)").format(sql.Identifier("load", view_name(extra)))
            else:
                source = sql.SQL("generate_series(1, 2000) AS g(id)")
            conn.execute(sql.SQL(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {} AS SELECT id FROM {}, (SELECT pg_sleep({})) AS z"
            ).format(sql.Identifier("load", view_name(k)), source, sql.Literal(0.05 + (k % 5) * 0.02)))
            conn.execute(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (id)").format(
                sql.Identifier(f"ux_{view_name(k)}_id"), sql.Identifier("load", view_name(k))))
            lines.append(f"  - name: load.{view_name(k)}")
            lines.append("    grain: [id]")
            if k == count:
                lines.append("    critical: true")
            if ups:
                lines.append(f"    upstream: [{', '.join(f'load.{view_name(u)}' for u in ups)}]")
    return "\n".join(lines) + "\n"


def bare_refresh_seconds(dsn: str, count: int, reps: int = 3) -> list[float]:
    """The median of ``reps`` plain psycopg ``REFRESH ... CONCURRENTLY`` of each view: no log, no Airflow."""
    from mv_refresh.db import connect

    medians = []
    with connect(dsn, autocommit=True, purpose="load bare") as conn:
        for k in range(1, count + 1):
            statement = sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(
                sql.Identifier("load", view_name(k)))
            samples = []
            for _ in range(reps):
                started = time.perf_counter()
                conn.execute(statement)
                samples.append(time.perf_counter() - started)
            medians.append(statistics.median(samples))
    return medians


@dataclass
class Outcome:
    run_ids: list[str] = field(default_factory=list)
    run_states: dict[str, str] = field(default_factory=dict)
    cli_runs: int = 0
    cli_attempts: int = 0
    airflow_attempts: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    overlaps: int = 0
    running_left: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _cli_loop(env: dict[str, str], deadline: float, outcome: Outcome, lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        proc = subprocess.run([str(BIN / "mv-refresh"), "refresh", "--all", "--json"], env=env,
                              capture_output=True, text=True, timeout=900)
        results = json.loads(proc.stdout or "[]")
        with lock:
            outcome.cli_runs += 1
            # NOT_RUN (an upstream failed in this invocation) never reached the engine: no log row.
            outcome.cli_attempts += sum(1 for r in results if r["status"] != "NOT_RUN")


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": q(0.5), "p95": q(0.95), "max": ordered[-1]}


def run_load(stack, dsn: str, *, views: int, seconds: float, log=print) -> Outcome:
    """Run the load on a started CeleryStack against warehouse ``dsn``; check and measure it."""
    from refresh_log import overlaps, running_left

    from mv_refresh.catalog import parse_catalog
    from mv_refresh.migrations import init_db

    catalog_text = build_views(dsn, views)
    init_db(dsn, parse_catalog(catalog_text, source="load catalog"))
    log(f"load: {views} views; measuring the bare REFRESH of each ...")
    bare = bare_refresh_seconds(dsn, views)
    stack.wait_idle(DAG)
    stack.use_warehouse(dsn)
    stack.use_catalog(catalog_text)
    started_at = datetime.now(timezone.utc)
    stack.unpause(DAG)  # on a fresh deployment this starts the latest hourly run at once: it counts too
    env = {**os.environ, "MV_REFRESH_DSN": dsn, "MV_REFRESH_CONFIG": str(stack.catalog_path)}
    outcome = Outcome()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    cli = threading.Thread(target=_cli_loop, args=(env, deadline, outcome, lock))
    cli.start()
    log(f"load: {seconds:.0f} s of ops_mv_refresh runs back to back + `mv-refresh refresh --all` in a loop")
    try:
        while time.monotonic() < deadline:
            if not stack.active_runs(DAG):
                outcome.run_ids.append(stack.trigger(DAG))
                log(f"  {time.strftime('%H:%M:%S')} run {len(outcome.run_ids)} triggered")
            time.sleep(2)
    finally:
        cli.join()
    stack.wait_idle(DAG, timeout=900)
    # Every run of the DAG that started since the load began counts, an hourly one included.
    runs = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns",
                     params={"start_date_gte": started_at.isoformat(), "limit": 1000})["dag_runs"]
    outcome.run_ids = [r["dag_run_id"] for r in runs]
    outcome.run_states = {r["dag_run_id"]: r["state"] for r in runs}
    run_seconds = [(datetime.fromisoformat(r["end_date"]) - datetime.fromisoformat(r["start_date"])).total_seconds()
                   for r in runs if r["start_date"] and r["end_date"]]
    tries = [t for run_id in outcome.run_ids for t in stack.task_tries(DAG, run_id)
             if t["task_id"].startswith("refresh_")]
    # Tries that reached the engine (skipped / upstream_failed tasks never ran).
    outcome.airflow_attempts = sum(1 for t in tries if t["state"] in ("success", "failed", "up_for_retry"))
    durations = [t["duration"] for t in tries if t["state"] == "success" and t["duration"] is not None]
    queue_waits = stack.query("""
        SELECT extract(epoch FROM start_date - queued_dttm) FROM task_instance
        WHERE dag_id = %s AND run_id = ANY(%s) AND task_id LIKE 'refresh_%%' AND state = 'success'""",
                              (DAG, outcome.run_ids))
    from mv_refresh.db import connect

    with connect(dsn) as conn:
        outcome.statuses = dict(conn.execute(
            "SELECT status, count(*) FROM ops.mv_refresh_log GROUP BY status").fetchall())
        by_runner = dict(conn.execute("SELECT run_by, count(*) FROM ops.mv_refresh_log GROUP BY run_by").fetchall())
        engine = [r[0] / 1000 for r in conn.execute(
            "SELECT duration_ms FROM ops.mv_refresh_log WHERE status = 'OK' AND run_by = 'airflow'")]
        hosts = dict(conn.execute("SELECT client_hostname, count(*) FROM ops.mv_refresh_log "
                                  "WHERE run_by = 'airflow' GROUP BY client_hostname").fetchall())
    outcome.overlaps = len(overlaps(dsn))
    outcome.running_left = running_left(dsn)
    outcome.figures = {
        "task_duration_s": _quantiles(durations),
        "refresh_in_engine_s": _quantiles(engine),
        "bare_refresh_s": _quantiles(bare),
        "queued_to_start_s": _quantiles([float(r[0]) for r in queue_waits if r[0] is not None]),
        "run_duration_s": _quantiles(run_seconds),
        "airflow_refreshes_by_worker": hosts,
    }
    if outcome.overlaps:
        outcome.problems.append(f"{outcome.overlaps} pair(s) of refreshes of one view overlapped")
    if outcome.running_left:
        outcome.problems.append(f"{outcome.running_left} RUNNING row(s) left")
    if by_runner.get("cli", 0) != outcome.cli_attempts:
        outcome.problems.append(f"CLI: {outcome.cli_attempts} attempts but {by_runner.get('cli', 0)} log rows")
    if by_runner.get("airflow", 0) != outcome.airflow_attempts:
        outcome.problems.append(
            f"Airflow: {outcome.airflow_attempts} attempts but {by_runner.get('airflow', 0)} log rows")
    if not outcome.airflow_attempts or not outcome.cli_attempts:
        outcome.problems.append("one side made no attempt at all: the load did not happen")
    if len(hosts) < 2:
        outcome.problems.append(f"the refreshes did not run on both workers: {hosts}")
    return outcome


def report(outcome: Outcome) -> str:
    f = outcome.figures
    states: dict[str, int] = {}
    for state in outcome.run_states.values():
        states[state] = states.get(state, 0) + 1

    def row(label: str, q: dict[str, float]) -> str:
        if not q.get("n"):
            return f"  {label:34} (none)"
        return f"  {label:34} p50 {q['p50']:6.2f} s   p95 {q['p95']:6.2f} s   max {q['max']:6.2f} s   (n={q['n']})"

    bare50 = f["bare_refresh_s"].get("p50") or float("nan")
    task50 = f["task_duration_s"].get("p50") or float("nan")
    return "\n".join([
        f"DAG runs: {len(outcome.run_ids)} {states}",
        f"attempts: Airflow {outcome.airflow_attempts}, CLI {outcome.cli_attempts} ({outcome.cli_runs} CLI runs)",
        f"log rows: {sum(outcome.statuses.values())} {outcome.statuses}",
        f"overlaps: {outcome.overlaps} (must be 0)    RUNNING left: {outcome.running_left} (must be 0)",
        f"refreshes by worker: {f['airflow_refreshes_by_worker']}",
        row("Airflow task duration", f["task_duration_s"]),
        row("REFRESH inside the task (log)", f["refresh_in_engine_s"]),
        row("bare REFRESH (psycopg, idle)", f["bare_refresh_s"]),
        row("queued -> running (Celery)", f["queued_to_start_s"]),
        row(f"whole DAG run ({len(outcome.run_ids)} runs)", f["run_duration_s"]),
        f"task p50 / bare p50: {task50 / bare50:.1f}x",
    ])


def main() -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every `finally` below cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--private-redis", action="store_true", help="a redis-server of its own, not the machine's")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from celery_stack import CeleryStack, with_dbname

    from mv_refresh.db import connect

    admin = os.environ.get("MV_REFRESH_DSN") or os.environ.get("TEST_DATABASE_URL")
    embedded_dir = ROOT / ".demo" / "load-pg"
    started_embedded = False
    if not admin:
        from mv_refresh.embedded import start_embedded

        started_embedded = not (embedded_dir / "postmaster.pid").exists()
        admin = start_embedded(embedded_dir)
    name = f"mvr_load_{os.getpid()}"
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    stack = CeleryStack(admin, private_redis=args.private_redis, heartbeat_timeout=60, queued_timeout=600,
                        parsing_interval=30, log=print)
    try:
        stack.start()
        outcome = run_load(stack, with_dbname(admin, name), views=args.views, seconds=args.seconds)
    finally:
        stack.stop()
        with connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if started_embedded:
            from mv_refresh.embedded import stop_embedded

            stop_embedded(embedded_dir)
    print(report(outcome))
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "loadtest.json").write_text(json.dumps({"views": args.views, "seconds": args.seconds,
                                                   **outcome.__dict__}, indent=2, default=str) + "\n")
    if outcome.problems:
        print("FAILED:\n  " + "\n  ".join(outcome.problems))
        return 1
    print("load test passed: no view refreshed twice at once, no RUNNING left, one log row per attempt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
