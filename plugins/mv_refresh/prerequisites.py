"""The prerequisites of REFRESH ... CONCURRENTLY (the runbook's steps 1-3), for any catalog view with a grain.

1. ``find_duplicates``: grain values with several rows in what the *next* refresh will produce (the view's
   defining query), not in its stored rows, which may predate the duplicates: a CONCURRENTLY refresh silently
   collapses identical new rows that hold a NULL in any column, so a grain unique only in the stored rows
   loses rows without an error. Grains with a NULL part are not duplicates (a unique index allows them).
2. ``ensure_unique_index``: ``CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ux_<view>_grain``. An INVALID
   index of that name (a failed build, which ``IF NOT EXISTS`` would silently accept) is dropped and rebuilt;
   a build that fails here drops its own leftover.
3. ``verify_unique_index``: the runbook's ``pg_indexes`` query plus ``pg_index.indisvalid``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import pg
from .catalog import Catalog, ViewSpec
from .db import connect, safe_message
from .engine import ViewState, ViewUnavailable, inspect_view

PROGRESS_AFTER_SECONDS = 3.0
PROGRESS_EVERY_SECONDS = 5.0
DUPLICATES_LIMIT = 200


class PrerequisiteError(RuntimeError):
    """A prerequisite is not met, or a step failed; the message names the view and the fix."""


class DuplicatesFound(PrerequisiteError):
    def __init__(self, report: DuplicateReport) -> None:
        self.report = report
        super().__init__(
            f"{report.view}: {report.duplicate_grains:,} grain value(s) of ({', '.join(report.grain)}) have more "
            f"than one row ({report.extra_rows:,} extra rows); no index was built. Fix the view's query (or its "
            f"source data) so that the grain is unique, refresh it, and run prepare-concurrently again."
        )


@dataclass
class DuplicateReport:
    view: str
    grain: tuple[str, ...]
    total_rows: int
    duplicate_grains: int
    extra_rows: int
    top: list[dict[str, Any]] = field(default_factory=list)  # grain values + count_duplicates

    @property
    def ok(self) -> bool:
        return self.duplicate_grains == 0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "grain": list(self.grain), "ok": self.ok}


@dataclass
class IndexReport:
    view: str
    index_name: str
    action: str  # "exists", "built", "rebuilt", "verified"
    valid: bool
    indexdef: str | None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def grain_index_name(spec: ViewSpec) -> str:
    """``ux_<view>_grain``, shortened with a stable hash when it would pass PostgreSQL's 63 bytes."""
    name = f"ux_{spec.name}_grain"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(spec.name.encode()).hexdigest()[:8]
    stem = spec.name.encode()[: 63 - len("ux__grain_") - 8].decode("utf-8", "ignore")
    return f"ux_{stem}_{digest}_grain"


def _columns(spec: ViewSpec) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in spec.grain)


def _checked_view(conn: psycopg.Connection, catalog: Catalog, view: str | ViewSpec) -> tuple[ViewSpec, ViewState]:
    spec = catalog.get(view.key if isinstance(view, ViewSpec) else view)
    if not spec.grain:
        raise PrerequisiteError(
            f"{spec.display_name} has no grain in the catalog ({catalog.where(spec)}): "
            f"add `grain: [column, ...]` (the columns that identify one row) to its entry"
        )
    try:
        state = inspect_view(conn, spec)
    except ViewUnavailable as exc:
        raise PrerequisiteError(str(exc)) from None
    columns = {row[0] for row in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (state.oid,))}
    missing = [c for c in spec.grain if c not in columns]
    if missing:
        raise PrerequisiteError(
            f"{spec.display_name}: grain column(s) {', '.join(missing)} do not exist on the view; fix `grain` in the "
            f"catalog (the view has: {', '.join(sorted(columns))})"
        )
    return spec, state


