"""Load: many views refreshed by Airflow workers and CLI processes at once; nothing runs twice, nothing is lost.

    .venv/bin/python bench/loadtest.py --views 50 --seconds 180      # the full form: `make load-test`

What runs, all against one database:
* ``airflow standalone`` (LocalExecutor, ``parallelism`` 4, SQLite metadata in a temporary home) with the
  project's ``ops_mv_refresh`` DAG over a generated catalog of N views in chains of five, triggered
  again whenever its previous run has finished;
* two ``mv-refresh refresh --all --json`` loops.
Then it checks: no two refreshes of one view overlapped in time, no RUNNING row is left, and the log
has exactly one row per attempt (Airflow task tries that ran + CLI attempts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHAIN = 5


def build_views(dsn: str, count: int) -> str:
    """``load.mv_001..N``: each takes ~50-130 ms; view k reads view k-1 within its chain of five."""
    from mv_refresh.db import connect

    lines = ["version: 1", "defaults:", "  lock_timeout_seconds: 120", "  statement_timeout_seconds: 120",
             "views:"]
    with connect(dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS load")
        for k in range(1, count + 1):
            name = f"mv_{k:03d}"
            first_in_chain = (k - 1) % CHAIN == 0
            source = (sql.SQL("generate_series(1, 2000) AS g(id)") if first_in_chain
                      else sql.SQL("{} AS g").format(sql.Identifier("load", f"mv_{k - 1:03d}")))
            conn.execute(sql.SQL(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {} AS SELECT g.id FROM {}, "
                "(SELECT pg_sleep({})) AS z"
            ).format(sql.Identifier("load", name), source, sql.Literal(0.05 + (k % 5) * 0.02)))
            conn.execute(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (id)").format(
                sql.Identifier(f"ux_{name}_grain"), sql.Identifier("load", name)))
            lines.append(f"  - name: load.{name}")
            lines.append("    grain: [id]")
            if k == count:
                lines.append("    critical: true")
            if not first_in_chain:
                lines.append(f"    upstream: [load.mv_{k - 1:03d}]")
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    cli_attempts: int = 0
    cli_runs: int = 0
    dag_runs: list[str] = field(default_factory=list)
    airflow_attempts: int = 0
    problems: list[str] = field(default_factory=list)


def _cli_loop(env: dict[str, str], deadline: float, outcome: Outcome, lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        proc = subprocess.run([str(BIN / "mv-refresh"), "refresh", "--all", "--json"], env=env,
                              capture_output=True, text=True, timeout=600)
        results = json.loads(proc.stdout or "[]")
        with lock:
            outcome.cli_runs += 1
            # NOT_RUN (upstream failed in this invocation) never reached the engine: no log row.
            outcome.cli_attempts += sum(1 for r in results if r["status"] != "NOT_RUN")


def _airflow(env: dict[str, str], *args: str) -> str:
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_api(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/version", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError("airflow standalone did not come up within 180 s")


def _running_runs(airflow_db: Path) -> int:
    with sqlite3.connect(airflow_db) as db:
        return db.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'ops_mv_refresh' "
                          "AND state IN ('queued', 'running')").fetchone()[0]


def _airflow_attempts(airflow_db: Path) -> int:
    """Task executions that reached the engine: every try of a refresh task that ran (not skipped)."""
    query = ("SELECT count(*) FROM {table} WHERE dag_id = 'ops_mv_refresh' AND task_id LIKE 'refresh_%' "
             "AND state IN ('success', 'failed', 'up_for_retry')")
    with sqlite3.connect(airflow_db) as db:
        current = db.execute(query.replace("{table}", "task_instance")).fetchone()[0]
        earlier = db.execute(query.replace("{table}", "task_instance_history")).fetchone()[0]
    return current + earlier


def run_load(dsn: str, *, views: int, seconds: float, log=print) -> Outcome:
    from mv_refresh.catalog import parse_catalog
    from mv_refresh.db import airflow_connection_json
    from mv_refresh.migrations import init_db

    home = Path(tempfile.mkdtemp(prefix="mvr-load-"))
    catalog_path = home / "catalog.yaml"
    catalog_path.write_text(build_views(dsn, views))
    init_db(dsn, parse_catalog(catalog_path.read_text(), source=str(catalog_path)))
    port = _free_port()  # not 8080: a developer's own Airflow may be there
    env = {
        **os.environ,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "MV_REFRESH_DSN": dsn,
        "MV_REFRESH_CONFIG": str(catalog_path),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow/airflow.db",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW_CONN_POSTGRES_DEFAULT": airflow_connection_json(dsn),
    }
    for key in ("AIRFLOW__CORE__UNIT_TEST_MODE",):
        env.pop(key, None)
    (home / "airflow").mkdir()
    airflow_db = home / "airflow" / "airflow.db"
    outcome = Outcome()
    log(f"load: {views} views, {seconds:.0f} s; airflow home {home / 'airflow'}")
    _airflow(env, "db", "migrate")
    # The refresh tasks run in this pool (dags/ops_mv_refresh.py); a task in a missing pool never starts.
    _airflow(env, "pools", "set", "mv_refresh", "4", "mv-refresh load test")
    with open(home / "standalone.log", "w") as standalone_log:
        standalone = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=standalone_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_api(port)
        _airflow(env, "dags", "reserialize")
        _airflow(env, "dags", "unpause", "ops_mv_refresh")
        deadline = time.monotonic() + seconds
        lock = threading.Lock()
        loops = [threading.Thread(target=_cli_loop, args=(env, deadline, outcome, lock)) for _ in range(2)]
        for loop in loops:
            loop.start()
        while time.monotonic() < deadline:
            if _running_runs(airflow_db) == 0:
                _airflow(env, "dags", "trigger", "ops_mv_refresh")
                outcome.dag_runs.append(time.strftime("%H:%M:%S"))
                log(f"  {time.strftime('%H:%M:%S')} triggered ops_mv_refresh run {len(outcome.dag_runs)}")
            time.sleep(2)
        for loop in loops:
            loop.join()
        end = time.monotonic() + 600
        while _running_runs(airflow_db) and time.monotonic() < end:
            time.sleep(2)
        outcome.airflow_attempts = _airflow_attempts(airflow_db)
    finally:
        os.killpg(standalone.pid, signal.SIGTERM)
        try:
            standalone.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(standalone.pid, signal.SIGKILL)
    check(dsn, outcome)
    log(f"  dag runs {len(outcome.dag_runs)}, airflow attempts {outcome.airflow_attempts}, "
        f"cli runs {outcome.cli_runs}, cli attempts {outcome.cli_attempts}")
    return outcome


def check(dsn: str, outcome: Outcome) -> None:
    from mv_refresh.db import connect

    with connect(dsn) as conn:
        overlaps = conn.execute("""
            SELECT mv_name, count(*) FROM (
                SELECT mv_name, refresh_started_at,
                       lag(refresh_finished_at) OVER (PARTITION BY schema_name, mv_name
                                                      ORDER BY refresh_started_at) AS previous_finished
                FROM ops.mv_refresh_log WHERE status IN ('OK', 'ERROR')) AS t
            WHERE refresh_started_at < previous_finished GROUP BY mv_name""").fetchall()
        running = conn.execute("SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'").fetchone()[0]
        by_runner = dict(conn.execute("SELECT run_by, count(*) FROM ops.mv_refresh_log GROUP BY run_by").fetchall())
        statuses = dict(conn.execute("SELECT status, count(*) FROM ops.mv_refresh_log GROUP BY status").fetchall())
    if overlaps:
        outcome.problems.append(f"refreshes of one view overlapped: {overlaps}")
    if running:
        outcome.problems.append(f"{running} RUNNING row(s) left")
    if by_runner.get("cli", 0) != outcome.cli_attempts:
        outcome.problems.append(f"CLI: {outcome.cli_attempts} attempts but {by_runner.get('cli', 0)} log rows")
    if by_runner.get("airflow", 0) != outcome.airflow_attempts:
        outcome.problems.append(
            f"Airflow: {outcome.airflow_attempts} attempts but {by_runner.get('airflow', 0)} log rows")
    if not outcome.airflow_attempts or not outcome.cli_attempts:
        outcome.problems.append("one side made no attempt at all: the load did not happen")
    outcome.statuses = statuses  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=180)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from mv_refresh.db import connect

    admin = os.environ.get("MV_REFRESH_DSN") or os.environ.get("TEST_DATABASE_URL")
    if not admin:
        from mv_refresh.embedded import start_embedded

        admin = start_embedded(ROOT / ".demo" / "load-pg")
    name = f"mvr_load_{os.getpid()}"
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(admin)
    params["dbname"] = name
    try:
        outcome = run_load(make_conninfo(**params), views=args.views, seconds=args.seconds)
    finally:
        with connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"log rows by status: {outcome.statuses}")  # type: ignore[attr-defined]
    if outcome.problems:
        print("FAILED:\n  " + "\n  ".join(outcome.problems))
        return 1
    print("load test passed: no view refreshed twice at once, no RUNNING left, one log row per attempt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
