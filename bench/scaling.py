"""4. Scaling: the whole chain (all six views, through the engine) at three demo scales 10x apart.

Each scale has its own database (with ``MV_REFRESH_DSN``, the one database is reloaded at each scale in
turn). Every view is populated, then refreshed once more untimed, so that the timed passes are the
steady state the hourly DAG sees: every view CONCURRENTLY, the data unchanged. Passes at the different
scales are interleaved (the order rotated every pass) when the databases coexist.

The growth exponent is the least-squares slope of log(time) against log(rows): 1 is linear; the goal is
within 10% of it (<= 1.1), over the three scales and over the top decade alone (where fixed costs, such
as connections and log rows, no longer flatter the slope).
"""

from __future__ import annotations

import statistics
from typing import Any

import benchkit as bk
from benchkit import Row


def _chain(dsn: str) -> list[dict[str, Any]]:
    from mv_refresh.catalog import load_catalog
    from mv_refresh.engine import refresh_view

    catalog = load_catalog()
    out = []
    for spec in catalog.views:
        # force: with change tracking installed (section 7) an unchanged view would be UNCHANGED, not refreshed.
        seconds, result = bk.timed(lambda spec=spec: refresh_view(dsn, catalog, spec, force=True))
        out.append({"view": spec.display_name, "wall_s": seconds, "statement_s": result.duration_ms / 1000,
                    "rows": result.rows_after_refresh, "method": result.method})
    return out


def measure(dbs: bk.Databases, scales: list[int], reps: int, reuse: dict[int, str] | None = None) -> dict[str, Any]:
    reuse = reuse or {}
    passes: dict[int, list[list[dict[str, Any]]]] = {s: [] for s in scales}
    prepared: dict[int, dict[str, Any]] = {}

    def run(scale: int, dsn: str, rep: int) -> None:
        chain = _chain(dsn)
        passes[scale].append(chain)
        total = sum(v["wall_s"] for v in chain)
        rows = sum(v["rows"] for v in chain)
        bk.say(f"  pass {rep + 1}/{reps} at {scale:,} drivers: {rows:,} view rows in {total:.3f} s")

    if dbs.shared:
        for scale in scales:
            dsn = dbs.database(f"d{scale}")
            bk.say(f"  scale {scale:,} drivers (reloading the shared database)")
            prepared[scale] = bk.prepare_demo(dsn, scale)
            for rep in range(reps):
                run(scale, dsn, rep)
    else:
        dsns = {}
        for scale in scales:
            dsns[scale] = reuse.get(scale) or dbs.database(f"d{scale}")
            bk.say(f"  scale {scale:,} drivers" + (" (the database of sections 1-3)" if scale in reuse else ""))
            prepared[scale] = bk.prepare_demo(dsns[scale], scale)
        for rep in range(reps):
            for scale in bk.rotated(scales, rep):
                run(scale, dsns[scale], rep)
    return {"scales": scales, "reps": reps, "passes": {str(k): v for k, v in passes.items()},
            "prepared": {str(k): v for k, v in prepared.items()}, "fit": fit(scales, passes)}


def fit(scales: list[int], passes: dict[int, list[list[dict[str, Any]]]]) -> dict[str, Any]:
    """Median time and rows per view and scale, and the log-log slopes."""
    views = [v["view"] for v in passes[scales[0]][0]]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for view in views + ["chain"]:
        table[view] = {}
        for scale in scales:
            if view == "chain":
                walls = [sum(v["wall_s"] for v in p) for p in passes[scale]]
                stmts = [sum(v["statement_s"] for v in p) for p in passes[scale]]
                rows = sum(v["rows"] for v in passes[scale][0])
            else:
                mine = [next(v for v in p if v["view"] == view) for p in passes[scale]]
                walls = [v["wall_s"] for v in mine]
                stmts = [v["statement_s"] for v in mine]
                rows = mine[0]["rows"]
            table[view][str(scale)] = {"rows": rows, "wall_s": statistics.median(walls),
                                       "wall_min": min(walls), "wall_max": max(walls),
                                       "statement_s": statistics.median(stmts)}
    slopes = {}
    for view, per_scale in table.items():
        xs = [per_scale[str(s)]["rows"] for s in scales]
        slopes[view] = {
            "wall": bk.loglog_slope(xs, [per_scale[str(s)]["wall_s"] for s in scales]),
            "statement": bk.loglog_slope(xs, [per_scale[str(s)]["statement_s"] for s in scales]),
            "wall_top_decade": bk.loglog_slope(xs[-2:], [per_scale[str(s)]["wall_s"] for s in scales[-2:]]),
        }
    return {"table": table, "slopes": slopes}


def rows(data: dict[str, Any]) -> list[Row]:
    scales = data["scales"]
    table, slopes = data["fit"]["table"], data["fit"]["slopes"]
    chain = table["chain"]
    lo, hi = chain[str(scales[0])], chain[str(scales[-1])]
    section = "4 scaling"
    span = f"{scales[0]:,}-{scales[-1]:,} drivers"
    out = [
        Row(section, f"chain growth exponent ({span})", f"slope {slopes['chain']['wall']:.3f}", "1.000 (linear)",
            slopes["chain"]["wall"], "", "<= 1.1", slopes["chain"]["wall"] <= 1.1, slopes["chain"]["wall"]),
        Row(section, f"chain growth exponent, top decade ({scales[-2]:,}-{scales[-1]:,})",
            f"slope {slopes['chain']['wall_top_decade']:.3f}", "1.000 (linear)", slopes["chain"]["wall_top_decade"],
            "", "<= 1.1", slopes["chain"]["wall_top_decade"] <= 1.1, slopes["chain"]["wall_top_decade"]),
        Row(section, f"chain time x{hi['rows'] / lo['rows']:.0f} rows",
            f"{bk.fmt_s(hi['wall_s'])} / {hi['rows']:,} rows", f"{bk.fmt_s(lo['wall_s'])} / {lo['rows']:,} rows",
            hi["wall_s"] / lo["wall_s"]),
    ]
    for view, s in slopes.items():
        if view == "chain":
            continue
        out.append(Row(section, f"slope {view}", f"wall {s['wall']:.3f}, top {s['wall_top_decade']:.3f}",
                       f"statement {s['statement']:.3f}", s["wall"]))
    return out


def print_detail(data: dict[str, Any]) -> None:
    scales = data["scales"]
    table = data["fit"]["table"]
    body = []
    for view, per_scale in table.items():
        line = [view]
        for s in scales:
            cell = per_scale[str(s)]
            line.append(f"{cell['rows']:,} / {bk.fmt_s(cell['wall_s'])}")
        line.append(f"{data['fit']['slopes'][view]['wall']:.3f}")
        body.append(line)
    bk.say()
    bk.say(f"   rows / median time per view ({data['reps']} pass(es) per scale, CONCURRENTLY, unchanged data)")
    bk.print_plain_table(["view"] + [f"{s:,} drivers" for s in scales] + ["slope"], body)
