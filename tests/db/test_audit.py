"""The health audit against a real PostgreSQL: each finding induced for real on the lab database."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mv_refresh.audit import SEVERITIES, AuditReport, Finding, run_audit
from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.engine import RefreshFailed, refresh_view
from mv_refresh.migrations import sync_catalog

# Lab timeouts: a RUNNING row counts as stuck after 60 + 10 = 70 s.
_HEADER = """
version: 1
defaults:
  lock_timeout_seconds: 10
  statement_timeout_seconds: 60
views:
"""

GONE_PID = 2147483000


def _catalog(views: str):
    return parse_catalog(_HEADER + views, source="test catalog")


def _exec(dsn: str, query, params=None) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


def _scalar(dsn: str, query, params=None):
    with connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def _log(dsn: str, view: str, status: str, *, hours_ago: float = 0.0, **columns) -> None:
    """A hand-written log row for ``lab.<view>`` that satisfies the table's CHECKs."""
    values = {
        "schema_name": "lab",
        "mv_name": view,
        "status": status,
        **columns,
    }
    ago = sql.SQL("now() - make_interval(secs => {})").format(sql.Literal(hours_ago * 3600))
    stamps = {"refresh_started_at": ago}
    if status != "RUNNING":
        stamps["refresh_finished_at"] = ago
    if status == "OK":
        stamps["refreshed_at"] = ago
    names = [sql.Identifier(k) for k in [*values, *stamps]]
    exprs = [sql.Placeholder(k) for k in values] + list(stamps.values())
    _exec(dsn, sql.SQL("INSERT INTO ops.mv_refresh_log ({}) VALUES ({})").format(
        sql.SQL(", ").join(names), sql.SQL(", ").join(exprs)), values)


def _find(report: AuditReport, check: str, view: str | None = None) -> list[Finding]:
    return [f for f in report.findings if f.check == check and (view is None or f.view == view)]


def _only(report: AuditReport, check: str, view: str) -> Finding:
    found = _find(report, check, view)
    assert len(found) == 1, (check, view, report.findings)
    return found[0]


def _problems(report: AuditReport) -> list[Finding]:
    return [f for f in report.findings if f.severity in ("WARN", "CRIT")]


# --------------------------------------------------------------------------------------------------
# ops_schema and exists


def test_missing_ops_schema_is_crit_and_stops(empty_dsn, lab):
    report = run_audit(empty_dsn, lab)
    [finding] = report.findings
    assert (finding.view, finding.check, finding.severity) == (None, "ops_schema", "CRIT")
    assert "ops.mv_refresh_log" in finding.message and "init-db" in finding.fix
    assert report.views_checked == 0 and report.exit_code == 2


def test_incomplete_ops_schema_is_crit_and_stops(lab_dsn, lab):
    _exec(lab_dsn, "DROP VIEW ops.v_mv_health")
    report = run_audit(lab_dsn, lab)
    [finding] = report.findings
    assert (finding.check, finding.severity) == ("ops_schema", "CRIT")
    assert "ops.v_mv_health" in finding.message and "init-db" in finding.fix


@pytest.mark.parametrize(
    ("view", "words"),
    [
        ("lab.mv_missing", "does not exist"),
        ("lab.a_table", "is a table, not a materialized view"),
        ("lab.a_view", "is a view, not a materialized view"),
    ],
)
def test_catalog_views_that_are_missing_or_not_materialized_are_crit(lab_dsn, lab, view, words):
    report = run_audit(lab_dsn, lab)
    finding = _only(report, "exists", view)
    assert finding.severity == "CRIT"
    assert view in finding.message and words in finding.message
    assert "catalog" in finding.fix
    # Every other check skips the view (no NO_REFRESH, no unique index nagging).
    assert [f.check for f in report.findings if f.view == view] == ["exists"]


def test_hostile_and_schema_less_names_are_only_compared_never_run(lab_dsn):
    catalog = _catalog("""
  - name: 'lab."x; drop table lab.src"'
  - name: nosuch.mv_orders
""")
    report = run_audit(lab_dsn, catalog)
    assert [(f.view, f.check, f.severity) for f in report.crit] == [
        ('lab."x; drop table lab.src"', "exists", "CRIT"),
        ("nosuch.mv_orders", "exists", "CRIT"),
    ]
    assert "schema nosuch does not exist" in report.crit[1].message
    assert {f.check for f in report.findings} == {"exists", "unlisted"}
    assert _scalar(lab_dsn, "SELECT count(*) FROM lab.src") == 1000


