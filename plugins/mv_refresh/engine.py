"""The logged refresh of one materialized view: plain psycopg 3, no Airflow.

One call, ``refresh_view``, does what DESIGN.md §3 and §7 describe:

1. the name is checked against the catalog (the allow-list) and against ``pg_class`` (it must exist and
   be a materialized view) before any refresh SQL runs, and without writing a log row;
2. two connections: the *refresh* connection runs the refresh; the *log* connection (autocommit) writes
   ``ops.mv_refresh_log``, so the log survives a refresh that is rolled back or whose backend dies;
3. an advisory lock keyed on the view serialises refreshes of one view across Airflow workers and the
   CLI; a second refresh waits for it (within the lock timeout) and then refreshes; if the wait runs out
   it logs ``SKIPPED`` naming the holder and raises a retryable error;
4. RUNNING rows of this view whose backend is gone are marked ``ABANDONED`` (judged by backend pid and
   start time, never by age);
5. CONCURRENTLY when PostgreSQL allows it (populated, a valid unique index on plain columns without
   WHERE), PLAIN otherwise, with the reason logged; CONCURRENTLY failing with 55000/0A000 falls back to
   PLAIN once; nothing else ever falls back;
6. the row count afterwards, then ``OK`` or ``ERROR`` with the SQLSTATE and a message that carries no
   row data;
7. least privilege (docs/security.md, ``privileges.py``): a refresher that neither owns the view nor holds
   MAINTAIN on it refreshes through ``ops.refresh_materialized_view`` when the views' owner installed it;
   a refresh PostgreSQL refuses for want of privilege (42501) is an ERROR naming the role, the view and
   the fix, and is never retried.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import privileges
from .catalog import Catalog, CatalogError, ViewSpec
from .db import connect

log = logging.getLogger(__name__)

METHOD_CONCURRENTLY = "CONCURRENTLY"
METHOD_PLAIN = "PLAIN"
MODES = ("auto", "concurrently", "plain")

# First key of the two-key advisory lock: "mv-refresh, refresh of one view" (b"mvrf" as int4).
# The second key is hashtext() of the quoted qualified name, so the key survives a DROP/CREATE of the view.
ADVISORY_LOCK_CLASS = int.from_bytes(b"mvrf", "big", signed=True)

# SQLSTATEs a retry can fix: lock timeout, deadlock, serialization failure, cancel/statement timeout,
# admin shutdown/termination, crash recovery, too many connections, and every connection exception (08).
RETRYABLE_SQLSTATES = frozenset(
    {"55P03", "40P01", "40001", "57014", "57P01", "57P02", "57P03", "53300", "58030"}
)
# SQLSTATEs CONCURRENTLY raises when PostgreSQL refuses it for this view (no usable unique index / not
# populated): the only ones a PLAIN refresh can fix.
FALLBACK_SQLSTATES = frozenset({"55000", "0A000"})


class RefreshRefused(CatalogError):
    """The view cannot be refreshed as asked (not a materialized view, does not exist, bad option).

    Raised before any refresh SQL runs and before any log row is written; never retried.
    """


class RefreshFailed(RuntimeError):
    """A refresh that ran (or waited) and failed; ``result`` is what was logged."""

    def __init__(self, result: RefreshResult) -> None:
        self.result = result
        super().__init__(result.summary())

    @property
    def retryable(self) -> bool:
        return self.result.retryable


@dataclass(frozen=True)
class RunContext:
    """Who runs the refresh; written into the log row."""

    run_by: str = "cli"
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None
    hostname: str = field(default_factory=socket.gethostname)


@dataclass
class RefreshResult:
    schema_name: str
    mv_name: str
    status: str
    log_id: int | None = None
    method: str | None = None
    method_reason: str | None = None
    rows_after_refresh: int | None = None
    duration_ms: int | None = None
    error_sqlstate: str | None = None
    error_message: str | None = None
    retryable: bool = False

    @property
    def display_name(self) -> str:
        return f"{self.schema_name}.{self.mv_name}"

    def summary(self) -> str:
        if self.status == "OK":
            rows = "rows not counted" if self.rows_after_refresh is None else f"{self.rows_after_refresh:,} rows"
            return f"{self.display_name}: OK ({self.method}, {rows}, {self.duration_ms:,} ms)"
        code = f" [{self.error_sqlstate}]" if self.error_sqlstate else ""
        return f"{self.display_name}: {self.status}{code} {self.error_message or ''}".rstrip()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ViewState:
    """What pg_class says about the view right now."""

    oid: int
    populated: bool
    concurrent_index: str | None  # name of a unique index CONCURRENTLY can use, if any


# --------------------------------------------------------------------------------------------------
# Resolution and mode


def resolve(catalog: Catalog, name: str | ViewSpec) -> ViewSpec:
    """The catalog entry for ``name``; CatalogError for a malformed name or a view outside the catalog."""
    if isinstance(name, ViewSpec):
        return catalog.get(name.key)
    return catalog.get(name)


_VIEW_STATE = """
SELECT c.oid, c.relkind, c.relispopulated,
       (SELECT i.indexrelid::regclass::text
          FROM pg_index AS i
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indislive
           AND i.indpred IS NULL AND i.indexprs IS NULL
         ORDER BY i.indexrelid
         LIMIT 1)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

