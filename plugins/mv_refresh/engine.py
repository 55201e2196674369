"""The logged refresh of one materialized view: plain psycopg 3, no Airflow (docs/architecture.md).

``refresh_view`` runs these steps, each a function below:

1. **resolve**: the name must be in the catalog (the allow-list), else ``CatalogError`` and nothing runs;
2. **sessions**: two connections: the *work* connection refreshes; the *log* connection (autocommit) writes
   ``ops.mv_refresh_log``, so the log survives a refresh that is rolled back, cancelled or whose backend dies;
3. **check the view** in ``pg_class`` by its exact (schema, name): a catalog view that is missing from the
   database, or is not a materialized view, is an operational failure: an ERROR row, never retried;
4. **lock**: an advisory lock keyed on the view serialises refreshes of one view across Airflow workers and
   the CLI; a second refresh waits for it within the lock timeout, then refreshes; when the wait runs out it
   logs ``SKIPPED`` naming the holder and fails with a retryable error. Every exit below releases the lock,
   and always after the log row is finished;
5. **reap** RUNNING rows of the view whose backend is gone (``ABANDONED``; judged by backend, never by age);
6. **choose the method**: CONCURRENTLY when PostgreSQL allows it (populated, a usable unique index), PLAIN
   otherwise with the reason logged;
7. **run**: a RUNNING row, the refresh (CONCURRENTLY refused with 55000/0A000 falls back to PLAIN once;
   nothing else does), the row count, then OK or ERROR with the SQLSTATE and a message that holds no row
   data and no other session's SQL. An interrupt (Ctrl-C, SIGTERM, Airflow's ``on_kill`` through a
   ``CancelHandle``, a task timeout) cancels the statement on the server and finishes the row as ERROR.

Least privilege (docs/security.md, ``privileges.py``): a refresher that neither owns the view nor holds
MAINTAIN refreshes through ``ops.refresh_materialized_view`` when the views' owner installed it; a refresh
PostgreSQL refuses for want of privilege (42501) is an ERROR naming the role, the view and the fix.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from . import pg, privileges, tracking
from .catalog import Catalog, CatalogError, ViewSpec, format_qualified_name, quote_identifier
from .db import APPLICATION_NAME, connect, safe_message
from .migrations import mirror_view

METHOD_CONCURRENTLY = "CONCURRENTLY"
METHOD_PLAIN = "PLAIN"
METHOD_UNCHANGED = "UNCHANGED"  # verified current without running REFRESH (docs/change-tracking.md)
MODES = ("auto", "concurrently", "plain")

# SQLSTATEs a retry can fix: lock timeout, deadlock, serialization failure, cancel/statement timeout,
# admin shutdown/termination, crash recovery, too many connections, and every connection exception (08).
RETRYABLE_SQLSTATES = frozenset(
    {"55P03", "40P01", "40001", "57014", "57P01", "57P02", "57P03", "53300", "58030"}
)
# SQLSTATEs CONCURRENTLY raises when PostgreSQL refuses it for this view (no usable unique index / not
# populated): the only ones a PLAIN refresh can fix.
FALLBACK_SQLSTATES = frozenset({"55000", "0A000"})
# What the log records for a catalog view that is missing, or is not a materialized view.
UNDEFINED_TABLE, WRONG_OBJECT_TYPE = "42P01", "42809"
QUERY_CANCELED = "57014"


class RefreshRefused(CatalogError):
    """The refresh cannot run as asked (a bad option, a log the role cannot write); nothing ran, no row."""


class RefreshFailed(RuntimeError):
    """A refresh that was attempted and failed; ``result`` is what was logged."""

    def __init__(self, result: RefreshResult) -> None:
        self.result = result
        super().__init__(result.summary())

    @property
    def retryable(self) -> bool:
        return self.result.retryable


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop (the CLI raises it for SIGINT and SIGTERM).

    A KeyboardInterrupt, so that psycopg cancels the running statement on the server before it propagates.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class CancelHandle:
    """Lets Airflow's ``on_kill`` (a signal handler or another thread) stop a refresh under way.

    ``cancel`` cancels the statement running on the refresh's work session, if any; the refresh then
    finishes its log row as ERROR ("interrupted: <reason>") and fails with a retryable error. No lock is
    taken here: ``on_kill`` may run inside a signal handler, in the very thread that runs the refresh.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._conn: psycopg.Connection | None = None

    def attach(self, conn: psycopg.Connection | None) -> None:
        self._conn = conn

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=10)


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
        return format_qualified_name(self.schema_name, self.mv_name)

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


