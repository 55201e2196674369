"""The runbook's troubleshooting (log, blockers, plan against pg_depend), against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from lab import refresh_in_thread, scalar, set_sleep, wait_for
from psycopg.pq import TransactionStatus

from mv_refresh.catalog import CatalogError, load_catalog, parse_catalog
from mv_refresh.db import connect
from mv_refresh.engine import refresh_view
from mv_refresh.troubleshoot import (
    LOCK_KIND_ADVISORY,
    LOCK_KIND_RELATION,
    LOG_COLUMNS,
    STATUSES,
    PlanProblem,
    _recent_log_statement,
    lock_report,
    real_dependencies,
    recent_log,
    validate_plan,
)

# --------------------------------------------------------------------------------------------------
# Helpers


def _insert_log(conn, schema, name, status, *, started_ago: str, message=None) -> int:
    """A hand-written finished row, started ``started_ago`` (an interval) before now."""
    return conn.execute(
        "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
        " refresh_finished_at, refreshed_at, error_message, run_by)"
        " VALUES (%(s)s, %(n)s, %(st)s, now() - %(ago)s::interval, now() - %(ago)s::interval + interval '1 s',"
        "         CASE WHEN %(st)s = 'OK' THEN now() - %(ago)s::interval + interval '1 s' END, %(msg)s, 'sql')"
        " RETURNING id",
        {"s": schema, "n": name, "st": status, "ago": started_ago, "msg": message},
    ).fetchone()[0]


# --------------------------------------------------------------------------------------------------
# recent_log


@pytest.fixture
def logged(lab_dsn, lab):
    """A log with engine rows (two views) and hand-written rows (older, newer, another status, a view
    outside the catalog); returns ``{label: id}``."""
    ids = {
        "conc_1": refresh_view(lab_dsn, lab, "lab.mv_conc").log_id,
        "noidx_1": refresh_view(lab_dsn, lab, "lab.mv_noidx").log_id,
        "conc_2": refresh_view(lab_dsn, lab, "lab.mv_conc").log_id,
    }
    with connect(lab_dsn, autocommit=True) as conn:
        ids["conc_old_error"] = _insert_log(conn, "lab", "mv_conc", "ERROR", started_ago="3 days",
                                            message="old failure")
        ids["weird_skipped"] = _insert_log(conn, "lab", "Weird MV", "SKIPPED", started_ago="2 hours")
        ids["conc_future_error"] = _insert_log(conn, "lab", "mv_conc", "ERROR", started_ago="-1 hour",
                                               message="newest failure")
        ids["unlisted"] = _insert_log(conn, "lab", "not_in_catalog", "OK", started_ago="0 s")
    return ids


def test_recent_log_lists_catalog_views_newest_first(lab_dsn, lab, logged):
    with connect(lab_dsn, autocommit=True) as conn:
        rows = recent_log(conn, lab)
    assert [r["id"] for r in rows] == [
        logged["conc_future_error"], logged["conc_2"], logged["noidx_1"], logged["conc_1"],
        logged["weird_skipped"], logged["conc_old_error"],
    ]
    assert all(tuple(r) == LOG_COLUMNS for r in rows)
    starts = [r["refresh_started_at"] for r in rows]
    assert starts == sorted(starts, reverse=True)
    by_id = {r["id"]: r for r in rows}
    engine_row = by_id[logged["conc_2"]]
    assert engine_row["view"] == "lab.mv_conc" and engine_row["status"] == "OK"
    assert engine_row["method"] == "CONCURRENTLY" and engine_row["rows_after_refresh"] == 1000
    assert engine_row["run_by"] == "cli" and engine_row["backend_pid"] > 0
    assert engine_row["duration_ms"] >= 0 and engine_row["refresh_finished_at"] is not None
    assert by_id[logged["noidx_1"]]["method"] == "PLAIN"
    assert "no valid unique index" in by_id[logged["noidx_1"]]["method_reason"]
    assert by_id[logged["weird_skipped"]]["view"] == 'lab."Weird MV"'
    assert by_id[logged["conc_future_error"]]["error_message"] == "newest failure"


def test_recent_log_filters_by_view_status_and_limit(lab_dsn, lab, logged):
    with connect(lab_dsn, autocommit=True) as conn:
        conc = recent_log(conn, lab, "lab.mv_conc")
        assert [r["id"] for r in conc] == [logged["conc_future_error"], logged["conc_2"], logged["conc_1"],
                                           logged["conc_old_error"]]
        assert {r["view"] for r in conc} == {"lab.mv_conc"}
        errors = recent_log(conn, lab, "lab.mv_conc", status="ERROR")
        assert [r["id"] for r in errors] == [logged["conc_future_error"], logged["conc_old_error"]]
        assert [r["id"] for r in recent_log(conn, lab, status="ok", limit=2)] == [logged["conc_2"],
                                                                                  logged["noidx_1"]]
        assert [r["id"] for r in recent_log(conn, lab, "lab.mv_conc", limit=1)] == [logged["conc_future_error"]]
        assert [r["id"] for r in recent_log(conn, lab, 'lab."Weird MV"')] == [logged["weird_skipped"]]
        assert recent_log(conn, lab, "lab.mv_slow") == []
        assert recent_log(conn, lab, status="RUNNING") == []
        assert len(recent_log(conn, lab, limit=10_000)) == 6


@pytest.mark.parametrize("status", ["DONE", "", "OK; drop table ops.mv_refresh_log", 1])
def test_recent_log_refuses_an_unknown_status_naming_the_allowed_ones(ops_dsn, lab, status):
    with connect(ops_dsn, autocommit=True) as conn, pytest.raises(ValueError) as info:
        recent_log(conn, lab, status=status)
    assert all(s in str(info.value) for s in STATUSES)


@pytest.mark.parametrize("limit", [0, -1, 10_001, 2.5, "20", True])
def test_recent_log_refuses_a_limit_out_of_range(ops_dsn, lab, limit):
    with connect(ops_dsn, autocommit=True) as conn, pytest.raises(ValueError, match="limit"):
        recent_log(conn, lab, limit=limit)


@pytest.mark.parametrize("view", ["lab.not_in_catalog", "lab.mv_conc; DROP TABLE lab.src", "mv_conc"])
def test_recent_log_accepts_only_catalog_views(ops_dsn, lab, view):
    with connect(ops_dsn, autocommit=True) as conn, pytest.raises(CatalogError):
        recent_log(conn, lab, view)


def test_recent_log_reads_through_the_log_index(ops_dsn):
    names = [f"mv_{i:02d}" for i in range(40)]
    catalog = parse_catalog("version: 1\nviews:\n" + "".join(f"  - name: ops.{n}\n" for n in names))
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
            " refresh_finished_at, refreshed_at)"
            " SELECT 'ops', format('mv_%s', lpad((g % 50)::text, 2, '0')), 'OK',"
            "        now() - g * interval '1 minute', now() - g * interval '1 minute',"
            "        now() - g * interval '1 minute'"
            " FROM generate_series(1, 50000) AS g")
        conn.execute("ANALYZE ops.mv_refresh_log")
        for view in (None, "ops.mv_07"):
            for status in (None, "ERROR"):
                query, params, _shown = _recent_log_statement(catalog, view, status, 20)
                plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params))
                assert "mv_refresh_log_view_started_idx" in plan, plan
                assert "Seq Scan on mv_refresh_log" not in plan, plan
        rows = recent_log(conn, catalog, limit=5)
    assert len(rows) == 5 and [r["view"] for r in rows] == ["ops.mv_01", "ops.mv_02", "ops.mv_03",
                                                            "ops.mv_04", "ops.mv_05"]


def test_reading_leaves_no_transaction_behind(lab_dsn, lab, logged):
    with connect(lab_dsn) as conn:  # not autocommit
        recent_log(conn, lab)
        lock_report(conn, lab)
        validate_plan(conn, lab)
        real_dependencies(conn, lab)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        conn.execute("SELECT 1")  # the caller's own transaction is left alone
        recent_log(conn, lab)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.rollback()


# --------------------------------------------------------------------------------------------------
# lock_report


def _waiting(dsn: str, kind: str) -> bool:
    """A lock wait in this test's database (other tests on a shared server wait for locks of their own)."""
    return bool(scalar(dsn, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = %s AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())", (kind,)))


def test_lock_report_shows_a_reader_holding_the_view_and_the_refresh_it_blocks(lab_dsn, lab):
    with connect(lab_dsn) as holder, connect(lab_dsn) as me:
        holder.execute("SELECT count(*) FROM lab.mv_conc /* monthly report */")
        holder_pid, my_pid = holder.info.backend_pid, me.info.backend_pid
        # The caller's own session reads a catalog view too (in an open transaction): not reported.
        me.execute("SELECT count(*) FROM lab.mv_noidx")
        before = lock_report(me, lab)  # reads pg_stat_activity inside the caller's transaction
        assert [(r["pid"], r["mode"], r["granted"]) for r in before] == [(holder_pid, "AccessShareLock", True)]
        thread, outcome = refresh_in_thread(lab_dsn, lab, "lab.mv_conc", mode="plain", lock_timeout=30)
        try:
            wait_for(lambda: _waiting(lab_dsn, "relation"))
            # The same transaction asks again: the waiter is seen with its session's details.
            rows = lock_report(me, lab)
            assert me.info.transaction_status == TransactionStatus.INTRANS, "caller's transaction kept"
        finally:
            holder.rollback()
            thread.join(30)
        me.rollback()
    assert outcome["result"].status == "OK"
    assert my_pid not in {r["pid"] for r in rows}

    [held] = [r for r in rows if r["pid"] == holder_pid]
    assert held["view"] == "lab.mv_conc" and held["lock_kind"] == LOCK_KIND_RELATION
    assert held["mode"] == "AccessShareLock" and held["granted"] is True and held["blocked_by"] == []
    assert held["state"] == "idle in transaction" and "monthly report" in held["query"]
    assert held["waiting_seconds"] is None and held["xact_age_seconds"] >= 0
    assert held["usename"] and held["application_name"] == "mv-refresh"

    [waiter] = [r for r in rows if not r["granted"]]
    refresher = waiter["pid"]
    assert waiter["view"] == "lab.mv_conc" and waiter["lock_kind"] == LOCK_KIND_RELATION
    assert waiter["mode"] == "AccessExclusiveLock" and waiter["blocked_by"] == [holder_pid]
    assert waiter["waiting_seconds"] >= 0 and waiter["state"] == "active"
    assert waiter["query"].startswith("REFRESH MATERIALIZED VIEW")
    assert waiter["application_name"].startswith("mv-refresh refresh")
    # The waiting refresh already holds the view's refresh advisory lock.
    [advisory] = [r for r in rows if r["lock_kind"] == LOCK_KIND_ADVISORY]
    assert advisory["pid"] == refresher and advisory["granted"] is True and advisory["mode"] == "ExclusiveLock"
    assert {r["view"] for r in rows} == {"lab.mv_conc"}


def test_lock_report_shows_the_refresh_holding_the_advisory_lock_and_one_queued_behind(lab_dsn, lab):
    set_sleep(lab_dsn, 2)
    first, first_out = refresh_in_thread(lab_dsn, lab, "lab.mv_slow")
    running = wait_for(lambda: scalar(
        lab_dsn, "SELECT max(backend_pid) FROM ops.mv_refresh_log WHERE status = 'RUNNING'"))
    second, second_out = refresh_in_thread(lab_dsn, lab, "lab.mv_slow", lock_timeout=30)
    try:
        wait_for(lambda: _waiting(lab_dsn, "advisory"))
        with connect(lab_dsn, autocommit=True) as conn:
            rows = lock_report(conn, lab, "lab.mv_slow")
            everything = lock_report(conn, lab)
            assert lock_report(conn, lab, "lab.mv_conc") == []
            assert lock_report(conn, lab, "lab.mv_missing") == []  # absent from the database: skipped
            with pytest.raises(CatalogError):
                lock_report(conn, lab, "lab.nope")
    finally:
        first.join(30)
        second.join(30)
    assert first_out["result"].status == "OK" and second_out["result"].status == "OK"
    def shape(report):
        return sorted((r["pid"], r["lock_kind"], r["mode"], r["granted"]) for r in report)

    assert shape(rows) == shape(everything)
    assert {r["view"] for r in everything} == {"lab.mv_slow"}

    [holding] = [r for r in rows if r["lock_kind"] == LOCK_KIND_ADVISORY and r["granted"]]
    assert holding["pid"] == running and holding["blocked_by"] == []
    assert holding["query"].startswith("REFRESH MATERIALIZED VIEW CONCURRENTLY")
    assert holding["xact_age_seconds"] is not None and holding["xact_age_seconds"] >= 0
    [queued] = [r for r in rows if r["lock_kind"] == LOCK_KIND_ADVISORY and not r["granted"]]
    assert queued["pid"] != running and queued["blocked_by"] == [running]
    assert "pg_advisory_lock" in queued["query"] and queued["waiting_seconds"] >= 0
    # The running refresh also holds the view itself (EXCLUSIVE for CONCURRENTLY).
    relation_modes = {r["mode"] for r in rows if r["lock_kind"] == LOCK_KIND_RELATION and r["pid"] == running}
    assert "ExclusiveLock" in relation_modes


def test_lock_report_is_empty_when_nothing_holds_a_catalog_view(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        assert lock_report(conn, lab) == []


# --------------------------------------------------------------------------------------------------
# real_dependencies / validate_plan


def test_the_shipped_catalog_matches_the_demo_warehouse(demo_dsn):
    catalog = load_catalog()
    with connect(demo_dsn, autocommit=True) as conn:
        assert validate_plan(conn, catalog) == []
        deps = real_dependencies(conn, catalog)
    assert deps == {view.key: set(view.upstream) for view in catalog.views}


def test_lab_catalog_entries_that_are_not_materialized_views(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        problems = validate_plan(conn, lab)
        deps = real_dependencies(conn, lab)
    assert [(p.severity, p.view) for p in problems] == [
        ("ERROR", "lab.a_table"), ("ERROR", "lab.a_view"), ("ERROR", "lab.mv_missing")]
    assert "is a table, not a materialized view" in problems[0].message
    assert "is a plain view, not a materialized view" in problems[1].message
    assert "does not exist" in problems[2].message and "remove it from the catalog" in problems[2].fix
    assert "line " in problems[2].fix
    assert ("lab", "mv_missing") not in deps and deps[("lab", "mv_conc")] == set()


PLAN_SQL = """
CREATE SCHEMA plan;
CREATE TABLE plan.src (id integer PRIMARY KEY, v integer NOT NULL);
INSERT INTO plan.src SELECT g, g % 7 FROM generate_series(1, 100) AS g;

CREATE MATERIALIZED VIEW plan.mv_a AS SELECT id, v FROM plan.src;
CREATE MATERIALIZED VIEW plan.mv_b AS SELECT a.id, a.v, s.v AS w FROM plan.mv_a AS a JOIN plan.src AS s USING (id);
CREATE MATERIALIZED VIEW plan.mv_c AS SELECT b.id FROM plan.mv_b AS b JOIN plan.mv_a AS a USING (id);
CREATE MATERIALIZED VIEW plan.mv_unrelated AS SELECT id FROM plan.src;

-- Never in a catalog, and a view that reads it.
CREATE MATERIALIZED VIEW plan.mv_outside AS SELECT id FROM plan.src;
CREATE MATERIALIZED VIEW plan.mv_reads_outside AS SELECT o.id FROM plan.mv_outside AS o;

-- mv_a reached through two plain views (and a quoted name).
CREATE VIEW plan.v_inner AS SELECT id FROM plan.mv_a;
CREATE VIEW plan.v_outer AS SELECT i.id FROM plan.v_inner AS i JOIN plan.src AS s USING (id);
CREATE MATERIALIZED VIEW plan."Through View" AS SELECT id FROM plan.v_outer;

-- mv_a read inside a function: invisible to pg_depend.
CREATE FUNCTION plan.ids_of_a() RETURNS SETOF integer LANGUAGE sql STABLE AS 'SELECT id FROM plan.mv_a';
CREATE MATERIALIZED VIEW plan.mv_hidden AS SELECT f.id FROM plan.ids_of_a() AS f (id);
"""


@pytest.fixture
def plan_dsn(ops_dsn):
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute(PLAN_SQL)
    return ops_dsn


def _catalog(*entries: str):
    """A catalog from ``"name"`` or ``"name <- up1, up2"`` entries, in this order."""
    lines = ["version: 1", "views:"]
    for entry in entries:
        name, _sep, upstream = entry.partition(" <- ")
        lines.append(f"  - name: '{name}'")
        if upstream:
            lines.append("    upstream: [" + ", ".join(f"'{u}'" for u in upstream.split(", ")) + "]")
    return parse_catalog("\n".join(lines) + "\n", source="plan.yaml")


def _validate(dsn, catalog) -> list[PlanProblem]:
    with connect(dsn, autocommit=True) as conn:
        return validate_plan(conn, catalog)


def test_real_dependencies_follow_plain_views_and_stop_at_materialized_views(plan_dsn):
    catalog = _catalog("plan.mv_a", "plan.mv_b", "plan.mv_c", "plan.mv_reads_outside", 'plan."Through View"',
                       "plan.mv_hidden", "plan.mv_gone")
    with connect(plan_dsn, autocommit=True) as conn:
        deps = real_dependencies(conn, catalog)
    assert deps == {
        ("plan", "mv_a"): set(),
        ("plan", "mv_b"): {("plan", "mv_a")},
        # mv_c reads mv_b and mv_a directly; mv_b's own read of mv_a is not mv_c's.
        ("plan", "mv_c"): {("plan", "mv_a"), ("plan", "mv_b")},
        ("plan", "mv_reads_outside"): {("plan", "mv_outside")},
        ("plan", "Through View"): {("plan", "mv_a")},
        ("plan", "mv_hidden"): set(),
    }


def test_a_correct_plan_has_no_problems(plan_dsn):
    catalog = _catalog("plan.mv_a", "plan.mv_b <- plan.mv_a", "plan.mv_c <- plan.mv_a, plan.mv_b",
                       'plan."Through View" <- plan.mv_a', "plan.mv_unrelated")
    assert _validate(plan_dsn, catalog) == []


def test_a_read_the_catalog_does_not_declare_is_an_error(plan_dsn):
    catalog = _catalog("plan.mv_a", "plan.mv_b", "plan.mv_c <- plan.mv_b")
    problems = _validate(plan_dsn, catalog)
    assert [(p.severity, p.view) for p in problems] == [("ERROR", "plan.mv_b"), ("ERROR", "plan.mv_c")]
    assert "reads plan.mv_a" in problems[0].message and "upstream does not list it" in problems[0].message
    assert problems[0].fix.startswith("add plan.mv_a to the upstream of plan.mv_b (plan.yaml, line ")
    assert "reads plan.mv_a" in problems[1].message


def test_a_read_through_plain_views_counts_and_is_named(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_a", 'plan."Through View"'))
    assert [(p.severity, p.view) for p in problems] == [("ERROR", 'plan."Through View"')]
    assert "through the plain views plan.v_outer -> plan.v_inner" in problems[0].message
    assert "add plan.mv_a to the upstream of" in problems[0].fix


def test_a_read_of_a_view_listed_later_is_an_error_saying_move_it(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_b", "plan.mv_a"))
    assert len(problems) == 1
    [problem] = problems
    assert (problem.severity, problem.view) == ("ERROR", "plan.mv_b")
    assert "lists below it" in problem.message and "plan.mv_a" in problem.message
    assert problem.fix == "move plan.mv_a above plan.mv_b in the catalog, and add it to the upstream of plan.mv_b"


def test_an_upstream_that_is_not_read_is_a_warning(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_a", "plan.mv_unrelated <- plan.mv_a"))
    assert [(p.severity, p.view) for p in problems] == [("WARN", "plan.mv_unrelated")]
    assert "lists plan.mv_a as upstream, but pg_depend shows no read of it" in problems[0].message
    assert "calls" not in problems[0].message
    assert problems[0].fix.startswith("remove plan.mv_a from the upstream of plan.mv_unrelated")
    assert "inside a function" in problems[0].fix


def test_an_upstream_read_inside_a_function_is_a_warning_naming_the_function(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_a", "plan.mv_hidden <- plan.mv_a"))
    assert [(p.severity, p.view) for p in problems] == [("WARN", "plan.mv_hidden")]
    assert "plan.ids_of_a()" in problems[0].message


def test_a_read_of_a_materialized_view_outside_the_catalog_is_a_warning(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_reads_outside"))
    assert [(p.severity, p.view) for p in problems] == [("WARN", "plan.mv_reads_outside")]
    assert "plan.mv_outside" in problems[0].message and "not in the catalog" in problems[0].message
    assert "refreshed elsewhere" in problems[0].fix


def test_a_missing_view_is_an_error(plan_dsn):
    problems = _validate(plan_dsn, _catalog("plan.mv_a", "plan.mv_gone <- plan.mv_a"))
    assert [(p.severity, p.view) for p in problems] == [("ERROR", "plan.mv_gone")]
    assert "does not exist" in problems[0].message
    assert "plan.yaml, line 4" in problems[0].fix


def test_every_problem_at_once_in_catalog_order(plan_dsn):
    catalog = _catalog(
        "plan.mv_b",                                    # reads mv_a, listed below
        "plan.mv_a",
        "plan.mv_gone",                                 # missing
        "plan.mv_unrelated <- plan.mv_a",               # superfluous
        'plan."Through View"',                          # undeclared, through plain views
        "plan.mv_c <- plan.mv_b",                       # undeclared mv_a
        "plan.mv_reads_outside",                        # unlisted matview
    )
    problems = _validate(plan_dsn, catalog)
    assert [(p.severity, p.view) for p in problems] == [
        ("ERROR", "plan.mv_b"),
        ("ERROR", "plan.mv_gone"),
        ("WARN", "plan.mv_unrelated"),
        ("ERROR", 'plan."Through View"'),
        ("ERROR", "plan.mv_c"),
        ("WARN", "plan.mv_reads_outside"),
    ]
    assert all(p.fix and p.message for p in problems)
    assert str(problems[0]).startswith("ERROR plan.mv_b: reads plan.mv_a")
    assert problems[1].as_dict()["severity"] == "ERROR"


def test_names_reach_the_database_only_as_parameters(plan_dsn):
    """A catalog name that would be SQL if spliced in is just a name that does not exist."""
    catalog = _catalog('plan."mv_a; DROP TABLE plan.src"', "plan.mv_a")
    with connect(plan_dsn, autocommit=True) as conn:
        problems = validate_plan(conn, catalog)
        assert lock_report(conn, catalog) == []
        assert recent_log(conn, catalog, 'plan."mv_a; DROP TABLE plan.src"') == []
    assert [(p.severity, p.view) for p in problems] == [("ERROR", 'plan."mv_a; DROP TABLE plan.src"')]
    assert scalar(plan_dsn, "SELECT count(*) FROM plan.src") == 100


def test_psycopg_errors_are_not_swallowed(ops_dsn, lab):
    with connect(ops_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE ops.mv_refresh_log CASCADE")
        with pytest.raises(psycopg.errors.UndefinedTable):
            recent_log(conn, lab)