# --------------------------------------------------------------------------------------------------
# populated, freshness, last_status


@pytest.mark.parametrize(("critical", "severity"), [(False, "WARN"), (True, "CRIT")])
def test_unpopulated_view(lab_dsn, critical, severity):
    catalog = _catalog(f"""
  - name: lab.mv_unpop
    critical: {str(critical).lower()}
""")
    report = run_audit(lab_dsn, catalog)
    finding = _only(report, "populated", "lab.mv_unpop")
    assert finding.severity == severity
    assert "not populated" in finding.message and finding.fix == "mv-refresh refresh lab.mv_unpop"
    assert _only(report, "freshness", "lab.mv_unpop").severity == severity  # NO_REFRESH
    refresh_view(lab_dsn, catalog, "lab.mv_unpop")
    assert _problems(run_audit(lab_dsn, catalog)) == []


@pytest.mark.parametrize(
    ("hours_ago", "severity", "bucket"),
    [(30, "WARN", "WARN"), (50, "CRIT", "CRIT")],
)
def test_freshness_buckets(lab_dsn, hours_ago, severity, bucket):
    catalog = _catalog("  - name: lab.mv_conc\n")
    _log(lab_dsn, "mv_conc", "OK", hours_ago=hours_ago)
    finding = _only(run_audit(lab_dsn, catalog), "freshness", "lab.mv_conc")
    assert finding.severity == severity
    assert f"{hours_ago} h ago" in finding.message and bucket in finding.message
    assert "WARN from 24 h, CRIT above 48 h" in finding.message
    assert "mv-refresh refresh lab.mv_conc" in finding.fix


def test_fresh_view_has_no_freshness_finding(lab_dsn):
    catalog = _catalog("  - name: lab.mv_conc\n")
    _log(lab_dsn, "mv_conc", "OK", hours_ago=23.9)
    assert _find(run_audit(lab_dsn, catalog), "freshness") == []


@pytest.mark.parametrize(("critical", "severity"), [(False, "WARN"), (True, "CRIT")])
def test_never_refreshed_view(lab_dsn, critical, severity):
    catalog = _catalog(f"  - name: lab.mv_conc\n    critical: {str(critical).lower()}\n")
    finding = _only(run_audit(lab_dsn, catalog), "freshness", "lab.mv_conc")
    assert finding.severity == severity and "NO_REFRESH" in finding.message
    # The lab database's ops.mv_catalog is empty: the catalog file's thresholds were used, and said so.
    assert "init-db" in finding.message


def test_suggested_commands_quote_a_name_for_the_shell(lab_dsn):
    catalog = _catalog("  - name: 'lab.\"Weird MV\"'\n    critical: true\n")
    finding = _only(run_audit(lab_dsn, catalog), "freshness", 'lab."Weird MV"')
    assert finding.severity == "CRIT"
    assert finding.fix.startswith("""mv-refresh refresh 'lab."Weird MV"' """)


def test_freshness_uses_the_catalog_files_thresholds_and_says_when_the_mirror_differs(lab_dsn):
    """The catalog file is the truth for the process that holds it; a stale ops.mv_catalog is pointed out."""
    hourly = _catalog("""
  - name: lab.mv_conc
    warn_after_hours: 1
    crit_after_hours: 2
""")
    with connect(lab_dsn) as conn:
        sync_catalog(conn, hourly)
    _log(lab_dsn, "mv_conc", "OK", hours_ago=1.5)
    finding = _only(run_audit(lab_dsn, hourly), "freshness", "lab.mv_conc")
    assert finding.severity == "WARN"
    assert "WARN from 1 h, CRIT above 2 h" in finding.message and "init-db" not in finding.message
    # The file now says 24/48 h, the mirror still 1/2 h: the file wins, and the audit says to sync.
    assert _find(run_audit(lab_dsn, _catalog("  - name: lab.mv_conc\n")), "freshness") == []
    _log(lab_dsn, "mv_conc", "OK", hours_ago=30)
    _exec(lab_dsn, "DELETE FROM ops.mv_refresh_log WHERE refresh_finished_at > now() - interval '2 hours'")
    stale = _only(run_audit(lab_dsn, _catalog("  - name: lab.mv_conc\n")), "freshness", "lab.mv_conc")
    assert "WARN from 24 h, CRIT above 48 h" in stale.message and "`mv-refresh init-db` syncs it" in stale.message


