"""The ops schema: versioned migrations applied by init-db, twice, concurrently, and verified."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from runbook import runbook_sql_blocks

from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.migrations import (
    MigrationError,
    applied_versions,
    apply_migrations,
    discover_migrations,
    init_db,
)
from mv_refresh.paths import SQL_OPS_DIR


def test_migrations_apply_once_then_do_nothing(empty_dsn):
    first = apply_migrations(empty_dsn)
    assert [m.version for m in first] == [m.version for m in discover_migrations()]
    assert len(first) >= 2
    assert apply_migrations(empty_dsn) == []
    with connect(empty_dsn) as conn:
        assert applied_versions(conn) == [m.version for m in first]
        tables = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'ops'")}
    assert {"mv_refresh_log", "mv_catalog", "schema_migrations", "v_mv_health",
            "v_yango_cabinet_claims_mv_health"} <= tables


def test_migrations_are_idempotent_sql_on_their_own(empty_dsn):
    """Each file can be replayed by hand (psql -f) on a schema that already has it."""
    apply_migrations(empty_dsn)
    with connect(empty_dsn) as conn:
        for migration in discover_migrations():
            conn.execute(migration.sql)


def test_concurrent_init_db_runs_serialise(empty_dsn):
    errors: list[BaseException] = []
    applied: list[int] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            applied.extend(m.version for m in apply_migrations(empty_dsn))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # Every migration applied exactly once across the four racing runs.
    assert sorted(applied) == [m.version for m in discover_migrations()]
    with connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ops.schema_migrations").fetchone()[0] == len(applied)


def test_a_changed_migration_is_refused_but_its_comments_may_be_corrected(empty_dsn, tmp_path: Path):
    folder = tmp_path / "ops"
    shutil.copytree(SQL_OPS_DIR, folder)
    apply_migrations(empty_dsn, directory=folder)
    target = sorted(folder.glob("V001__*.sql"))[0]
    target.write_text("-- a corrected explanation\n\n" + target.read_text() + "\n-- and another\n")
    assert apply_migrations(empty_dsn, directory=folder) == []
    target.write_text(target.read_text().replace("status              text        NOT NULL,",
                                                 "status              text        NULL,"))
    with pytest.raises(MigrationError, match=r"V001__.*changed after it was applied.*new migration"):
        apply_migrations(empty_dsn, directory=folder)


def test_whole_file_checksums_of_earlier_versions_are_recognised_and_upgraded(empty_dsn):
    """Databases migrated by 0.1 recorded sha256 of the whole file of V001-V003 (whose comments have since been
    corrected): still accepted, and rewritten to the comment-free checksum."""
    earlier = {1: "d0bd662ec87ef4bd7d9f03d8525639a49ef6698ce3f5be3998cdb2f383f6de98",
               2: "da7e4d16ebbd588ac5b4920069eda71f8c8eba3a91d8310afbc636a37de58020",
               3: "c49bd4b82e9c8b3362bc961aef56c50c386f9900adb9db1fa1a695e1a98d6995"}
    apply_migrations(empty_dsn)
    current = {m.version: m.checksum for m in discover_migrations()}
    with connect(empty_dsn, autocommit=True) as conn:
        for version, checksum in earlier.items():
            conn.execute("UPDATE ops.schema_migrations SET checksum = %s WHERE version = %s", (checksum, version))
    assert apply_migrations(empty_dsn) == []
    with connect(empty_dsn) as conn:
        recorded = dict(conn.execute("SELECT version, checksum FROM ops.schema_migrations").fetchall())
    assert recorded == current
    with connect(empty_dsn, autocommit=True) as conn:
        conn.execute("UPDATE ops.schema_migrations SET checksum = repeat('0', 64) WHERE version = 2")
    with pytest.raises(MigrationError, match="V002__"):
        apply_migrations(empty_dsn)


def test_a_badly_named_migration_is_refused(tmp_path: Path):
    (tmp_path / "V1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"V1_oops\.sql.*V<NNN>__"):
        discover_migrations(tmp_path)


def test_a_failing_migration_applies_nothing(empty_dsn, tmp_path: Path):
    folder = tmp_path / "ops"
    shutil.copytree(SQL_OPS_DIR, folder)
    (folder / "V900__broken.sql").write_text("CREATE TABLE ops.fine (id int);\nSELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match="V900__broken.sql failed"):
        apply_migrations(empty_dsn, directory=folder)
    with connect(empty_dsn) as conn:
        # One transaction: neither the good migrations nor the half of the broken one stayed.
        assert conn.execute("SELECT to_regclass('ops.mv_refresh_log')").fetchone()[0] is None
        assert conn.execute("SELECT to_regclass('ops.fine')").fetchone()[0] is None


CATALOG_TWO = """
version: 1
views:
  - name: ops.a_view
  - name: ops.b_view
    upstream: [ops.a_view]
    critical: true
    warn_after_hours: 2
    crit_after_hours: 5