class ViewUnavailable(Exception):
    """The catalog view is missing from the database or is not a materialized view."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class _Options:
    mode: str
    lock_timeout: float
    statement_timeout: float
    count_rows: bool
    may_skip: bool  # an unchanged view may be logged UNCHANGED instead of refreshed


# --------------------------------------------------------------------------------------------------
# Step 1: resolve, and the options


def resolve(catalog: Catalog, name: str | ViewSpec) -> ViewSpec:
    """The catalog entry for ``name``; CatalogError for a malformed name or a view outside the catalog."""
    return catalog.get(name.key if isinstance(name, ViewSpec) else name)


def _options(spec: ViewSpec, mode: str | None, lock_timeout: float | None, statement_timeout: float | None,
             count_rows: bool, force: bool) -> _Options:
    chosen = mode or spec.mode
    if chosen not in MODES:
        raise RefreshRefused(f"mode {chosen!r} is not one of {', '.join(MODES)}")
    lock_s = spec.lock_timeout_seconds if lock_timeout is None else lock_timeout
    stmt_s = spec.statement_timeout_seconds if statement_timeout is None else statement_timeout
    for label, value in (("lock timeout", lock_s), ("statement timeout", stmt_s)):
        if value <= 0:
            raise RefreshRefused(f"{label} must be a positive number of seconds, got {value}")
    return _Options(chosen, lock_s, stmt_s, count_rows, not force and spec.on_unchanged == "skip")


# --------------------------------------------------------------------------------------------------
# Step 3: the view in the database


_VIEW_STATE = sql.SQL("""
SELECT c.oid, c.relkind, c.relispopulated,
       (SELECT i.indexrelid::regclass::text FROM pg_index AS i
         WHERE i.indrelid = c.oid AND {usable} ORDER BY i.indexrelid LIMIT 1)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
""").format(usable=pg.USABLE_UNIQUE_INDEX)


def inspect_view(conn: psycopg.Connection, spec: ViewSpec, where: str = "the catalog") -> ViewState:
    """Look the view up by its exact (schema, name); ``ViewUnavailable`` when it cannot be refreshed.

    The names are bound parameters compared with ``pg_namespace``/``pg_class``, so nothing the user wrote is
    ever parsed as SQL (``to_regclass`` would parse it, and differs between PostgreSQL 15 and 18).
    """
    row = conn.execute(_VIEW_STATE, (spec.schema, spec.name)).fetchone()
    if row is None:
        raise ViewUnavailable(UNDEFINED_TABLE, (
            f"{spec.display_name} is in the catalog but does not exist in the database: create it, or remove it "
            f"from the catalog ({where})"))
    oid, relkind, populated, index = row
    if relkind != "m":
        raise ViewUnavailable(WRONG_OBJECT_TYPE, (
            f"{spec.display_name} is {pg.RELKIND_NAMES.get(relkind, 'not a materialized view')}, not a materialized "
            f"view: only materialized views can be refreshed; fix the name in the catalog ({where})"))
    return ViewState(oid=oid, populated=populated, concurrent_index=index)


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
# The log: every row one refresh writes, on the log connection


_INSERT = """
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

