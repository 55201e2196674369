"""6. Airflow's own overhead: a whole ``ops_mv_refresh`` run against the sum of its bare refreshes.

A: ``dag.test()`` of ``ops_mv_refresh`` in a fresh subprocess with its own ``AIRFLOW_HOME`` and SQLite
   metadata (``airflow db migrate`` once, before the rounds), ``AIRFLOW_CONN_POSTGRES_DEFAULT`` pointing
   at the benchmark database; timed as the whole process and as the ``dag.test()`` call alone.
B: ``psql -c 'REFRESH MATERIALIZED VIEW CONCURRENTLY ...'`` for each view of the catalog, one after the
   other (the sum of the six processes).

Rounds interleave A and B (the order flipped every round); one untimed warm-up run (one view) comes
first. The child also reports each task's own duration, and the log rows of its run give the engine's
logged interval per view, so the run splits into: the refreshes, what each task does around its
refresh (the first task also builds dag.test()'s in-process Execution API), the sensor, and the
scheduling loop between tasks.

Child mode: ``python bench/airflow_run.py --child`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchkit as bk
from benchkit import Row

DAG_ID = "ops_mv_refresh"


def _child() -> None:
    import logging

    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    imported = time.perf_counter()
    logging.disable(logging.WARNING)
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.dags[DAG_ID]
    parsed = time.perf_counter()
    # --warm: one view only (the others skip), to fill the bytecode cache before the timed runs.
    warm_view = os.environ.get("BENCH_WARM_VIEW")
    # force: every view really refreshes, as the psql side does, tracking installed or not.
    conf = {"views": [warm_view], "include_downstream": False} if warm_view else {}
    run = dag.test(run_conf={**conf, "force": True})
    tested = time.perf_counter()
    tasks = {}
    for ti in run.get_task_instances():
        duration = ti.duration
        if duration is None and ti.start_date and ti.end_date:
            duration = (ti.end_date - ti.start_date).total_seconds()
        tasks[ti.task_id] = {"state": str(ti.state), "duration_s": duration}
    print(json.dumps({"import_s": imported - started, "parse_s": parsed - imported, "test_s": tested - parsed,
                      "state": str(run.state), "run_id": run.run_id, "tasks": tasks}))


def migrate(home: Path, env: dict[str, str]) -> float:
    seconds, _ = bk.timed_run([str(bk.BIN / "airflow"), "db", "migrate"], env)
    return seconds


def measure(dsn: str, home: Path, rounds: int) -> dict[str, Any]:
    from mv_refresh.airflow.connection import airflow_connection_json
    from mv_refresh.catalog import load_catalog

    catalog = load_catalog()
    env = bk.airflow_env(home, AIRFLOW_CONN_POSTGRES_DEFAULT=airflow_connection_json(dsn))
    env.pop("MV_REFRESH_CONFIG", None)
    migrate_s = migrate(home, env)
    bk.say(f"  airflow db migrate (SQLite, once): {migrate_s:.1f} s")
    psql_cmds = [bk.psql_command(dsn, f"REFRESH MATERIALIZED VIEW CONCURRENTLY {bk.qualified(v.display_name)}")
                 for v in catalog.views]
    warm = bk.timed_run([bk.PYTHON, str(Path(__file__).resolve()), "--child"],
                        {**env, "BENCH_WARM_VIEW": catalog.views[0].display_name})[0]
    bk.say(f"  warm-up: dag.test() refreshing {catalog.views[0].display_name} only: {warm:.1f} s")
    runs: list[dict[str, Any]] = []
    process: list[float] = []
    bare: list[list[float]] = []

    def airflow_run() -> None:
        wall, out = bk.timed_run([bk.PYTHON, str(Path(__file__).resolve()), "--child"], env, capture=True)
        result = json.loads(out.strip().splitlines()[-1])
        if result["state"] != "success":
            raise RuntimeError(f"{DAG_ID} run did not succeed: {result}")
        with bk.connect(dsn) as conn:
            logged = conn.execute(
                "SELECT task_id, extract(epoch FROM refresh_finished_at - refresh_started_at)::float8, duration_ms "
                "FROM ops.mv_refresh_log WHERE dag_id = %s AND run_id = %s AND status = 'OK'",
                (DAG_ID, result["run_id"])).fetchall()
        result["logged"] = {task: {"logged_s": span, "statement_s": ms / 1000} for task, span, ms in logged}
        runs.append(result)
        process.append(wall)

    def bare_run() -> None:
        bare.append([bk.timed_run(cmd, env)[0] for cmd in psql_cmds])

    contenders = {"dag.test": airflow_run, "psql": bare_run}
    for r in range(rounds):
        for label in bk.rotated(list(contenders), r):
            contenders[label]()
        bk.say(f"  round {r + 1}/{rounds}: dag.test() {runs[-1]['test_s']:.2f} s (process {process[-1]:.2f} s), "
               f"6 x psql {sum(bare[-1]):.2f} s")
    return {"rounds": rounds, "migrate_s": migrate_s, "runs": runs, "process_s": process, "psql_s": bare,
            "views": [v.display_name for v in catalog.views], "task_ids": [v.task_id for v in catalog.views]}


def rows(data: dict[str, Any]) -> list[Row]:
    test = [r["test_s"] for r in data["runs"]]
    process = data["process_s"]
    bare = [sum(b) for b in data["psql_s"]]
    task_sums = [sum(t["duration_s"] or 0 for k, t in r["tasks"].items() if k != "health_check") for r in data["runs"]]
    section = "6 Airflow"
    rt, rp = bk.ratio_of(test, bare), bk.ratio_of(process, bare)
    views = len(data["views"])
    per_task = (statistics.median(test) - statistics.median(bare)) / (views + 1)
    # Inside a refresh task but outside the engine's logged interval (RUNNING row .. OK row): task start,
    # connection lookup, template rendering, XCom, asset events; and outside the tasks altogether.
    first, rest = data["task_ids"][0], data["task_ids"][1:]

    def outside(run: dict[str, Any], task_id: str) -> float:
        return (run["tasks"][task_id]["duration_s"] or 0) - run["logged"].get(task_id, {}).get("logged_s", 0)

    in_first = [outside(r, first) for r in data["runs"]]
    in_rest = [outside(r, t) for r in data["runs"] for t in rest]
    between = [r["test_s"] - sum(t["duration_s"] or 0 for t in r["tasks"].values()) for r in data["runs"]]
    sensor = [r["tasks"].get("health_check", {}).get("duration_s") or 0 for r in data["runs"]]
    return [
        Row(section, "ops_mv_refresh dag.test() / sum of 6 psql refreshes", bk.fmt_sample(test), bk.fmt_sample(bare),
            rt["ratio"], f"[{rt['round_min']:.2f}-{rt['round_max']:.2f}]"),
        Row(section, "whole process (import, parse, dag.test) / 6 psql", bk.fmt_sample(process), bk.fmt_sample(bare),
            rp["ratio"], f"[{rp['round_min']:.2f}-{rp['round_max']:.2f}]"),
        Row(section, "refresh tasks' own durations / 6 psql", bk.fmt_sample(task_sums), bk.fmt_sample(bare),
            statistics.median(task_sums) / statistics.median(bare)),
        Row(section, f"Airflow overhead per task ({views + 1} tasks) / psql per view", bk.fmt_s(per_task),
            bk.fmt_s(statistics.median(bare) / views), per_task / (statistics.median(bare) / views)),
        Row(section, "first refresh task, outside the engine's logged refresh", bk.fmt_sample(in_first), "-"),
        Row(section, "other refresh tasks, outside the engine's logged refresh", bk.fmt_sample(in_rest), "-"),
        Row(section, "health_check sensor", bk.fmt_sample(sensor), "-"),
        Row(section, "dag.test() outside any task (scheduling loop)", bk.fmt_sample(between), "-"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dag.test() child of bench section 6")
    parser.add_argument("--child", action="store_true", required=True)
    parser.parse_args(argv)
    _child()
    return 0


if __name__ == "__main__":
    sys.exit(main())
