"""mv-refresh, the CLI: same engine, exit codes scripts and monitoring can rely on, JSON for machines."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from mv_refresh.cli import main
from mv_refresh.db import connect


@pytest.fixture
def lab_cli(lab_files):
    """The lab files, and the catalog mirrored into ops.mv_catalog."""
    from mv_refresh.catalog import load_catalog
    from mv_refresh.migrations import init_db

    init_db(lab_files, load_catalog())
    return lab_files


def test_refresh_prints_each_view_and_exits_0(lab_cli, capsys):
    assert main(["refresh", "lab.mv_noidx", "lab.mv_conc"]) == 0
    out = capsys.readouterr().out
    # Canonical order (mv_conc is listed first in the catalog), with mode, rows and duration.
    assert out.index("lab.mv_conc: refreshing") < out.index("lab.mv_noidx: refreshing")
    assert "lab.mv_conc: OK (CONCURRENTLY, 1,000 rows" in out
    assert "lab.mv_noidx: OK (PLAIN, 1,000 rows" in out and "no valid unique index" in out


def test_refresh_failure_exits_1_and_json_reports_it(lab_cli, capsys):
    with connect(lab_cli, autocommit=True) as conn:
        conn.execute("INSERT INTO lab.keyed VALUES (3, 'clash')")
    assert main(["refresh", "lab.mv_keyed", "lab.mv_conc", "--json"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [(r["view"], r["status"]) for r in results] == [("lab.mv_conc", "OK"), ("lab.mv_keyed", "ERROR")]
    assert results[1]["error_sqlstate"] == "23505"
    assert "refreshing" in captured.err  # progress goes to stderr under --json


@pytest.mark.parametrize("argv", [["refresh", "lab.unknown"], ["refresh", "lab.x;drop"], ["refresh"],
                                  ["refresh", "--all", "lab.mv_conc"]])
def test_refresh_usage_errors_exit_2_without_touching_the_log(lab_cli, capsys, argv):
    assert main(argv) == 2
    assert "mv-refresh" in capsys.readouterr().err
    with connect(lab_cli) as conn:
        assert conn.execute("SELECT count(*) FROM ops.mv_refresh_log").fetchone()[0] == 0


def _ok_rows(dsn: str, hours: float) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at, refresh_finished_at,"
            " refreshed_at, rows_after_refresh) SELECT schema_name, mv_name, 'OK', t, t, t, 1"
            " FROM ops.mv_catalog, (SELECT clock_timestamp() - %s * interval '1 hour' AS t) x", (hours,))


@pytest.mark.parametrize(("hours", "code", "bucket"), [(None, 2, "NO_REFRESH"), (1, 0, "OK"), (30, 1, "WARN"),
                                                      (50, 2, "CRIT")])
def test_health_exit_codes_follow_the_monitoring_convention(lab_cli, capsys, hours, code, bucket):
    if hours is not None:
        _ok_rows(lab_cli, hours)
    assert main(["health", "lab.mv_conc"]) == code
    assert bucket in capsys.readouterr().out
    assert main(["health", "lab.mv_conc", "--json"]) == code
    [row] = json.loads(capsys.readouterr().out)
    assert row["status_bucket"] == bucket and row["mv_name"] == "mv_conc"


def test_health_is_unknown_when_the_database_is_unreachable(lab_cli, capsys):
    assert main(["health", "--dsn", "postgresql://u:s3cr3t@127.0.0.1:1/warehouse"]) == 3
    err = capsys.readouterr().err
    assert "UNKNOWN" in err and "warehouse" in err and "s3cr3t" not in err


def test_plan_lists_the_canonical_order(lab_cli, capsys):
    assert main(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["views"]
    assert [p["view"] for p in plan][:2] == ["lab.mv_conc", "lab.mv_noidx"]
    assert plan[-1]["view"] == 'lab."Weird MV"'


def test_init_db_twice_and_json(ops_dsn, capsys, monkeypatch):
    monkeypatch.setenv("MV_REFRESH_DSN", ops_dsn)
    assert main(["init-db", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == []  # the template already has every migration
    assert main(["init-db"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_no_dsn_is_a_clear_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("MV_REFRESH_DSN", raising=False)
    assert main(["refresh", "--all"]) == 2
    assert "MV_REFRESH_DSN" in capsys.readouterr().err


def test_the_installed_entry_point_runs(lab_cli):
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mv-refresh"), "refresh", "lab.mv_conc"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lab.mv_conc: OK (CONCURRENTLY" in proc.stdout


def test_audit_exit_codes_and_json(demo_dsn, monkeypatch, capsys):
    from mv_refresh.catalog import load_catalog
    from mv_refresh.engine import refresh_view

    monkeypatch.setenv("MV_REFRESH_DSN", demo_dsn)
    monkeypatch.delenv("MV_REFRESH_CONFIG", raising=False)
    catalog = load_catalog()
    for spec in catalog.views:
        refresh_view(demo_dsn, catalog, spec)
    assert main(["audit"]) == 0
    assert "0 CRIT, 0 WARN" in capsys.readouterr().out
    with connect(demo_dsn, autocommit=True) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW ops.mv_yango_cabinet_claims_for_collection WITH NO DATA")
    assert main(["audit", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    crit = [f for f in report["findings"] if f["severity"] == "CRIT"]
    assert {(f["check"], f["view"]) for f in crit} >= {("populated", "ops.mv_yango_cabinet_claims_for_collection")}
    assert main(["audit", "--dsn", "postgresql://u@127.0.0.1:1/x"]) == 3


def test_log_blockers_and_plan_validate(lab_cli, capsys):
    import threading

    assert main(["refresh", "lab.mv_conc", "lab.mv_noidx"]) == 0
    capsys.readouterr()
    assert main(["log", "--json", "--limit", "1"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["view"] == "lab.mv_noidx" and row["status"] == "OK"
    assert main(["log", "lab.mv_conc", "--status", "ok"]) == 0
    assert "lab.mv_conc" in capsys.readouterr().out
    assert main(["log", "--status", "LOST"]) == 2
    assert "RUNNING" in capsys.readouterr().err  # the error lists the statuses

    with connect(lab_cli) as holder:
        holder.execute("SELECT count(*) FROM lab.mv_conc /* long report */")
        holder_pid = holder.info.backend_pid
        from lab import lab_catalog

        from mv_refresh.engine import RefreshFailed, refresh_view

        def blocked_refresh():
            with contextlib.suppress(RefreshFailed):
                refresh_view(lab_cli, lab_catalog(), "lab.mv_conc", mode="plain", lock_timeout=3)

        waiter = threading.Thread(target=blocked_refresh)
        waiter.start()
        time.sleep(1.0)
        capsys.readouterr()
        assert main(["blockers", "lab.mv_conc", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        holder.rollback()
    waiter.join(10)
    holders = [r for r in rows if r["granted"] and r["pid"] == holder_pid]
    waiters = [r for r in rows if not r["granted"]]
    assert holders and "long report" in holders[0]["query"]
    assert waiters and holder_pid in waiters[0]["blocked_by"]

    # The lab catalog lists a table, a plain view and a missing view: --validate says so, exit 1.
    assert main(["plan", "--validate"]) == 1
    out = capsys.readouterr().out
    assert "lab.mv_missing" in out and "lab.a_table" in out


def test_plan_validate_passes_on_the_demo(demo_dsn, monkeypatch, capsys):
    monkeypatch.setenv("MV_REFRESH_DSN", demo_dsn)
    monkeypatch.delenv("MV_REFRESH_CONFIG", raising=False)
    assert main(["plan", "--validate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_refresh_all_refreshes_everything_it_can_and_reports_every_failure(lab_cli, capsys):
    """A catalog view missing from the database, or not a materialized view, does not stop the others."""
    assert main(["refresh", "--all", "--json"]) == 1
    results = {r["view"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(results) == [v for v in ("lab.mv_conc", "lab.mv_noidx", "lab.mv_partial", "lab.mv_unpop",
                                         "lab.mv_keyed", "lab.mv_slow", "lab.a_table", "lab.a_view",
                                         "lab.mv_missing", 'lab."Weird MV"')]
    failed = {name: (r["status"], r["error_sqlstate"]) for name, r in results.items() if r["status"] != "OK"}
    assert failed == {"lab.a_table": ("ERROR", "42809"), "lab.a_view": ("ERROR", "42809"),
                      "lab.mv_missing": ("ERROR", "42P01")}
    # The view listed after the failures was still refreshed; every failure is in the log.
    with connect(lab_cli) as conn:
        logged = dict(conn.execute("SELECT mv_name, status FROM ops.mv_refresh_log").fetchall())
    assert logged["Weird MV"] == "OK" and logged["mv_missing"] == "ERROR"


def test_health_never_drops_a_view_the_mirror_does_not_know(lab_cli, capsys, tmp_path, monkeypatch):
    """Catalog edited, init-db not re-run: `health` still judges every catalog view (the file's
    thresholds) and says the mirror is out of step, instead of leaving the view out and exiting 0."""
    from lab import LAB_CATALOG

    _ok_rows(lab_cli, 1)  # every view in ops.mv_catalog is fresh
    edited = tmp_path / "edited.yaml"
    edited.write_text(LAB_CATALOG + "  - name: lab.mv_new\n    critical: true\n")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(edited))
    assert main(["health"]) == 2
    captured = capsys.readouterr()
    assert "lab.mv_new *" in captured.out and "NO_REFRESH" in captured.out
    assert "out of step" in captured.err and "lab.mv_new" in captured.err
    assert main(["health", "lab.mv_new", "--json"]) == 2
    [row] = json.loads(capsys.readouterr().out)
    assert (row["mv_name"], row["status_bucket"], row["mirrored"]) == ("mv_new", "NO_REFRESH", False)
    assert main(["health", "lab.mv_conc"]) == 0  # the views it knows are judged as before


def test_every_refresh_keeps_its_row_of_the_mirror_in_step(lab_cli, tmp_path, monkeypatch):
    from lab import LAB_CATALOG

    edited = tmp_path / "edited.yaml"
    edited.write_text(LAB_CATALOG.replace("  - name: lab.mv_conc\n",
                                          "  - name: lab.mv_conc\n    warn_after_hours: 2\n"
                                          "    crit_after_hours: 3\n    critical: true\n"))
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(edited))
    assert main(["refresh", "lab.mv_conc"]) == 0
    with connect(lab_cli) as conn:
        row = conn.execute("SELECT is_critical, warn_after_hours, crit_after_hours FROM ops.mv_catalog"
                           " WHERE mv_name = 'mv_conc'").fetchone()
    assert row == (True, 2, 3)


def test_log_prune_keeps_what_health_needs(lab_cli, capsys):
    with connect(lab_cli, autocommit=True) as conn:
        def log(view: str, status: str, days_ago: float) -> int:
            return conn.execute(
                "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at,"
                " refresh_finished_at, refreshed_at) SELECT 'lab', %s, %s, t, t, CASE WHEN %s = 'OK' THEN t END"
                " FROM (SELECT now() - %s * interval '1 day' AS t) AS x RETURNING id",
                (view, status, status, days_ago)).fetchone()[0]

        old = [log("mv_conc", "OK", 100 - i) for i in range(5)]
        newest_ok = log("mv_conc", "OK", 60)  # old, but the view's newest OK: health's "last OK refresh"
        newest_outcome = log("mv_conc", "ERROR", 50)  # old, but the view's latest outcome
        only_ok_of_other = log("mv_noidx", "OK", 200)
        superseded = log("mv_partial", "OK", 40)
        recent = log("mv_partial", "OK", 1)
        running = conn.execute("INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_started_at)"
                               " VALUES ('lab', 'mv_slow', 'RUNNING', now() - interval '300 days') RETURNING id"
                               ).fetchone()[0]
        health = ("SELECT mv_name, last_ok_refresh_finished_at, status_bucket, last_status, last_error,"
                  " rows_after_refresh FROM ops.v_mv_health ORDER BY position")
        before = conn.execute(health).fetchall()
        assert main(["log", "prune", "--keep-days", "30", "--batch-size", "2", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        left = {row[0] for row in conn.execute("SELECT id FROM ops.mv_refresh_log")}
        after = conn.execute(health).fetchall()
    assert report["deleted"] == len(old) + 1 and report["kept_protected"] == 3
    assert left == {newest_ok, newest_outcome, only_ok_of_other, recent, running}
    assert superseded not in left
    assert after == before  # health reads the same before and after
    with pytest.raises(SystemExit) as usage:  # argparse refuses it before any SQL
        main(["log", "prune", "--keep-days", "0"])
    assert usage.value.code == 2


def test_log_prune_refuses_a_role_without_delete(lab_cli, capsys, monkeypatch):
    import uuid

    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    role, password = f"mvr_nodel_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with connect(lab_cli, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA ops TO {0}; GRANT SELECT, INSERT, UPDATE ON ops.mv_refresh_log"
                             " TO {0}").format(sql.Identifier(role)))
    try:
        params = conninfo_to_dict(lab_cli)
        params.update(user=role, password=password)
        monkeypatch.setenv("MV_REFRESH_DSN", make_conninfo(**params))
        assert main(["log", "prune", "--keep-days", "30"]) == 1
        err = capsys.readouterr().err
        assert f'role {role} may not delete rows of ops.mv_refresh_log' in err and "-v maintainer=" in err
    finally:
        with connect(lab_cli, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_names_print_as_postgresql_quotes_them_one_line_each(lab_dsn, monkeypatch, tmp_path, capsys):
    """A quote, a semicolon, a keyword, a newline in a name: every line shows the name as quote_ident() would,
    with a control character as a U&"" escape, so no name splits a line or reads as SQL."""
    from mv_refresh.migrations import init_db

    with connect(lab_dsn, autocommit=True) as conn:
        conn.execute('CREATE MATERIALIZED VIEW lab."we""ird; DROP TABLE lab.src" AS SELECT 1 AS id')
        conn.execute('CREATE MATERIALIZED VIEW lab."new\nline" AS SELECT 1 AS id')
        conn.execute('CREATE MATERIALIZED VIEW lab."user" AS SELECT 1 AS id')
    path = tmp_path / "odd.yaml"
    path.write_text("version: 1\nviews:\n"
                    "  - name: 'lab.\"we\"\"ird; DROP TABLE lab.src\"'\n"
                    "  - name: 'lab.U&\"new\\000aline\"'\n"
                    "  - name: 'lab.\"user\"'\n")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    monkeypatch.setenv("MV_REFRESH_DSN", lab_dsn)
    from mv_refresh.catalog import load_catalog

    init_db(lab_dsn, load_catalog())
    assert main(["refresh", "--all"]) == 0
    assert main(["health"]) == 0
    out = capsys.readouterr().out
    shown = ['lab."we""ird; DROP TABLE lab.src"', 'lab.U&"new\\000Aline"', 'lab."user"']
    for name in shown:
        assert f"  {name}: OK (" in out  # the refresh line
        assert any(line.startswith(name + " ") and " OK " in line for line in out.splitlines())  # health
    assert not any(line.startswith("line") for line in out.splitlines())  # no name broke a line
    assert scalar_count(lab_dsn) == 1000


def scalar_count(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM lab.src").fetchone()[0]