_INSERT_OK = """
INSERT INTO ops.mv_refresh_log
    (schema_name, mv_name, status, refresh_started_at, refresh_finished_at, refreshed_at, method, method_reason,
     rows_after_refresh, duration_ms, backend_pid, backend_start, run_by, dag_id, run_id, task_id, try_number,
     client_hostname)
VALUES (%(schema)s, %(name)s, 'OK',
        clock_timestamp() - make_interval(secs => %(duration_ms)s / 1000.0), clock_timestamp(), clock_timestamp(),
        %(method)s, %(reason)s, %(rows)s, %(duration_ms)s, %(pid)s, %(backend_start)s, %(run_by)s, %(dag_id)s,
        %(run_id)s, %(task_id)s, %(try_number)s, %(hostname)s)
RETURNING id
"""

_FINISH = """
UPDATE ops.mv_refresh_log
SET status = %(status)s, refresh_finished_at = clock_timestamp(), refreshed_at = %(refreshed_at)s,
    method = %(method)s, method_reason = %(reason)s, rows_after_refresh = %(rows)s,
    duration_ms = %(duration_ms)s, error_sqlstate = %(sqlstate)s, error_message = %(message)s
WHERE id = %(id)s
"""

# The liveness rule lives in SQL (ops.mv_refresh_backend_gone, V004): health and the audit use it too.
_REAP = """
UPDATE ops.mv_refresh_log AS l
SET status = 'ABANDONED', refresh_finished_at = clock_timestamp(),
    error_message = ops.mv_refresh_backend_gone(l.backend_pid, l.backend_start)
WHERE l.schema_name = %s AND l.mv_name = %s AND l.status = 'RUNNING'
  AND ops.mv_refresh_backend_gone(l.backend_pid, l.backend_start) IS NOT NULL
RETURNING l.id
"""


class RefreshLog:
    """The rows of ``ops.mv_refresh_log`` one refresh writes, over the autocommit log connection."""

    def __init__(self, conn: psycopg.Connection, spec: ViewSpec, ctx: RunContext, work_pid: int,
                 work_backend_start) -> None:
        self.conn, self.spec, self.ctx = conn, spec, ctx
        self.pid, self.backend_start = work_pid, work_backend_start

    def insert(self, status: str, *, method: str | None = None, reason: str | None = None,
               sqlstate: str | None = None, message: str | None = None) -> int:
        ctx = self.ctx
        return self.conn.execute(_INSERT, {
            "schema": self.spec.schema, "name": self.spec.name, "status": status, "method": method,
            "reason": reason, "pid": self.pid, "backend_start": self.backend_start, "run_by": ctx.run_by,
            "dag_id": ctx.dag_id, "run_id": ctx.run_id, "task_id": ctx.task_id, "try_number": ctx.try_number,
            "hostname": ctx.hostname, "sqlstate": sqlstate, "message": message,
        }).fetchone()[0]

    def insert_unchanged(self, result: RefreshResult) -> int:
        """One finished row for a refresh proven unneeded: OK, method UNCHANGED, current as of now."""
        return self.conn.execute(_INSERT_OK, {
            "schema": self.spec.schema, "name": self.spec.name, "method": result.method,
            "reason": result.method_reason, "rows": result.rows_after_refresh, "duration_ms": result.duration_ms,
            "pid": self.pid, "backend_start": self.backend_start, "run_by": self.ctx.run_by,
            "dag_id": self.ctx.dag_id, "run_id": self.ctx.run_id, "task_id": self.ctx.task_id,
            "try_number": self.ctx.try_number, "hostname": self.ctx.hostname,
        }).fetchone()[0]

    def failed(self, status: str, sqlstate: str, message: str, *, retryable: bool = False) -> RefreshFailed:
        """Log a finished failure that never ran a refresh (SKIPPED, a refused view); the error to raise."""
        result = RefreshResult(self.spec.schema, self.spec.name, status, error_sqlstate=sqlstate,
                               error_message=message, retryable=retryable)
        result.log_id = self.insert(status, sqlstate=sqlstate, message=message)
        return RefreshFailed(result)

    def finish(self, result: RefreshResult, refreshed_at=None) -> None:
        self.conn.execute(_FINISH, {
            "id": result.log_id, "status": result.status, "refreshed_at": refreshed_at,
            "method": result.method, "reason": result.method_reason, "rows": result.rows_after_refresh,
            "duration_ms": result.duration_ms, "sqlstate": result.error_sqlstate,
            "message": result.error_message,
        })

    def reap_abandoned(self) -> list[int]:
        """Mark this view's RUNNING rows whose backend is gone as ABANDONED; return their ids."""
        return [row[0] for row in self.conn.execute(_REAP, (self.spec.schema, self.spec.name))]


