"""Shared pieces of the benchmarks: where the database comes from, timing, statistics and tables.

Nothing here is a test. Every measurement is taken side by side in one run (interleaved A/B, the order
rotated every round) and reported as medians, spread and ratios.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
OUT_DIR = BENCH_DIR / "out"  # git-ignored: results.json, figures, the child processes' bytecode
BIN = Path(sys.executable).parent
PYTHON = sys.executable
EMBEDDED_DIR = ROOT / ".demo" / "bench-pg"
# Bytecode of every child process goes here (bench/out/ is git-ignored), never into the source tree.
PYCACHE_DIR = OUT_DIR / "pycache"
CRITICAL_VIEW = "ops.mv_yango_cabinet_claims_for_collection"


def say(line: str = "") -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------
# Statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of a sample (seconds or anything else)."""
    if not values:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "p25": math.nan, "p75": math.nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
    }


def ratio_of(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Ratio of the medians, and the median and range of the per-round ratios (rounds paired by index)."""
    med = statistics.median(a) / statistics.median(b)
    paired = [x / y for x, y in zip(a, b, strict=False) if y > 0]
    return {"ratio": med, "paired_median": statistics.median(paired) if paired else math.nan,
            "round_min": min(paired) if paired else math.nan, "round_max": max(paired) if paired else math.nan}


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the growth exponent."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / den if den else math.nan


def rotated(items: Sequence[Any], round_no: int) -> list[Any]:
    """The items in the order for this round: rotated by one every round, reversed every other round.

    Over a few rounds every contender runs in every position, so drift in the machine's load (another
    process, the page cache, autovacuum) hits them alike.
    """
    items = list(items)
    k = round_no % len(items)
    order = items[k:] + items[:k]
    return order if (round_no // len(items)) % 2 == 0 else list(reversed(order))


def fmt_s(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.3f} s"


def fmt_sample(values: Sequence[float]) -> str:
    """``median (min-max)`` of a sample of seconds."""
    s = summarize(values)
    if not s["n"]:
        return "-"
    if s["n"] == 1:
        return fmt_s(s["median"])
    return f"{fmt_s(s['median'])} ({fmt_s(s['min'])}-{fmt_s(s['max'])})"


# --------------------------------------------------------------------------------------------------
# Result rows and tables


@dataclass
class Row:
    """One line of a result table: A against B, their ratio, and the goal it is held to (if any)."""

    section: str
    name: str
    a: str
    b: str = "-"
    ratio: float | None = None
    ratio_note: str = ""
    goal: str = "info"
    met: bool | None = None
    value: float | None = None  # the number the goal is checked on (a ratio, seconds, a slope)
    headline: bool = False  # an info row worth repeating in the summary (rows with a goal always are)

    @property
    def met_text(self) -> str:
        return "-" if self.met is None else ("yes" if self.met else "NO")

    def cells(self) -> list[str]:
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}" + (f" {self.ratio_note}" if self.ratio_note else "")
        return [self.name, self.a, self.b, ratio, self.goal, self.met_text]

    def as_json(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "a": self.a, "b": self.b, "ratio": self.ratio,
                "ratio_note": self.ratio_note, "goal": self.goal, "met": self.met, "value": self.value,
                "headline": self.headline}


HEADERS = ["name", "A", "B", "ratio", "goal", "met?"]


def print_table(title: str, rows: Iterable[Row], headers: Sequence[str] = HEADERS) -> None:
    body = [r.cells() for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(headers)]
    say()
    say(f"== {title}")
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    say("  ".join("-" * w for w in widths))
    for line in body:
        say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def print_plain_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(headers)]
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    say("  ".join("-" * w for w in widths))
    for line in body:
        say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------------------------------
# Processes and timing


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a timed child process: this one's, with a bytecode cache.

    A deployed project has compiled bytecode next to its modules; a shell with
    ``PYTHONDONTWRITEBYTECODE=1`` (as some CI images and containers set) would make every child compile
    the project's modules again and time the compiler. Children write and read bytecode under
    ``bench/out/pycache`` instead (``PYTHONPYCACHEPREFIX``); warm-up runs fill it. The cost without a
    cache is measured separately (``uncached_env``).
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    PYCACHE_DIR.mkdir(parents=True, exist_ok=True)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    env.update(extra)
    return env


def uncached_env(**extra: str) -> dict[str, str]:
    """Children that never write bytecode: installed packages use theirs, the project compiles every time."""
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def timed_run(cmd: Sequence[str], env: dict[str, str] | None = None, *, capture: bool = False) -> tuple[float, str]:
    """Wall time of a whole process (start-up included); its stdout when ``capture``."""
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return elapsed, proc.stdout if capture else ""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def psql_binary() -> str:
    from mv_refresh.embedded import psql_path

    return psql_path()


def psql_version() -> str:
    try:
        out = subprocess.run([psql_binary(), "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"unavailable: {exc}"
    return out.stdout.strip() or out.stderr.strip()


def psql_command(dsn: str, statement: str) -> list[str]:
    return [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", statement]


def qualified(view: str) -> str:
    """``schema.name`` quoted as SQL text (for psql -c)."""
    from mv_refresh.catalog import parse_qualified_name

    schema, name = parse_qualified_name(view)
    return sql.Identifier(schema, name).as_string()


# --------------------------------------------------------------------------------------------------
# Databases


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


@dataclass
class Databases:
    """Where the benchmark databases live, and cleaning up after them.

    * ``MV_REFRESH_DSN``: that one database, for everything (the scaling section reloads it at each scale);
    * ``BENCH_DATABASE_URL``: an admin DSN; scratch databases are created on that server and dropped at
      the end;
    * neither: an embedded PostgreSQL under ``.demo/bench-pg`` (started here, and stopped at the end when
      it was not already running; its directory removed when this run created it), with scratch
      databases dropped at the end as well.
    """

    kind: str
    admin_dsn: str | None = None
    fixed_dsn: str | None = None
    started_server: bool = False
    created_dir: bool = False
    created: list[str] = field(default_factory=list)
    tag: str = field(default_factory=lambda: f"{os.getpid()}")

    @classmethod
    def from_environment(cls) -> Databases:
        if os.environ.get("MV_REFRESH_DSN"):
            return cls(kind="MV_REFRESH_DSN", fixed_dsn=os.environ["MV_REFRESH_DSN"])
        if os.environ.get("BENCH_DATABASE_URL"):
            return cls(kind="BENCH_DATABASE_URL", admin_dsn=os.environ["BENCH_DATABASE_URL"])
        from mv_refresh.embedded import start_embedded

        was_running = (EMBEDDED_DIR / "postmaster.pid").exists()
        existed = EMBEDDED_DIR.exists()
        say(f"embedded PostgreSQL in {EMBEDDED_DIR.relative_to(ROOT)} ({'reused' if was_running else 'starting'})")
        admin = start_embedded(EMBEDDED_DIR)
        return cls(kind="embedded", admin_dsn=admin, started_server=not was_running, created_dir=not existed)

    @property
    def shared(self) -> bool:
        """True when every scale has to share one database (MV_REFRESH_DSN)."""
        return self.fixed_dsn is not None

    def any_dsn(self) -> str:
        return self.fixed_dsn or self.admin_dsn or ""

    def database(self, label: str) -> str:
        """A database for ``label`` (e.g. ``d50000``): created on first use, dropped by ``cleanup``."""
        if self.fixed_dsn:
            return self.fixed_dsn
        from mv_refresh.db import connect

        name = f"mvr_bench_{self.tag}_{label}"
        if name not in self.created:
            with connect(self.admin_dsn, autocommit=True, purpose="bench") as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self.created.append(name)
        return with_dbname(self.admin_dsn, name)

    def cleanup(self) -> None:
        if self.admin_dsn and self.created:
            from mv_refresh.db import connect

            with connect(self.admin_dsn, autocommit=True, purpose="bench") as conn:
                for name in reversed(self.created):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            say(f"dropped {len(self.created)} scratch database(s)")
            self.created.clear()
        if self.kind == "embedded" and self.started_server:
            from mv_refresh.embedded import stop_embedded

            stop_embedded(EMBEDDED_DIR)
            say("stopped the embedded PostgreSQL")
            if self.created_dir:  # its WAL alone can be a gigabyte: leave nothing behind that we made
                shutil.rmtree(EMBEDDED_DIR, ignore_errors=True)
                say(f"removed {EMBEDDED_DIR.relative_to(ROOT)}")


def server_facts(dsn: str) -> dict[str, Any]:
    from mv_refresh.db import connect

    facts: dict[str, Any] = {}
    with connect(dsn, purpose="bench") as conn:
        facts["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        facts["version"] = conn.execute("SELECT version()").fetchone()[0]
        for setting in ("shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_workers_per_gather",
                        "synchronous_commit", "max_wal_size"):
            facts[setting] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()[0]
    return facts


def machine_facts() -> dict[str, Any]:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "psycopg": version("psycopg"),
        "apache-airflow": version("apache-airflow"),
        "matplotlib": version("matplotlib"),
        "loadavg_at_start": list(load) if load else None,
        "memory_gb": _memory_gb(),
    }


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            kb = int(fh.readline().split()[1])
        return round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------------------
# The demo warehouse


def prepare_demo(dsn: str, drivers: int, *, warm: bool = True) -> dict[str, Any]:
    """The ops schema and the demo warehouse at ``drivers``, every view populated, then (``warm``) one more
    pass so every view refreshes CONCURRENTLY from then on. Returns what it took."""
    from mv_refresh.catalog import load_catalog
    from mv_refresh.demo import load_demo, loaded_drivers
    from mv_refresh.engine import refresh_view
    from mv_refresh.migrations import init_db

    catalog = load_catalog()
    init_db(dsn, catalog)
    facts: dict[str, Any] = {"drivers": drivers}
    if loaded_drivers(dsn) != drivers:
        seconds, counts = timed(lambda: load_demo(dsn, drivers=drivers))
        facts.update(load_s=seconds, source_rows=sum(counts.values()))
        say(f"  demo warehouse at {drivers:,} drivers: {sum(counts.values()):,} source rows in {seconds:.1f} s")
    passes = 2 if warm else 1
    for i in range(passes):
        started = time.perf_counter()
        results = [refresh_view(dsn, catalog, spec) for spec in catalog.views]
        seconds = time.perf_counter() - started
        methods = sorted({r.method for r in results})
        facts[f"populate_pass_{i + 1}_s"] = seconds
        facts["view_rows"] = {r.display_name: r.rows_after_refresh for r in results}
        say(f"  chain pass {i + 1} ({'/'.join(methods)}): {seconds:.1f} s")
    with connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return facts


def connect(dsn: str, **kwargs):
    """A psycopg connection tagged ``mv-refresh bench`` in pg_stat_activity."""
    from mv_refresh.db import connect as db_connect

    return db_connect(dsn, purpose="bench", **kwargs)


class TempDir:
    """A temporary directory removed at the end of the run."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def airflow_env(home: Path, dags_folder: Path | None = None, **extra: str) -> dict[str, str]:
    """An environment for an Airflow child process: its own home and SQLite, this project's plugins."""
    env = {k: v for k, v in child_env().items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    })
    env.update(extra)
    return env
