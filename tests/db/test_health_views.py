"""The health views: exact columns and order, buckets from the database clock, per-view thresholds."""

from __future__ import annotations

import pytest

YANGO = "mv_yango_cabinet_claims_for_collection"
YANGO_COLUMNS = ["last_ok_refresh_finished_at", "hours_since_ok_refresh", "status_bucket", "last_status",
                 "last_error", "rows_after_refresh"]


def _columns(conn, view: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (view,))]


def _log(conn, status: str, *, hours_ago: float, mv: str = YANGO, rows: int | None = 100,
         error: str | None = None) -> None:
    conn.execute(
        "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at, refresh_finished_at,"
        " refreshed_at, rows_after_refresh, error_message) "
        "SELECT 'ops', %(mv)s, %(status)s, t - interval '5 seconds', t, CASE WHEN %(status)s = 'OK' THEN t END,"
        " %(rows)s, %(error)s FROM (SELECT clock_timestamp() - %(h)s * interval '1 hour' AS t) x",
        {"mv": mv, "status": status, "h": hours_ago, "rows": rows if status == "OK" else None, "error": error})


def _yango(conn):
    rows = conn.execute("SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchall()
    assert len(rows) == 1, "the runbook's view has exactly one row"
    return rows[0]


def test_yango_view_columns_are_the_contract(conn):
    assert _columns(conn, "ops.v_yango_cabinet_claims_mv_health") == YANGO_COLUMNS
    assert _columns(conn, "ops.v_mv_health")[:8] == ["schema_name", "mv_name", *YANGO_COLUMNS]


def test_never_refreshed_is_no_refresh(conn):
    assert _yango(conn) == (None, None, "NO_REFRESH", None, None, None)


@pytest.mark.parametrize(
    ("hours", "bucket"), [(0.01, "OK"), (23.9, "OK"), (24.1, "WARN"), (47.9, "WARN"), (48.1, "CRIT"), (500, "CRIT")]
)
def test_buckets_follow_the_hours_since_the_last_ok(conn, hours, bucket):
    _log(conn, "OK", hours_ago=hours, rows=1234)
    last_ok, since, got, last_status, last_error, rows = _yango(conn)
    assert got == bucket
    assert float(since) == pytest.approx(hours, abs=0.02)
    assert (last_status, last_error, rows) == ("OK", None, 1234)


def test_only_error_rows_is_no_refresh_with_the_error(conn):
    _log(conn, "ERROR", hours_ago=3, error="first failure")
    _log(conn, "ERROR", hours_ago=1, error="could not obtain lock")
    assert _yango(conn) == (None, None, "NO_REFRESH", "ERROR", "could not obtain lock", None)


def test_an_error_after_an_ok_keeps_the_ok_age_and_shows_the_error(conn):
    _log(conn, "OK", hours_ago=30, rows=7)
    _log(conn, "ERROR", hours_ago=1, error="duplicate key")
    _, since, bucket, last_status, last_error, rows = _yango(conn)
    assert (bucket, last_status, last_error, rows) == ("WARN", "ERROR", "duplicate key", 7)
    assert float(since) == pytest.approx(30, abs=0.02)


def test_an_ok_after_an_error_clears_last_error(conn):
    _log(conn, "ERROR", hours_ago=2, error="deadlock detected")
    _log(conn, "OK", hours_ago=1, rows=5)
    assert _yango(conn)[2:] == ("OK", "OK", None, 5)


def _running(conn, *, pid_of=None, gone: bool = False) -> int:
    """A RUNNING row whose backend is ``pid_of``'s session (alive) or a backend that no longer exists."""
    if gone:
        return conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid,"
                            " backend_start) VALUES ('ops', %s, 'RUNNING', 2147483000, now()) RETURNING id",
                            (YANGO,)).fetchone()[0]
    return conn.execute(
        "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid, backend_start) "
        "SELECT 'ops', %s, 'RUNNING', pid, backend_start FROM pg_stat_activity WHERE pid = %s RETURNING id",
        (YANGO, pid_of.info.backend_pid)).fetchone()[0]


def test_running_and_skipped_rows_never_count_as_fresh(conn, ops_dsn):
    from mv_refresh.db import connect

    _log(conn, "OK", hours_ago=50)
    with connect(ops_dsn, autocommit=True) as refresher:
        _running(conn, pid_of=refresher)
        assert _yango(conn)[2:4] == ("CRIT", "RUNNING")
        # A SKIPPED attempt while that refresh runs: the live refresh stays the latest state.
        _log(conn, "SKIPPED", hours_ago=0, error="another refresh held it")
        assert _yango(conn)[2:5] == ("CRIT", "RUNNING", "another refresh held it")