def reap_abandoned(log_conn: psycopg.Connection, spec: ViewSpec) -> list[int]:
    """Mark RUNNING rows of ``spec`` whose backend no longer exists as ABANDONED; return their ids."""
    return RefreshLog(log_conn, spec, RunContext(), 0, None).reap_abandoned()


# --------------------------------------------------------------------------------------------------
# Errors


def is_retryable(exc: BaseException) -> bool:
    """Can a later attempt succeed where this one failed?"""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # No SQLSTATE: the connection was lost (network, server gone) - worth another try.
            return isinstance(exc, psycopg.OperationalError)
        return state in RETRYABLE_SQLSTATES or state.startswith("08")
    return isinstance(exc, (ConnectionError, TimeoutError))


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return f"interrupted by {signal.Signals(exc.signum).name}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"interrupted ({type(exc).__name__})"


_INVALID_INDEX = """
SELECT NOT i.indisvalid FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def _explain(result: RefreshResult, exc: psycopg.Error, run: _Run) -> None:
    """Turn a refresh's psycopg error into the logged SQLSTATE, message and retry decision."""
    spec = run.spec
    result.error_sqlstate = exc.sqlstate
    result.retryable = is_retryable(exc)
    result.error_message = safe_message(exc)
    if privileges.is_permission_error(exc):
        # Missing privilege: permanent (42501 is not retryable); the message names the fix.
        result.error_message = privileges.permission_message(
            spec.display_name, spec.schema, spec.name, run.access, result.error_message)
    elif exc.sqlstate == QUERY_CANCELED and run.cancel is not None and run.cancel.reason:
        result.error_message = f"interrupted: {run.cancel.reason}"
    elif exc.sqlstate == "55P03":
        with contextlib.suppress(psycopg.Error):
            holders = pg.lock_holders(run.log.conn, me=run.log.pid, relation=run.state.oid)
            result.error_message += ("; blocked by " + "; ".join(map(str, holders)) if holders
                                     else "; no session holds a lock on the view itself now: the blocker held one on a "
                                     "relation the view reads, or has finished (`mv-refresh blockers` shows "
                                     "who waits for whom)")
    elif exc.sqlstate == "23505" and exc.diag.constraint_name:
        with contextlib.suppress(psycopg.Error):
            row = run.log.conn.execute(_INVALID_INDEX, (spec.schema, exc.diag.constraint_name)).fetchone()
            if row and row[0]:
                index = format_qualified_name(spec.schema, exc.diag.constraint_name)
                result.error_message += (
                    f"; {index} is an INVALID leftover of a failed CREATE INDEX CONCURRENTLY, and a plain refresh "
                    f"rebuilds every index, so the duplicates in the new data fail it. Fix: DROP INDEX "
                    f"CONCURRENTLY {index}; then fix the duplicates and run "
                    f"`mv-refresh prepare-concurrently {spec.display_name}`")


# --------------------------------------------------------------------------------------------------
# The refresh


@dataclass
class _Run:
    """One refresh under way: what the steps share."""

    spec: ViewSpec
    options: _Options
    work: psycopg.Connection
    log: RefreshLog
    say: Callable[[str], None]
    cancel: CancelHandle | None
    where: str  # where the view is in the catalog, for messages
    catalog_oids: set[int] = field(default_factory=set)  # the catalog's materialized views, by oid
    tracked: str | None = None  # None: the refresh records what it saw; else why it cannot
    state: ViewState = None  # type: ignore[assignment]
    access: privileges.RefreshAccess = None  # type: ignore[assignment]