def test_a_failed_latest_refresh_is_warn_with_its_sqlstate(lab_dsn):
    catalog = _catalog("  - name: lab.mv_keyed\n    grain: [k]\n")
    refresh_view(lab_dsn, catalog, "lab.mv_keyed")
    _exec(lab_dsn, "INSERT INTO lab.keyed VALUES (7, 'another v for key 7')")
    with pytest.raises(RefreshFailed):
        refresh_view(lab_dsn, catalog, "lab.mv_keyed")
    report = run_audit(lab_dsn, catalog)
    finding = _only(report, "last_status", "lab.mv_keyed")
    assert finding.severity == "WARN"
    assert "ended ERROR [23505]" in finding.message and "lab.mv_keyed" in finding.message
    assert _find(report, "freshness") == []  # the data is still fresh: only the attempt failed
    # Fixed and refreshed: the error is history.
    _exec(lab_dsn, "DELETE FROM lab.keyed WHERE v = 'another v for key 7'")
    refresh_view(lab_dsn, catalog, "lab.mv_keyed")
    assert _find(run_audit(lab_dsn, catalog), "last_status") == []


@pytest.mark.parametrize("status", ["ERROR", "SKIPPED", "ABANDONED"])
def test_every_failed_status_of_the_latest_row_is_warn(lab_dsn, status):
    catalog = _catalog("  - name: lab.mv_conc\n")
    _log(lab_dsn, "mv_conc", "OK", hours_ago=2)
    _log(lab_dsn, "mv_conc", status, hours_ago=1, error_sqlstate="55P03", error_message="held by pid 42")
    finding = _only(run_audit(lab_dsn, catalog), "last_status", "lab.mv_conc")
    assert finding.severity == "WARN"
    assert f"ended {status} [55P03]: held by pid 42" in finding.message
    assert "mv-refresh refresh lab.mv_conc" in finding.fix


# --------------------------------------------------------------------------------------------------
# running


def test_running_rows_are_judged_by_backend_then_by_age(lab_dsn):
    catalog = _catalog("  - name: lab.mv_conc\n  - name: lab.mv_noidx\n    mode: plain\n"
                       "  - name: lab.mv_keyed\n  - name: lab.mv_slow\n")
    for view in ("mv_conc", "mv_noidx", "mv_keyed", "mv_slow"):
        _log(lab_dsn, view, "OK", hours_ago=3)
    with connect(lab_dsn, autocommit=True) as worker:
        pid, started = worker.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        # Alive and young: a refresh in progress, no finding.
        _log(lab_dsn, "mv_conc", "RUNNING", backend_pid=pid, backend_start=started)
        # Alive but older than statement + lock timeout (70 s): stuck?
        _log(lab_dsn, "mv_noidx", "RUNNING", hours_ago=0.05, backend_pid=pid, backend_start=started)
        # The backend is gone, though the row is only seconds old: abandoned.
        _log(lab_dsn, "mv_keyed", "RUNNING", backend_pid=GONE_PID, backend_start=started)
        # Same pid, another backend start: the pid was reused, the refresh's backend is gone.
        _log(lab_dsn, "mv_slow", "RUNNING", backend_pid=pid, backend_start=started.replace(year=2000))
        report = run_audit(lab_dsn, catalog)

    assert _find(report, "running", "lab.mv_conc") == []
    stuck = _only(report, "running", "lab.mv_noidx")
    assert stuck.severity == "WARN" and "stuck?" in stuck.message and f"pid {pid}" in stuck.message
    assert "abandoned" not in stuck.message
    for view in ("lab.mv_keyed", "lab.mv_slow"):
        gone = _only(report, "running", view)
        assert gone.severity == "WARN"
        assert "abandoned; the next refresh marks it ABANDONED" in gone.message
    assert str(GONE_PID) in _only(report, "running", "lab.mv_keyed").message
    # The audit only reads: the rows are still RUNNING.
    assert _scalar(lab_dsn, "SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'RUNNING'") == 4