def find_duplicates(dsn: str, catalog: Catalog, view: str | ViewSpec, *, limit: int = DUPLICATES_LIMIT) -> DuplicateReport:
    """Step 1: grains with more than one row in the view's defining query (the worst ``limit``), and a summary.

    The query is PostgreSQL's own text of the view (``pg_get_viewdef``), run once, read-only, with the view's
    statement timeout; it costs what a refresh costs.
    """
    with connect(dsn, purpose="prepare duplicates") as conn:
        conn.read_only = True
        spec, state = _checked_view(conn, catalog, view)
        pg.set_timeouts(conn, statement=spec.statement_timeout_seconds, local=True)
        definition = conn.execute("SELECT pg_get_viewdef(%s::oid)", (state.oid,)).fetchone()[0]
        cols = _columns(spec)
        not_null = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in spec.grain)
        query = sql.SQL("""
            WITH next_refresh AS MATERIALIZED ({definition}),
            duplicated AS (
                SELECT {cols}, count(*) AS count_duplicates FROM next_refresh WHERE {not_null}
                GROUP BY {cols} HAVING count(*) > 1)
            SELECT (SELECT count(*) FROM next_refresh), (SELECT count(*) FROM duplicated),
                   (SELECT coalesce(sum(count_duplicates - 1), 0) FROM duplicated), worst.*
            FROM (SELECT 1) AS one
            LEFT JOIN LATERAL (SELECT * FROM duplicated ORDER BY count_duplicates DESC, {cols} LIMIT {limit})
                AS worst ON true
        """).format(definition=sql.SQL(definition.strip().rstrip(";")), cols=cols, not_null=not_null,
                    limit=sql.Literal(limit))
        try:
            cur = conn.execute(query)
        except psycopg.Error as exc:
            raise PrerequisiteError(
                f"{spec.display_name}: its defining query (what the next refresh runs) could not be checked for "
                f"duplicates [{exc.sqlstate}] {safe_message(exc)}; run prepare-concurrently as a role that may "
                f"run the view's query (its owner), or raise statement_timeout_seconds for the view"
            ) from None
        names = [d.name for d in cur.description][3:]
        rows = cur.fetchall()
    total, grains, extra = rows[0][:3]
    # Without duplicates the LEFT JOIN gives one row of NULLs: no worst grains to list.
    top = [dict(zip(names, row[3:], strict=True)) for row in rows] if grains else []
    return DuplicateReport(spec.display_name, spec.grain, total, grains, int(extra), top)


_INDEX_BY_NAME = """
SELECT i.indexrelid, i.indrelid = %(view)s, i.indisvalid, i.indisunique,
       i.indpred IS NULL AND i.indexprs IS NULL,
       ARRAY(SELECT a.attname::text
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              ORDER BY k.n),
       pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(name)s
"""


def _index_state(conn: psycopg.Connection, spec: ViewSpec, state: ViewState, name: str):
    return conn.execute(_INDEX_BY_NAME, {"view": state.oid, "schema": spec.schema, "name": name}).fetchone()


def _on_grain(found: tuple, spec: ViewSpec) -> bool:
    """The index found is unique, on this view, on exactly the grain's plain columns, without WHERE."""
    _, on_view, _valid, unique, plain, columns, _indexdef = found
    return bool(on_view and unique and plain and tuple(columns) == spec.grain)


def _drop_index(conn: psycopg.Connection, spec: ViewSpec, name: str) -> None:
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(spec.schema, name)))


def ensure_unique_index(dsn: str, catalog: Catalog, view: str | ViewSpec, *,
                        progress: Callable[[str], None] | None = None, lock_timeout: float | None = None,
                        statement_timeout: float | None = None) -> IndexReport:
    """Step 2: the valid unique index ``ux_<view>_grain`` on the grain, built concurrently if missing."""
    say = progress or (lambda _line: None)
    with connect(dsn, autocommit=True, purpose="prepare index") as conn:
        spec, state = _checked_view(conn, catalog, view)
        name = grain_index_name(spec)
        found = _index_state(conn, spec, state, name)
        action = "built"
        if found is not None:
            valid, indexdef = found[2], found[6]
            if valid and _on_grain(found, spec):
                say(f"{spec.display_name}: {name} exists and is valid")
                return IndexReport(spec.display_name, name, "exists", True, indexdef)
            if valid:
                raise PrerequisiteError(
                    f"an index named {name} already exists but is not a unique index on ({', '.join(spec.grain)}) "
                    f"of {spec.display_name}: {indexdef}. Drop or rename it, then run prepare-concurrently again"
                )
            say(f"{spec.display_name}: {name} exists but is INVALID (a failed earlier build); dropping it concurrently")
            _drop_index(conn, spec, name)
            action = "rebuilt"
        pg.set_timeouts(conn, lock=spec.lock_timeout_seconds if lock_timeout is None else lock_timeout,
                        statement=spec.statement_timeout_seconds if statement_timeout is None else statement_timeout)
        statement = sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(name), sql.Identifier(spec.schema, spec.name), _columns(spec))
        say(f"{spec.display_name}: building {name} concurrently ...")
        started = time.monotonic()
        try:
            _run_with_progress(dsn, conn, statement, say)
        except psycopg.Error as exc:
            # A failed CREATE INDEX CONCURRENTLY leaves an INVALID index: never leave it for IF NOT EXISTS.
            if not conn.broken:
                _drop_index(conn, spec, name)
            hint = (" (duplicated grains in the view's stored rows: run the duplicate check, step 1; if it finds "
                    "none, the stored rows predate a fix of the query: refresh the view, then run this again)"
                    if exc.sqlstate == "23505" else "")
            raise PrerequisiteError(
                f"{spec.display_name}: building {name} failed [{exc.sqlstate}] {safe_message(exc)}{hint}; "
                f"the INVALID leftover was dropped"
            ) from exc
        seconds = time.monotonic() - started
        found = _index_state(conn, spec, state, name)
        say(f"{spec.display_name}: {name} {action} in {seconds:.1f} s")
        return IndexReport(spec.display_name, name, action, bool(found and found[2]), found[6] if found else None,
                           round(seconds, 3))