class Sessions:
    """The work and log connections, kept across the refreshes one process runs one after another.

    ``refresh --all`` refreshes every view over the same two sessions instead of opening two per view. Each
    refresh sets what it needs (application name, timeouts), ends its transaction and releases its advisory
    lock, so nothing carries over from one view to the next; a session a refresh left closed or broken (an
    interrupt, a lost server) is opened again for the next.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._work: psycopg.Connection | None = None
        self._log: psycopg.Connection | None = None
        self._log_access: privileges.LogAccess | None = None

    def open(self) -> tuple[psycopg.Connection, psycopg.Connection, privileges.LogAccess]:
        if self._work is None or self._work.closed or self._work.broken:
            self._work = connect(self.dsn, autocommit=True, purpose="refresh")
        if self._log is None or self._log.closed or self._log.broken:
            self._log = connect(self.dsn, autocommit=True, purpose="log")
            self._log_access = privileges.log_access(self._log)
        return self._work, self._log, self._log_access

    def close(self) -> None:
        for conn in (self._work, self._log):
            if conn is not None and not conn.closed:
                conn.close()
        self._work = self._log = None

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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
    cancel: CancelHandle | None = None,
    force: bool = False,
    sessions: Sessions | None = None,
) -> RefreshResult:
    """Refresh one catalog view with a log row; return the OK result or raise.

    Raises ``CatalogError``/``RefreshRefused`` (permanent; nothing ran, nothing logged) or ``RefreshFailed``
    (logged as ERROR or SKIPPED; ``.retryable`` says whether a retry can help). An interrupt propagates after
    the statement was cancelled on the server and the row finished as ERROR. ``force`` refreshes even a view
    that change tracking proves unchanged (which is otherwise logged OK with method UNCHANGED). ``sessions``
    lets several refreshes of one process share their two connections.
    """
    spec = resolve(catalog, name)
    options = _options(spec, mode, lock_timeout, statement_timeout, count_rows, force)
    owned = sessions is None
    sessions = sessions or Sessions(dsn)
    try:
        with _session(sessions, spec, options, context or RunContext(), cancel) as (work, log):
            run = _Run(spec, options, work, log, progress or (lambda _line: None), cancel, catalog.where(spec))
            run.state = _check_view(run)
            run.catalog_oids, run.tracked = _tracking_context(run, catalog)
            with _view_lock(run):
                log.reap_abandoned()
                method, reason = _choose(run)
                result = _run_logged(run, method, reason)
    finally:
        if owned:
            sessions.close()
    if result.status != "OK":
        raise RefreshFailed(result) from None  # from None: no row data (21000 DETAIL) in a traceback
    return result


_SESSION_SETUP = """
SELECT set_config('application_name', %s, false), set_config('lock_timeout', %s, false),
       set_config('statement_timeout', %s, false), pid, backend_start
FROM pg_stat_activity WHERE pid = pg_backend_pid()
"""


@contextlib.contextmanager
def _session(sessions: Sessions, spec: ViewSpec, options: _Options, ctx: RunContext,
             cancel: CancelHandle | None) -> Iterator[tuple[psycopg.Connection, RefreshLog]]:
    """Step 2: the work and log connections; the log must be writable, else nothing runs."""
    work, log_conn, access = sessions.open()
    if access.missing:
        raise RefreshRefused(access.missing)
    if access.can_mirror:
        mirror_view(log_conn, spec)  # ops.mv_catalog follows the catalog file, view by view
    app = f"{APPLICATION_NAME} refresh {spec.name}"[:63]
    *_settings, pid, backend_start = work.execute(_SESSION_SETUP, (
        app, pg.milliseconds(options.lock_timeout), pg.milliseconds(options.statement_timeout))).fetchone()
    if cancel is not None:
        cancel.attach(work)
    try:
        yield work, RefreshLog(log_conn, spec, ctx, pid, backend_start)
    finally:
        if cancel is not None:
            cancel.attach(None)


_TRACKING_CONTEXT = """
SELECT (SELECT array_agg(c.oid) FROM unnest(%s::text[], %s::text[]) AS v (schema_name, mv_name)
        JOIN pg_namespace AS n ON n.nspname = v.schema_name
        JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = v.mv_name AND c.relkind = 'm'),
       ({available})