# What a relation that is not a materialized view is, for messages (pg_class.relkind).
RELKIND_NAMES = {"r": "a table", "p": "a partitioned table", "v": "a view", "f": "a foreign table",
                 "S": "a sequence", "i": "an index", "I": "a partitioned index", "c": "a composite type",
                 "t": "a TOAST table"}


def inspect_view(conn: psycopg.Connection, spec: ViewSpec) -> ViewState:
    """Look the view up by its exact (schema, name) in the catalogs; refuse what is not a matview.

    The names are bound parameters compared with ``pg_namespace``/``pg_class``, so nothing the user
    wrote is ever parsed as SQL (``to_regclass`` would parse it, and differs between PG 15 and 18).
    """
    row = conn.execute(_VIEW_STATE, (spec.schema, spec.name)).fetchone()
    if row is None:
        raise RefreshRefused(
            f"{spec.display_name} is in the catalog but does not exist in the database: create it, or "
            f"remove it from the catalog ({_where(spec)})"
        )
    oid, relkind, populated, index = row
    if relkind != "m":
        raise RefreshRefused(
            f"{spec.display_name} is {RELKIND_NAMES.get(relkind, 'not a materialized view')}, not a "
            f"materialized view: only materialized views can be refreshed; fix the name in the catalog "
            f"({_where(spec)})"
        )
    return ViewState(oid=oid, populated=populated, concurrent_index=index)


def _where(spec: ViewSpec) -> str:
    return f"line {spec.line}" if spec.line else "the catalog"


def choose_method(spec: ViewSpec, state: ViewState, mode: str) -> tuple[str, str | None]:
    """(method, reason for PLAIN) decided up front from what PostgreSQL's catalogs say."""
    if mode == "plain":
        return METHOD_PLAIN, "mode plain requested"
    if not state.populated:
        reason = "view is not populated (CONCURRENTLY needs a populated view)"
    elif state.concurrent_index is None:
        reason = "no valid unique index on plain columns without WHERE (CONCURRENTLY needs one)"
    else:
        return METHOD_CONCURRENTLY, None
    if mode == "concurrently":
        raise RefreshRefused(
            f"{spec.display_name} has mode 'concurrently' but PostgreSQL cannot refresh it concurrently: "
            f"{reason}. Run `mv-refresh prepare-concurrently {spec.display_name}` or set mode: auto"
        )
    return METHOD_PLAIN, reason


# --------------------------------------------------------------------------------------------------
# The log


_INSERT_LOG = """
INSERT INTO ops.mv_refresh_log
    (schema_name, mv_name, status, method, method_reason, backend_pid, backend_start,
     run_by, dag_id, run_id, task_id, try_number, client_hostname,
     refresh_finished_at, error_sqlstate, error_message)
VALUES (%(schema)s, %(name)s, %(status)s, %(method)s, %(reason)s, %(pid)s, %(backend_start)s,
        %(run_by)s, %(dag_id)s, %(run_id)s, %(task_id)s, %(try_number)s, %(hostname)s,
        CASE WHEN %(status)s = 'RUNNING' THEN NULL ELSE clock_timestamp() END,
        %(sqlstate)s, %(message)s)
RETURNING id
"""

_FINISH_LOG = """
UPDATE ops.mv_refresh_log
SET status = %(status)s,
    refresh_finished_at = clock_timestamp(),
    refreshed_at = %(refreshed_at)s,
    method = %(method)s,
    method_reason = %(reason)s,
    rows_after_refresh = %(rows)s,
    duration_ms = %(duration_ms)s,
    error_sqlstate = %(sqlstate)s,
    error_message = %(message)s
WHERE id = %(id)s
"""

