"""5. DAG parse time: ``dags/`` with the shipped 6-view catalog and with a generated 500-view catalog,
against a trivial one-task DAG file, in the same run.

Each parse runs in a fresh subprocess, the way Airflow's DAG processor does it: the parent imports the
``airflow.*`` modules the file names (``[dag_processor] parsing_pre_import_modules``, on by default),
then the child builds a ``DagBag`` of the path. The time is that ``DagBag(...)`` call; everything the
DAG file itself imports beyond ``airflow.*`` (``mv_refresh``, psycopg, PyYAML, ...) is in it, as it is
in production. Subjects are interleaved, the order rotated every round.

Child mode: ``python bench/dag_parse.py --child PATH`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchkit as bk
from benchkit import Row

TRIVIAL_DAG = '''"""A trivial one-task DAG: the yardstick of the parse benchmark."""

import pendulum
from airflow.sdk import dag, task


@dag(dag_id="bench_trivial", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def bench_trivial():
    @task
    def noop():
        return None

    noop()


bench_trivial()
'''


def generated_catalog(views: int) -> str:
    """A valid catalog of ``views`` views in chains of ten, with some fan-in and a critical view per 50."""
    lines = ["version: 1", "connection_id: postgres_default", "defaults:", "  mode: auto",
             "  lock_timeout_seconds: 60", "views:"]
    for i in range(1, views + 1):
        upstream = []
        if i % 10 != 1:
            upstream.append(f"bench.mv_{i - 1:04d}")
        if i > 10 and i % 7 == 0:
            upstream.append(f"bench.mv_{i - 10:04d}")
        lines.append(f"  - name: bench.mv_{i:04d}")
        lines.append(f"    description: generated view {i} of {views}")
        lines.append("    grain: [id]")
        lines.append(f"    upstream: [{', '.join(upstream)}]")
        if i % 50 == 0:
            lines.append("    critical: true")
    return "\n".join(lines) + "\n"


def _child(path: str) -> None:
    import importlib
    import logging

    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.file import iter_airflow_imports

    p = Path(path)
    files = sorted(p.glob("*.py")) if p.is_dir() else [p]
    for file in files:  # what the DAG processor's parent imports before it forks the parser
        for module in iter_airflow_imports(str(file)):
            importlib.import_module(module)
    imported = time.perf_counter()
    logging.disable(logging.WARNING)
    bag = DagBag(dag_folder=path)
    parsed = time.perf_counter()
    stats = [{"file": s.file, "duration_s": s.duration.total_seconds(), "dags": s.dag_num, "tasks": s.task_num}
             for s in bag.dagbag_stats]
    print(json.dumps({"import_s": imported - started, "parse_s": parsed - imported, "errors": list(bag.import_errors),
                      "dags": sorted(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
                      "files": stats}))


def measure(home: Path, tmp: Path, rounds: int, big: int = 500) -> dict[str, Any]:
    trivial_dir = tmp / "trivial_dag"
    trivial_dir.mkdir(parents=True, exist_ok=True)
    (trivial_dir / "bench_trivial.py").write_text(TRIVIAL_DAG)
    big_catalog = tmp / f"catalog_{big}.yaml"
    big_catalog.write_text(generated_catalog(big))
    dags = bk.ROOT / "dags"
    subjects = {
        "trivial one-task DAG": (trivial_dir, None),
        "dags/ (6 views)": (dags, None),
        f"dags/ ({big} views)": (dags, big_catalog),
        "dags/ops_mv_refresh.py (6 views)": (dags / "ops_mv_refresh.py", None),
        "dags/ops_mv_concurrently_prerequisites.py": (dags / "ops_mv_concurrently_prerequisites.py", None),
        "dags/ops_mv_health_audit.py": (dags / "ops_mv_health_audit.py", None),
    }
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in subjects}
    walls: dict[str, list[float]] = {k: [] for k in subjects}

    def parse(label: str) -> tuple[float, dict[str, Any]]:
        path, catalog = subjects[label]
        extra = {"MV_REFRESH_CONFIG": str(catalog)} if catalog else {}
        env = bk.airflow_env(home, dags_folder=path if path.is_dir() else path.parent, **extra)
        if not catalog:
            env.pop("MV_REFRESH_CONFIG", None)
        wall, out = bk.timed_run([bk.PYTHON, str(Path(__file__).resolve()), "--child", str(path)], env,
                                 capture=True)
        result = json.loads(out.strip().splitlines()[-1])
        if result["errors"] or not result["dags"]:
            raise RuntimeError(f"parsing {label} failed: {result}")
        return wall, result

    bk.say("  warm-up: one untimed parse of each subject (bytecode and page cache)")
    for label in subjects:
        parse(label)
    for r in range(rounds):
        for label in bk.rotated(list(subjects), r):
            wall, result = parse(label)
            samples[label].append(result)
            walls[label].append(wall)
        bk.say(f"  round {r + 1}/{rounds}: "
               + ", ".join(f"{k} {samples[k][-1]['parse_s'] * 1000:.0f} ms" for k in subjects))
    return {"rounds": rounds, "big": big, "subjects": list(subjects), "samples": samples, "process_wall_s": walls,
            "tasks": {k: v[0]["tasks"] for k, v in samples.items()}}


def parse_times(data: dict[str, Any], label: str) -> list[float]:
    return [s["parse_s"] for s in data["samples"][label]]


def rows(data: dict[str, Any]) -> list[Row]:
    big = data["big"]
    trivial = parse_times(data, "trivial one-task DAG")
    six = parse_times(data, "dags/ (6 views)")
    many = parse_times(data, f"dags/ ({big} views)")
    alone = parse_times(data, "dags/ops_mv_refresh.py (6 views)")
    section = "5 DAG parse"
    tasks = data["tasks"]
    r6 = bk.ratio_of(six, trivial)
    rb = bk.ratio_of(many, trivial)
    ra = bk.ratio_of(alone, trivial)
    walls = data["process_wall_s"]
    files = [label for label in data["subjects"] if label.startswith("dags/ops_")]
    per_file = [sum(parse_times(data, label)[i] for label in files) for i in range(len(trivial))]
    rf = bk.ratio_of(per_file, trivial)
    return [
        Row(section, f"dags/ at 6 views ({tasks['dags/ (6 views)']} tasks) / trivial DAG", bk.fmt_sample(six),
            bk.fmt_sample(trivial), r6["ratio"], f"[{r6['round_min']:.2f}-{r6['round_max']:.2f}]", "<= 1.5x",
            r6["ratio"] <= 1.5, r6["ratio"]),
        Row(section, f"dags/ at {big} views ({tasks[f'dags/ ({big} views)']} tasks), absolute", bk.fmt_sample(many),
            bk.fmt_sample(trivial), rb["ratio"], "", "< 2 s", statistics.median(many) < 2.0, statistics.median(many)),
        Row(section, "dags/ops_mv_refresh.py alone at 6 views / trivial DAG", bk.fmt_sample(alone),
            bk.fmt_sample(trivial), ra["ratio"], f"[{ra['round_min']:.2f}-{ra['round_max']:.2f}]"),
        Row(section, f"each of the {len(files)} DAG files in its own process, summed / trivial", bk.fmt_sample(per_file),
            bk.fmt_sample(trivial), rf["ratio"], f"[{rf['round_min']:.2f}-{rf['round_max']:.2f}]"),
        Row(section, "whole parse process (python + airflow import + parse): dags/ 6 / trivial",
            bk.fmt_sample(walls["dags/ (6 views)"]), bk.fmt_sample(walls["trivial one-task DAG"]),
            statistics.median(walls["dags/ (6 views)"]) / statistics.median(walls["trivial one-task DAG"])),
    ]


def print_detail(data: dict[str, Any]) -> None:
    body = []
    for label in data["subjects"]:
        times = parse_times(data, label)
        body.append([label, f"{data['tasks'][label]:,}", bk.fmt_sample(times),
                     bk.fmt_sample(data["process_wall_s"][label])])
    bk.say()
    bk.say(f"   DagBag parse per subject ({data['rounds']} fresh processes each, airflow.* pre-imported)")
    bk.print_plain_table(["subject", "tasks", "DagBag(...) median (min-max)", "whole process"], body)


def per_file(data: dict[str, Any], label: str) -> dict[str, float]:
    """Median DagBag per-file parse duration (Airflow's own stat) of one subject."""
    files: dict[str, list[float]] = {}
    for sample in data["samples"][label]:
        for f in sample["files"]:
            files.setdefault(f["file"], []).append(f["duration_s"])
    return {name: statistics.median(v) for name, v in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DAG parse child of bench section 5")
    parser.add_argument("--child", required=True)
    args = parser.parse_args(argv)
    _child(args.child)
    return 0


if __name__ == "__main__":
    sys.exit(main())
