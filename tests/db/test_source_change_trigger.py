"""SourceChangeTrigger against a real PostgreSQL: its async ``run()`` driven as the triggerer drives it.

A small tracked warehouse (one table, one view refreshed through the engine, so ``ops.mv_refresh_state``
has what the view saw); ``postgres_default`` points at it. Intervals are short (tenths of a second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from mv_refresh.airflow.triggers import CLASSPATH, Debounce, SourceChangeTrigger
from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.engine import refresh_view
from mv_refresh.tracking import install

WAREHOUSE = """
CREATE SCHEMA wh;
CREATE TABLE wh.claims (id integer PRIMARY KEY, amount numeric NOT NULL);
CREATE TABLE wh.untracked (id integer);
INSERT INTO wh.claims SELECT g, g FROM generate_series(1, 10) AS g;
CREATE MATERIALIZED VIEW wh.mv_claims AS SELECT id, amount FROM wh.claims;
CREATE UNIQUE INDEX ON wh.mv_claims (id);
"""
CATALOG = parse_catalog("""
version: 1
views:
  - name: wh.mv_claims
""", source="trigger catalog")

FAST = {"poll_interval": 0.1, "quiet_period": 0.6, "max_wait": 5.0}


@pytest.fixture
def wh(ops_dsn, airflow_conn) -> str:
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(WAREHOUSE)
        changes = install(conn, CATALOG, list(CATALOG.views))
    assert [c.action for c in changes] == ["installed"]
    refresh_view(ops_dsn, CATALOG, "wh.mv_claims")  # what the view saw: ops.mv_refresh_state
    airflow_conn(ops_dsn)
    return ops_dsn


class Watch:
    """The trigger's run() in a task of the test's event loop; events collected with their time."""

    def __init__(self, trigger: SourceChangeTrigger) -> None:
        self.trigger = trigger
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Watch:
        async def consume() -> None:
            async for event in self.trigger.run():
                self.events.append((time.monotonic(), event.payload))

        self.task = asyncio.create_task(consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def settle(self, seconds: float) -> None:
        """Let the trigger run for ``seconds``; its task must still be alive (run() never returns)."""
        await asyncio.sleep(seconds)
        assert not self.task.done(), self.task.exception() if not self.task.cancelled() else "cancelled"

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} event(s) after {timeout} s, wanted {count}"
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.05)
        return [payload for _at, payload in self.events]


def watch(**kwargs: Any) -> Watch:
    return Watch(SourceChangeTrigger(**{**FAST, **kwargs}))


async def commit(dsn: str, statement: str = "INSERT INTO wh.claims SELECT max(id) + 1, 1 FROM wh.claims") -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(statement)


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


# --------------------------------------------------------------------------------------------------


def test_fires_once_after_a_committed_insert_and_not_again_without_new_changes(wh):
    async def scenario():
        async with watch() as w:
            await w.settle(0.5)
            assert w.events == [], "fired with nothing committed since the view's last refresh"
            committed = time.monotonic()
            await commit(wh)
            events = await w.wait_for(1)
            fired_after = w.events[0][0] - committed
            await w.settle(2.0)  # more than three quiet periods: the markers are still there
            return events, fired_after, list(w.events)

    events, fired_after, final = run(scenario)
    assert len(final) == 1, final
    assert events[0]["reason"] == "quiet" and events[0]["transactions"] == 1
    assert events[0]["sources"] == ["wh.claims"]
    # The quiet period, plus at most a poll or two (a loaded machine gets a generous bound).
    assert FAST["quiet_period"] <= fired_after < FAST["quiet_period"] + 3.0, fired_after


def test_an_open_or_rolled_back_transaction_does_not_fire(wh):
    async def scenario():
        async with watch() as w, await psycopg.AsyncConnection.connect(wh) as writer:
            await writer.execute("INSERT INTO wh.claims VALUES (1000, 1)")  # the marker exists, uncommitted
            await w.settle(1.5)
            open_events = list(w.events)
            await writer.rollback()
            await w.settle(1.5)
            rolled_back_events = list(w.events)
            await commit(wh)  # the control: a committed one does fire
            await w.wait_for(1)
            return open_events, rolled_back_events

    open_events, rolled_back_events = run(scenario)
    assert open_events == [] and rolled_back_events == []


def test_a_burst_is_one_event(wh):
    async def scenario():
        async with watch(quiet_period=1.5) as w, await psycopg.AsyncConnection.connect(wh, autocommit=True) as writer:
            await w.settle(0.3)
            for _ in range(12):
                await writer.execute("INSERT INTO wh.claims SELECT max(id) + 1, 1 FROM wh.claims")
                await asyncio.sleep(0.1)
            events = await w.wait_for(1)
            await w.settle(2.5)
            return events, list(w.events)

    events, final = run(scenario)
    assert len(final) == 1, final
    assert events[0]["transactions"] == 12 and events[0]["reason"] == "quiet"


def test_a_constant_trickle_fires_by_max_wait(wh):
    async def scenario():
        async with watch(quiet_period=2.0, max_wait=3.0) as w, \
                await psycopg.AsyncConnection.connect(wh, autocommit=True) as writer:
            await w.settle(0.3)
            first = time.monotonic()
            stop = first + 8.0
            while time.monotonic() < stop:  # a commit every 0.2 s: never 2 s of quiet
                await writer.execute("INSERT INTO wh.claims SELECT max(id) + 1, 1 FROM wh.claims")
                await asyncio.sleep(0.2)
            trickle_events = [(at - first, payload) for at, payload in w.events]
            await w.wait_for(len(trickle_events) + 1)  # what the last commits leave pending
            return trickle_events

    trickle_events = run(scenario)
    assert len(trickle_events) >= 2, trickle_events
    assert all(p["reason"] == "max_wait" for _at, p in trickle_events), trickle_events
    # The first change is seen within a poll or so; max_wait later the event fires.
    assert 3.0 <= trickle_events[0][0] < 3.0 + 3.0, trickle_events


def test_commit_order_is_not_xid_order(wh):
    """A transaction with the smaller xid that commits last is still seen: the watermark is a snapshot,
    not the largest xid (nor the latest changed_at) seen so far."""

    async def scenario():
        async with watch(quiet_period=0.3) as w, await psycopg.AsyncConnection.connect(wh) as early:
            await early.execute("INSERT INTO wh.claims VALUES (2000, 1)")  # xid N (and its marker), open
            await commit(wh, "INSERT INTO wh.claims VALUES (2001, 1)")  # xid N+1, committed first
            await w.wait_for(1)
            await w.settle(1.0)
            assert len(w.events) == 1
            await early.commit()  # xid N commits now, with an earlier changed_at
            events = await w.wait_for(2)
            return events

    events = run(scenario)
    assert [e["transactions"] for e in events] == [1, 1]


def test_refreshes_and_untracked_tables_do_not_fire(wh):
    async def scenario():
        async with watch() as w:
            await w.settle(0.3)
            # A real refresh writes a marker for the view itself (a change for the views reading it).
            result = await asyncio.to_thread(refresh_view, wh, CATALOG, "wh.mv_claims", force=True)
            assert result.method != "UNCHANGED"
            # (the engine deletes it once every reader has seen it: here, such a marker left for a reader)
            await commit(wh, "INSERT INTO ops.mv_source_change (source_oid) VALUES ('wh.mv_claims'::regclass)")
            await commit(wh, "INSERT INTO wh.untracked VALUES (1)")
            await w.settle(1.5)
            return list(w.events)

    assert run(scenario) == []


def test_on_start_changes_no_view_has_seen_fire_once(wh):
    run(lambda: commit(wh))  # committed while no trigger ran (a triggerer restart)

    async def scenario():
        async with watch() as w:
            events = await w.wait_for(1, timeout=5)
            await w.settle(1.5)
            return events, list(w.events)

    events, final = run(scenario)
    assert len(final) == 1 and events[0]["reason"] == "missed_at_start" and events[0]["sources"] == ["wh.claims"]

    refresh_view(wh, CATALOG, "wh.mv_claims")  # the view has seen it now: a new start stays quiet

    async def restarted():
        async with watch() as w:
            await w.settle(1.5)
            return list(w.events)

    assert run(restarted) == []


def test_survives_a_terminated_backend_and_misses_nothing_committed_meanwhile(wh, capsys):

    async def scenario():
        async with watch() as w:
            await w.settle(0.5)
            async with await psycopg.AsyncConnection.connect(wh, autocommit=True) as admin:
                cur = await admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                          "'mv-refresh events' AND datname = current_database()")
                pids = [pid for (pid,) in await cur.fetchall()]
                assert len(pids) == 1, pids
                await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                # Committed while the trigger has no connection (before its next poll finds it dead).
                await admin.execute("INSERT INTO wh.claims VALUES (3000, 1)")
                events = await w.wait_for(1)
                cur = await admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                          "'mv-refresh events' AND datname = current_database()")
                again = [pid for (pid,) in await cur.fetchall()]
            await w.settle(1.0)
            return pids[0], again, events, list(w.events)

    old, new, events, final = run(scenario)
    assert new and old not in new
    assert len(final) == 1 and events[0]["transactions"] == 1
    logged = capsys.readouterr().out  # the trigger's log (Airflow's structlog writes it to stdout)
    assert "connecting again" in logged and "connected again" in logged, logged


def test_a_missing_connection_or_schema_is_logged_and_retried_never_raised(wh, capsys):

    async def missing_connection():
        async with watch(conn_id="no_such_connection") as w:
            await w.settle(1.5)
            return list(w.events)

    assert run(missing_connection) == []
    assert "The conn_id `no_such_connection` isn't defined" in capsys.readouterr().out

    with connect(wh, autocommit=True) as conn:
        conn.execute("ALTER TABLE ops.mv_source_change RENAME TO mv_source_change_away")

    async def missing_table():
        async with watch() as w:
            await w.settle(1.0)
            with connect(wh, autocommit=True) as conn:
                conn.execute("ALTER TABLE ops.mv_source_change_away RENAME TO mv_source_change")
            await commit(wh)
            return await w.wait_for(1)

    assert run(missing_table)[0]["transactions"] == 1
    assert "[42P01]" in capsys.readouterr().out


def test_kwargs_are_stable_and_round_trip():
    kwargs = {"conn_id": "warehouse", "channel": None, "poll_interval": 2.0, "quiet_period": 30.0,
              "max_wait": 300.0}
    trigger = SourceChangeTrigger(**kwargs)
    classpath, serialized = trigger.serialize()
    assert classpath == CLASSPATH and serialized == kwargs
    module, _, name = classpath.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    assert cls is SourceChangeTrigger
    again = cls(**serialized)
    assert again.serialize() == (classpath, kwargs)
    # The hash Airflow matches asset watchers by: the same for every parse that builds the same trigger.
    assert SourceChangeTrigger.hash(*trigger.serialize()) == SourceChangeTrigger.hash(*again.serialize())
    with pytest.raises(ValueError, match="positive"):
        SourceChangeTrigger(poll_interval=0)


def test_debounce_rule():
    d = Debounce(quiet_period=30, max_wait=120)
    assert d.due(0) is None and d.next_due_in(0) is None
    d.saw(0, 1, ["a"])
    assert d.due(29) is None and d.due(30) == "quiet" and d.next_due_in(10) == 20
    d.saw(20, 2, ["b"])
    assert d.due(49) is None and d.due(50) == "quiet"
    for t in range(40, 130, 10):  # a trickle: never 30 s of quiet
        d.saw(t, 1)
    assert d.due(119) is None and d.due(120) == "max_wait"
    payload = d.take("max_wait", 120)
    assert payload == {"reason": "max_wait", "transactions": 12, "sources": ["a", "b"], "waited_seconds": 120}
    assert d.due(1000) is None
    d.saw(130, 0)
    assert d.due(1000) is None
