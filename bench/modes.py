"""3. CONCURRENTLY against PLAIN, as a function of the fraction of the view's rows that changed.

Before each timed refresh the source data changes by a fixed fraction: the drivers in a deterministic
hash bucket (``hashint8(driver_id)``) get their ``full_name`` toggled (a trailing ``*`` added, or taken
off again). The critical view joins ``yango.drivers`` directly, so every one of its rows for those
drivers differs from what the view holds, and nothing upstream needs refreshing. The fraction of the
view's rows that changed is measured, not assumed.

Then the source table and the view are vacuumed (untimed: CONCURRENTLY leaves dead rows behind, PLAIN
does not, and either would otherwise bias the next measurement), and the bare statement is timed in
this process. Modes alternate (the order rotated every round); names are back to the original after
every round (two toggles).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import benchkit as bk
from benchkit import Row

FRACTIONS = (0.0, 0.01, 0.10, 1.0)
MODES = ("CONCURRENTLY", "PLAIN")
BUCKETS = 10_000
# The drivers of the first N of BUCKETS hash buckets. In psycopg queries with parameters, %% is a literal %.
_IN_SET = "(hashint8(driver_id) & 2147483647) %% 10000 < %s"
_TOGGLE = """
UPDATE yango.drivers
SET full_name = CASE WHEN right(full_name, 1) = '*' THEN left(full_name, -1) ELSE full_name || '*' END
WHERE (hashint8(driver_id) & 2147483647) %% 10000 < %s
"""


def _label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def measure(dsn: str, view: str, rounds: int) -> dict[str, Any]:
    ident = bk.qualified(view)
    times: dict[str, dict[str, list[float]]] = {_label(f): {m: [] for m in MODES} for f in FRACTIONS}
    changed_rows: dict[str, int] = {}
    view_fraction: dict[str, float] = {}
    with bk.connect(dsn, autocommit=True) as conn:
        total = conn.execute(f"SELECT count(*) FROM {ident}").fetchone()[0]  # noqa: S608 - quoted name
        for f in FRACTIONS:
            bucket = round(f * BUCKETS)
            hit = conn.execute(f"SELECT count(*) FROM {ident} WHERE {_IN_SET}", (bucket,)).fetchone()[0]  # noqa: S608
            view_fraction[_label(f)] = hit / total if total else 0.0
        for r in range(rounds):
            for f in bk.rotated(FRACTIONS, r):
                bucket = round(f * BUCKETS)
                for mode in bk.rotated(MODES, r + FRACTIONS.index(f)):
                    if bucket:
                        changed_rows[_label(f)] = conn.execute(_TOGGLE, (bucket,)).rowcount
                    conn.execute("VACUUM ANALYZE yango.drivers")
                    conn.execute(f"VACUUM ANALYZE {ident}")
                    statement = f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if mode == 'CONCURRENTLY' else ''}{ident}"
                    started = time.perf_counter()
                    conn.execute(statement)
                    times[_label(f)][mode].append(time.perf_counter() - started)
                bk.say(f"  round {r + 1}/{rounds} {_label(f):>5} changed: "
                       + ", ".join(f"{m} {times[_label(f)][m][-1]:.3f} s" for m in MODES))
    return {"view": view, "rounds": rounds, "view_rows": total, "fractions": [_label(f) for f in FRACTIONS],
            "fraction_values": list(FRACTIONS), "view_fraction_changed": view_fraction,
            "drivers_updated": changed_rows, "times": times}


def rows(data: dict[str, Any]) -> list[Row]:
    out = []
    for label in data["fractions"]:
        conc, plain = data["times"][label]["CONCURRENTLY"], data["times"][label]["PLAIN"]
        r = bk.ratio_of(conc, plain)
        actual = data["view_fraction_changed"][label] * 100
        out.append(Row("3 modes", f"{label} changed ({actual:.1f}% of rows): CONCURRENTLY / PLAIN",
                       bk.fmt_sample(conc), bk.fmt_sample(plain), r["ratio"],
                       f"[{r['round_min']:.2f}-{r['round_max']:.2f}]"))
    return out


def crossover(data: dict[str, Any]) -> dict[str, float]:
    """Median seconds per mode and fraction, for the figure and the summary."""
    return {label: {m: statistics.median(v) for m, v in modes.items()} for label, modes in data["times"].items()}
