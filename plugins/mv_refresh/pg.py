"""What the project asks PostgreSQL's catalogs, in one place (docs/architecture.md, "Layers").

The engine, the audit, the prerequisites and the troubleshooting commands share these: the rule for a
unique index that ``REFRESH ... CONCURRENTLY`` can use, the per-view advisory lock, timeouts in
milliseconds, the liveness of a RUNNING log row (``ops.mv_refresh_backend_gone``, migration V004), and who
holds a lock. Catalog names only ever reach PostgreSQL as bound parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg
from psycopg import sql

# What a relation that is not a materialized view is, for messages (pg_class.relkind).
RELKIND_NAMES = {"r": "a table", "p": "a partitioned table", "v": "a view", "f": "a foreign table",
                 "S": "a sequence", "i": "an index", "I": "a partitioned index", "c": "a composite type",
                 "t": "a TOAST table"}

# A unique index CONCURRENTLY can use: unique, valid, live, on plain columns, without WHERE (alias i).
USABLE_UNIQUE_INDEX = sql.SQL(
    "i.indisunique AND i.indisvalid AND i.indislive AND i.indpred IS NULL AND i.indexprs IS NULL"
)

# First key of the two-key advisory lock: "mv-refresh, refresh of one view" (b"mvrf" as int4). The second
# key is hashtext() of the quoted qualified name, so the key survives a DROP/CREATE of the view.
ADVISORY_LOCK_CLASS = int.from_bytes(b"mvrf", "big", signed=True)
_ADVISORY_KEY = sql.SQL("%s, hashtext(quote_ident(%s) || '.' || quote_ident(%s))")


def advisory_params(schema: str, name: str) -> tuple[int, str, str]:
    return (ADVISORY_LOCK_CLASS, schema, name)


def try_advisory_lock(conn: psycopg.Connection, schema: str, name: str) -> bool:
    query = sql.SQL("SELECT pg_try_advisory_lock({})").format(_ADVISORY_KEY)
    return conn.execute(query, advisory_params(schema, name)).fetchone()[0]


def advisory_lock(conn: psycopg.Connection, schema: str, name: str) -> None:
    """Wait for the view's advisory lock (bounded by the session's lock_timeout: 55P03 when it runs out)."""
    conn.execute(sql.SQL("SELECT pg_advisory_lock({})").format(_ADVISORY_KEY), advisory_params(schema, name))


def advisory_unlock(conn: psycopg.Connection, schema: str, name: str) -> None:
    conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(_ADVISORY_KEY), advisory_params(schema, name))


def advisory_locktag(conn: psycopg.Connection, schema: str, name: str) -> tuple[int, int]:
    """The key as ``pg_locks`` shows it: (classid, objid), both oids (unsigned 32-bit)."""
    objid = conn.execute("SELECT hashtext(quote_ident(%s) || '.' || quote_ident(%s))", (schema, name)).fetchone()[0]
    return ADVISORY_LOCK_CLASS & 0xFFFFFFFF, objid & 0xFFFFFFFF


def milliseconds(seconds: float) -> str:
    """A timeout setting: whole milliseconds, never shorter than asked and never 0 (which means none)."""
    return f"{max(math.ceil(seconds * 1000), 1)}ms"


def set_timeouts(conn: psycopg.Connection, *, lock: float | None = None, statement: float | None = None,
                 local: bool = False) -> None:
    """Set lock_timeout / statement_timeout (seconds) for the session, or the transaction with ``local``."""
    for setting, seconds in (("lock_timeout", lock), ("statement_timeout", statement)):
        if seconds is not None:
            conn.execute("SELECT set_config(%s, %s, %s)", (setting, milliseconds(seconds), local))


# --------------------------------------------------------------------------------------------------
# Who holds a lock


_HOLDERS = """
SELECT l.pid, string_agg(DISTINCT l.mode, '+' ORDER BY l.mode), a.usename, a.application_name, a.state,
       coalesce(a.xact_start, a.backend_start)
FROM pg_locks AS l
LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.granted AND l.pid IS DISTINCT FROM %(me)s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.locktype = 'relation' AND l.relation = %(relation)s)
       OR (l.locktype = 'advisory' AND l.classid::bigint = %(classid)s AND l.objid::bigint = %(objid)s
           AND l.objsubid = 2))
GROUP BY l.pid, a.usename, a.application_name, a.state, a.xact_start, a.backend_start
ORDER BY coalesce(a.xact_start, a.backend_start) NULLS LAST, l.pid
"""


@dataclass(frozen=True)
class LockHolder:
    """A session holding a lock: who and since when, never what it runs (its SQL may hold secrets)."""

    pid: int
    modes: str
    role: str | None
    application: str | None
    state: str | None
    since: object  # datetime | None

    def __str__(self) -> str:
        app = f", {self.application}" if self.application else ""
        since = f" since {self.since:%Y-%m-%d %H:%M:%S%z}" if self.since else ""
        return f"pid {self.pid} ({self.role or 'role hidden'}{app}, {self.modes}, {self.state or 'state hidden'}{since})"


def lock_holders(conn: psycopg.Connection, *, me: int, relation: int | None = None,
                 advisory: tuple[int, int] | None = None) -> list[LockHolder]:
    """Sessions other than ``me`` holding a lock on ``relation`` (an oid) or on the advisory key.

    Read after a lock wait has timed out, when ``pg_blocking_pids`` of the waiter is already empty: whoever
    still holds the lock is who blocked it. Their query text is never read: it is another session's SQL,
    which may carry a password (``ALTER ROLE ... PASSWORD``) and must not reach the log or an alert.
    """
    classid, objid = advisory if advisory else (None, None)
    rows = conn.execute(_HOLDERS, {"me": me, "relation": relation, "classid": classid, "objid": objid})
    return [LockHolder(*row) for row in rows]
