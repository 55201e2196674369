"""8. Health against the size of the log: the runbook's view, ops.v_mv_health, `mv-refresh health` and the
audit, with 20 thousand log rows and with 2 million, in the same database, side by side.

Goal (the alerting-holes issue): the cost does not grow with the log; the runbook's view answers in under
5 ms at 2 million rows. The log is filled the way tests/db/test_large_log.py fills it (a row a minute over
six views, mostly OK, the newest rows OK), in a scratch schema-free database of its own.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import benchkit as bk
from benchkit import Row

SIZES = (20_000, 2_000_000)


def _time(fn, reps: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def measure(dsn: str, reps: int) -> dict[str, Any]:
    import sys

    from mv_refresh.audit import run_audit
    from mv_refresh.catalog import parse_catalog
    from mv_refresh.health import read_health
    from mv_refresh.migrations import init_db

    sys.path.insert(0, str(bk.ROOT / "tests" / "support"))
    from biglog import VIEWS, fill_log  # the same log as tests/db/test_large_log.py

    catalog = parse_catalog("version: 1\nviews:\n" + "".join(f"  - name: ops.{v}\n" for v in VIEWS), source="bench")
    init_db(dsn, catalog)
    times: dict[str, dict[str, list[float]]] = {}
    with bk.connect(dsn, autocommit=True) as conn:
        for size in SIZES:
            started = time.perf_counter()
            fill_log(conn, size)
            bk.say(f"  {size:,} log rows in {time.perf_counter() - started:.0f} s")
            times[str(size)] = {
                "runbook view": _time(lambda: conn.execute(
                    "SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchall(), reps),
                "ops.v_mv_health": _time(lambda: conn.execute("SELECT * FROM ops.v_mv_health").fetchall(), reps),
                "read_health (CLI, sensor)": _time(lambda: read_health(conn, catalog), reps),
                "audit": _time(lambda: run_audit(dsn, catalog), max(3, reps // 10)),
            }
        conn.execute("TRUNCATE ops.mv_refresh_log")
    return {"sizes": list(SIZES), "reps": reps, "times": times}


def rows(data: dict[str, Any]) -> list[Row]:
    small, big = (data["times"][str(s)] for s in data["sizes"])
    out = []
    for what in small:
        r = bk.ratio_of(big[what], small[what])
        goal = "< 5 ms at 2M" if what == "runbook view" else "info"
        met = statistics.median(big[what]) < 0.005 if what == "runbook view" else None
        out.append(Row("8 health at scale", f"{what}: 2,000,000 / 20,000 log rows", bk.fmt_sample(big[what]),
                       bk.fmt_sample(small[what]), r["ratio"], f"[{r['round_min']:.2f}-{r['round_max']:.2f}]",
                       goal, met, statistics.median(big[what])))
    return out
