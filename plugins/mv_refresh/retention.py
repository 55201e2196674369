"""``mv-refresh log prune``: keep ``ops.mv_refresh_log`` as long as it is useful, and no longer.

Rows that started more than ``keep_days`` days ago are deleted in batches of ``batch_size`` ids, each batch
its own short transaction (no long lock, no giant undo), walking the primary key from the oldest id up. Never
deleted, whatever their age: a RUNNING row (the refresh may still be going; the engine reaps it), the newest
OK row of each view (health's "last OK refresh" and the runbook's ``MAX(refreshed_at)`` must survive), and
the newest finished row of each view (its latest outcome).

It needs DELETE on the log: a maintenance role's privilege. The refreshing role has none (it must not be
able to erase the history it writes), so the audit DAG runs it through its own connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg

from .names import quote_identifier

# The ids to keep whatever their age: per view, the newest OK row and the newest finished row (both read
# from V004's indexes: one entry per view each).
_PROTECTED = """
SELECT DISTINCT kept.id FROM (SELECT DISTINCT schema_name, mv_name FROM ops.mv_refresh_log WHERE id < %(below)s) AS v
CROSS JOIN LATERAL (
    (SELECT l.id FROM ops.mv_refresh_log AS l
     WHERE l.mv_name = v.mv_name AND l.schema_name = v.schema_name AND l.status = 'OK'
     ORDER BY l.refresh_finished_at DESC, l.id DESC LIMIT 1)
    UNION ALL
    (SELECT l.id FROM ops.mv_refresh_log AS l
     WHERE l.mv_name = v.mv_name AND l.schema_name = v.schema_name AND l.refresh_finished_at IS NOT NULL
     ORDER BY l.refresh_finished_at DESC, l.id DESC LIMIT 1)) AS kept
"""

_BATCH = """
DELETE FROM ops.mv_refresh_log
WHERE id >= %(low)s AND id < %(high)s
  AND refresh_started_at < %(cutoff)s
  AND status <> 'RUNNING'
  AND id <> ALL (%(protected)s::bigint[])
"""


class PruneRefused(PermissionError):
    """The role may not delete from the log; the message names the role and the fix. Nothing was deleted."""


def missing_delete_privilege(conn: psycopg.Connection) -> str | None:
    """Why the current role may not prune ``ops.mv_refresh_log`` (with the fix), or None when it may."""
    role, allowed = conn.execute(
        "SELECT current_user, has_table_privilege('ops.mv_refresh_log', 'DELETE')").fetchone()
    if allowed:
        return None
    return (f"role {quote_identifier(role)} may not delete rows of ops.mv_refresh_log (no DELETE privilege: by "
            "design the refreshing role cannot erase the history it writes): prune as a maintenance role, set up "
            "with `psql -f include/sql/ops/least_privilege.sql -v refresher=... -v maintainer=<role> -v part=ops`; "
            "in Airflow, point MV_REFRESH_MAINTENANCE_CONN_ID at a connection of that role")


@dataclass
class PruneReport:
    keep_days: int
    cutoff: object  # datetime: rows that started before it were candidates
    deleted: int
    kept_protected: int  # old rows kept because they are a view's newest OK or newest outcome
    batches: int
    seconds: float

    def summary(self) -> str:
        return (f"deleted {self.deleted:,} log rows that started before {self.cutoff:%Y-%m-%d %H:%M:%S%z} "
                f"(kept {self.kept_protected:,} old rows that are a view's newest OK or newest outcome) "
                f"in {self.batches:,} batches, {self.seconds:.1f} s")

    def as_json(self) -> dict:
        return {**asdict(self), "cutoff": self.cutoff.isoformat()}


def prune_log(conn: psycopg.Connection, *, keep_days: int, batch_size: int = 10_000,
              progress: Callable[[str], None] | None = None) -> PruneReport:
    """Delete old rows of ``ops.mv_refresh_log`` (see the module docstring); ``conn`` must be autocommit."""
    for name, value, what in (("keep_days", keep_days, "a whole number of days"),
                              ("batch_size", batch_size, "a whole number")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be {what}, 1 or more; got {value!r}")
    refused = missing_delete_privilege(conn)
    if refused:
        raise PruneRefused(refused)
    say = progress or (lambda _line: None)
    started = time.monotonic()
    cutoff, low, high = conn.execute(
        "SELECT now() - make_interval(days => %(days)s),"
        "       (SELECT min(id) FROM ops.mv_refresh_log),"
        "       (SELECT min(id) FROM ops.mv_refresh_log WHERE refresh_started_at >= now() - make_interval(days => %(days)s))",
        {"days": keep_days}).fetchone()
    # Ids grow with time, so every candidate lies below the first id that is recent enough (rows written
    # with a hand-set older start time above it are simply kept until a later prune).
    if high is None:
        high = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM ops.mv_refresh_log").fetchone()[0]
    protected = [row[0] for row in conn.execute(_PROTECTED, {"below": high})]
    kept = conn.execute(
        "SELECT count(*) FROM ops.mv_refresh_log WHERE id = ANY (%s) AND refresh_started_at < %s",
        (protected, cutoff)).fetchone()[0]
    deleted = batches = 0
    if low is not None:
        for start in range(low, high, batch_size):
            with conn.transaction():
                count = conn.execute(_BATCH, {"low": start, "high": min(start + batch_size, high),
                                              "cutoff": cutoff, "protected": protected}).rowcount
            deleted += count
            batches += 1
            if batches % 20 == 0:
                say(f"  {deleted:,} rows deleted so far (ids up to {start + batch_size:,} of {high:,})")
    return PruneReport(keep_days, cutoff, deleted, kept, batches, round(time.monotonic() - started, 3))