"""


def test_init_db_mirrors_the_catalog(empty_dsn):
    init_db(empty_dsn, parse_catalog(CATALOG_TWO))
    with connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT mv_name, position, is_critical, warn_after_hours, crit_after_hours, upstream "
            "FROM ops.mv_catalog ORDER BY position").fetchall()
        assert rows == [("a_view", 0, False, 24, 48, []), ("b_view", 1, True, 2, 5, ["ops.a_view"])]
    # A view dropped from the catalog disappears from the mirror (and so from ops.v_mv_health).
    init_db(empty_dsn, parse_catalog("version: 1\nviews:\n  - name: ops.b_view\n"))
    with connect(empty_dsn) as conn:
        assert conn.execute("SELECT mv_name, position FROM ops.mv_catalog").fetchall() == [("b_view", 0)]


def _runbook_query(marker: str) -> str:
    """The runbook's SQL block that contains ``marker``, verbatim (tests/runbook.py reads the runbook)."""
    matches = [q for q in runbook_sql_blocks() if marker in q]
    assert matches, f"the runbook has no SQL block with {marker!r}"
    return matches[0]


RUNBOOK_QUERIES = {
    "health": _runbook_query("SELECT * FROM ops.v_yango_cabinet_claims_mv_health;"),
    "last_error": _runbook_query("SELECT error_message, refresh_started_at"),
    "dependencies": _runbook_query("MAX(refreshed_at) as last_refresh"),
    "running": _runbook_query("AND status = 'RUNNING'"),
}


def test_runbook_queries_run_verbatim(ops_dsn):
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_finished_at, refreshed_at,"
            " rows_after_refresh) VALUES "
            "('ops', 'mv_yango_payments_raw_current', 'OK', clock_timestamp(), clock_timestamp(), 10),"
            "('ops', 'mv_yango_cabinet_claims_for_collection', 'ERROR', clock_timestamp(), NULL, NULL)")
        conn.execute("UPDATE ops.mv_refresh_log SET error_message = 'boom' WHERE status = 'ERROR'")
        health = conn.execute(RUNBOOK_QUERIES["health"]).fetchall()
        assert len(health) == 1 and health[0][2] == "NO_REFRESH" and health[0][3] == "ERROR"
        assert conn.execute(RUNBOOK_QUERIES["last_error"]).fetchone()[0] == "boom"
        deps = conn.execute(RUNBOOK_QUERIES["dependencies"]).fetchall()
        assert [(s, m) for s, m, _ in deps] == [("ops", "mv_yango_payments_raw_current")]
        assert conn.execute(RUNBOOK_QUERIES["running"]).fetchall() == []


def test_runbook_queries_use_the_log_indexes(ops_dsn):
    """With enough rows, the troubleshooting queries are index scans, not scans of the whole log."""
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
            " refresh_finished_at, refreshed_at) "
            "SELECT 'ops', 'mv_' || (g % 200), 'OK', t, t, t "
            "FROM generate_series(1, 20000) g, LATERAL (SELECT now() - g * interval '1 minute' AS t) x")
        conn.execute("ANALYZE ops.mv_refresh_log")
        for name in ("last_error", "running", "health"):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + RUNBOOK_QUERIES[name]))
            assert "Seq Scan on mv_refresh_log" not in plan, (name, plan)
