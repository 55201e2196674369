"""mv-refresh benchmarks: what a logged refresh costs, what readers feel, how it scales.

    make bench                      # the quick form (a few minutes on 2 cores)
    BENCH_SCALE=full make bench     # the full form (200k drivers; scaling 10k/100k/1M)
    .venv/bin/python bench/run.py --sections 1,5   # some sections only

Sections: 1 logged refresh overhead, 2 readers during refreshes, 3 CONCURRENTLY vs PLAIN by fraction
changed, 4 scaling, 5 DAG parse time, 6 Airflow's own overhead, 7 change tracking (unchanged runs, one
changed row, writers' cost), 8 health against the size of the log, 9 event-driven lag (a committed change to
the critical view showing it, in airflow standalone). Each prints a table (name, A, B, ratio,
goal, met?); a summary table ends the run. Everything, raw samples included, goes to bench/out/ (git-ignored):
results.json and the figures; the figures the README shows are copied to docs/img/.

Database: ``MV_REFRESH_DSN`` (that database is used, and reloaded with demo data), else
``BENCH_DATABASE_URL`` (an admin DSN: scratch databases are created there and dropped at the end), else
an embedded PostgreSQL under ``.demo/bench-pg``. Every ratio comes from one run, A and B interleaved.
These are never timed tests: a missed goal is reported, not failed (the exit status is non-zero only
when a section could not run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# The bench modules live next to this file (the script's directory is on sys.path).
import airflow_run
import benchkit as bk
import dag_parse
import health_scale
import lag
import modes
import readers
import refresh_overhead
import scaling
import tracking
from benchkit import Row

SCALES: dict[str, dict[str, Any]] = {
    "quick": {
        "drivers": 50_000,          # the critical view refreshes CONCURRENTLY in ~1.5-2 s on 2 cores
        "overhead_rounds": 5,
        "startup_reps": 10,
        "reader_reps": 3,
        "modes_rounds": 2,
        # 10x apart, the largest reusing the main database; --scales 2000,20000,200000 (the issue's
        # suggestion) adds about 2.5 minutes and shows the top decade with fixed costs out of the way.
        "scaling_scales": [500, 5_000, 50_000],
        "scaling_reps": 2,
        "parse_rounds": 5,
        "airflow_rounds": 2,
        "tracking_rounds": 3,
        # Many short paired rounds: the writers' ratio is a median of per-round ratios (bench/tracking.py).
        "writer_rounds": 8,
        "writer_seconds": 4,
        "health_reps": 50,
        "lag_trials": 5,
    },
    "full": {
        "drivers": 200_000,         # ~5.5M source rows; the critical view refreshes in ~7 s
        "overhead_rounds": 7,
        "startup_reps": 20,
        "reader_reps": 3,
        "modes_rounds": 3,
        "scaling_scales": [10_000, 100_000, 1_000_000],
        "scaling_reps": 3,
        "parse_rounds": 10,
        "airflow_rounds": 3,
        "tracking_rounds": 5,
        "writer_rounds": 12,
        "writer_seconds": 8,
        "health_reps": 100,
        "lag_trials": 7,
    },
}
# Not a measurement: a self-check of the runner itself (every section end to end in about a minute).
SCALES["smoke"] = {
    "drivers": 2_000, "overhead_rounds": 2, "startup_reps": 2, "reader_reps": 1, "modes_rounds": 1,
    "scaling_scales": [200, 2_000, 20_000], "scaling_reps": 1, "parse_rounds": 1, "airflow_rounds": 1,
    "tracking_rounds": 1, "writer_rounds": 1, "writer_seconds": 2, "health_reps": 3, "lag_trials": 1,
}
SECTIONS = {
    "1": "logged refresh overhead",
    "2": "what readers feel",
    "3": "CONCURRENTLY vs PLAIN by fraction changed",
    "4": "scaling",
    "5": "DAG parse time",
    "6": "Airflow's own overhead",
    "7": "change tracking",
    "8": "health against the size of the log",
    "9": "event-driven lag",
}
# Run order: everything on the main database first, the scaling (which may reload it) last; the health
# section fills a log in a scratch database of its own, and the lag runs airflow standalone on another.
ORDER = ["1", "2", "3", "5", "6", "7", "4", "8", "9"]
# What the README shows, copied from bench/out/ to docs/img/ (everything else stays in the ignored folder).
PUBLISHED_FIGURES = ("reader_latency.png", "modes.png", "scaling.png")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _headlines(section: str, rows: list[Row]) -> None:
    """Mark the info rows the summary repeats."""
    for r in rows:
        if r.goal != "info":
            r.headline = True
        elif section == "1" and r.name.startswith(("CLI start-up", "exact count")):
            r.headline = True
        elif section == "2" and r.name.startswith("longest reader stall"):
            r.headline = True
        elif section == "3" and r.name.startswith(("1% ", "100% ")):
            r.headline = True
        elif section == "5" and r.name.startswith("dags/ops_mv_refresh.py alone"):
            r.headline = True
        elif section == "6" and r.name.startswith(("ops_mv_refresh dag.test()", "Airflow overhead per task")):
            r.headline = True
        elif section in ("7", "8", "9"):
            r.headline = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default=os.environ.get("BENCH_SCALE") or "quick",
                        help="quick (default, or $BENCH_SCALE), full, or smoke (checks the runner, measures nothing)")
    parser.add_argument("--sections", default=",".join(sorted(SECTIONS)),
                        help="comma-separated sections to run (default: all): " +
                        "; ".join(f"{k} {v}" for k, v in SECTIONS.items()))
    parser.add_argument("--view", default=bk.CRITICAL_VIEW, help="view of sections 1-3 (default: the critical one)")
    parser.add_argument("--drivers", type=int, help="override the main scale of sections 1-3 and 6")
    parser.add_argument("--scales", help="override the scaling section's scales, e.g. 2000,20000,200000")
    parser.add_argument("--out", type=Path, default=bk.OUT_DIR / "results.json")
    parser.add_argument("--figures-dir", type=Path, default=bk.OUT_DIR)
    args = parser.parse_args(argv)
    if args.scale not in SCALES:
        parser.error(f"BENCH_SCALE must be one of {', '.join(SCALES)}, got {args.scale!r}")
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    cfg = dict(SCALES[args.scale])
    if args.drivers:
        cfg["drivers"] = args.drivers
    if args.scales:
        cfg["scaling_scales"] = [int(x) for x in args.scales.split(",")]
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)

    bk.say(f"mv-refresh benchmarks, {args.scale} form: sections {', '.join(s for s in ORDER if s in wanted)}")
    machine = bk.machine_facts()
    bk.say(f"machine: {machine['cores']} cores, {machine['memory_gb']} GB, {machine['platform']}, "
           f"Python {machine['python']}, Airflow {machine['apache-airflow']}")
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(), "scale": args.scale, "config": cfg, "view": args.view,
        "machine": machine, "sections": {}, "errors": {},
        "method": {
            "order": [s for s in ORDER if s in wanted],
            "interleaving": "contenders rotated every round (benchkit.rotated); medians, min-max, per-round ratios",
            "child_processes": f"bytecode cache under {bk.PYCACHE_DIR.relative_to(bk.ROOT)} (PYTHONPYCACHEPREFIX), "
                               "warm-up runs untimed",
            "psql": bk.psql_version(),
        },
    }
    all_rows: list[Row] = []
    tmp = bk.TempDir("mvr-bench-")
    dbs: bk.Databases | None = None
    try:
        needs_db = any(s in wanted for s in ("1", "2", "3", "4", "6", "7", "8", "9"))
        main_dsn = None
        if needs_db:
            dbs = bk.Databases.from_environment()
            results["database"] = {"kind": dbs.kind}
            uses_main = any(s in wanted for s in ("1", "2", "3", "6", "7")) or (
                "4" in wanted and cfg["drivers"] in cfg["scaling_scales"])
            if uses_main:
                main_dsn = dbs.database(f"d{cfg['drivers']}")
            server = bk.server_facts(main_dsn or dbs.any_dsn())
            results["server"] = server
            bk.say(f"PostgreSQL {server['server_version']} ({dbs.kind}); shared_buffers {server['shared_buffers']}, "
                   f"work_mem {server['work_mem']}, max_parallel_workers_per_gather "
                   f"{server['max_parallel_workers_per_gather']}")
            if any(s in wanted for s in ("1", "2", "3", "6", "7")):
                bk.say(f"\npreparing the main database: demo warehouse at {cfg['drivers']:,} drivers")
                results["main_database"] = bk.prepare_demo(main_dsn, cfg["drivers"])
        subtitle = (f"{args.scale} form, {machine['cores']} cores, PostgreSQL "
                    f"{results.get('server', {}).get('server_version', '?')}")
        overhead_s: float | None = None
        for section in ORDER:
            if section not in wanted:
                continue
            bk.say(f"\n-- {section}. {SECTIONS[section]}")
            t0 = time.perf_counter()
            try:
                data, rows = _run_section(section, args, cfg, dbs, main_dsn, tmp.path, overhead_s)
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
                traceback.print_exc()
                results["errors"][section] = f"{type(exc).__name__}: {exc}"
                bk.say(f"section {section} failed: {exc}")
                continue
            if section == "1":
                overhead_s = refresh_overhead.breakdown(data)["psql_refresh"]
            _headlines(section, rows)
            all_rows.extend(rows)
            bk.print_table(f"{section}. {SECTIONS[section]}", rows)
            if section == "2":
                readers.print_detail(data)
            if section == "4":
                scaling.print_detail(data)
            if section == "5":
                dag_parse.print_detail(data)
            figure = _figure(section, data, args.figures_dir, subtitle)
            if figure:
                bk.say(f"   figure: {figure.relative_to(bk.ROOT) if figure.is_relative_to(bk.ROOT) else figure}")
            results["sections"][section] = {"title": SECTIONS[section], "seconds": time.perf_counter() - t0,
                                            "data": data, "rows": [r.as_json() for r in rows],
                                            "figure": str(figure) if figure else None}
    finally:
        if dbs is not None:
            try:
                dbs.cleanup()
            except Exception as exc:  # noqa: BLE001 - report, keep the results
                bk.say(f"cleanup failed: {exc}")
        tmp.cleanup()

    runtime = time.perf_counter() - started
    summary = [r for r in all_rows if r.headline]
    bk.print_table(f"SUMMARY ({args.scale} form, {runtime / 60:.1f} min)", summary,
                   headers=bk.HEADERS)
    goals = [r for r in summary if r.met is not None]
    met = sum(1 for r in goals if r.met)
    bk.say(f"\ngoals met: {met}/{len(goals)}" + (f"; sections that failed: {', '.join(results['errors'])}"
                                                 if results["errors"] else ""))
    results["summary"] = [r.as_json() for r in summary]
    results["runtime_s"] = runtime
    results["goals_met"] = {"met": met, "of": len(goals)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(results), indent=1) + "\n")
    bk.say(f"results: {args.out}")
    if args.scale != "smoke":  # the smoke form checks the runner; its figures mean nothing
        _publish(args.figures_dir)
    return 1 if results["errors"] else 0


def _run_section(section: str, args, cfg: dict[str, Any], dbs: bk.Databases | None, main_dsn: str | None,
                 tmp: Path, overhead_s: float | None) -> tuple[dict[str, Any], list[Row]]:
    if section == "1":
        data = refresh_overhead.measure(main_dsn, args.view, cfg["overhead_rounds"], startup_reps=cfg["startup_reps"])
        data["breakdown"] = refresh_overhead.breakdown(data)
        return data, refresh_overhead.rows(data)
    if section == "2":
        idle = overhead_s if overhead_s else 2.0
        data = readers.measure(main_dsn, args.view, cfg["reader_reps"], idle_s=idle, tmp=tmp)
        data["summary"] = readers.summary(data)
        return data, readers.rows(data)
    if section == "3":
        data = modes.measure(main_dsn, args.view, cfg["modes_rounds"])
        return data, modes.rows(data)
    if section == "4":
        reuse = {cfg["drivers"]: main_dsn} if main_dsn and not dbs.shared else {}
        data = scaling.measure(dbs, list(cfg["scaling_scales"]), cfg["scaling_reps"], reuse=reuse)
        return data, scaling.rows(data)
    if section == "5":
        home = tmp / "airflow-parse"
        home.mkdir(parents=True, exist_ok=True)
        data = dag_parse.measure(home, tmp, cfg["parse_rounds"])
        data["per_file_s"] = {label: dag_parse.per_file(data, label) for label in data["subjects"]}
        return data, dag_parse.rows(data)
    if section == "6":
        home = tmp / "airflow-run"
        home.mkdir(parents=True, exist_ok=True)
        data = airflow_run.measure(main_dsn, home, cfg["airflow_rounds"])
        return data, airflow_run.rows(data)
    if section == "7":
        data = tracking.measure(main_dsn, cfg["tracking_rounds"], cfg["writer_rounds"], cfg["writer_seconds"])
        return data, tracking.rows(data)
    if section == "8":
        data = health_scale.measure(dbs.database("health"), cfg["health_reps"])
        return data, health_scale.rows(data)
    if section == "9":
        # Its own database: the demo at the main scale, tracked, under airflow standalone with the default
        # debounce (30 s quiet period).
        data = lag.run(dbs.database("lag"), trials=cfg["lag_trials"], drivers=cfg["drivers"])
        return data, data.pop("rows")
    raise ValueError(section)


def _publish(figures_dir: Path) -> None:
    """Copy the figures the README shows next to it (docs/img/); the rest stays in bench/out/."""
    import shutil

    target = bk.ROOT / "docs" / "img"
    target.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_FIGURES:
        if (figures_dir / name).exists():
            shutil.copy2(figures_dir / name, target / name)


def _figure(section: str, data: dict[str, Any], where: Path, subtitle: str) -> Path | None:
    import figures

    where.mkdir(parents=True, exist_ok=True)
    if section == "2":
        return figures.reader_latency(data, data["summary"], where / "reader_latency.png", subtitle)
    if section == "3":
        return figures.modes(data, where / "modes.png", subtitle)
    if section == "4":
        return figures.scaling(data, where / "scaling.png", subtitle)
    return None


if __name__ == "__main__":
    sys.exit(main())
