"""The demo warehouse: Yango source tables, a deterministic data generator and the six views.

``load_demo`` runs ``include/sql/demo/01_sources.sql`` (schema ``yango`` and its tables),
``02_generate.sql`` (the generator function), ``SELECT yango.generate_demo_data(N)``, then
``03_views.sql`` (the ``ops`` materialized views, created ``WITH NO DATA`` when missing), all in one
transaction: a failed load leaves the database as it was.

Loading again (any N) regenerates the source tables and keeps the views as they are; refreshing them
is the product's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from psycopg import sql

from mv_refresh.db import connect
from mv_refresh.paths import SQL_DEMO_DIR

# About 27 source rows per driver: 20,000 drivers make ~560,000 rows, loaded in a couple of seconds.
DEFAULT_DEMO_DRIVERS = 20_000

SOURCE_TABLES = (
    "yango.drivers",
    "yango.driver_milestones",
    "yango.cabinet_claims",
    "yango.payments_raw",
    "yango.ledger_entries",
)

DEMO_VIEWS = (
    "ops.mv_yango_payments_raw_current",
    "ops.mv_yango_payments_ledger_latest",
    "ops.mv_yango_payments_ledger_latest_enriched",
    "ops.mv_yango_receivable_payable_detail",
    "ops.mv_claims_payment_status_cabinet",
    "ops.mv_yango_cabinet_claims_for_collection",
)

_SOURCES_SQL = "01_sources.sql"
_GENERATE_SQL = "02_generate.sql"
_VIEWS_SQL = "03_views.sql"


def _read_sql(name: str) -> str:
    path = Path(SQL_DEMO_DIR) / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"demo SQL file missing: {path} (is the project's include/ deployed?)") from None


def load_demo(
    dsn: str,
    *,
    drivers: int = DEFAULT_DEMO_DRIVERS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Create (or regenerate) the demo warehouse for ``drivers`` drivers; return rows per source table.

    ``progress`` receives one short line per step, e.g. ``"sources: 563,225 rows (20,000 drivers) in 1.8 s"``.
    Raises ``ValueError`` for fewer than one driver (before touching the database).
    """
    if isinstance(drivers, bool) or not isinstance(drivers, int):
        raise ValueError(f"drivers must be an integer >= 1, got {drivers!r}")
    if drivers < 1:
        raise ValueError(f"drivers must be >= 1 (the number of demo drivers to generate), got {drivers}")

    say = progress or (lambda _line: None)
    sources_sql = _read_sql(_SOURCES_SQL)
    generate_sql = _read_sql(_GENERATE_SQL)
    views_sql = _read_sql(_VIEWS_SQL)

    with connect(dsn, purpose="demo") as conn:
        with conn.transaction():
            started = time.perf_counter()
            conn.execute(sources_sql)
            conn.execute(generate_sql)
            say(f"schema: {len(SOURCE_TABLES)} source tables and the generator ready in "
                f"{time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            conn.execute("SELECT yango.generate_demo_data(%s)", (drivers,))
            counts = _count_rows(conn)
            say(f"sources: {sum(counts.values()):,} rows ({drivers:,} drivers) in "
                f"{time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            conn.execute(views_sql)
            say(f"views: {len(DEMO_VIEWS)} materialized views defined (not refreshed) in "
                f"{time.perf_counter() - started:.1f} s")
    return counts


def _count_rows(conn) -> dict[str, int]:
    counts = sql.SQL(", ").join(
        sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(*table.split(".")))
        for table in SOURCE_TABLES
    )
    row = conn.execute(sql.SQL("SELECT {}").format(counts)).fetchone()
    return dict(zip(SOURCE_TABLES, (int(n) for n in row), strict=True))


def loaded_drivers(dsn: str) -> int | None:
    """The scale the demo warehouse is loaded at, or None when it (or one of its views) is missing."""
    with connect(dsn, purpose="demo") as conn:
        if conn.execute("SELECT to_regclass('yango.drivers') IS NULL").fetchone()[0]:
            return None
        present = conn.execute(
            "SELECT count(*) FROM unnest(%s::text[]) AS v(name) WHERE to_regclass(v.name) IS NOT NULL",
            (list(DEMO_VIEWS),),
        ).fetchone()[0]
        if present != len(DEMO_VIEWS):
            return None
        return conn.execute("SELECT count(*) FROM yango.drivers").fetchone()[0]
