"""The runbook's troubleshooting, as functions: :func:`recent_log` ("Verificar último error", "Verificar si
hay refresh en progreso"), :func:`lock_report` ("Verificar procesos de PostgreSQL bloqueando la MV"), and
:func:`real_dependencies` / :func:`validate_plan` ("Verificar dependencias": the catalog against ``pg_depend``).

Catalog names reach the database only as bound parameters. The functions only read, and never leave a
session idle in a transaction they opened (``_reading``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from .catalog import Catalog, ViewRef, ViewSpec, format_qualified_name
from .pg import ADVISORY_LOCK_CLASS, RELKIND_NAMES, advisory_locktag
from .sources import USER_OID_START, read_trees

__all__ = ["LOCK_KIND_ADVISORY", "LOCK_KIND_RELATION", "LOG_COLUMNS", "MAX_LOG_LIMIT", "STATUSES", "PlanProblem",
           "lock_report", "real_dependencies", "recent_log", "validate_plan"]

#: The statuses of ``ops.mv_refresh_log`` (its CHECK constraint), in the order a refresh meets them.
STATUSES = ("RUNNING", "OK", "ERROR", "SKIPPED", "ABANDONED")
MAX_LOG_LIMIT = 10_000
#: The keys of each :func:`recent_log` row, in display order.
LOG_COLUMNS = ("id", "view", "status", "method", "method_reason", "refresh_started_at", "refresh_finished_at",
               "duration_ms", "rows_after_refresh", "error_sqlstate", "error_message", "run_by", "dag_id",
               "run_id", "task_id", "try_number", "backend_pid")
LOCK_KIND_RELATION = "relation"
LOCK_KIND_ADVISORY = "refresh advisory lock"
QUERY_CHARS = 200

# In a dependency graph "plain view" is the clearer word (the graph runs through both kinds).
_RELKIND_NAMES = {**RELKIND_NAMES, "v": "a plain view"}


# --------------------------------------------------------------------------------------------------
# Shared


@contextmanager
def _reading(conn: psycopg.Connection) -> Iterator[None]:
    """Read on ``conn`` without leaving behind a transaction the caller did not have."""
    opened_here = not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    try:
        yield
    finally:
        if opened_here and not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()


def _chosen(catalog: Catalog, view: ViewRef | None) -> list[ViewSpec]:
    """The one view asked for (CatalogError when it is malformed or not listed), else all of them."""
    return list(catalog.views) if view is None else [catalog.get(view)]


_PRESENT = """
SELECT v.schema_name, v.mv_name, c.oid, c.relkind
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS v (schema_name, mv_name)
JOIN pg_namespace AS n ON n.nspname = v.schema_name
JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = v.mv_name
"""


def _names(views: list[ViewSpec]) -> dict[str, list[str]]:
    """The views as the arrays the queries unnest: ``%(schemas)s``, ``%(names)s``."""
    return {"schemas": [v.schema for v in views], "names": [v.name for v in views]}


def _present(conn: psycopg.Connection, views: list[ViewSpec]) -> dict[tuple[str, str], tuple[int, str]]:
    """``{(schema, name): (oid, relkind)}`` for the views that exist (as any kind of relation)."""
    rows = conn.execute(_PRESENT, _names(views)).fetchall()
    return {(schema, name): (oid, relkind) for schema, name, oid, relkind in rows}


def _seconds(value: Decimal | float | None) -> float | None:
    return None if value is None else round(float(value), 3)


# --------------------------------------------------------------------------------------------------
# The log


_RECENT_LOG = """
SELECT l.id, l.schema_name, l.mv_name, l.status, l.method, l.method_reason, l.refresh_started_at,
       l.refresh_finished_at, l.duration_ms, l.rows_after_refresh, l.error_sqlstate, l.error_message,
       l.run_by, l.dag_id, l.run_id, l.task_id, l.try_number, l.backend_pid
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS v (schema_name, mv_name)
CROSS JOIN LATERAL (
    -- Per view, at most `limit` rows read from mv_refresh_log_view_started_idx
    -- (mv_name, schema_name, refresh_started_at DESC); then the newest of them all.
    SELECT *
    FROM ops.mv_refresh_log AS r
    WHERE r.mv_name = v.mv_name AND r.schema_name = v.schema_name
      AND (%(status)s::text IS NULL OR r.status = %(status)s::text)
    ORDER BY r.refresh_started_at DESC, r.id DESC
    LIMIT %(limit)s
) AS l
ORDER BY l.refresh_started_at DESC, l.id DESC
LIMIT %(limit)s
"""


def _check_status(status: str | None) -> str | None:
    if status is None:
        return None
    wanted = status.strip().upper() if isinstance(status, str) else None
    if wanted not in STATUSES:
        raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    return wanted


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOG_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LOG_LIMIT:,}, got {limit!r}")
    return limit


def _recent_log_statement(
    catalog: Catalog, view: ViewRef | None, status: str | None, limit: int
) -> tuple[str, dict[str, Any], dict[tuple[str, str], str]]:
    """The query, its parameters and the display name of each view key (validated, not run)."""
    views = _chosen(catalog, view)
    params = {**_names(views), "status": _check_status(status), "limit": _check_limit(limit)}
    return _RECENT_LOG, params, {v.key: v.display_name for v in views}


def recent_log(
    conn: psycopg.Connection,
    catalog: Catalog,
    view: ViewRef | None = None,
    *,
    status: str | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The newest rows of ``ops.mv_refresh_log`` (ties broken by ``id``) of the catalog's views, or one of them.

    ``status`` is one of :data:`STATUSES` in any case, ``limit`` 1..10000 (else ValueError). Each row is a dict
    with the keys :data:`LOG_COLUMNS`, ``view`` being the display name.
    """
    query, params, shown = _recent_log_statement(catalog, view, status, limit)
    with _reading(conn):
        rows = conn.execute(query, params).fetchall()
    return [dict(zip(LOG_COLUMNS, (log_id, shown.get((schema, name), format_qualified_name(schema, name)), *rest),
                     strict=True)) for log_id, schema, name, *rest in rows]


