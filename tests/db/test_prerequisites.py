"""Prerequisites of CONCURRENTLY (runbook steps 1-3): duplicates, the unique index, its validity."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from mv_refresh import prerequisites
from mv_refresh.catalog import parse_catalog
from mv_refresh.cli import main
from mv_refresh.db import connect
from mv_refresh.embedded import psql_path
from mv_refresh.engine import refresh_view
from mv_refresh.prerequisites import (
    DuplicatesFound,
    PrerequisiteError,
    ensure_unique_index,
    find_duplicates,
    prepare_concurrently,
    verify_unique_index,
)

CATALOG = parse_catalog("""
version: 1
views:
  - name: lab.mv_grain
    grain: [k]
  - name: lab.mv_no_grain
  - name: lab.mv_bad_grain
    grain: [k, not_a_column]
  - name: lab.mv_grain_unpop
    grain: [k]
""", source="prereq catalog")

INDEX = "ux_mv_grain_grain"


@pytest.fixture
def grain_dsn(lab_dsn):
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_grain AS SELECT k, v FROM lab.keyed")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_no_grain AS SELECT k FROM lab.keyed")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_bad_grain AS SELECT k FROM lab.keyed")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_grain_unpop AS SELECT k FROM lab.keyed WITH NO DATA")
    return lab_dsn


def _duplicate(dsn: str, *rows: tuple[int, str]) -> None:
    with connect(dsn, autocommit=True) as conn:
        for row in rows:
            conn.execute("INSERT INTO lab.keyed VALUES (%s, %s)", row)
        conn.execute("REFRESH MATERIALIZED VIEW lab.mv_grain")


def _index(dsn: str):
    with connect(dsn) as conn:
        return conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (f"lab.{INDEX}",)
        ).fetchone()


def test_duplicates_are_found_and_named_and_nothing_is_built(grain_dsn):
    _duplicate(grain_dsn, (5, "again"), (5, "and again"), (9, "v9"))
    report = find_duplicates(grain_dsn, CATALOG, "lab.mv_grain")
    assert (report.duplicate_grains, report.extra_rows, report.total_rows) == (2, 3, 103)
    assert report.top == [{"k": 5, "count_duplicates": 3}, {"k": 9, "count_duplicates": 2}]
    with pytest.raises(DuplicatesFound, match=r"2 grain value\(s\) of \(k\).*no index was built"):
        prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain")
    assert _index(grain_dsn) is None


def test_duplicates_are_checked_in_what_the_next_refresh_produces(grain_dsn):
    """The stored rows predate the duplicates; the view's defining query (the next refresh) has them."""
    with connect(grain_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (5, 'again')")  # no refresh: stored rows stay clean
        assert conn.execute("SELECT count(*) FROM lab.mv_grain WHERE k = 5").fetchone()[0] == 1
    report = find_duplicates(grain_dsn, CATALOG, "lab.mv_grain")
    assert (report.duplicate_grains, report.total_rows, report.top) == (1, 101, [{"k": 5, "count_duplicates": 2}])
    with pytest.raises(DuplicatesFound):
        prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain")
    assert _index(grain_dsn) is None


def test_identical_rows_holding_a_null_are_caught_before_concurrently_drops_them(lab_dsn):
    """PostgreSQL's CONCURRENTLY skips rows holding a NULL in its duplicate check and collapses them silently
    (a plain refresh fails 23505 on the same data): the grain check on the defining query catches it."""
    catalog = parse_catalog("version: 1\nviews:\n  - name: lab.mv_note\n    grain: [k]\n", source="t")
    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lab.noted (k integer, note text)")
        conn.execute("INSERT INTO lab.noted VALUES (1, NULL), (2, 'x')")
        conn.execute("CREATE MATERIALIZED VIEW lab.mv_note AS SELECT k, note FROM lab.noted")
        conn.execute("CREATE UNIQUE INDEX ON lab.mv_note (k)")
        conn.execute("INSERT INTO lab.noted VALUES (1, NULL)")  # an identical row with a NULL
        report = find_duplicates(lab_dsn, catalog, "lab.mv_note")
        assert report.top == [{"k": 1, "count_duplicates": 2}]
        # What would have happened: CONCURRENTLY "succeeds" with a row fewer than the query returns.
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY lab.mv_note")
        assert conn.execute("SELECT count(*) FROM lab.mv_note").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM lab.noted").fetchone()[0] == 3


def test_an_unpopulated_view_is_checked_on_its_query_and_prepared(grain_dsn):
    result = prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain_unpop")
    assert result.duplicates.ok and result.duplicates.total_rows == 100 and result.verified.valid


def test_index_is_built_valid_and_idempotent(grain_dsn):
    lines: list[str] = []
    first = prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain", progress=lines.append)
    assert first.duplicates.ok and first.index.action == "built" and first.verified.valid
    assert "CREATE UNIQUE INDEX ux_mv_grain_grain ON lab.mv_grain USING btree (k)" == first.verified.indexdef
    assert any(line.startswith("step 3/3") for line in lines)
    second = prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain")
    assert second.index.action == "exists"
    assert _index(grain_dsn) == (True,)


def _leave_an_invalid_index(dsn: str) -> None:
    """The runbook's step 2 by hand, cancelled mid-build: PostgreSQL leaves an INVALID index."""
    with connect(dsn) as old, connect(dsn, autocommit=True) as conn:
        # A transaction holding a snapshot: CREATE INDEX CONCURRENTLY waits for it before it finishes.
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM lab.src")
        conn.execute("SET statement_timeout = '300ms'")
        with pytest.raises(Exception, match="statement timeout"):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON lab.mv_grain (k)")
        old.rollback()


def test_an_invalid_leftover_is_dropped_and_rebuilt(grain_dsn):
    _leave_an_invalid_index(grain_dsn)
    assert _index(grain_dsn) == (False,)
    with connect(grain_dsn, autocommit=True) as conn:
        # ... which IF NOT EXISTS then silently accepts:
        conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON lab.mv_grain (k)")
    assert _index(grain_dsn) == (False,)
    with pytest.raises(PrerequisiteError, match="INVALID"):
        verify_unique_index(grain_dsn, CATALOG, "lab.mv_grain")
    lines: list[str] = []
    result = prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain", progress=lines.append)
    assert result.index.action == "rebuilt" and result.verified.valid
    assert any("INVALID (a failed earlier build); dropping it" in line for line in lines)
    assert _index(grain_dsn) == (True,)


def test_a_failed_build_leaves_no_invalid_index(grain_dsn):
    _duplicate(grain_dsn, (7, "clash"))
    with pytest.raises(PrerequisiteError, match=r"\[23505\].*duplicate check.*INVALID leftover was dropped") as info:
        ensure_unique_index(grain_dsn, CATALOG, "lab.mv_grain")  # step 2 alone, skipping step 1
    assert "clash" not in str(info.value)  # the DETAIL (row data) stays out
    assert _index(grain_dsn) is None


def test_after_prepare_the_refresh_runs_concurrently(grain_dsn):
    assert refresh_view(grain_dsn, CATALOG, "lab.mv_grain").method == "PLAIN"
    prepare_concurrently(grain_dsn, CATALOG, "lab.mv_grain")
    assert refresh_view(grain_dsn, CATALOG, "lab.mv_grain").method == "CONCURRENTLY"


@pytest.mark.parametrize(("view", "message"), [
    ("lab.mv_no_grain", "has no grain in the catalog.*add `grain:"),
    ("lab.mv_bad_grain", "not_a_column do not exist on the view"),
])
def test_bad_prerequisites_are_explained(grain_dsn, view, message):
    with pytest.raises(PrerequisiteError, match=message):
        prepare_concurrently(grain_dsn, CATALOG, view)


def test_a_long_build_shows_progress(grain_dsn, monkeypatch):
    monkeypatch.setattr(prerequisites, "PROGRESS_AFTER_SECONDS", 0.2)
    monkeypatch.setattr(prerequisites, "PROGRESS_EVERY_SECONDS", 0.2)
    lines: list[str] = []
    with connect(grain_dsn) as old_snapshot:
        # CREATE INDEX CONCURRENTLY waits for transactions older than it: hold one open, with a snapshot.
        old_snapshot.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old_snapshot.execute("SELECT count(*) FROM lab.src")
        thread = threading.Thread(target=ensure_unique_index, args=(grain_dsn, CATALOG, "lab.mv_grain"),
                                  kwargs={"progress": lines.append})
        thread.start()
        deadline = time.monotonic() + 20
        while not any("waiting for" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        old_snapshot.commit()
    thread.join(30)
    assert any("waiting for 1 older transaction" in line for line in lines), lines
    assert _index(grain_dsn) == (True,)


def test_cli_exit_codes_and_json(grain_dsn, monkeypatch, tmp_path, capsys):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_TEXT)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    monkeypatch.setenv("MV_REFRESH_DSN", grain_dsn)
    _duplicate(grain_dsn, (3, "dup"))
    assert main(["prepare-concurrently", "lab.mv_grain"]) == 1
    out = capsys.readouterr()
    assert "count_duplicates" in out.out and "no index was built" in out.err
    assert main(["prepare-concurrently", "lab.mv_grain", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["duplicates"]["top"] == [{"k": 3, "count_duplicates": 2}]
    with connect(grain_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM lab.keyed WHERE v = 'dup'")
        conn.execute("REFRESH MATERIALIZED VIEW lab.mv_grain")
    assert main(["prepare-concurrently", "lab.mv_grain", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] and payload["verified"]["valid"] and payload["index"]["action"] == "built"
    assert main(["prepare-concurrently", "lab.not_listed"]) == 2


CATALOG_TEXT = """
version: 1
views:
  - name: lab.mv_grain
    grain: [k]
"""


def test_runbook_scripts_run_with_psql_f(demo_dsn):
    from mv_refresh.catalog import load_catalog
    from mv_refresh.paths import SQL_OPS_DIR

    catalog = load_catalog()
    for spec in catalog.views:
        refresh_view(demo_dsn, catalog, spec)
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX ops.ux_mv_yango_cabinet_claims_for_collection_grain")

    def psql_f(name: str) -> str:
        proc = subprocess.run([psql_path(), "-X", "-v", "ON_ERROR_STOP=1", "-d", demo_dsn, "-f", str(SQL_OPS_DIR / name)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    duplicates = psql_f("yango_cabinet_claims_mv_duplicates.sql")
    assert "duplicate_grains" in duplicates and "count_duplicates" in duplicates and "(0 rows)" in duplicates
    index = psql_f("mv_yango_cabinet_claims_unique_index.sql")
    assert "ux_mv_yango_cabinet_claims_for_collection_grain" in index and "(1 row)" in index
    verified = verify_unique_index(demo_dsn, catalog, "ops.mv_yango_cabinet_claims_for_collection")
    assert verified.valid
    assert refresh_view(demo_dsn, catalog, "ops.mv_yango_cabinet_claims_for_collection").method == "CONCURRENTLY"