_REAP_ABANDONED = """
UPDATE ops.mv_refresh_log AS l
SET status = 'ABANDONED',
    refresh_finished_at = clock_timestamp(),
    error_message = format('backend pid %%s (started %%s) is gone; the refresh never reported back',
                           l.backend_pid, l.backend_start)
WHERE l.schema_name = %s AND l.mv_name = %s AND l.status = 'RUNNING'
  AND NOT EXISTS (
      SELECT 1 FROM pg_stat_activity AS a
      WHERE a.pid = l.backend_pid
        -- backend_start is hidden from roles without pg_read_all_stats: then the pid alone keeps
        -- the row alive (never reap what cannot be proven dead).
        AND (a.backend_start IS NULL OR l.backend_start IS NULL OR a.backend_start = l.backend_start)
  )
RETURNING l.id, l.backend_pid
"""


def _log_row(log_conn: psycopg.Connection, spec: ViewSpec, ctx: RunContext, *, status: str,
             pid: int | None = None, backend_start=None, method: str | None = None,
             reason: str | None = None, sqlstate: str | None = None, message: str | None = None) -> int:
    params = {
        "schema": spec.schema, "name": spec.name, "status": status, "method": method, "reason": reason,
        "pid": pid, "backend_start": backend_start, "run_by": ctx.run_by, "dag_id": ctx.dag_id,
        "run_id": ctx.run_id, "task_id": ctx.task_id, "try_number": ctx.try_number,
        "hostname": ctx.hostname, "sqlstate": sqlstate, "message": message,
    }
    return log_conn.execute(_INSERT_LOG, params).fetchone()[0]


def _finish(log_conn: psycopg.Connection, result: RefreshResult, refreshed_at=None) -> None:
    log_conn.execute(_FINISH_LOG, {
        "id": result.log_id, "status": result.status, "refreshed_at": refreshed_at,
        "method": result.method, "reason": result.method_reason, "rows": result.rows_after_refresh,
        "duration_ms": result.duration_ms, "sqlstate": result.error_sqlstate,
        "message": result.error_message,
    })


def reap_abandoned(log_conn: psycopg.Connection, spec: ViewSpec) -> list[int]:
    """Mark RUNNING rows of ``spec`` whose backend no longer exists as ABANDONED; return their ids."""
    return [row[0] for row in log_conn.execute(_REAP_ABANDONED, (spec.schema, spec.name))]


# --------------------------------------------------------------------------------------------------
# Errors


def is_retryable(exc: BaseException) -> bool:
    """Can a later attempt succeed where this one failed? (DESIGN.md §6)"""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # No SQLSTATE: the connection was lost (network, server gone) - worth another try.
            return isinstance(exc, psycopg.OperationalError)
        return state in RETRYABLE_SQLSTATES or state.startswith("08")
    return isinstance(exc, (ConnectionError, TimeoutError))


def safe_message(exc: BaseException) -> str:
    """The error's primary message (and hint), never its DETAIL: 21000's DETAIL holds row data."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_hint:
            text += f" (hint: {exc.diag.message_hint})"
        return text
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


_HOLDERS = """
SELECT l.pid, string_agg(DISTINCT l.mode, '+'), a.usename, a.state,
       left(coalesce(a.query, '<query hidden>'), 120), a.xact_start
FROM pg_locks AS l
LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.granted AND l.pid IS DISTINCT FROM %(me)s AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.locktype = 'relation' AND l.relation = %(relation)s)
       OR (l.locktype = 'advisory' AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s AND l.objsubid = 2))