# --------------------------------------------------------------------------------------------------
# Locks


_LOCKS = """
WITH target AS (
    SELECT v.ord, v.schema_name, v.mv_name, c.oid AS relid, v.objid
    FROM unnest(%(schemas)s::text[], %(names)s::text[], %(objids)s::bigint[])
         WITH ORDINALITY AS v (schema_name, mv_name, objid, ord)
    JOIN pg_namespace AS n ON n.nspname = v.schema_name
    JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = v.mv_name
),
locks AS MATERIALIZED (  -- one call of pg_lock_status(): one consistent picture
    SELECT l.locktype, l.relation, l.classid, l.objid, l.objsubid, l.pid, l.mode, l.granted,
           {waitstart} AS waitstart
    FROM pg_locks AS l
    WHERE l.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
      AND l.locktype IN ('relation', 'advisory')
),
found AS (
    SELECT t.ord, t.schema_name, t.mv_name, l.pid, l.mode, l.granted, l.waitstart,
           (CASE l.locktype WHEN 'relation' THEN {relation_kind} ELSE {advisory_kind} END)::text AS lock_kind
    FROM target AS t
    JOIN locks AS l ON (l.locktype = 'relation' AND l.relation = t.relid)
                    OR (l.locktype = 'advisory' AND l.objsubid = 2
                        AND l.classid::bigint = %(classid)s AND l.objid::bigint = t.objid)
)
SELECT f.schema_name, f.mv_name, f.pid, a.usename, a.application_name,
       CASE WHEN f.pid IS NULL THEN 'prepared transaction' ELSE a.state END,
       f.lock_kind, f.mode, f.granted,
       CASE WHEN f.granted OR f.pid IS NULL THEN '{{}}'::integer[] ELSE pg_blocking_pids(f.pid) END,
       CASE WHEN NOT f.granted
            THEN extract(epoch FROM clock_timestamp() - coalesce(f.waitstart, a.query_start)) END,
       extract(epoch FROM clock_timestamp() - a.xact_start),
       left(a.query, %(query_chars)s)
FROM found AS f
LEFT JOIN pg_stat_activity AS a ON a.pid = f.pid
WHERE f.pid IS DISTINCT FROM pg_backend_pid()
ORDER BY f.ord, f.granted DESC, f.lock_kind DESC, a.xact_start NULLS LAST, f.pid, f.mode
"""

