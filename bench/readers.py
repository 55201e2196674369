"""2. What readers feel during a refresh: CONCURRENTLY, PLAIN, and idle, side by side.

Two reader processes run for the whole section, each on its own connection (like an API's pool):

* point lookups on the critical view's grain ``(driver_id, milestone_value)``, paced at ``--rate`` per
  second (a closed loop: a lookup that stalls delays the next one, and the stall shows as its latency);
* one aggregate over the whole view (count and outstanding amount per collection status), a few times
  a second.

The main process then runs windows in rotated order: idle (nothing), a CONCURRENTLY refresh and a PLAIN
refresh (both through the engine). A query belongs to a window when its execution overlaps it. The
longest stall of a window is the longest time the point reader went without an answer, from the last
answer before the window to the first one after it. PLAIN takes ACCESS EXCLUSIVE, so its stall is the
whole refresh; CONCURRENTLY takes EXCLUSIVE, which readers' ACCESS SHARE does not conflict with.

Child mode (used by the section itself): ``python bench/readers.py --child point|aggregate ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import benchkit as bk
from benchkit import Row

SCENARIOS = ("idle", "CONCURRENTLY", "PLAIN")
POINT_RATE = 200.0
AGGREGATE_RATE = 4.0


# --------------------------------------------------------------------------------------------------
# The reader (child process)


def _reader(kind: str, dsn: str, view: str, rate: float, stop: Path, out: Path) -> None:
    import psycopg
    from psycopg import sql

    from mv_refresh.catalog import parse_qualified_name

    ident = sql.Identifier(*parse_qualified_name(view))
    samples: list[tuple[float, float]] = []
    with psycopg.connect(dsn, autocommit=True, application_name=f"mv-refresh bench reader {kind}") as conn:
        if kind == "point":
            # Existing grains, spread over the key space, always the same ones.
            keys = conn.execute(sql.SQL(
                "SELECT driver_id, milestone_value FROM {} WHERE (driver_id * 7 + milestone_value) % 101 = 0 "
                "ORDER BY driver_id, milestone_value LIMIT 5000").format(ident)).fetchall()
            if not keys:
                raise SystemExit(f"{view} is empty: nothing to look up")
            query = sql.SQL("SELECT * FROM {} WHERE driver_id = %s AND milestone_value = %s").format(ident)
        else:
            keys = [()]
            query = sql.SQL("SELECT collection_status, count(*), sum(amount_outstanding) FROM {} "
                            "GROUP BY collection_status").format(ident)
        for key in keys[:10]:  # warm: the plan prepared, the index in cache
            conn.execute(query, key or None).fetchall()
        print("ready", flush=True)
        period = 1.0 / rate
        i = 0
        next_at = time.monotonic()
        while not stop.exists():
            key = keys[i % len(keys)]
            i += 1
            started = time.monotonic()
            conn.execute(query, key or None).fetchall()
            ended = time.monotonic()
            samples.append((started, ended))
            next_at = max(next_at + period, ended)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    out.write_text(json.dumps(samples))


# --------------------------------------------------------------------------------------------------
# The section


def _start_reader(kind: str, dsn: str, view: str, rate: float, stop: Path, out: Path) -> subprocess.Popen:
    cmd = [bk.PYTHON, str(Path(__file__).resolve()), "--child", kind, "--dsn", dsn, "--view", view,
           "--rate", str(rate), "--stop", str(stop), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"reader {kind} did not start: {line} {proc.stderr.read()[-2000:]}")
    return proc


def measure(dsn: str, view: str, reps: int, idle_s: float, tmp: Path, gap_s: float = 0.5) -> dict[str, Any]:
    from mv_refresh.catalog import load_catalog
    from mv_refresh.engine import refresh_view

    catalog = load_catalog()
    spec = catalog.get(view)
    stop = tmp / "readers.stop"
    stop.unlink(missing_ok=True)
    outs = {"point": tmp / "point.json", "aggregate": tmp / "aggregate.json"}
    procs = {
        "point": _start_reader("point", dsn, view, POINT_RATE, stop, outs["point"]),
        "aggregate": _start_reader("aggregate", dsn, view, AGGREGATE_RATE, stop, outs["aggregate"]),
    }
    windows: list[dict[str, Any]] = []
    try:
        time.sleep(gap_s)
        for rep in range(reps):
            for scenario in bk.rotated(SCENARIOS, rep):
                time.sleep(gap_s)
                t0 = time.monotonic()
                info: dict[str, Any] = {}
                if scenario == "idle":
                    time.sleep(idle_s)
                else:
                    result = refresh_view(dsn, catalog, spec, mode=scenario.lower())
                    info = {"method": result.method, "duration_ms": result.duration_ms}
                t1 = time.monotonic()
                windows.append({"scenario": scenario, "rep": rep, "t0": t0, "t1": t1, **info})
                bk.say(f"  rep {rep + 1}/{reps} {scenario:<12} window {t1 - t0:.3f} s")
        time.sleep(gap_s)
    finally:
        stop.touch()
        for kind, proc in procs.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise RuntimeError(f"reader {kind} did not stop") from None
    for kind, proc in procs.items():
        if proc.returncode != 0:
            raise RuntimeError(f"reader {kind} failed: {proc.stderr.read()[-2000:]}")
    samples = {kind: [tuple(s) for s in json.loads(path.read_text())] for kind, path in outs.items()}
    stop.unlink(missing_ok=True)
    origin = min(w["t0"] for w in windows)
    stats = [_window_stats(w, samples) for w in windows]
    return {
        "view": view, "reps": reps, "idle_s": idle_s, "point_rate": POINT_RATE, "aggregate_rate": AGGREGATE_RATE,
        "windows": [{**w, "t0": w["t0"] - origin, "t1": w["t1"] - origin} for w in windows],
        "stats": stats,
        # Raw samples, relative to the first window: (start, latency) in seconds.
        "samples": {kind: [(round(s - origin, 6), round(e - s, 6)) for s, e in rows] for kind, rows in samples.items()},
    }


def _window_stats(window: dict[str, Any], samples: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    t0, t1 = window["t0"], window["t1"]
    out: dict[str, Any] = {"scenario": window["scenario"], "rep": window["rep"], "window_s": t1 - t0}
    for kind, rows in samples.items():
        lat = [e - s for s, e in rows if s <= t1 and e >= t0]
        out[kind] = {"n": len(lat), "p50": bk.quantile(lat, 0.5), "p99": bk.quantile(lat, 0.99),
                     "max": max(lat) if lat else float("nan")}
    ends = sorted(e for _, e in samples["point"])
    before = [e for e in ends if e <= t0]
    after = [e for e in ends if e >= t1]
    lo = before[-1] if before else t0
    hi = after[0] if after else t1
    span = [lo] + [e for e in ends if lo < e < hi] + [hi]
    out["longest_stall"] = max(b - a for a, b in zip(span, span[1:], strict=False))
    return out


def _agg(stats: list[dict[str, Any]], scenario: str) -> dict[str, float]:
    """Across reps: the median of p50, the worst p99, max and stall (what a reader would remember)."""
    import statistics

    mine = [s for s in stats if s["scenario"] == scenario]
    return {
        "window_s": statistics.median(s["window_s"] for s in mine),
        "point_n": sum(s["point"]["n"] for s in mine),
        "point_p50": statistics.median(s["point"]["p50"] for s in mine),
        "point_p99": max(s["point"]["p99"] for s in mine),
        "point_max": max(s["point"]["max"] for s in mine),
        "agg_n": sum(s["aggregate"]["n"] for s in mine),
        "agg_p50": statistics.median(s["aggregate"]["p50"] for s in mine),
        "agg_max": max(s["aggregate"]["max"] for s in mine),
        "stall": max(s["longest_stall"] for s in mine),
    }


def summary(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {scenario: _agg(data["stats"], scenario) for scenario in SCENARIOS}


def _lat(a: dict[str, float]) -> str:
    return f"p50 {bk.fmt_s(a['point_p50'])}, p99 {bk.fmt_s(a['point_p99'])}, max {bk.fmt_s(a['point_max'])}"


def rows(data: dict[str, Any]) -> list[Row]:
    agg = summary(data)
    idle = agg["idle"]
    section = "2 readers"
    out = []
    for scenario in ("CONCURRENTLY", "PLAIN"):
        a = agg[scenario]
        out.append(Row(section, f"point lookups during {scenario} / idle (p99)", _lat(a), _lat(idle),
                       a["point_p99"] / idle["point_p99"]))
        out.append(Row(section, f"longest reader stall during {scenario} / its refresh", bk.fmt_s(a["stall"]),
                       bk.fmt_s(a["window_s"]), a["stall"] / a["window_s"]))
        out.append(Row(section, f"aggregate during {scenario} / idle (max)",
                       f"p50 {bk.fmt_s(a['agg_p50'])}, max {bk.fmt_s(a['agg_max'])}",
                       f"p50 {bk.fmt_s(idle['agg_p50'])}, max {bk.fmt_s(idle['agg_max'])}",
                       a["agg_max"] / idle["agg_max"]))
    return out


def print_detail(data: dict[str, Any]) -> None:
    agg = summary(data)
    body = []
    for scenario in SCENARIOS:
        a = agg[scenario]
        body.append([scenario, bk.fmt_s(a["window_s"]), f"{a['point_n']:,}", bk.fmt_s(a["point_p50"]),
                     bk.fmt_s(a["point_p99"]), bk.fmt_s(a["point_max"]), bk.fmt_s(a["stall"]), f"{a['agg_n']:,}",
                     bk.fmt_s(a["agg_p50"]), bk.fmt_s(a["agg_max"])])
    bk.say()
    bk.say(f"   readers on {data['view']} ({data['reps']} windows each; point lookups paced at "
           f"{data['point_rate']:g}/s, aggregate at {data['aggregate_rate']:g}/s)")
    bk.print_plain_table(["window", "length", "lookups", "p50", "p99", "max", "longest stall", "aggregates",
                          "agg p50", "agg max"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reader child of bench section 2")
    parser.add_argument("--child", choices=("point", "aggregate"), required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--view", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    _reader(args.child, args.dsn, args.view, args.rate, args.stop, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