def test_an_old_running_row_of_a_live_backend_is_never_called_abandoned(lab_dsn):
    catalog = _catalog("  - name: lab.mv_conc\n")
    _log(lab_dsn, "mv_conc", "OK", hours_ago=3)
    with connect(lab_dsn, autocommit=True) as worker:
        # backend_start not logged: the pid alone keeps the row alive, however old it is.
        _log(lab_dsn, "mv_conc", "RUNNING", hours_ago=5, backend_pid=worker.info.backend_pid)
        finding = _only(run_audit(lab_dsn, catalog), "running", "lab.mv_conc")
    assert "stuck?" in finding.message and "5.0 h" in finding.message


def test_a_running_row_without_a_pid_is_abandoned(lab_dsn):
    catalog = _catalog("  - name: lab.mv_conc\n")
    _log(lab_dsn, "mv_conc", "RUNNING")
    finding = _only(run_audit(lab_dsn, catalog), "running", "lab.mv_conc")
    assert "no backend pid" in finding.message and "abandoned" in finding.message


def _dsn_as(dsn: str, user: str, password: str) -> str:
    params = conninfo_to_dict(dsn)
    params.update(user=user, password=password)
    return make_conninfo(**params)


def test_hidden_backend_start_judges_by_pid_alone(lab_dsn, pg_server):
    """A role without pg_read_all_stats sees other roles' backend_start as NULL: the pid decides."""
    role = f"mvr_audit_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    _exec(lab_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password)))
    try:
        _exec(lab_dsn, sql.SQL("GRANT USAGE ON SCHEMA ops, lab TO {0}; "
                               "GRANT SELECT ON ALL TABLES IN SCHEMA ops TO {0}").format(sql.Identifier(role)))
        catalog = _catalog("  - name: lab.mv_conc\n  - name: lab.mv_keyed\n")
        for view in ("mv_conc", "mv_keyed"):
            _log(lab_dsn, view, "OK", hours_ago=3)
        with connect(lab_dsn, autocommit=True) as worker:
            pid, started = worker.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
            with connect(_dsn_as(lab_dsn, role, password), autocommit=True) as probe:
                seen = probe.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s",
                                     (pid,)).fetchone()
            assert seen == (None,), "the unprivileged role should not see another role's backend_start"
            # Logged with a start time the audit role cannot check: the live pid keeps it alive...
            _log(lab_dsn, "mv_conc", "RUNNING", backend_pid=pid, backend_start=started.replace(year=2000))
            # ...and a pid nobody has is still gone.
            _log(lab_dsn, "mv_keyed", "RUNNING", backend_pid=GONE_PID, backend_start=started)
            report = run_audit(_dsn_as(lab_dsn, role, password), catalog)
        assert _find(report, "running", "lab.mv_conc") == []
        assert "abandoned" in _only(report, "running", "lab.mv_keyed").message
    finally:
        _exec(lab_dsn, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        _exec(lab_dsn, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------------------------------
# unique_index


@pytest.mark.parametrize(
    ("entry", "view", "severity", "fix"),
    [
        ("lab.mv_noidx", "lab.mv_noidx", "WARN", "add a grain to the catalog entry of lab.mv_noidx"),
        ("lab.mv_noidx\n    grain: [id]", "lab.mv_noidx", "WARN", "mv-refresh prepare-concurrently lab.mv_noidx"),
        ("lab.mv_noidx\n    mode: concurrently", "lab.mv_noidx", "CRIT", "add a grain"),
        # A unique index with WHERE and one on an expression do not count (the engine's rule).
        ("lab.mv_partial", "lab.mv_partial", "WARN", "add a grain"),
    ],
)
def test_no_usable_unique_index(lab_dsn, entry, view, severity, fix):
    catalog = _catalog(f"  - name: {entry}\n")
    finding = _only(run_audit(lab_dsn, catalog), "unique_index", view)
    assert finding.severity == severity
    assert view in finding.message and "ACCESS EXCLUSIVE" in finding.message
    assert fix in finding.fix


def test_mode_plain_does_not_want_a_unique_index(lab_dsn):
    catalog = _catalog("  - name: lab.mv_noidx\n    mode: plain\n  - name: lab.mv_partial\n    mode: plain\n")
    assert _find(run_audit(lab_dsn, catalog), "unique_index") == []


def _failed_concurrent_index(dsn: str, index: str, view: str, column: str) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        _exec(dsn, sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})").format(
            sql.Identifier(index), sql.Identifier("lab", view), sql.Identifier(column)))