_LOCK_KEYS = ("view", "pid", "usename", "application_name", "state", "lock_kind", "mode", "granted", "blocked_by",
              "waiting_seconds", "xact_age_seconds", "query")


def lock_report(conn: psycopg.Connection, catalog: Catalog, view: ViewRef | None = None) -> list[dict]:
    """Sessions holding or waiting for a lock on the catalog's views (or one of them): on the view itself
    (``"relation"``) or on the engine's per-view ``"refresh advisory lock"`` (held by the refresh under way).

    One row per session, view, kind and mode, in catalog order, holders before waiters, with the keys
    ``_LOCK_KEYS``: ``blocked_by`` lists a waiter's ``pg_blocking_pids``, ``query`` is the first 200
    characters (None when the role may not see it); a prepared transaction's lock has pid None. The calling
    session is left out, and so are catalog views absent from the database.
    """
    views = _chosen(catalog, view)
    with _reading(conn):
        if conn.info.transaction_status == TransactionStatus.INTRANS:
            # pg_stat_activity is read once per transaction: inside the caller's one, read it afresh.
            conn.execute("SELECT pg_stat_clear_snapshot()")
        objids = [advisory_locktag(conn, v.schema, v.name)[1] for v in views]
        waitstart = "l.waitstart" if conn.info.server_version >= 140000 else "NULL::timestamptz"
        query = sql.SQL(_LOCKS).format(waitstart=sql.SQL(waitstart), relation_kind=sql.Literal(LOCK_KIND_RELATION),
                                       advisory_kind=sql.Literal(LOCK_KIND_ADVISORY))
        rows = conn.execute(query, {**_names(views), "objids": objids, "classid": ADVISORY_LOCK_CLASS & 0xFFFFFFFF,
                                    "query_chars": QUERY_CHARS}).fetchall()
    shown = {v.key: v.display_name for v in views}
    report = []
    for schema_name, mv_name, *who, granted, blocked_by, waiting, xact_age, text in rows:
        values = (shown[(schema_name, mv_name)], *who, bool(granted), list(blocked_by or []), _seconds(waiting),
                  _seconds(xact_age), text)
        report.append(dict(zip(_LOCK_KEYS, values, strict=True)))
    return report


# --------------------------------------------------------------------------------------------------
# Dependencies


def real_dependencies(conn: psycopg.Connection, catalog: Catalog) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """``{(schema, name): {(schema, name), ...}}``: the materialized views each catalog view reads.

    Read from ``pg_depend`` through the view's rewrite rule, following plain views transitively and stopping
    at materialized views (``sources.read_trees``). Materialized views outside the catalog are included.
    Catalog views absent from the database have no key. Reads hidden inside functions (or dynamic SQL) are
    invisible to ``pg_depend`` and therefore here.
    """
    with _reading(conn):
        present = _present(conn, list(catalog.views))
        trees = read_trees(conn, [oid for oid, relkind in present.values() if relkind == "m"])
    by_oid = {oid: key for key, (oid, _kind) in present.items()}
    return {by_oid[oid]: {m.key for m in tree.matviews} for oid, tree in trees.items()}