"""


def _tracking_context(run: _Run, catalog: Catalog) -> tuple[set[int], str | None]:
    """The catalog's views by oid (their refreshes are changes), and whether this role can record what a
    refresh saw (else it refreshes as before, and says why it never proves a view unchanged)."""
    oids, available = run.work.execute(_TRACKING_CONTEXT.format(available=tracking.AVAILABLE), (
        [v.schema for v in catalog.views], [v.name for v in catalog.views])).fetchone()
    if not available:
        return set(), ("change tracking unavailable: this role may not write ops.mv_refresh_state and "
                       "ops.mv_source_change (run `mv-refresh init-db`, then include/sql/ops/least_privilege.sql)")
    return set(oids or ()), None


def _check_view(run: _Run) -> ViewState:
    """Step 3: a catalog view that cannot be refreshed gets an ERROR row (health shows it), no retry."""
    try:
        return inspect_view(run.work, run.spec, run.where)
    except ViewUnavailable as exc:
        raise run.log.failed("ERROR", exc.sqlstate, str(exc)) from None


@contextlib.contextmanager
def _view_lock(run: _Run) -> Iterator[None]:
    """Step 4: hold the view's advisory lock for the body; wait within the lock timeout, else SKIPPED."""
    spec, work = run.spec, run.work
    if not pg.try_advisory_lock(work, spec.schema, spec.name):
        run.say(f"{spec.display_name}: another refresh holds it; waiting up to {run.options.lock_timeout:g} s")
        try:
            pg.advisory_lock(work, spec.schema, spec.name)
        except psycopg.errors.LockNotAvailable:
            locktag = pg.advisory_locktag(run.log.conn, spec.schema, spec.name)
            holders = pg.lock_holders(run.log.conn, me=run.log.pid, advisory=locktag)
            holder = "; ".join(map(str, holders)) or "a session that has since finished"
            raise run.log.failed(
                "SKIPPED", "55P03",
                f"another refresh of this view held it for over {run.options.lock_timeout:g} s: {holder}",
                retryable=True) from None
        # The other refresh may have populated the view or changed its indexes (or it was dropped).
        try:
            run.state = _check_view(run)
        except BaseException:
            _unlock(run)
            raise
    try:
        run.access = _access(run)
        yield
    finally:
        _unlock(run)


def _unlock(run: _Run) -> None:
    work = run.work
    if work.closed or work.broken:
        return  # the session (and its advisory lock) is gone already
    if work.info.transaction_status != TransactionStatus.IDLE:
        work.close()  # interrupted mid-statement: ending the session releases the lock
        return
    with contextlib.suppress(psycopg.Error):  # closing the connection releases a session lock anyway
        pg.advisory_unlock(work, run.spec.schema, run.spec.name)


def _access(run: _Run) -> privileges.RefreshAccess:
    """How this role may refresh the view: owner / MAINTAIN / the owner's function / not at all."""
    try:
        return privileges.check_access(run.work, run.state.oid)
    except LookupError:
        raise RefreshRefused(f"{run.spec.display_name} was dropped while mv-refresh looked at it") from None


def _choose(run: _Run) -> tuple[str, str | None]:
    """Step 6: the method; a view PostgreSQL cannot refresh in the forced mode gets an ERROR row."""
    try:
        method, reason = choose_method(run.spec, run.state, run.options.mode)
    except RefreshRefused as exc:
        # Known before running, but logged: health then shows why the view is not being refreshed.
        raise run.log.failed("ERROR", "55000", str(exc)) from None
    return method, _with_notes(reason, run.access.note)


