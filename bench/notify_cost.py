"""What NOTIFY would cost writers: the change-marker function (V005) against the same function plus
``pg_notify()``, pgbench with 4 clients, single-row INSERT transactions, interleaved A/B rounds.

Why it is measured: a NOTIFY from the marker function would wake SourceChangeTrigger at once instead of within
a poll (docs/events.md), but PostgreSQL serialises the commits of notifying transactions on one lock. A
listener is connected (as the triggerer would be) and drains the notifications in a thread.

    .venv/bin/python bench/notify_cost.py [--rounds 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from typing import Any

import benchkit as bk
from tracking import _pgbench

_SETUP = """
DROP SCHEMA IF EXISTS bench_notify CASCADE;
CREATE SCHEMA bench_notify;
CREATE TABLE bench_notify.plain (k bigint, v text);
CREATE TABLE bench_notify.notified (k bigint, v text);
CREATE FUNCTION bench_notify.changed_and_notify() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('mv_refresh.changed_' || TG_RELID::text, true) IS DISTINCT FROM 'y' THEN
        INSERT INTO ops.mv_source_change (source_oid) VALUES (TG_RELID);
        PERFORM set_config('mv_refresh.changed_' || TG_RELID::text, 'y', true);
        PERFORM pg_notify('mv_refresh_source_change', TG_RELID::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bench_notify.plain
    FOR EACH STATEMENT EXECUTE FUNCTION ops.mv_source_changed();
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bench_notify.notified
    FOR EACH STATEMENT EXECUTE FUNCTION bench_notify.changed_and_notify();
"""
_SCRIPT = "\\set k random(1, 100000000)\nINSERT INTO bench_notify.{table} (k, v) VALUES (:k, 'x');\n"


def _listen(dsn: str, stop: threading.Event, seen: list[int]) -> None:
    with bk.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN mv_refresh_source_change")
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.5):
                seen[0] += 1


def run(dsn: str, *, rounds: int = 4, seconds: int = 10) -> dict[str, Any]:
    from mv_refresh.migrations import apply_migrations

    apply_migrations(dsn)
    with bk.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
    stop, seen = threading.Event(), [0]
    listener = threading.Thread(target=_listen, args=(dsn, stop, seen), daemon=True)
    listener.start()
    tps: dict[str, list[float]] = {"marker": [], "marker + NOTIFY": []}
    tables = {"marker": "plain", "marker + NOTIFY": "notified"}
    try:
        for r in range(rounds):
            for kind in bk.rotated(list(tps), r):
                with bk.connect(dsn, autocommit=True) as conn:
                    conn.execute("TRUNCATE bench_notify.plain, bench_notify.notified")
                    conn.execute("DELETE FROM ops.mv_source_change")
                    conn.execute("CHECKPOINT")
                tps[kind].append(_pgbench(dsn, _SCRIPT.format(table=tables[kind]), seconds))
            bk.say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f} tps" for k, v in tps.items()))
    finally:
        stop.set()
        listener.join(5)
        with bk.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench_notify CASCADE")
            conn.execute("DELETE FROM ops.mv_source_change")
    ratio = bk.ratio_of(tps["marker + NOTIFY"], tps["marker"])
    return {"rounds": rounds, "seconds": seconds, "tps": tps, "notifications_received": seen[0],
            "median_tps": {k: statistics.median(v) for k, v in tps.items()}, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(argv)
    dbs = bk.Databases.from_environment()
    try:
        result = run(dbs.database("notify"), rounds=args.rounds, seconds=args.seconds)
    finally:
        dbs.cleanup()
    med, ratio = result["median_tps"], result["ratio"]
    bk.say(f"\nsingle-row INSERT transactions, 4 clients: marker {med['marker']:.0f} tps, marker + NOTIFY "
           f"{med['marker + NOTIFY']:.0f} tps; ratio {ratio['ratio']:.2f} (rounds {ratio['round_min']:.2f}-"
           f"{ratio['round_max']:.2f}); notifications received {result['notifications_received']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