@dataclass(frozen=True)
class PlanProblem:
    """One disagreement between the catalog and the database: what is wrong and what to do about it."""

    severity: str  # "ERROR" (the plan is wrong: stale reads or a failing refresh) or "WARN"
    view: str  # the display name of the catalog view concerned
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.severity} {self.view}: {self.message}. Fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def validate_plan(conn: psycopg.Connection, catalog: Catalog) -> list[PlanProblem]:
    """Check the catalog's ``upstream`` lists and order against what ``pg_depend`` says each view reads.

    ERROR: a view is missing or not a materialized view, reads a catalog view listed below it, or reads one
    its ``upstream`` does not list. WARN: it reads a materialized view outside the catalog, or a declared
    upstream is not read as far as ``pg_depend`` sees. An empty list means the plan agrees with the database.
    """
    views = list(catalog.views)
    with _reading(conn):
        present = _present(conn, views)
        matviews = {key: oid for key, (oid, relkind) in present.items() if relkind == "m"}
        trees = read_trees(conn, matviews.values())

    order = {v.key: v.position for v in views}
    problems: list[PlanProblem] = []
    for spec in views:
        name = spec.display_name
        where = catalog.where(spec)
        if spec.key not in present:
            problems.append(PlanProblem(
                "ERROR", name, "does not exist in the database (no relation by that schema and name)",
                f"create the materialized view, or remove it from the catalog ({where}); check the "
                "spelling and the quoting of the name"))
            continue
        relkind = present[spec.key][1]
        if relkind != "m":
            problems.append(PlanProblem(
                "ERROR", name, f"is {_RELKIND_NAMES.get(relkind, 'not a materialized view')}, not a materialized "
                "view: it cannot be refreshed", f"correct the name in the catalog ({where}), or remove the entry"))
            continue

        tree = trees[matviews[spec.key]]
        reads = {m.key: m for m in tree.matviews}
        for read_key in sorted(reads, key=lambda key: (order.get(key, len(order)), key)):
            read_name = format_qualified_name(*read_key)
            path = tree.through(reads[read_key])
            declared = read_key in spec.upstream
            if read_key not in order:
                problems.append(PlanProblem(
                    "WARN", name, f"reads the materialized view {read_name}{path}, which is not in the catalog: "
                    f"mv-refresh never refreshes it, so {name} is only as fresh as its last refresh elsewhere",
                    f"add {read_name} to the catalog above {name} (and to its upstream), or accept "
                    "that it is refreshed elsewhere"))
            elif (read := catalog.get(read_key)).position > spec.position:
                also = "" if declared else f", and add it to the upstream of {name}"
                problems.append(PlanProblem(
                    "ERROR", name, f"reads {read_name}{path}, which the catalog lists below it "
                    f"({catalog.where(read)}): views are refreshed top to bottom, so {name} "
                    f"would be built from the previous contents of {read_name}",
                    f"move {read_name} above {name} in the catalog{also}"))
            elif not declared:
                problems.append(PlanProblem(
                    "ERROR", name, f"reads {read_name}{path}, but its upstream does not list it: the DAG neither "
                    f"runs its refresh after {read_name}'s nor holds it back when {read_name} fails",
                    f"add {read_name} to the upstream of {name} ({where})"))

        functions = [c.signature for c in tree.calls if c.oid >= USER_OID_START]
        hidden = (f"; it calls {', '.join(functions)}, and what a function reads is invisible to pg_depend"
                  if functions else "")
        for up in spec.upstream:
            up_name = format_qualified_name(*up)
            if up in reads or up not in matviews:
                continue  # read, or not a materialized view in the database (reported on its own)
            problems.append(PlanProblem(
                "WARN", name, f"lists {up_name} as upstream, but pg_depend shows no read of it{hidden}",
                f"remove {up_name} from the upstream of {name} ({where}), unless {name} reads it where "
                "pg_depend cannot see (inside a function or dynamic SQL)"))
    return problems