def test_invalid_index_left_by_a_failed_concurrent_build(lab_dsn):
    _exec(lab_dsn, "CREATE MATERIALIZED VIEW lab.mv_dups AS SELECT id, grp FROM lab.src")
    _failed_concurrent_index(lab_dsn, "mv_dups_grp", "mv_dups", "grp")  # grp has duplicates
    _failed_concurrent_index(lab_dsn, "mv_conc_grp", "mv_conc", "grp")  # beside a valid index
    catalog = _catalog("  - name: lab.mv_conc\n  - name: lab.mv_dups\n    grain: [grp]\n")
    report = run_audit(lab_dsn, catalog)

    # lab.mv_conc still has its valid unique index: only the invalid one is reported.
    invalid = _only(report, "unique_index", "lab.mv_conc")
    assert invalid.severity == "WARN" and "INVALID index lab.mv_conc_grp" in invalid.message
    assert invalid.fix.startswith("DROP INDEX CONCURRENTLY lab.mv_conc_grp")
    # lab.mv_dups has no valid one either: both findings, the fix runs prepare-concurrently.
    dups = _find(report, "unique_index", "lab.mv_dups")
    assert [f.severity for f in dups] == ["WARN", "WARN"]
    assert "no valid unique index" in dups[0].message
    assert "INVALID index lab.mv_dups_grp" in dups[1].message
    assert "mv-refresh prepare-concurrently lab.mv_dups" in dups[1].fix


# --------------------------------------------------------------------------------------------------
# stale_input and unlisted


def test_a_view_refreshed_before_its_upstream_has_stale_input(lab_dsn):
    catalog = _catalog("""
  - name: lab.mv_conc
  - name: lab.mv_keyed
    grain: [k]
    upstream: [lab.mv_conc]
""")
    refresh_view(lab_dsn, catalog, "lab.mv_conc")
    # Never refreshed OK: freshness reports it, stale_input does not.
    report = run_audit(lab_dsn, catalog)
    assert _find(report, "stale_input") == []
    assert "NO_REFRESH" in _only(report, "freshness", "lab.mv_keyed").message

    refresh_view(lab_dsn, catalog, "lab.mv_keyed")
    assert _problems(run_audit(lab_dsn, catalog)) == []

    refresh_view(lab_dsn, catalog, "lab.mv_conc")  # the upstream moves on alone
    finding = _only(run_audit(lab_dsn, catalog), "stale_input", "lab.mv_keyed")
    assert finding.severity == "WARN"
    assert "before its upstream lab.mv_conc" in finding.message
    times = [t.isoformat(sep=" ", timespec="seconds") for t in _last_ok_times(lab_dsn)]
    assert all(t in finding.message for t in times)
    assert "mv-refresh refresh lab.mv_keyed" in finding.fix

    refresh_view(lab_dsn, catalog, "lab.mv_keyed")
    assert _find(run_audit(lab_dsn, catalog), "stale_input") == []


def _last_ok_times(dsn: str) -> list:
    with connect(dsn) as conn:
        return [row[0] for row in conn.execute(
            "SELECT max(refreshed_at) FROM ops.mv_refresh_log WHERE status = 'OK' GROUP BY mv_name")]


def test_unlisted_materialized_views_in_catalog_schemas_are_info(lab_dsn, lab):
    _exec(lab_dsn, """
        CREATE MATERIALIZED VIEW lab.mv_extra AS SELECT 1 AS id;
        CREATE MATERIALIZED VIEW lab."Other MV" AS SELECT 1 AS id;
        CREATE MATERIALIZED VIEW public.mv_elsewhere AS SELECT 1 AS id;
    """)
    report = run_audit(lab_dsn, lab)
    unlisted = _find(report, "unlisted")
    assert [(f.view, f.severity) for f in unlisted] == [('lab."Other MV"', "INFO"), ("lab.mv_extra", "INFO")]
    assert "does not list it" in unlisted[1].message and "lab catalog" in unlisted[1].fix
    # The lab catalog lists every other lab view; public is not a schema the catalog uses.
    assert report.findings[-2:] == unlisted


