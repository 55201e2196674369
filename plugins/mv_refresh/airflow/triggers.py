"""``SourceChangeTrigger``: an event trigger that fires when a tracked source commits a change (docs/events.md).

It runs in Airflow's triggerer, inside an ``AssetWatcher`` on the sources' asset; each event it yields
becomes an asset event, and ``ops_mv_refresh`` (scheduled on ``AssetOrTimeSchedule``) starts a run.

**The truth is the marker table.** ``mv-refresh track install`` puts a statement trigger on every source
table; each writing transaction leaves one marker ``(source_oid, xid)`` in ``ops.mv_source_change``, which
exists exactly when the transaction commits. Commit order is not ``xid`` order and not ``changed_at`` order
(a transaction that started first may commit last), so no timestamp or xid is a watermark. The watermark
is a *snapshot*: every poll takes ``pg_current_snapshot()`` in the same statement that reads the markers
(both see the statement's snapshot), and the next poll counts the markers whose transaction that snapshot
did not see (``pg_visible_in_snapshot``): exactly the transactions that committed in between, whatever
their order. Markers of the catalog's own views (a refresh writes one for the views that read it) are not
changes of the sources and never fire.

**On start** (first start, a triggerer restart, a new DAG version) there is no previous snapshot. The
trigger then looks for markers that a view reading their table has not seen yet (not visible in the
snapshot recorded by the view's last refresh, ``ops.mv_refresh_state``): if there are any, changes were
made while nobody watched, and it fires once, at once.

**Debounce.** Changes are coalesced until ``quiet_period`` seconds pass without a new one, but an event is
fired at the latest ``max_wait`` seconds after the first change not yet reported, so a constant trickle
still refreshes. After an event, only transactions that commit later can fire again: a condition that
stays true (markers that are still there) never fires twice.

**Failures.** A lost connection, a server restart, a missing ``ops`` schema or connection: logged, then a
new connection after a backoff (doubling up to ``_MAX_BACKOFF`` seconds); the previous snapshot is kept,
so nothing committed meanwhile is missed. ``run()`` never raises for them (a trigger that raises ends its
watch). With ``channel``, the trigger also ``LISTEN``s on it, as a wake-up only (NOTIFY is at most once and
lost while nobody listens; the poll stays the truth).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

CLASSPATH = "mv_refresh.airflow.triggers.SourceChangeTrigger"
_MAX_BACKOFF = 60.0
_STATEMENT_TIMEOUT_MS = 30_000
_MAX_NAMES = 20

# The watermark: markers whose transaction the previous poll's snapshot did not see, read in the same
# statement (and so the same snapshot) as the new watermark. Markers of materialized views are refreshes
# (of the catalog's own views), not changes of the sources. Markers below the snapshot's xmin were seen.
_POLL = """
WITH new AS (
    SELECT m.source_oid, m.xid FROM ops.mv_source_change AS m
    WHERE m.xid >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
      AND NOT pg_visible_in_snapshot(m.xid, %(seen)s::pg_snapshot)
      AND NOT EXISTS (SELECT 1 FROM pg_class AS c WHERE c.oid = m.source_oid AND c.relkind = 'm')
)
SELECT pg_current_snapshot()::text, (SELECT count(*) FROM new),
       ARRAY(SELECT DISTINCT source_oid::regclass::text FROM new ORDER BY 1 LIMIT %(names)s)
"""

# On start: markers of a source that a view reading it has not seen (its last refresh's snapshot).
_MISSED = """
WITH missed AS (
    SELECT m.source_oid, m.xid FROM ops.mv_source_change AS m
    WHERE NOT EXISTS (SELECT 1 FROM pg_class AS c WHERE c.oid = m.source_oid AND c.relkind = 'm')
      AND EXISTS (SELECT 1 FROM ops.mv_refresh_state AS s
                  WHERE m.source_oid = ANY (s.sources) AND NOT pg_visible_in_snapshot(m.xid, s.snapshot))
)
SELECT pg_current_snapshot()::text, (SELECT count(DISTINCT xid) FROM missed),
       ARRAY(SELECT DISTINCT source_oid::regclass::text FROM missed ORDER BY 1 LIMIT %(names)s)
"""


@dataclass
class Debounce:
    """When to fire: ``quiet_period`` seconds without a new change, at most ``max_wait`` after the first one.

    Times are monotonic seconds, given by the caller (so the rule is tested without sleeping).
    """

    quiet_period: float
    max_wait: float
    first: float | None = None  # when the first change not yet reported was seen
    last: float | None = None  # when the latest change was seen
    transactions: int = 0
    sources: set[str] = field(default_factory=set)

    def saw(self, now: float, transactions: int, sources: list[str] | tuple[str, ...] = ()) -> None:
        if transactions <= 0:
            return
        if self.first is None:
            self.first = now
        self.last = now
        self.transactions += transactions
        self.sources.update(sources)

    def due(self, now: float) -> str | None:
        """Why an event is due now (``quiet`` or ``max_wait``), or None."""
        if self.first is None or self.last is None:
            return None
        if now - self.first >= self.max_wait:
            return "max_wait"
        if now - self.last >= self.quiet_period:
            return "quiet"
        return None

    def next_due_in(self, now: float) -> float | None:
        """Seconds until an event would be due if nothing else changed (None: nothing pending)."""
        if self.first is None or self.last is None:
            return None
        return max(0.0, min(self.first + self.max_wait, self.last + self.quiet_period) - now)

    def take(self, reason: str, now: float) -> dict[str, Any]:
        """The event's payload; forgets what it reports."""
        payload = {
            "reason": reason,
            "transactions": self.transactions,
            "sources": sorted(self.sources)[:_MAX_NAMES],
            "waited_seconds": round(now - self.first, 3) if self.first is not None else 0.0,
        }
        self.first = self.last = None
        self.transactions = 0
        self.sources = set()
        return payload