GROUP BY l.pid, a.usename, a.state, a.query, a.xact_start
ORDER BY a.xact_start NULLS LAST, l.pid
"""


def describe_lock_holders(conn: psycopg.Connection, *, me: int, relation: int | None = None,
                          advisory: tuple[int, int] | None = None) -> str:
    """Sessions holding a lock on the view (or on its advisory key), with mode and query, for messages.

    Read after a lock wait has timed out, when ``pg_blocking_pids`` of the waiter is already empty:
    whoever still holds the lock is who blocked it.
    """
    classid, objid = advisory if advisory else (None, None)
    rows = conn.execute(_HOLDERS, {"me": me, "relation": relation, "classid": classid, "objid": objid})
    return "; ".join(
        f"pid {pid} ({user or '?'}, {modes}, {state or '?'} since {xact_start:%H:%M:%S}: {query})"
        if xact_start else f"pid {pid} ({user or '?'}, {modes}, {state or '?'}: {query})"
        for pid, modes, user, state, query, xact_start in rows
    )


# --------------------------------------------------------------------------------------------------
# The refresh


def _advisory_key(spec: ViewSpec) -> tuple[sql.Composable, tuple[Any, ...]]:
    return (sql.SQL("%s, hashtext(quote_ident(%s) || '.' || quote_ident(%s))"),
            (ADVISORY_LOCK_CLASS, spec.schema, spec.name))


def _advisory_objid(conn: psycopg.Connection, spec: ViewSpec) -> tuple[int, int]:
    """The advisory key as pg_locks shows it (classid, objid are oids: unsigned 32-bit)."""
    objid = conn.execute("SELECT hashtext(quote_ident(%s) || '.' || quote_ident(%s))",
                         (spec.schema, spec.name)).fetchone()[0]
    return ADVISORY_LOCK_CLASS & 0xFFFFFFFF, objid & 0xFFFFFFFF


def _seconds_setting(seconds: float) -> str:
    return f"{max(int(round(seconds * 1000)), 1)}ms"


def refresh_view(
    dsn: str,
    catalog: Catalog,
    name: str | ViewSpec,
    *,
    context: RunContext | None = None,
    mode: str | None = None,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    count_rows: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RefreshResult:
    """Refresh one catalog view with a log row; return the OK result or raise.

    Raises ``CatalogError``/``RefreshRefused`` (permanent, nothing ran, nothing logged) or
    ``RefreshFailed`` (logged as ERROR or SKIPPED; ``.retryable`` says whether a retry can help).
    """
    ctx = context or RunContext()
    spec = resolve(catalog, name)
    chosen_mode = mode or spec.mode
    if chosen_mode not in MODES:
        raise RefreshRefused(f"mode {chosen_mode!r} is not one of {', '.join(MODES)}")
    lock_s = spec.lock_timeout_seconds if lock_timeout is None else lock_timeout
    stmt_s = spec.statement_timeout_seconds if statement_timeout is None else statement_timeout
    for label, value in (("lock timeout", lock_s), ("statement timeout", stmt_s)):
        if value <= 0:
            raise RefreshRefused(f"{label} must be a positive number of seconds, got {value}")
    say = progress or (lambda _line: None)

    with connect(dsn, autocommit=True, purpose=f"refresh {spec.name}") as work, \
            connect(dsn, autocommit=True, purpose="log") as log_conn:
        state = inspect_view(work, spec)  # refuses a missing or non-matview name: no log row
        log_problem = privileges.missing_log_privileges(log_conn)
        if log_problem:
            raise RefreshRefused(log_problem)
        access = _access(work, spec, state)
        pid, backend_start = work.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        work.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                     (_seconds_setting(lock_s), _seconds_setting(stmt_s)))

        key_sql, key_params = _advisory_key(spec)
        if not work.execute(sql.SQL("SELECT pg_try_advisory_lock({})").format(key_sql), key_params).fetchone()[0]:
            say(f"{spec.display_name}: another refresh holds it; waiting up to {lock_s:g} s")
            try:
                work.execute(sql.SQL("SELECT pg_advisory_lock({})").format(key_sql), key_params)
            except psycopg.errors.LockNotAvailable:
                holder = (describe_lock_holders(log_conn, me=pid, advisory=_advisory_objid(log_conn, spec))
                          or "a session that has since finished")
                result = RefreshResult(
                    spec.schema, spec.name, "SKIPPED", retryable=True, error_sqlstate="55P03",
                    error_message=f"another refresh of this view held it for over {lock_s:g} s: {holder}",
                )
                result.log_id = _log_row(log_conn, spec, ctx, status="SKIPPED", pid=pid,
                                         backend_start=backend_start, sqlstate="55P03",
                                         message=result.error_message)
                raise RefreshFailed(result) from None
            state = inspect_view(work, spec)  # the other refresh may have populated it
            access = _access(work, spec, state)

        reap_abandoned(log_conn, spec)
        try:
            method, reason = choose_method(spec, state, chosen_mode)
        except RefreshRefused as exc:
            # Known before running, but logged: health then shows why the view is not being refreshed.
            result = RefreshResult(spec.schema, spec.name, "ERROR", error_sqlstate="55000", error_message=str(exc))
            result.log_id = _log_row(log_conn, spec, ctx, status="ERROR", pid=pid, backend_start=backend_start,
                                     sqlstate="55000", message=result.error_message)
            _unlock(work, spec)
            raise RefreshFailed(result) from None
        reason = _with_notes(reason, access.note)
        result = RefreshResult(spec.schema, spec.name, "RUNNING", method=method, method_reason=reason)
        result.log_id = _log_row(log_conn, spec, ctx, status="RUNNING", pid=pid,
                                 backend_start=backend_start, method=method, reason=reason)
        started = time.monotonic()
        failure: psycopg.Error | None = None
        refreshed_at = None
        try:
            try:
                _run_refresh(work, spec, method, access)
            except psycopg.Error as exc:
                if not (method == METHOD_CONCURRENTLY and chosen_mode == "auto"
                        and exc.sqlstate in FALLBACK_SQLSTATES):
                    raise
                method = METHOD_PLAIN
                reason = _with_notes(f"CONCURRENTLY refused ({exc.sqlstate}: {safe_message(exc)}); "
                                     f"fell back to PLAIN", access.note)
                result.method, result.method_reason = method, reason
                say(f"{spec.display_name}: {reason}")
                _run_refresh(work, spec, method, access)
            refreshed_at = work.execute("SELECT clock_timestamp()").fetchone()[0]
            result.duration_ms = int((time.monotonic() - started) * 1000)
            if count_rows and access.can_select:
                result.rows_after_refresh = work.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.schema, spec.name))
                ).fetchone()[0]
            elif count_rows:
                result.method_reason = _with_notes(
                    result.method_reason, f'rows not counted: role "{access.role}" may not SELECT the view')
            result.status = "OK"
        except psycopg.Error as exc:
            failure = exc
            result.status = "ERROR"
            result.duration_ms = int((time.monotonic() - started) * 1000)
            result.error_sqlstate = exc.sqlstate
            result.retryable = is_retryable(exc)
            result.error_message = safe_message(exc)
            if privileges.is_permission_error(exc):
                # Missing privilege: permanent (42501 is not retryable); the message names the fix.
                result.error_message = privileges.permission_message(
                    spec.display_name, spec.schema, spec.name, access, result.error_message)
            if exc.sqlstate == "55P03":
                with contextlib.suppress(psycopg.Error):
                    holders = describe_lock_holders(log_conn, me=pid, relation=state.oid)
                    result.error_message += (f"; blocked by {holders}" if holders
                                             else "; the blocking session has finished")
        # Finish the log row before releasing the advisory lock, so that the logged interval
        # [refresh_started_at, refresh_finished_at] of one view never overlaps the next refresh's.
        # (An unexpected exception above closes both connections, which releases the lock too.)
        try:
            _finish(log_conn, result, refreshed_at)
        except psycopg.Error as log_exc:
            # The log connection died as well (server restart, network): the RUNNING row stays behind
            # until the next refresh of this view marks it ABANDONED. Say so, and let a retry redo it.
            note = (f"the log row {result.log_id} could not be finished ({safe_message(log_exc)}); "
                    f"the next refresh marks it ABANDONED")
            if result.status == "OK":
                result.status, result.error_message = "ERROR", f"refreshed, but {note}"
            else:
                result.error_message = f"{result.error_message}; {note}"
            result.retryable = True
            # from None: the psycopg error's text carries the 21000 DETAIL (row data); its SQLSTATE and
            # primary message are in the result already.
            raise RefreshFailed(result) from None
        finally:
            _unlock(work, spec)
        if failure is not None:
            raise RefreshFailed(result) from None  # no row data in a traceback (see above)
        return result


def _unlock(conn: psycopg.Connection, spec: ViewSpec) -> None:
    if conn.closed or conn.broken:
        return  # the session (and its advisory lock) is gone already
    key_sql, key_params = _advisory_key(spec)
    try:
        conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(key_sql), key_params)
    except psycopg.Error:
        pass  # closing the connection releases a session lock anyway


def _access(conn: psycopg.Connection, spec: ViewSpec, state: ViewState) -> privileges.RefreshAccess:
    """How this role may refresh the view: owner / MAINTAIN / the owner's function / not at all."""
    try:
        return privileges.check_access(conn, state.oid)
    except LookupError:
        raise RefreshRefused(f"{spec.display_name} was dropped while mv-refresh looked at it") from None


def _with_notes(reason: str | None, *notes: str | None) -> str | None:
    parts = [part for part in (reason, *notes) if part]
    return "; ".join(parts) if parts else None


def _run_refresh(conn: psycopg.Connection, spec: ViewSpec, method: str,
                 access: privileges.RefreshAccess) -> None:
    statement, params = privileges.refresh_statement(spec.schema, spec.name, method == METHOD_CONCURRENTLY,
                                                     access)
    conn.execute(statement, params or None)
