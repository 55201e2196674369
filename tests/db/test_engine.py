"""The logged refresh of one view, against a real PostgreSQL: every PostgreSQL case the engine tells apart (docs/architecture.md)."""

from __future__ import annotations

import psycopg
import pytest
from lab import refresh_in_thread, scalar, set_sleep, wait_for

from mv_refresh.catalog import CatalogError, parse_catalog
from mv_refresh.db import connect
from mv_refresh.engine import RefreshFailed, RefreshRefused, RunContext, is_retryable, refresh_view


def _log(dsn: str, mv: str | None = None) -> list[dict]:
    with connect(dsn) as conn:
        cur = conn.execute(
            "SELECT * FROM ops.mv_refresh_log WHERE %(mv)s::text IS NULL OR mv_name = %(mv)s ORDER BY id",
            {"mv": mv})
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def test_concurrent_path_logs_ok_with_rows_and_backend(lab_dsn, lab):
    result = refresh_view(lab_dsn, lab, "lab.mv_conc", context=RunContext(run_by="cli"))
    assert (result.status, result.method) == ("OK", "CONCURRENTLY")
    # No reason for the method; only why it was refreshed at all (lab.src carries no change tracking).
    assert result.method_reason == ("not provably unchanged: its source lab.src is not tracked "
                                    "(`mv-refresh track install lab.mv_conc`)")
    assert result.rows_after_refresh == 1000
    [row] = _log(lab_dsn)
    assert row["status"] == "OK" and row["method"] == "CONCURRENTLY"
    assert row["rows_after_refresh"] == 1000 and row["duration_ms"] >= 0
    assert row["refresh_started_at"] <= row["refreshed_at"] <= row["refresh_finished_at"]
    assert row["backend_pid"] > 0 and row["backend_start"] is not None
    assert row["run_by"] == "cli" and row["client_hostname"]
    assert row["id"] == result.log_id


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        ("lab.mv_noidx", "no valid unique index"),
        ("lab.mv_partial", "no valid unique index"),
        ("lab.mv_unpop", "not populated"),
    ],
)
def test_plain_when_postgresql_cannot_go_concurrently(lab_dsn, lab, view, reason):
    result = refresh_view(lab_dsn, lab, view)
    assert result.status == "OK" and result.method == "PLAIN"
    assert reason in result.method_reason
    [row] = _log(lab_dsn)
    assert row["method"] == "PLAIN" and reason in row["method_reason"]


def test_unpopulated_view_goes_concurrently_once_populated(lab_dsn, lab):
    assert refresh_view(lab_dsn, lab, "lab.mv_unpop").method == "PLAIN"
    assert refresh_view(lab_dsn, lab, "lab.mv_unpop").method == "CONCURRENTLY"


def test_mode_plain_never_tries_concurrently(lab_dsn, lab):
    result = refresh_view(lab_dsn, lab, "lab.mv_conc", mode="plain")
    assert result.method == "PLAIN" and result.method_reason.startswith("mode plain requested; ")


def test_mode_concurrently_fails_instead_of_falling_back(lab_dsn, lab):
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_unpop", mode="concurrently")
    assert not info.value.retryable
    assert "prepare-concurrently" in str(info.value)
    [row] = _log(lab_dsn)
    assert row["status"] == "ERROR" and row["error_sqlstate"] == "55000" and row["method"] is None
    assert scalar(lab_dsn, "SELECT relispopulated FROM pg_class WHERE oid = 'lab.mv_unpop'::regclass") is False


