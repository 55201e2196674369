"""Connections: where the DSN comes from, how it is shown, and how sessions are set up."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

APPLICATION_NAME = "mv-refresh"


class ConfigurationError(RuntimeError):
    """Something the user must fix in their settings (a DSN, a path); never retried."""


def resolve_dsn(explicit: str | None = None) -> str:
    """The DSN to use: ``--dsn``, else ``MV_REFRESH_DSN``; a clear error when neither is given."""
    dsn = explicit or os.environ.get("MV_REFRESH_DSN")
    if not dsn:
        raise ConfigurationError(
            "No database given: pass --dsn 'postgresql://user@host:5432/db' or set MV_REFRESH_DSN "
            "(`make demo` sets it to its embedded PostgreSQL)."
        )
    return dsn


def redact(dsn: str) -> str:
    """A DSN fit for logs and error messages: the password (and any secret option) is masked."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    for secret in ("password", "sslpassword", "passfile"):
        if params.get(secret):
            params[secret] = "***"
    return make_conninfo(**params)


def describe_target(dsn: str) -> str:
    """``database "x" on host:port`` for messages: names where, never how (no user, no secret)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = params.get("host") or os.environ.get("PGHOST") or "local socket"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "?"
    return f'database "{dbname}" on {host}:{port}'


# Client side (libpq): how long this process waits for a server or a network that went silent. With
# keepalives a probe goes out after 30 s without traffic; tcp_user_timeout then drops a connection
# whose probes or data stay unacknowledged for 60 s. A healthy server acknowledges probes at the
# kernel level, so a long REFRESH is never cut short by these. Used only where the user's conninfo
# (or PGCONNECT_TIMEOUT) does not set the parameter itself: an Airflow connection's extras win.
CLIENT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}

# Server side (session settings, all user-settable): how soon a backend whose client vanished stops.
# A backend busy with a REFRESH does not read its socket, so without client_connection_check_interval
# (PostgreSQL 14+) it refreshes, and commits, until the statement ends; the server's own keepalives
# make a silent network (no FIN, no RST) show up on that check too. Applied only to settings the
# server has and that nobody configured (pg_settings.source = 'default'): postgresql.conf, ALTER
# ROLE/DATABASE ... SET, PGOPTIONS and ``options=-c ...`` in the conninfo all win. See docs/at-scale.md.
SESSION_DEFAULTS = {
    "client_connection_check_interval": "5s",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",
}

_APPLY_SESSION_DEFAULTS = """
SELECT s.name, set_config(s.name, wanted.value, false)
FROM pg_settings AS s
JOIN unnest(%s::text[], %s::text[]) AS wanted(name, value) ON wanted.name = s.name
WHERE s.source = 'default'
"""


def client_defaults_for(dsn: str) -> dict[str, str]:
    """The libpq parameters of CLIENT_DEFAULTS that ``dsn`` leaves unset (and no environment sets).

    A connection through a service file (``service=`` or PGSERVICE) gets none: libpq lets explicit
    parameters override the service file, so adding ours would silently replace the user's.
    """
    given = conninfo_to_dict(dsn)
    if given.get("service") or os.environ.get("PGSERVICE"):
        return {}
    from_env = {o.keyword.decode(): o.val for o in psycopg.pq.Conninfo.get_defaults() if o.val is not None}
    return {key: value for key, value in CLIENT_DEFAULTS.items() if key not in given and key not in from_env}


# Which SESSION_DEFAULTS to set, per (DSN, PGOPTIONS): reading pg_settings costs ~6 ms (it builds every
# setting), a set_config() round trip ~0.2 ms. A process (an Airflow task, a CLI call) asks once per DSN.
_SESSION_PLAN: dict[tuple[str, str | None], list[str]] = {}


def apply_session_defaults(conn: psycopg.Connection, dsn: str | None = None) -> list[str]:
    """Set SESSION_DEFAULTS that the server has and nobody configured; return the names set.

    Given ``dsn``, what pg_settings said on the first connection to it is reused for the next ones.
    Runs in autocommit so that a later ROLLBACK of the caller's first transaction cannot undo it.
    """
    key = (dsn, os.environ.get("PGOPTIONS")) if dsn is not None else None
    planned = _SESSION_PLAN.get(key) if key else None
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        if planned is None:
            rows = conn.execute(_APPLY_SESSION_DEFAULTS,
                                (list(SESSION_DEFAULTS), list(SESSION_DEFAULTS.values()))).fetchall()
            planned = [name for name, _value in rows]
            if key:
                _SESSION_PLAN[key] = planned
        elif planned:
            calls = sql.SQL(", ").join(sql.SQL("set_config(%s, %s, false)") for _name in planned)
            conn.execute(sql.SQL("SELECT ") + calls,
                         [value for name in planned for value in (name, SESSION_DEFAULTS[name])])
        return planned
    finally:
        conn.autocommit = autocommit


def connect(dsn: str, *, autocommit: bool = False, purpose: str = "", **kwargs: Any) -> psycopg.Connection:
    """Open a connection tagged with ``application_name`` so it is recognisable in pg_stat_activity.

    The connection also detects a dead peer within a bounded time on both ends (CLIENT_DEFAULTS,
    SESSION_DEFAULTS): a worker killed mid-refresh or a network gone silent never leaves a REFRESH
    running, holding its locks, for the whole statement timeout.
    """
    app = f"{APPLICATION_NAME} {purpose}".strip()[:63]
    try:
        client = client_defaults_for(dsn)
    except psycopg.ProgrammingError:
        # libpq's parse error quotes the offending part of the DSN, which may be the password.
        raise ConfigurationError(
            "the DSN cannot be parsed (its text is not shown: it may hold a password). In a URI, "
            "percent-encode special characters of the password (% as %25, @ as %40, / as %2F), or use "
            "the key=value form: host=... dbname=... user=... password=..."
        ) from None
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=app, **{**client, **kwargs})
    except psycopg.OperationalError as exc:
        # psycopg's message can repeat the full conninfo; say where we tried, and nothing secret.
        raise psycopg.OperationalError(
            f"cannot connect to {describe_target(dsn)}: {_first_line(str(exc))}"
        ) from None
    try:
        apply_session_defaults(conn, dsn)
    except BaseException:
        conn.close()
        raise
    return conn


def safe_message(exc: BaseException) -> str:
    """The error's primary message (and hint), never its DETAIL: 21000's DETAIL holds row data."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_hint:
            text += f" (hint: {exc.diag.message_hint})"
        return text
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line
