"""1. What a logged refresh costs over the bare statement, measured side by side in one run.

Contenders, all refreshing the same view CONCURRENTLY, interleaved (the order rotated every round):

* ``mv-refresh refresh VIEW`` - the whole CLI process: start-up, catalog, two connections, log rows,
  advisory lock, mode choice, the refresh, the exact row count;
* ``refresh_view`` - the engine call alone, in this process;
* ``psql -c 'REFRESH MATERIALIZED VIEW CONCURRENTLY VIEW'`` - the bare statement (B of both goals);
* ``psycopg REFRESH`` - the bare statement in this process (connect + execute), to tell the engine's
  own bookkeeping apart from psql's process start.

Also measured, to say what the overhead is made of: the CLI's start-up (``mv-refresh --help`` against
``python -c pass``), the import of the refresh path, and the exact ``count(*)`` the engine runs after the
refresh.

Standalone: ``.venv/bin/python bench/refresh_overhead.py [--drivers 200000] [--rounds 5]``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import benchkit as bk
from benchkit import Row


def measure(dsn: str, view: str, rounds: int, *, startup_reps: int = 10, count_reps: int = 5) -> dict[str, Any]:
    from mv_refresh.catalog import load_catalog
    from mv_refresh.engine import refresh_view

    catalog = load_catalog()
    spec = catalog.get(view)
    ident = bk.qualified(view)
    env = bk.child_env(MV_REFRESH_DSN=dsn)
    statement = f"REFRESH MATERIALIZED VIEW CONCURRENTLY {ident}"
    psql_cmd = bk.psql_command(dsn, statement)
    # --force / force=True: the REFRESH always runs, even where change tracking could prove the view unchanged.
    cli_cmd = [str(bk.BIN / "mv-refresh"), "refresh", "--force", spec.display_name]
    statement_ms: list[float] = []
    engine_rows: list[int] = []

    def psql() -> float:
        return bk.timed_run(psql_cmd, env)[0]

    def cli() -> float:
        return bk.timed_run(cli_cmd, env)[0]

    def engine() -> float:
        seconds, result = bk.timed(lambda: refresh_view(dsn, catalog, spec, force=True))
        if result.method != "CONCURRENTLY":
            raise RuntimeError(f"{view} refreshed {result.method} ({result.method_reason}); expected CONCURRENTLY")
        statement_ms.append(result.duration_ms)
        engine_rows.append(result.rows_after_refresh)
        return seconds

    def bare() -> float:
        started = time.perf_counter()
        with bk.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)
        return time.perf_counter() - started

    contenders = {"mv-refresh refresh (process)": cli, "refresh_view (engine)": engine,
                  "psql REFRESH CONCURRENTLY": psql, "psycopg REFRESH (in-process)": bare}
    bk.say(f"  warm-up: one untimed round of {len(contenders)} refreshes of {view}")
    for fn in contenders.values():
        fn()
    statement_ms.clear()
    engine_rows.clear()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for i in range(rounds):
        for label in bk.rotated(list(contenders), i):
            times[label].append(contenders[label]())
        bk.say(f"  round {i + 1}/{rounds}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.3f} s" for k, v in times.items()))

    # What the overhead is made of.
    help_cmd = [str(bk.BIN / "mv-refresh"), "--help"]
    import_cmd = [bk.PYTHON, "-c", "import mv_refresh.cli, mv_refresh.engine; "
                  "from mv_refresh.catalog import load_catalog; load_catalog()"]
    uncached = bk.uncached_env(MV_REFRESH_DSN=dsn)
    commands = {
        "python -c pass": ([bk.PYTHON, "-c", "pass"], env),
        "import psycopg": ([bk.PYTHON, "-c", "import psycopg"], env),
        "mv-refresh --help": (help_cmd, env),
        "import refresh path": (import_cmd, env),
        "mv-refresh --help, no bytecode cache": (help_cmd, uncached),
        "import refresh path, no bytecode cache": (import_cmd, uncached),
    }
    startup: dict[str, list[float]] = {k: [] for k in commands}
    for cmd, cmd_env in commands.values():
        bk.timed_run(cmd, cmd_env)  # warm: bytecode cache and page cache
    for i in range(startup_reps):
        for label in bk.rotated(list(commands), i):
            cmd, cmd_env = commands[label]
            startup[label].append(bk.timed_run(cmd, cmd_env)[0])
    counts: list[float] = []
    with bk.connect(dsn, autocommit=True) as conn:
        count_sql = f"SELECT count(*) FROM {ident}"  # noqa: S608 - a quoted catalog name
        conn.execute(count_sql)
        for _ in range(count_reps):
            counts.append(bk.timed(lambda: conn.execute(count_sql).fetchone())[0])
    return {"view": view, "rounds": rounds, "times": times, "statement_ms": statement_ms,
            "rows": engine_rows[-1] if engine_rows else None, "startup": startup, "count_s": counts}


def rows(data: dict[str, Any]) -> list[Row]:
    t = data["times"]
    cli, engine = t["mv-refresh refresh (process)"], t["refresh_view (engine)"]
    psql, bare = t["psql REFRESH CONCURRENTLY"], t["psycopg REFRESH (in-process)"]
    section = "1 overhead"
    out = []
    r = bk.ratio_of(cli, psql)
    out.append(Row(section, "process: mv-refresh refresh / psql", bk.fmt_sample(cli), bk.fmt_sample(psql),
                   r["ratio"], f"[{r['round_min']:.3f}-{r['round_max']:.3f}]", "<= 1.10",
                   r["ratio"] <= 1.10, r["ratio"]))
    r = bk.ratio_of(engine, psql)
    out.append(Row(section, "engine: refresh_view / psql", bk.fmt_sample(engine), bk.fmt_sample(psql),
                   r["ratio"], f"[{r['round_min']:.3f}-{r['round_max']:.3f}]", "<= 1.03",
                   r["ratio"] <= 1.03, r["ratio"]))
    r = bk.ratio_of(engine, bare)
    out.append(Row(section, "engine / psycopg REFRESH in-process", bk.fmt_sample(engine), bk.fmt_sample(bare),
                   r["ratio"], f"[{r['round_min']:.3f}-{r['round_max']:.3f}]"))
    su = data["startup"]
    help_s, pass_s = statistics.median(su["mv-refresh --help"]), statistics.median(su["python -c pass"])
    out.append(Row(section, "CLI start-up: mv-refresh --help / python -c pass", bk.fmt_sample(su["mv-refresh --help"]),
                   bk.fmt_sample(su["python -c pass"]), help_s / pass_s))
    imp = statistics.median(su["import refresh path"])
    out.append(Row(section, "import refresh path + catalog / python -c pass",
                   bk.fmt_sample(su["import refresh path"]), bk.fmt_sample(su["python -c pass"]), imp / pass_s))
    psy = statistics.median(su["import psycopg"])
    out.append(Row(section, "import psycopg / python -c pass", bk.fmt_sample(su["import psycopg"]),
                   bk.fmt_sample(su["python -c pass"]), psy / pass_s))
    # What a process pays before it refreshes anything: interpreter, imports, catalog (measured alone;
    # the difference of the two refresh medians says the same, with the refresh's noise on top).
    psql_med = statistics.median(psql)
    out.append(Row(section, "process start-up (python, imports, catalog) / psql refresh", bk.fmt_s(imp),
                   bk.fmt_s(psql_med), imp / psql_med,
                   f"(<= 1.10 needs a bare refresh >= {imp / 0.10:.1f} s)"))
    diff = statistics.median(cli) - statistics.median(engine)
    out.append(Row(section, "process - engine (medians) / psql refresh", bk.fmt_s(diff), bk.fmt_s(psql_med),
                   diff / psql_med))
    nocache = su["mv-refresh --help, no bytecode cache"]
    out.append(Row(section, "mv-refresh --help without / with bytecode cache", bk.fmt_sample(nocache),
                   bk.fmt_sample(su["mv-refresh --help"]), statistics.median(nocache) / help_s))
    count_med = statistics.median(data["count_s"])
    out.append(Row(section, f"exact count(*) ({data['rows']:,} rows) / psql refresh", bk.fmt_sample(data["count_s"]),
                   bk.fmt_s(psql_med), count_med / psql_med))
    if data["statement_ms"]:
        book = [w - ms / 1000 for w, ms in zip(engine, data["statement_ms"], strict=False)]
        out.append(Row(section, "engine wall - its REFRESH statement / psql", bk.fmt_sample(book),
                       bk.fmt_s(psql_med), statistics.median(book) / psql_med))
    return out


def breakdown(data: dict[str, Any]) -> dict[str, float]:
    """Medians of what the process ratio is made of, in seconds."""
    t = data["times"]
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "psql_refresh": med["psql REFRESH CONCURRENTLY"],
        "psycopg_refresh": med["psycopg REFRESH (in-process)"],
        "engine": med["refresh_view (engine)"],
        "process": med["mv-refresh refresh (process)"],
        "process_minus_engine": med["mv-refresh refresh (process)"] - med["refresh_view (engine)"],
        "engine_minus_psycopg": med["refresh_view (engine)"] - med["psycopg REFRESH (in-process)"],
        "count": statistics.median(data["count_s"]),
        "cli_help": statistics.median(data["startup"]["mv-refresh --help"]),
        "python_start": statistics.median(data["startup"]["python -c pass"]),
        "import_refresh_path": statistics.median(data["startup"]["import refresh path"]),
        "import_psycopg": statistics.median(data["startup"]["import psycopg"]),
        "cli_help_no_bytecode_cache": statistics.median(data["startup"]["mv-refresh --help, no bytecode cache"]),
        "import_refresh_path_no_bytecode_cache":
            statistics.median(data["startup"]["import refresh path, no bytecode cache"]),
    }


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--view", default=bk.CRITICAL_VIEW)
    args = parser.parse_args()
    dbs = bk.Databases.from_environment()
    try:
        dsn = dbs.database(f"d{args.drivers}")
        bk.prepare_demo(dsn, args.drivers)
        data = measure(dsn, args.view, args.rounds)
        bk.print_table(f"logged refresh overhead ({args.view}, {args.drivers:,} drivers)", rows(data))
    finally:
        dbs.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