def _run_logged(run: _Run, method: str, reason: str | None) -> RefreshResult:
    """Step 7: the proof (with change tracking), RUNNING row, refresh, count, OK/ERROR row; the row is finished
    before the lock is released. A view proven unchanged gets a single OK row, method UNCHANGED."""
    spec, work = run.spec, run.work
    result = RefreshResult(spec.schema, spec.name, "RUNNING", method=method, method_reason=reason)
    started = time.monotonic()
    refreshed_at = None
    try:
        if run.cancel is not None and run.cancel.reason:
            raise psycopg.errors.QueryCanceled(f"interrupted before the refresh started: {run.cancel.reason}")
        if run.tracked is None:
            if _refresh_in_snapshot(run, result):
                result.status, result.duration_ms = "OK", int((time.monotonic() - started) * 1000)
                result.log_id = run.log.insert_unchanged(result)
                _housekeeping(run, result)
                return result
        else:
            result.method_reason = _with_notes(result.method_reason, run.tracked)
            result.log_id = run.log.insert("RUNNING", method=result.method, reason=result.method_reason)
            _refresh(run, result)
        refreshed_at = work.execute("SELECT clock_timestamp()").fetchone()[0]
        result.duration_ms = int((time.monotonic() - started) * 1000)
        result.status = "OK"
        _count_rows(run, result)
    except psycopg.Error as exc:
        result.status, result.duration_ms = "ERROR", int((time.monotonic() - started) * 1000)
        _explain(result, exc, run)
    except BaseException as exc:
        # Ctrl-C, SIGTERM (psycopg has cancelled the statement already), a task timeout (it has not):
        # stop the server-side statement, finish the row, then let the interrupt go on.
        _cancel_statement(work)
        _rollback(work)
        if result.log_id is None:
            raise  # interrupted before anything was logged or ran
        if refreshed_at is None:  # the refresh itself was interrupted (and rolled back); else only the count
            result.status, result.retryable = "ERROR", True
            result.error_sqlstate, result.error_message = QUERY_CANCELED, _interruption(exc)
        else:
            result.method_reason = _with_notes(result.method_reason, f"rows not counted: {_interruption(exc)}")
        result.duration_ms = int((time.monotonic() - started) * 1000)
        with contextlib.suppress(psycopg.Error):
            run.log.finish(result, refreshed_at)
        raise
    if result.log_id is None:  # failed before its RUNNING row (the proof itself): log the failure now
        result.log_id = run.log.insert("RUNNING", method=result.method, reason=result.method_reason)
    _finish(run, result, refreshed_at)
    if result.status == "OK":
        _housekeeping(run, result)
    return result


def _refresh_in_snapshot(run: _Run, result: RefreshResult) -> bool:
    """One REPEATABLE READ transaction: take the snapshot, prove the view unchanged (return True: nothing
    refreshed, what it saw recorded) or write the RUNNING row and REFRESH (the REFRESH sees exactly that
    snapshot) and record what the view now reflects; commit. A writer that commits meanwhile is not in the
    snapshot: its marker stays unseen, and the next refresh refreshes."""
    spec, work = run.spec, run.work
    while True:  # a second turn only when CONCURRENTLY is refused and falls back to PLAIN
        work.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            proof = tracking.prove(work, spec, run.state.oid, run.state.populated, run.catalog_oids)
            if result.log_id is None:
                if proof.unchanged and run.options.may_skip:
                    result.method, result.rows_after_refresh = METHOD_UNCHANGED, proof.rows
                    result.method_reason = _with_notes(proof.reason, run.access.note)
                    tracking.record(work, spec, run.state.oid, proof, log_id=None, rows=proof.rows,
                                    refreshed=False)
                    work.execute("COMMIT")
                    return True
                result.method_reason = _with_notes(result.method_reason, _why_refreshed(spec, proof))
                result.log_id = run.log.insert("RUNNING", method=result.method, reason=result.method_reason)
            _execute_refresh(run, result.method)
            tracking.record(work, spec, run.state.oid, proof, log_id=result.log_id, rows=None, refreshed=True)
            work.execute("COMMIT")
            return False
        except psycopg.Error as exc:
            _rollback(work)
            if not _falls_back(run, result, exc):
                raise