_PROGRESS = """
SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total, lockers_done, lockers_total
FROM pg_stat_progress_create_index WHERE pid = %s
"""


def _run_with_progress(dsn: str, conn: psycopg.Connection, statement: sql.Composable,
                       say: Callable[[str], None]) -> None:
    """Run the build on ``conn`` in a thread; report its progress from another session while it runs."""
    pid = conn.info.backend_pid
    outcome: dict[str, BaseException] = {}

    def build() -> None:
        try:
            conn.execute(statement)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=build, name="create-index", daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(PROGRESS_AFTER_SECONDS)
    if worker.is_alive():
        with connect(dsn, autocommit=True, purpose="prepare progress") as watcher:
            while worker.is_alive():
                row = watcher.execute(_PROGRESS, (pid,)).fetchone()
                if row:
                    say(f"  {time.monotonic() - started:5.0f} s  {_describe_progress(*row)}")
                worker.join(PROGRESS_EVERY_SECONDS)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]


def _describe_progress(phase, blocks_done, blocks_total, tuples_done, tuples_total, lockers_done, lockers_total) -> str:
    parts = [phase]
    if blocks_total:
        parts.append(f"blocks {blocks_done:,}/{blocks_total:,} ({100 * blocks_done / blocks_total:.0f}%)")
    if tuples_total:
        parts.append(f"tuples {tuples_done:,}/{tuples_total:,} ({100 * tuples_done / tuples_total:.0f}%)")
    if lockers_total:
        parts.append(f"waiting for {lockers_total - lockers_done} older transaction(s)")
    return ", ".join(parts)


# The runbook's step 3, with the names as parameters.
_RUNBOOK_VERIFY = """
SELECT schemaname, indexname, indexdef
FROM pg_indexes
WHERE schemaname = %s AND tablename = %s AND indexname = %s
"""


def verify_unique_index(dsn: str, catalog: Catalog, view: str | ViewSpec) -> IndexReport:
    """Step 3: the index is listed in pg_indexes (the runbook's query) and ``indisvalid``."""
    with connect(dsn, purpose="prepare verify") as conn:
        spec, state = _checked_view(conn, catalog, view)
        name = grain_index_name(spec)
        listed = conn.execute(_RUNBOOK_VERIFY, (spec.schema, spec.name, name)).fetchone()
        found = _index_state(conn, spec, state, name)
    if listed is None or found is None:
        raise PrerequisiteError(f"{spec.display_name}: index {name} does not exist; run step 2 "
                                f"(mv-refresh prepare-concurrently {spec.display_name})")
    if not found[2]:
        raise PrerequisiteError(f"{spec.display_name}: index {name} exists but is INVALID; run "
                                f"mv-refresh prepare-concurrently {spec.display_name} to rebuild it")
    if not _on_grain(found, spec):
        raise PrerequisiteError(f"{spec.display_name}: {name} is not a unique index on the grain: {found[6]}")
    return IndexReport(spec.display_name, name, "verified", True, listed[2])


@dataclass
class PrepareResult:
    duplicates: DuplicateReport
    index: IndexReport
    verified: IndexReport

    def as_json(self) -> dict[str, Any]:
        return {step: report.as_json() for step, report in vars(self).items()}


def prepare_concurrently(dsn: str, catalog: Catalog, view: str | ViewSpec, *,
                         progress: Callable[[str], None] | None = None) -> PrepareResult:
    """Steps 1-3. Raises ``DuplicatesFound`` (nothing built) or ``PrerequisiteError``. Idempotent."""
    say = progress or (lambda _line: None)
    say("step 1/3: duplicates on the grain")
    duplicates = find_duplicates(dsn, catalog, view)
    if not duplicates.ok:
        raise DuplicatesFound(duplicates)
    say(f"  none: {duplicates.total_rows:,} rows, every grain unique")
    say("step 2/3: unique index, built concurrently")
    index = ensure_unique_index(dsn, catalog, view, progress=say)
    say("step 3/3: verify (pg_indexes, pg_index.indisvalid)")
    verified = verify_unique_index(dsn, catalog, view)
    say(f"  {verified.indexdef} (valid)")
    return PrepareResult(duplicates, index, verified)