class SourceChangeTrigger(BaseEventTrigger):
    """Fire when a tracked source table commits a change (debounced); for an ``AssetWatcher``.

    :param conn_id: Airflow Postgres connection of the warehouse (the one the refreshes use).
    :param channel: a NOTIFY channel to LISTEN on as a wake-up (None: poll only).
    :param poll_interval: seconds between two reads of the marker table.
    :param quiet_period: fire once this many seconds pass without a new change (default 30).
    :param max_wait: fire at the latest this many seconds after the first change not yet reported.
    """

    def __init__(self, *, conn_id: str = "postgres_default", channel: str | None = None,
                 poll_interval: float = 5.0, quiet_period: float = 30.0, max_wait: float = 300.0) -> None:
        super().__init__()
        if poll_interval <= 0 or quiet_period < 0 or max_wait <= 0:
            raise ValueError("poll_interval and max_wait must be positive, quiet_period not negative")
        self.conn_id = conn_id
        self.channel = channel or None
        self.poll_interval = float(poll_interval)
        self.quiet_period = float(quiet_period)
        self.max_wait = float(max_wait)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {"conn_id": self.conn_id, "channel": self.channel, "poll_interval": self.poll_interval,
                           "quiet_period": self.quiet_period, "max_wait": self.max_wait}

    # ----------------------------------------------------------------------------------------------

    async def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        from mv_refresh.db import APPLICATION_NAME, client_defaults_for

        from .connection import adsn_for_connection

        dsn = await adsn_for_connection(self.conn_id)
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                     application_name=f"{APPLICATION_NAME} events",
                                                     **client_defaults_for(dsn))
        try:
            await conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(_STATEMENT_TIMEOUT_MS),))
            if self.channel:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _wait(self, conn: Any, seconds: float) -> None:
        """Sleep ``seconds``, or less when a notification arrives on the channel."""
        if seconds <= 0:
            return
        if not self.channel:
            await asyncio.sleep(seconds)
            return
        async for _notify in conn.notifies(timeout=seconds, stop_after=1):
            pass

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import psycopg

        from mv_refresh.db import safe_message

        debounce = Debounce(self.quiet_period, self.max_wait)
        seen: str | None = None  # the previous poll's snapshot: the watermark
        failures = 0
        while True:
            conn = None
            try:
                conn = await self._connect()
                if failures:
                    self.log.info("connected again to the warehouse (%s) after %d failed attempt(s)",
                                  self.conn_id, failures)
                failures = 0
                if seen is None:
                    cur = await conn.execute(_MISSED, {"names": _MAX_NAMES})
                    seen, missed, names = await cur.fetchone()
                    if missed:
                        now = time.monotonic()
                        debounce.saw(now, missed, names)
                        self.log.info("on start: %d committed transaction(s) on %s not seen by the views' last "
                                      "refreshes: firing once", missed, ", ".join(names))
                        yield TriggerEvent(debounce.take("missed_at_start", now))
                while True:
                    cur = await conn.execute(_POLL, {"seen": seen, "names": _MAX_NAMES})
                    seen, count, names = await cur.fetchone()
                    now = time.monotonic()
                    debounce.saw(now, count, names)
                    reason = debounce.due(now)
                    if reason:
                        payload = debounce.take(reason, now)
                        self.log.info("firing (%s): %d committed transaction(s) on %s", reason,
                                      payload["transactions"], ", ".join(payload["sources"]))
                        yield TriggerEvent(payload)
                    due = debounce.next_due_in(time.monotonic())
                    await self._wait(conn, self.poll_interval if due is None else min(self.poll_interval, due))
            except (psycopg.Error, OSError) as exc:
                failures += 1
                delay = min(_MAX_BACKOFF, self.poll_interval * 2 ** min(failures - 1, 10))
                self.log.warning("watching the source changes (%s) failed: %s [%s]; connecting again in %.1f s",
                                 self.conn_id, safe_message(exc), getattr(exc, "sqlstate", None) or
                                 type(exc).__name__, delay)
            except Exception as exc:  # noqa: BLE001 - a missing connection id, a bad secret: retried, logged
                failures += 1
                delay = min(_MAX_BACKOFF, self.poll_interval * 2 ** min(failures - 1, 10))
                self.log.error("watching the source changes (%s) failed: %s: %s; trying again in %.1f s",
                               self.conn_id, type(exc).__name__, exc, delay)
            finally:
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:  # noqa: BLE001, S110 - closing a broken connection
                        pass
            await asyncio.sleep(delay)
