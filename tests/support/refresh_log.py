"""Reading ops.mv_refresh_log the way the fault and load tests check it."""

from __future__ import annotations

from mv_refresh.db import connect


def log_rows(dsn: str, mv_name: str | None = None) -> list[dict]:
    """The log in id order (one view's rows, given ``mv_name``), each row a dict."""
    with connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM ops.mv_refresh_log WHERE %(mv)s::text IS NULL OR mv_name = %(mv)s "
                           "ORDER BY id", {"mv": mv_name})
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def overlaps(dsn: str) -> list[tuple]:
    """Pairs of finished refreshes of one view whose logged intervals overlap: must never happen.

    The advisory lock serialises refreshes of a view, and the engine finishes the log row before it
    releases the lock, so two OK/ERROR intervals of one view can touch but never overlap.
    """
    with connect(dsn) as conn:
        return conn.execute("""
            SELECT a.schema_name, a.mv_name, a.id, b.id FROM ops.mv_refresh_log AS a
            JOIN ops.mv_refresh_log AS b
              ON b.schema_name = a.schema_name AND b.mv_name = a.mv_name AND b.id > a.id
            WHERE a.status IN ('OK', 'ERROR') AND b.status IN ('OK', 'ERROR')
              AND tstzrange(a.refresh_started_at, a.refresh_finished_at)
                  && tstzrange(b.refresh_started_at, b.refresh_finished_at)""").fetchall()


def running_left(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'").fetchone()[0]
