"""Least privilege: how the refreshing role may refresh a view it does not own (docs/security.md).

``check_access`` decides, per view and before any refresh SQL runs, which way the engine refreshes:
``owner`` / ``maintain`` (owns the view, or holds ``MAINTAIN`` on PostgreSQL 17+, and may use its schema:
plain ``REFRESH`` statements); else ``function`` (the owner's ``SECURITY DEFINER``
``ops.refresh_materialized_view`` and its allow-list, when the role may execute it); else ``none`` (plain
statements, which PostgreSQL refuses with 42501: ``permission_message`` names the role, the view and the fix).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .names import quote_identifier

FUNCTION_NAME = "ops.refresh_materialized_view"
ALLOWLIST_TABLE = "ops.mv_refresh_allowlist"
SCRIPT = "include/sql/ops/least_privilege.sql"
INSUFFICIENT_PRIVILEGE = "42501"
MAINTAIN_VERSION_NUM = 170000  # PostgreSQL 17: the MAINTAIN privilege and the pg_maintain role

PATH_OWNER = "owner"
PATH_MAINTAIN = "maintain"
PATH_FUNCTION = "function"
PATH_NONE = "none"


@dataclass(frozen=True)
class RefreshAccess:
    """Who is refreshing, who owns the view, and what the catalogs say the refresher may do."""

    path: str
    role: str  # current_user of the refresh connection
    view_owner: str
    server_version_num: int
    schema_usage: bool  # USAGE on the view's schema: needed to name the view in a statement
    can_select: bool  # SELECT on the view (and USAGE on its schema): needed for the row count
    function_owner: str | None = None  # owner of ops.refresh_materialized_view when it exists

    @property
    def via_function(self) -> bool:
        return self.path == PATH_FUNCTION

    @property
    def note(self) -> str | None:
        """What the log row's method_reason says about the path (only the function path is news)."""
        if self.via_function:
            return f"via {FUNCTION_NAME} (runs as {self.function_owner})"
        return None


_ACCESS = """
SELECT current_user,
       pg_catalog.pg_get_userbyid(c.relowner),
       pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'),
       pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE'),
       pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       pg_catalog.current_setting('server_version_num')::integer
FROM pg_catalog.pg_class AS c
WHERE c.oid = %s
"""

# The function is looked up through pg_proc (no USAGE on ops needed to ask), by its exact signature.
_FUNCTION = """
SELECT pg_catalog.pg_get_userbyid(p.proowner),
       pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
       AND pg_catalog.has_schema_privilege(p.pronamespace, 'USAGE')
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'ops' AND p.proname = 'refresh_materialized_view'
  AND p.proargtypes = '25 25 16'::pg_catalog.oidvector  -- (text, text, boolean)
"""


def check_access(conn: psycopg.Connection, oid: int) -> RefreshAccess:
    """The refresh path for the view ``oid``, decided from the catalogs before anything runs."""
    row = conn.execute(_ACCESS, (oid,)).fetchone()
    if row is None:  # dropped since it was inspected: the refresh itself will say so
        raise LookupError(f"relation {oid} no longer exists")
    role, owner, owns, schema_usage, select, version = row
    maintain = False
    if version >= MAINTAIN_VERSION_NUM and not owns:
        # 'MAINTAIN' is an unknown privilege type before 17: only ask where it exists.
        maintain = conn.execute("SELECT pg_catalog.has_table_privilege(%s, 'MAINTAIN')", (oid,)).fetchone()[0]
    function = conn.execute(_FUNCTION).fetchone()
    function_owner, can_execute = function if function else (None, False)
    if (owns or maintain) and schema_usage:
        path = PATH_OWNER if owns else PATH_MAINTAIN
    elif can_execute:
        path = PATH_FUNCTION
    else:
        path = PATH_NONE
    return RefreshAccess(path=path, role=role, view_owner=owner, server_version_num=version,
                         schema_usage=schema_usage, can_select=bool(select and schema_usage),
                         function_owner=function_owner)


def refresh_statement(schema: str, name: str, concurrently: bool,
                      access: RefreshAccess) -> tuple[sql.Composable, tuple]:
    """The statement (and its parameters) that refreshes the view along ``access.path``."""
    if access.via_function:
        return (sql.SQL("SELECT ops.refresh_materialized_view(%s, %s, %s)"), (schema, name, concurrently))
    how = "CONCURRENTLY " if concurrently else ""
    return sql.SQL("REFRESH MATERIALIZED VIEW " + how + "{}").format(sql.Identifier(schema, name)), ()


