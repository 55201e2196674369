"""Connections: where the DSN comes from, how it is shown, and how sessions are set up."""

from __future__ import annotations

import os
from typing import Any

import psycopg
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


def connect(dsn: str, *, autocommit: bool = False, purpose: str = "", **kwargs: Any) -> psycopg.Connection:
    """Open a connection tagged with ``application_name`` so it is recognisable in pg_stat_activity."""
    app = f"{APPLICATION_NAME} {purpose}".strip()[:63]
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's parse error quotes the offending part of the DSN, which may be the password.
        raise ConfigurationError(
            "the DSN cannot be parsed (its text is not shown: it may hold a password). In a URI, "
            "percent-encode special characters of the password (% as %25, @ as %40, / as %2F), or use "
            "the key=value form: host=... dbname=... user=... password=..."
        ) from None
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name=app, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        # psycopg's message can repeat the full conninfo; say where we tried, and nothing secret.
        raise psycopg.OperationalError(
            f"cannot connect to {describe_target(dsn)}: {_first_line(str(exc))}"
        ) from None


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


def airflow_connection_json(dsn: str) -> str:
    """The DSN as an Airflow connection in JSON form (for ``AIRFLOW_CONN_<ID>``).

    JSON rather than a URI so a Unix-socket directory as host (the embedded server) survives intact.
    """
    import json

    params = conninfo_to_dict(dsn)
    conn: dict[str, Any] = {"conn_type": "postgres"}
    for ours, theirs in (("host", "host"), ("port", "port"), ("user", "login"), ("password", "password"),
                         ("dbname", "schema")):
        if params.get(ours):
            conn[theirs] = int(params[ours]) if ours == "port" else params[ours]
    extra = {k: v for k, v in params.items() if k not in ("host", "port", "user", "password", "dbname")}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)
