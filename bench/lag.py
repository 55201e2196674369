"""Lag of event-driven runs: from the commit of a source change to the critical view showing it.

``make airflow`` (scripts/airflow.sh: airflow standalone, its triggerer running SourceChangeTrigger) on a demo
warehouse whose sources are tracked, with the default debounce (quiet period 30 s, poll 5 s) unless the
environment says otherwise. Each trial commits one new claim (the latest filing of a grain) and polls the
critical view every 0.25 s until the claim is there; the run it started is found through the REST API (when it
was created, when it ended). Between trials, with Airflow idle, ``mv-refresh refresh --all --force`` of the
same warehouse is timed: the chain's own refresh time.

Goal: p50 of the lag <= the chain's p50 refresh time + 60 s. The max is reported.

    .venv/bin/python bench/lag.py [--trials 5] [--drivers N]

``run(...)`` returns the results (bench/run.py can call it); the script also writes bench/out/lag.json and
prints a table. The database: MV_REFRESH_DSN, else a scratch database on BENCH_DATABASE_URL, else on an
embedded PostgreSQL (benchkit.Databases).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchkit as bk
from benchkit import Row

sys.path.insert(0, str(bk.ROOT / "tests" / "support"))

from airflow_standalone import MakeAirflow, critical_view_has_claim, insert_claim  # noqa: E402

GOAL_MARGIN_S = 60.0
SECTION = "lag"


def _prepare(dsn: str, drivers: int | None, say: Callable[[str], None]) -> None:
    """The demo warehouse, tracked, every view refreshed (what each saw recorded): a steady state."""
    from mv_refresh.catalog import load_catalog
    from mv_refresh.demo import load_demo
    from mv_refresh.engine import Sessions, refresh_view
    from mv_refresh.migrations import init_db
    from mv_refresh.tracking import install

    catalog = load_catalog()
    init_db(dsn, catalog)
    load_demo(dsn, **({"drivers": drivers} if drivers else {}))
    with bk.connect(dsn, autocommit=True) as conn:
        install(conn, catalog, list(catalog.views))
    with Sessions(dsn) as sessions:
        for spec in catalog.views:
            refresh_view(dsn, catalog, spec, sessions=sessions)
    say("  demo warehouse loaded, sources tracked, every view refreshed")


def _chain_seconds(dsn: str) -> float:
    env = bk.child_env(MV_REFRESH_DSN=dsn)
    env.pop("MV_REFRESH_CONFIG", None)
    seconds, _ = bk.timed_run([str(bk.BIN / "mv-refresh"), "refresh", "--all", "--force"], env)
    return seconds


def _wait_watching(dsn: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with bk.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = 'mv-refresh events')").fetchone()[0]:
                return
        time.sleep(1)
    raise RuntimeError("the source watcher never connected to the warehouse (is the triggerer running?)")


def _trial(server: MakeAirflow, dsn: str, timeout: float) -> dict[str, Any]:
    before = {r["dag_run_id"] for r in server.runs()}
    committed_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    committed = time.monotonic()
    claim = insert_claim(dsn)
    shown = None
    while time.monotonic() - committed < timeout:
        if critical_view_has_claim(dsn, claim):
            shown = time.monotonic() - committed
            break
        time.sleep(0.25)
    if shown is None:
        raise RuntimeError(f"claim {claim} not in {bk.CRITICAL_VIEW} after {timeout:.0f} s")
    new = [r for r in server.runs() if r["dag_run_id"] not in before]
    return {"claim_id": claim, "committed_at": committed_at, "lag_s": shown, "runs": [{k: r.get(k) for k in ("dag_run_id", "run_type", "state",
                                                                               "queued_at", "start_date", "end_date")}
                                                        for r in new]}


def run(dsn: str | None = None, *, trials: int = 5, drivers: int | None = None, timeout: float = 600.0,
        say: Callable[[str], None] = bk.say) -> dict[str, Any]:
    """Measure the lag over ``trials`` trials in airflow standalone; the results as a dict (``rows``: table rows).

    ``dsn``: a database to load the demo into (it is overwritten); None: a scratch database (benchkit.Databases).
    """
    from mv_refresh.airflow.standalone import free_port

    dbs = None
    if dsn is None:
        dbs = bk.Databases.from_environment()
        dsn = dbs.database("lag")
    quiet = os.environ.get("MV_REFRESH_EVENTS_QUIET_SECONDS") or "30 (default)"
    server = None
    try:
        _prepare(dsn, drivers, say)
        home = Path(tempfile.mkdtemp(prefix="mvr-lag-")) / "home"
        server = MakeAirflow(dsn=dsn, home=home, port=free_port(), extra_env={"MV_REFRESH_EVENTS": "on"},
                             log=lambda line: say(f"  {line}"))
        server.start()
        server.wait_for_dag()
        server.unpause()
        _wait_watching(dsn)
        server.wait(lambda: server.runs(), 300, "the first hourly run")
        server.wait_idle(timeout=timeout)
        lags, chains, details = [], [], []
        for number in range(1, trials + 1):
            server.wait_idle(timeout=timeout)
            detail = _trial(server, dsn, timeout)
            server.wait_idle(timeout=timeout)
            chain = _chain_seconds(dsn)
            detail["chain_s"] = chain
            lags.append(detail["lag_s"])
            chains.append(chain)
            details.append(detail)
            kinds = ", ".join(f"{r['run_type']} {r['state']}" for r in detail["runs"]) or "no new run"
            say(f"  trial {number}/{trials}: claim {detail['claim_id']} shown after {detail['lag_s']:.1f} s "
                f"({kinds}); refresh --all --force {chain:.1f} s")
    finally:
        if server is not None:
            server.stop()
        if dbs is not None:
            dbs.cleanup()
    p50, worst, chain_p50 = statistics.median(lags), max(lags), statistics.median(chains)
    goal = chain_p50 + GOAL_MARGIN_S
    rows = [
        Row(SECTION, "lag p50: commit -> critical view shows it", bk.fmt_s(p50), f"goal {bk.fmt_s(goal)}",
            ratio=p50 / goal, ratio_note="of goal", goal="p50 <= chain + 60 s", met=p50 <= goal, value=p50),
        Row(SECTION, "lag max", bk.fmt_s(worst), headline=True, value=worst),
        Row(SECTION, "chain refresh (refresh --all --force), p50", bk.fmt_sample(chains), value=chain_p50),
        Row(SECTION, "quiet period (s)", str(quiet)),
    ]
    return {"trials": trials, "quiet_period": quiet, "lag_s": lags, "chain_s": chains, "lag_p50_s": p50,
            "lag_max_s": worst, "chain_p50_s": chain_p50, "goal_s": goal, "met": p50 <= goal,
            "details": details, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="how many committed claims (default 5; at least 5 for "
                        "the goal)")
    parser.add_argument("--drivers", type=int, help="scale of the demo warehouse (default: the demo's)")
    args = parser.parse_args(argv)
    results = run(trials=args.trials, drivers=args.drivers)
    bk.print_table("Lag of event-driven runs (airflow standalone)", results["rows"])
    bk.OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = bk.OUT_DIR / "lag.json"
    data = {k: v for k, v in results.items() if k != "rows"}
    data["rows"] = [r.as_json() for r in results["rows"]]
    data["machine"] = bk.machine_facts()
    out.write_text(json.dumps(data, indent=2, default=str, allow_nan=True) + "\n")
    bk.say(f"\nresults: {out.relative_to(bk.ROOT)}")
    return 0 if results["met"] and not math.isnan(results["lag_p50_s"]) else 1


if __name__ == "__main__":
    sys.exit(main())