def is_permission_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate == INSUFFICIENT_PRIVILEGE


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def fix_for(view: str, schema: str, view_name: str, access: RefreshAccess) -> str:
    """How to give ``access.role`` the right to refresh ``view`` (``schema.name``, quoted as needed)."""
    role, owner = quote_identifier(access.role), quote_identifier(access.view_owner)
    usage = (f"GRANT USAGE ON SCHEMA {quote_identifier(schema)} TO {role}; " if not access.schema_usage else "")
    script = f"psql -f {SCRIPT} -v refresher={shlex.quote(access.role)} -v views={shlex.quote(view)}"
    if access.via_function:
        if access.function_owner and access.function_owner != access.view_owner:
            return (f"{FUNCTION_NAME} belongs to {quote_identifier(access.function_owner)} and refreshes only views of "
                    f"that role, but {view} belongs to {owner}: make {quote_identifier(access.function_owner)} the owner "
                    f"of the view, or (PostgreSQL 17+) GRANT MAINTAIN ON {view} TO {role}")
        return (f"as the view's owner {owner}, put it on the allow-list {ALLOWLIST_TABLE}: `{script}` "
                f"(or add the row {_literal(schema)}, {_literal(view_name)} to it by hand)")
    if access.server_version_num >= MAINTAIN_VERSION_NUM:
        return (f"as the view's owner {owner}: {usage}GRANT MAINTAIN, SELECT ON {view} TO {role}; "
                f"or run `{script}`")
    return (f"PostgreSQL {access.server_version_num // 10000} lets only the owner refresh: as the view's "
            f"owner {owner}, run `{script}` (installs {FUNCTION_NAME} and its allow-list), or upgrade to "
            f"PostgreSQL 17+ and GRANT MAINTAIN")


def permission_message(view: str, schema: str, view_name: str, access: RefreshAccess, detail: str) -> str:
    """The log's message for a 42501 refresh: the role, the view (display name and parts), what PostgreSQL
    said, and the fix."""
    return (f"permission denied: role {quote_identifier(access.role)} may not refresh {view} ({detail}). "
            f"Fix: {fix_for(view, schema, view_name, access)}")


# --------------------------------------------------------------------------------------------------
# The log: what the refreshing role needs on ops.mv_refresh_log


_LOG_PRIVILEGES = """
SELECT pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE'),
       pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       pg_catalog.has_table_privilege(c.oid, 'INSERT'),
       pg_catalog.has_table_privilege(c.oid, 'UPDATE'),
       current_user,
       coalesce((SELECT pg_catalog.has_table_privilege(m.oid, 'INSERT')
                        AND pg_catalog.has_table_privilege(m.oid, 'UPDATE')
                 FROM pg_catalog.pg_class AS m
                 WHERE m.relnamespace = c.relnamespace AND m.relname = 'mv_catalog'), false)
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'ops' AND c.relname = 'mv_refresh_log'
"""


@dataclass(frozen=True)
class LogAccess:
    """What the current role may do with the ops schema's tables."""

    missing: str | None  # why the role cannot write the refresh log, with the fix; None when it can
    can_mirror: bool  # it may keep ops.mv_catalog in step with the catalog file (INSERT, UPDATE)


def log_access(conn: psycopg.Connection) -> LogAccess:
    """Can the current role write ops.mv_refresh_log (and ops.mv_catalog)? ``missing`` is None too when the
    log does not exist: the refresh then fails on it, saying to run init-db."""
    row = conn.execute(_LOG_PRIVILEGES).fetchone()
    if row is None:
        return LogAccess(None, False)
    usage, select, insert, update, role, can_mirror = row
    missing = ["USAGE on schema ops"] if not usage else []
    missing += [f"{p} on ops.mv_refresh_log" for p, ok in (("SELECT", select), ("INSERT", insert),
                                                            ("UPDATE", update)) if not ok]
    if not missing:
        return LogAccess(None, bool(can_mirror and usage))
    return LogAccess(
        f"role {quote_identifier(role)} cannot write the refresh log (missing {', '.join(missing)}): as the owner of "
        f"the ops schema, run `psql -f {SCRIPT} -v refresher={shlex.quote(role)} -v part=ops`, or "
        f"GRANT USAGE ON SCHEMA ops TO {quote_identifier(role)}; "
        f"GRANT SELECT, INSERT, UPDATE ON ops.mv_refresh_log TO {quote_identifier(role)}", False)