# --------------------------------------------------------------------------------------------------
# The whole report


def test_a_healthy_database_has_no_findings(lab_dsn):
    _exec(lab_dsn, """
        CREATE SCHEMA good;
        CREATE MATERIALIZED VIEW good.orders AS SELECT id, grp FROM lab.src;
        CREATE UNIQUE INDEX ON good.orders (id);
        CREATE MATERIALIZED VIEW good."Daily Totals" AS SELECT grp, count(*) AS n FROM good.orders GROUP BY grp;
        CREATE UNIQUE INDEX ON good."Daily Totals" (grp);
    """)
    catalog = _catalog("""
  - name: good.orders
    grain: [id]
    mode: concurrently
  - name: 'good."Daily Totals"'
    critical: true
    grain: [grp]
    upstream: [good.orders]
""")
    with connect(lab_dsn) as conn:
        sync_catalog(conn, catalog)
    for view in catalog.views:
        refresh_view(lab_dsn, catalog, view)
    report = run_audit(lab_dsn, catalog)
    assert report.findings == []
    assert (report.worst, report.exit_code, report.crit, report.views_checked) == ("OK", 0, [], 2)


def test_healthy_lab_views_give_at_most_info(lab_dsn):
    catalog = _catalog("""
  - name: lab.mv_conc
  - name: lab.mv_noidx
    mode: plain
  - name: lab.mv_keyed
    grain: [k]
    upstream: [lab.mv_conc]
  - name: 'lab."Weird MV"'
    critical: true
""")
    for view in catalog.views:
        refresh_view(lab_dsn, catalog, view)
    report = run_audit(lab_dsn, catalog)
    assert _problems(report) == []
    assert {f.view for f in report.findings} == {"lab.mv_partial", "lab.mv_unpop", "lab.mv_slow"}
    assert (report.worst, report.exit_code) == ("INFO", 0)


def test_the_lab_report_is_sorted_and_round_trips_through_json(lab_dsn, lab):
    _exec(lab_dsn, "CREATE MATERIALIZED VIEW lab.mv_extra AS SELECT 1 AS id")
    report = run_audit(lab_dsn, lab)
    assert report.views_checked == len(lab.views)
    assert report.worst == "CRIT" and report.exit_code == 2
    assert report.crit and all(f.severity == "CRIT" for f in report.crit)
    # Severity descending, then canonical (catalog) position; unlisted views come last.
    order = {view.display_name: i for i, view in enumerate(lab.views)}
    keys = [(-SEVERITIES.index(f.severity), order.get(f.view, len(order))) for f in report.findings]
    assert keys == sorted(keys)
    assert [f.view for f in report.crit] == ["lab.a_table", "lab.a_view", "lab.mv_missing"]

    text = json.dumps(report.as_json())
    data = json.loads(text)
    assert data == report.as_json()
    assert data["worst"] == "CRIT" and data["exit_code"] == 2 and data["views_checked"] == len(lab.views)
    assert sum(data["counts"].values()) == len(data["findings"])
    assert AuditReport.from_json(data) == report
    assert set(data["findings"][0]) == {"view", "check", "severity", "message", "fix"}


@pytest.mark.parametrize(
    ("severities", "worst", "exit_code"),
    [
        ([], "OK", 0),
        (["INFO"], "INFO", 0),
        (["INFO", "WARN", "INFO"], "WARN", 1),
        (["WARN", "CRIT", "INFO"], "CRIT", 2),
    ],
)
def test_exit_codes_follow_the_monitoring_convention(severities, worst, exit_code):
    report = AuditReport([Finding("ops.mv_x", "freshness", s, f"{s} thing") for s in severities], 1)
    assert (report.worst, report.exit_code) == (worst, exit_code)
    assert len(report.crit) == severities.count("CRIT")
    assert report.summary().startswith(f"{worst}: ")


def test_finding_rejects_an_unknown_severity_and_round_trips():
    with pytest.raises(ValueError, match="severity"):
        Finding("ops.mv_x", "freshness", "FATAL", "no such severity")
    finding = Finding(None, "ops_schema", "CRIT", "missing", fix="mv-refresh init-db")
    assert Finding.from_json(json.loads(json.dumps(finding.as_json()))) == finding