def _why_refreshed(spec: ViewSpec, proof: tracking.Proof) -> str:
    if not proof.unchanged:
        return proof.reason
    asked = "forced" if spec.on_unchanged == "skip" else "on_unchanged: refresh"
    return f"{asked} ({proof.reason})"  # provably unchanged, refreshed all the same


def _housekeeping(run: _Run, result: RefreshResult) -> None:
    """After an OK refresh: the row count for a later UNCHANGED, and markers every view has seen."""
    if run.tracked is not None:
        return
    with contextlib.suppress(psycopg.Error):  # a role without DELETE leaves the cleanup to another
        if result.rows_after_refresh is not None and result.method != METHOD_UNCHANGED:
            tracking.set_rows(run.work, run.spec, result.rows_after_refresh)
        tracking.forget_markers_seen_by_all(run.work)


def _rollback(work: psycopg.Connection) -> None:
    if not work.closed and work.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            work.execute("ROLLBACK")


def _falls_back(run: _Run, result: RefreshResult, exc: psycopg.Error) -> bool:
    """The one fallback: CONCURRENTLY that PostgreSQL refuses (55000/0A000) goes PLAIN, with the reason."""
    if not (result.method == METHOD_CONCURRENTLY and run.options.mode == "auto" and exc.sqlstate in FALLBACK_SQLSTATES):
        return False
    result.method = METHOD_PLAIN
    result.method_reason = _with_notes(  # the reason it had (access path, why refreshed) stays
        f"CONCURRENTLY refused ({exc.sqlstate}: {safe_message(exc)}); fell back to PLAIN", result.method_reason)
    run.say(f"{run.spec.display_name}: {result.method_reason}")
    return True


def _refresh(run: _Run, result: RefreshResult) -> None:
    """The REFRESH statement alone (autocommit), with the one fallback to PLAIN."""
    try:
        _execute_refresh(run, result.method)
    except psycopg.Error as exc:
        if not _falls_back(run, result, exc):
            raise
        _execute_refresh(run, METHOD_PLAIN)


def _execute_refresh(run: _Run, method: str) -> None:
    statement, params = privileges.refresh_statement(
        run.spec.schema, run.spec.name, method == METHOD_CONCURRENTLY, run.access)
    run.work.execute(statement, params or None)


def _count_rows(run: _Run, result: RefreshResult) -> None:
    if not run.options.count_rows:
        return
    if not run.access.can_select:
        result.method_reason = _with_notes(
            result.method_reason, f"rows not counted: role {quote_identifier(run.access.role)} may not SELECT the view")
        return
    result.rows_after_refresh = run.work.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(run.spec.schema, run.spec.name))).fetchone()[0]


def _cancel_statement(work: psycopg.Connection) -> None:
    if not work.closed and work.info.transaction_status == TransactionStatus.ACTIVE:
        with contextlib.suppress(psycopg.Error):
            work.cancel_safe(timeout=10)


def _finish(run: _Run, result: RefreshResult, refreshed_at) -> None:
    try:
        run.log.finish(result, refreshed_at)
    except psycopg.Error as log_exc:
        # The log connection died as well (server restart, network): the RUNNING row stays behind until the
        # next refresh of this view marks it ABANDONED. Say so, and let a retry redo it.
        note = (f"the log row {result.log_id} could not be finished ({safe_message(log_exc)}); "
                f"the next refresh marks it ABANDONED")
        if result.status == "OK":
            result.status, result.error_message = "ERROR", f"refreshed, but {note}"
        else:
            result.error_message = f"{result.error_message}; {note}"
        result.retryable = True


def _with_notes(reason: str | None, *notes: str | None) -> str | None:
    parts = [part for part in (reason, *notes) if part]
    return "; ".join(parts) if parts else None