def test_a_running_row_whose_backend_is_gone_is_abandoned_not_running(conn):
    """A killed refresh (SIGKILL, a lost worker) leaves RUNNING behind: health judges it by its backend."""
    _log(conn, "OK", hours_ago=50)
    _running(conn, gone=True)
    _, _, bucket, last_status, last_error, _ = _yango(conn)
    assert (bucket, last_status) == ("CRIT", "ABANDONED")
    assert "backend pid 2147483000" in last_error and "is gone" in last_error


def test_the_latest_outcome_wins_over_a_skipped_row_written_earlier(conn, ops_dsn):
    """SKIPPED is written while the lock holder still refreshes; when the holder then finishes OK, the view is
    fresh and its last status is OK, with no error."""
    from mv_refresh.db import connect

    _log(conn, "OK", hours_ago=30)
    with connect(ops_dsn, autocommit=True) as refresher:
        holder = _running(conn, pid_of=refresher)
        _log(conn, "SKIPPED", hours_ago=0, error="another refresh of this view held it")
        conn.execute("UPDATE ops.mv_refresh_log SET status = 'OK', refresh_finished_at = clock_timestamp(),"
                     " refreshed_at = clock_timestamp(), rows_after_refresh = 3 WHERE id = %s", (holder,))
    assert _yango(conn)[2:] == ("OK", "OK", None, 3)


@pytest.mark.parametrize(("hours", "bucket", "shown"), [
    (23.9999, "OK", "23.99"),      # rounding would show 24.00 beside OK
    (24.0001, "WARN", "24.00"),
    (47.9999, "WARN", "48.00"),
    (48.0001, "CRIT", "48.01"),    # rounding would show 48.00, which reads as WARN
    (50.004, "CRIT", "50.00"),
    (12.345, "OK", "12.35"),
])
def test_hours_never_contradict_the_bucket(conn, hours, bucket, shown):
    conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
                 " refresh_finished_at, refreshed_at) SELECT 'ops', %s, 'OK', t, t, t"
                 " FROM (SELECT now() - %s * interval '1 hour' AS t) AS x", (YANGO, hours))
    # One transaction: now() is the same instant for the insert and the read.
    conn.execute("BEGIN")
    try:
        conn.execute("UPDATE ops.mv_refresh_log SET refresh_finished_at = now() - %s * interval '1 hour'",
                     (hours,))
        got = conn.execute("SELECT hours_since_ok_refresh, status_bucket FROM ops.v_yango_cabinet_claims_mv_health"
                           ).fetchone()
    finally:
        conn.execute("ROLLBACK")
    assert (f"{got[0]:.2f}", got[1]) == (shown, bucket)


def test_per_view_thresholds_from_the_catalog(conn):
    conn.execute("INSERT INTO ops.mv_catalog (schema_name, mv_name, position, is_critical, warn_after_hours,"
                 " crit_after_hours) VALUES ('ops', 'hourly_view', 0, false, 1, 2), ('ops', %s, 1, true, 24, 48)",
                 (YANGO,))
    _log(conn, "OK", hours_ago=1.5, mv="hourly_view")
    _log(conn, "OK", hours_ago=1.5)
    rows = conn.execute("SELECT mv_name, status_bucket, is_critical FROM ops.v_mv_health").fetchall()
    assert rows == [("hourly_view", "WARN", False), (YANGO, "OK", True)]


def test_generic_and_yango_views_agree(conn):
    conn.execute("INSERT INTO ops.mv_catalog (schema_name, mv_name, position) VALUES ('ops', %s, 0)", (YANGO,))
    _log(conn, "OK", hours_ago=25, rows=42)
    generic = conn.execute("SELECT * FROM ops.v_mv_health WHERE mv_name = %s", (YANGO,)).fetchone()
    assert generic[2:8] == _yango(conn)


def test_bucket_uses_the_database_clock(conn):
    """A row finished 'now' by the database clock is OK whatever the client's clock says."""
    conn.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # +14: a client far from UTC changes nothing
    _log(conn, "OK", hours_ago=0)
    assert _yango(conn)[2] == "OK"