def test_identical_duplicate_rows_fail_21000_without_fallback_and_keep_old_data(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (7, 'v7')")  # an exact copy of row 7
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_keyed")
    assert not info.value.retryable
    [row] = _log(lab_dsn)
    assert (row["status"], row["method"], row["error_sqlstate"]) == ("ERROR", "CONCURRENTLY", "21000")
    # The DETAIL names the duplicate row's data: it must not reach the log.
    assert "v7" not in row["error_message"] and "(7," not in row["error_message"]
    assert scalar(lab_dsn, "SELECT count(*) FROM lab.mv_keyed") == 100


def test_duplicate_keys_fail_23505_without_fallback_and_keep_old_data(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (7, 'another v for key 7')")
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_keyed")
    assert not info.value.retryable
    rows = _log(lab_dsn)
    assert len(rows) == 1, "no second (PLAIN) attempt"
    assert (rows[0]["status"], rows[0]["method"], rows[0]["error_sqlstate"]) == ("ERROR", "CONCURRENTLY", "23505")
    assert "another v" not in rows[0]["error_message"]
    assert scalar(lab_dsn, "SELECT count(*) FROM lab.mv_keyed") == 100


def test_statement_timeout_is_a_retryable_error(lab_dsn, lab):
    set_sleep(lab_dsn, 3)
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_slow", statement_timeout=0.3, mode="plain")
    assert info.value.retryable
    [row] = _log(lab_dsn)
    assert row["status"] == "ERROR" and row["error_sqlstate"] == "57014"
    assert "statement timeout" in row["error_message"]


def test_lock_timeout_names_the_blocking_session(lab_dsn, lab):
    with connect(lab_dsn) as holder:
        # A long report: its open transaction holds ACCESS SHARE, which a PLAIN refresh must wait for.
        holder.execute("SELECT count(*) FROM lab.mv_conc /* monthly report */")
        holder_pid = holder.info.backend_pid
        with pytest.raises(RefreshFailed) as info:
            refresh_view(lab_dsn, lab, "lab.mv_conc", lock_timeout=0.3, mode="plain")
        holder.rollback()
    assert info.value.retryable
    [row] = _log(lab_dsn)
    assert row["status"] == "ERROR" and row["error_sqlstate"] == "55P03"
    assert f"pid {holder_pid}" in row["error_message"]
    # Who blocked, in which lock mode, doing what (state) since when; never their SQL text.
    assert "AccessShareLock" in row["error_message"] and "idle in transaction since" in row["error_message"]
    assert "monthly report" not in row["error_message"]


def test_terminated_backend_still_gets_an_error_row(lab_dsn, lab):
    set_sleep(lab_dsn, 5)
    thread, outcome = refresh_in_thread(lab_dsn, lab, "lab.mv_slow", mode="plain")
    pid = wait_for(lambda: scalar(lab_dsn, "SELECT max(backend_pid) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"))
    wait_for(lambda: scalar(lab_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                              (pid,)))
    assert scalar(lab_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(30)
    error = outcome.get("error")
    assert isinstance(error, RefreshFailed) and error.retryable
    [row] = _log(lab_dsn)
    assert row["status"] == "ERROR"
    assert row["error_sqlstate"] in ("57P01", None)  # None: the connection dropped before the notice
    assert row["refresh_finished_at"] is not None


def test_overlapping_refreshes_run_one_after_the_other(lab_dsn, lab):
    set_sleep(lab_dsn, 1.5)
    first, first_out = refresh_in_thread(lab_dsn, lab, "lab.mv_slow")
    wait_for(lambda: scalar(lab_dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"))
    second, second_out = refresh_in_thread(lab_dsn, lab, "lab.mv_slow")
    first.join(30)
    second.join(30)
    assert first_out["result"].status == "OK" and second_out["result"].status == "OK"
    rows = _log(lab_dsn)
    assert [r["status"] for r in rows] == ["OK", "OK"]
    # The second one waited for the first (advisory lock) instead of running beside it.
    assert rows[1]["refresh_started_at"] >= rows[0]["refresh_finished_at"]
    assert scalar(lab_dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'") == 0


def _waiting_on_a_lock(dsn: str) -> bool:
    return bool(scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                             " AND application_name LIKE 'mv-refresh refresh%%'"))


@pytest.mark.parametrize(
    ("sabotage", "sqlstate"),
    [("DROP INDEX lab.mv_conc_id", "55000"),                       # the unique index vanished
     ("REFRESH MATERIALIZED VIEW lab.mv_conc WITH NO DATA", "0A000")],  # the view was emptied
)
def test_concurrently_refused_after_the_choice_falls_back_to_plain_once(lab_dsn, lab, sabotage, sqlstate):
    """The choice is made from the catalogs; if PostgreSQL still refuses CONCURRENTLY (the view changed
    in between), the engine falls back to PLAIN once and says why."""
    with connect(lab_dsn) as saboteur:
        saboteur.execute(sabotage)  # holds ACCESS EXCLUSIVE until commit; not yet visible to others
        thread, outcome = refresh_in_thread(lab_dsn, lab, "lab.mv_conc")
        wait_for(lambda: _waiting_on_a_lock(lab_dsn))
        saboteur.commit()
    thread.join(30)
    result = outcome["result"]
    assert result.status == "OK" and result.method == "PLAIN"
    assert f"CONCURRENTLY refused ({sqlstate}" in result.method_reason and "fell back to PLAIN" in result.method_reason
    [row] = _log(lab_dsn)
    assert (row["status"], row["method"]) == ("OK", "PLAIN") and "fell back" in row["method_reason"]
    assert row["rows_after_refresh"] == 1000


def test_a_refresh_that_waits_too_long_is_skipped_naming_the_holder(lab_dsn, lab):
    set_sleep(lab_dsn, 3)
    first, first_out = refresh_in_thread(lab_dsn, lab, "lab.mv_slow")
    holder = wait_for(lambda: scalar(
        lab_dsn, "SELECT max(backend_pid) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"))
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_slow", lock_timeout=0.3)
    first.join(30)
    assert info.value.retryable
    assert info.value.result.status == "SKIPPED"
    assert f"pid {holder}" in info.value.result.error_message
    statuses = sorted(r["status"] for r in _log(lab_dsn))
    assert statuses == ["OK", "SKIPPED"]
    assert first_out["result"].status == "OK"
    # The SKIPPED row was written while the holder refreshed, so it started last; the holder's OK finished
    # last. The latest outcome wins: health and the audit see a fresh view with nothing wrong.
    from mv_refresh.audit import run_audit

    with connect(lab_dsn) as conn:
        health = conn.execute("SELECT status_bucket, last_status, last_error FROM ops.mv_health_of('lab', 'mv_slow')"
                              ).fetchone()
    assert health == ("OK", "OK", None)
    audit = run_audit(lab_dsn, lab)
    assert [f for f in audit.findings if f.view == "lab.mv_slow"] == []


def test_an_invalid_leftover_index_that_fails_a_plain_refresh_is_named_with_its_fix(lab_dsn, lab):
    """A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an INVALID index; a plain refresh rebuilds every index,
    so once the new data holds duplicates it fails 23505 on that leftover. The error says so."""
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lab.dup_src (k integer)")
        conn.execute("INSERT INTO lab.dup_src VALUES (1), (2)")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_dup AS SELECT k FROM lab.dup_src")
        conn.execute("INSERT INTO lab.dup_src VALUES (2)")
        conn.execute("REFRESH MATERIALIZED VIEW lab.mv_dup")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ux_dup ON lab.mv_dup (k)")
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'lab.ux_dup'::regclass"
                            ).fetchone() == (False,)
    catalog = parse_catalog("version: 1\nviews:\n  - name: lab.mv_dup\n", source="t")
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, catalog, "lab.mv_dup")
    message = info.value.result.error_message
    assert info.value.result.error_sqlstate == "23505" and not info.value.retryable
    assert "lab.ux_dup is an INVALID leftover of a failed CREATE INDEX CONCURRENTLY" in message
    assert "DROP INDEX CONCURRENTLY lab.ux_dup" in message
    assert scalar(lab_dsn, "SELECT count(*) FROM lab.mv_dup") == 3  # the old data is still readable


def test_abandoned_running_rows_are_reaped_by_backend_not_by_age(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as alive:
        alive_pid = alive.info.backend_pid
        alive.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, backend_pid, backend_start,"
            " refresh_started_at) VALUES "
            # A backend that is gone (a pid no server has), started an hour ago.
            "('lab', 'mv_conc', 'RUNNING', 2147483000, now() - interval '1 hour', now() - interval '1 hour'),"
            # A backend that is alive, started long ago: old, but not dead.
            "('lab', 'mv_conc', 'RUNNING', %s, (SELECT backend_start FROM pg_stat_activity WHERE pid = %s),"
            " now() - interval '3 days')",
            (alive_pid, alive_pid))
        refresh_view(lab_dsn, lab, "lab.mv_conc")
        rows = _log(lab_dsn)
    assert [(r["backend_pid"] == alive_pid, r["status"]) for r in rows] == [
        (False, "ABANDONED"), (True, "RUNNING"), (False, "OK")]
    assert "is gone" in rows[0]["error_message"]


@pytest.mark.parametrize(
    "name",
    [
        "lab.mv_conc; DROP TABLE lab.src",
        "lab.mv_conc --",
        'lab."mv_conc"; select 1',
        "lab.not_in_catalog",
        "mv_conc",
        "",
    ],
)
def test_bad_or_unknown_names_are_refused_before_any_sql(lab_dsn, lab, name):
    with pytest.raises(CatalogError):
        refresh_view(lab_dsn, lab, name)
    assert _log(lab_dsn) == []
    assert scalar(lab_dsn, "SELECT count(*) FROM lab.src") == 1000


@pytest.mark.parametrize(
    ("name", "message", "sqlstate"),
    [("lab.a_table", "is a table, not a materialized view", "42809"),
     ("lab.a_view", "is a view, not a materialized view", "42809"),
     ("lab.mv_missing", "does not exist in the database", "42P01")],
)
def test_catalog_entries_that_cannot_be_refreshed_fail_with_an_error_row(lab_dsn, lab, name, message, sqlstate):
    """In the catalog but not a refreshable view in the database: an operational failure health must show
    (unlike a name outside the catalog, refused with no row); never retried; no refresh SQL runs."""
    with pytest.raises(RefreshFailed, match=message) as info:
        refresh_view(lab_dsn, lab, name)
    assert not info.value.retryable
    [row] = _log(lab_dsn)
    assert (row["status"], row["error_sqlstate"], row["method"]) == ("ERROR", sqlstate, None)
    assert message in row["error_message"] and "lab catalog, line" in row["error_message"]
    with connect(lab_dsn) as conn:
        health = conn.execute("SELECT status_bucket, last_status, last_error FROM ops.mv_health_of(%s, %s)",
                              lab.get(name).key).fetchone()
    assert health[:2] == ("NO_REFRESH", "ERROR") and message in health[2]


def test_a_quoted_name_works(lab_dsn, lab):
    result = refresh_view(lab_dsn, lab, 'lab."Weird MV"')
    assert result.status == "OK" and result.method == "CONCURRENTLY" and result.rows_after_refresh == 10
    assert [r["mv_name"] for r in _log(lab_dsn)] == ["Weird MV"]


def test_bad_timeouts_are_refused_before_any_sql(lab_dsn, lab):
    with pytest.raises(RefreshRefused, match="lock timeout must be a positive"):
        refresh_view(lab_dsn, lab, "lab.mv_conc", lock_timeout=0)
    assert _log(lab_dsn) == []


def test_retry_classification_of_real_errors(lab_dsn):
    with connect(lab_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as deadlock_like:
            conn.execute("SET statement_timeout = '50ms'; SELECT pg_sleep(1)")
        assert deadlock_like.value.sqlstate == "57014" and is_retryable(deadlock_like.value)
        conn.execute("RESET statement_timeout")
        with pytest.raises(psycopg.Error) as missing:
            conn.execute("SELECT * FROM lab.nope")
        assert missing.value.sqlstate == "42P01" and not is_retryable(missing.value)
        with pytest.raises(psycopg.Error) as cardinality:
            conn.execute("SELECT (SELECT id FROM lab.src)")
        assert cardinality.value.sqlstate == "21000" and not is_retryable(cardinality.value)
    with pytest.raises(psycopg.OperationalError) as unreachable:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    assert is_retryable(unreachable.value)
