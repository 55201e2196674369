"""No secret leaks: a DSN password never reaches a log line, an XCom, an exception or the CLI's output,
and the row data in a 21000 error's DETAIL never reaches the log table, an exception or the CLI.

Both test servers trust their clients, so a password in the DSN is accepted and ignored: enough to see
where it would travel. Where a command or task must say something, the test also asserts that it did,
so a capture that silently caught nothing cannot pass for a clean one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mv_refresh.airflow.connection import airflow_connection_json
from mv_refresh.cli import main
from mv_refresh.db import ConfigurationError, connect, describe_target, redact

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "S3cr3t-p4ss-XYZ"
# A distinctive value for the duplicated row of lab.mv_keyed: PostgreSQL puts it in the 21000 DETAIL.
ROW_DATA = "R0wD4ta-Pr1vate-Q7"


def _leaks(text: str, *, row_data: bool = False) -> list[str]:
    found = [s for s in (PASSWORD, quote(PASSWORD, safe="")) if s in text]
    if row_data and ROW_DATA in text:
        found.append(ROW_DATA)
    return found


def assert_clean(text: str, *, row_data: bool = False, what: str = "output") -> None:
    assert _leaks(text, row_data=row_data) == [], f"secret in {what}: {text!r}"


def exception_text(exc: BaseException) -> str:
    """Everything an exception shows: its message, repr, and the traceback a logger would print."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def with_password(dsn: str, password: str = PASSWORD, **changes: str) -> str:
    params = conninfo_to_dict(dsn)
    params.update(password=password, **changes)
    return make_conninfo(**params)


def as_uri(dsn: str, password: str = PASSWORD) -> str:
    """The same target as a postgresql:// URI with the password in it (a socket directory works as host)."""
    p = conninfo_to_dict(dsn)
    host = quote(p.get("host") or "localhost", safe="")
    return (f"postgresql://{quote(p.get('user') or 'postgres', safe='')}:{quote(password, safe='')}@{host}"
            f":{p.get('port') or 5432}/{quote(p['dbname'], safe='')}")


def unreachable_dsn() -> str:
    return make_conninfo(host="127.0.0.1", port="1", user="postgres", password=PASSWORD, dbname="warehouse")


def missing_db_dsn(dsn: str) -> str:
    return with_password(dsn, dbname=f"no_such_db_{uuid.uuid4().hex[:8]}")


def log_table_text(dsn: str) -> str:
    with connect(dsn) as conn:
        rows = conn.execute("SELECT row_to_json(l)::text FROM ops.mv_refresh_log AS l ORDER BY id").fetchall()
    return "\n".join(r[0] for r in rows)


def make_duplicate_row(dsn: str) -> None:
    """An exact duplicate row with a distinctive value in lab.keyed: CONCURRENTLY then fails with 21000."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE lab.keyed SET v = %s WHERE k = 7", (ROW_DATA,))
        conn.execute("REFRESH MATERIALIZED VIEW lab.mv_keyed")
        conn.execute("INSERT INTO lab.keyed VALUES (7, %s)", (ROW_DATA,))


@pytest.fixture
def lab_config(monkeypatch, tmp_path):
    from lab import LAB_CATALOG

    path = tmp_path / "lab.yaml"
    path.write_text(LAB_CATALOG)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    monkeypatch.delenv("MV_REFRESH_DSN", raising=False)
    return path


@pytest.fixture
def lab_db(lab_dsn, lab_config):
    """The lab database, known to ops.mv_catalog (health and audit have rows)."""
    from mv_refresh.catalog import load_catalog
    from mv_refresh.migrations import init_db

    init_db(lab_dsn, load_catalog())
    return lab_dsn


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_the_servers_accept_a_password_they_do_not_check(lab_dsn):
    """The premise of this file: a DSN with the password works against the test server."""
    for dsn in (with_password(lab_dsn), as_uri(lab_dsn)):
        with connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM lab.src").fetchone()[0] == 1000
            assert conn.info.password == PASSWORD  # it really was sent along


# --------------------------------------------------------------------------------------------------
# redact() and describe_target()

passwords = st.text(min_size=6, max_size=30).filter(lambda p: "\x00" not in p and p.strip() == p)


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(passwords, st.sampled_from(["password", "sslpassword"]), st.booleans())
def test_redact_masks_any_password_in_conninfo_and_uri_forms(password, key, uri):
    base = {"host": "db.example.com", "port": "6432", "user": "ops_user", "dbname": "warehouse"}

    def dsn_with(secret: str) -> str:
        if uri:
            return (f"postgresql://ops_user:{quote(secret, safe='')}@db.example.com:6432/warehouse"
                    if key == "password" else
                    f"postgresql://ops_user@db.example.com:6432/warehouse?{key}={quote(secret, safe='')}")
        return make_conninfo(**base, **{key: secret})

    dsn = dsn_with(password)
    assert conninfo_to_dict(dsn)[key] == password
    shown = redact(dsn)
    # Nothing of the password is left: the redacted text is the same whatever the password was (a plain
    # substring check alone would trip on passwords such as "passwo" that the key name itself contains).
    assert shown == redact(dsn_with("0" * len(password)))
    for form in {password, quote(password, safe=""), password.replace("'", "\\'")}:
        assert form not in shown or form in redact(dsn_with("0"))
    parsed = conninfo_to_dict(shown)
    assert parsed[key] == "***"
    assert {k: parsed[k] for k in base} == base  # everything else still says where
    where = describe_target(dsn)
    assert where == 'database "warehouse" on db.example.com:6432'  # the place, never the login or the secret


@pytest.mark.parametrize("dsn", [
    f"postgresql://postgres:{PASSWORD}@[::1/postgres",
    f"host=127.0.0.1 password='{PASSWORD}",
    f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/postgres",
    f"host=127.0.0.1 password={PASSWORD} junk",
])
def test_redact_and_describe_never_echo_an_unparsable_dsn(dsn):
    assert redact(dsn) == "<unparsable DSN>"
    assert_clean(describe_target(dsn))


def test_redact_masks_the_test_servers_dsn(lab_dsn):
    for dsn in (with_password(lab_dsn), as_uri(lab_dsn)):
        shown = redact(dsn)
        assert_clean(shown)
        assert "password=***" in shown


# --------------------------------------------------------------------------------------------------
# mv_refresh.db.connect


def test_connect_failures_name_the_target_but_not_the_password(lab_dsn, all_logs):
    cases = {
        "unreachable kv": unreachable_dsn(),
        "unreachable uri": f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/warehouse",
        "missing database": missing_db_dsn(lab_dsn),
        "missing database uri": as_uri(missing_db_dsn(lab_dsn)),
        "bad port": with_password(lab_dsn, port="notaport"),
    }
    for label, dsn in cases.items():
        with pytest.raises(psycopg.OperationalError) as info:
            connect(dsn, purpose="probe")
        text = exception_text(info.value)
        assert "cannot connect to database" in str(info.value), label
        assert_clean(text, what=label)
    assert all_logs.records is not None
    assert_clean(all_logs.text, what="log records")


@pytest.mark.parametrize("dsn", [
    "postgresql://postgres:S3cr3t%p4ss-XYZ@127.0.0.1:1/warehouse",  # a raw % in the password
    f"postgresql://postgres:{PASSWORD}@[::1:5432/warehouse",  # a typo in an IPv6 host
])
def test_an_unparsable_dsn_is_refused_without_echoing_the_password(dsn, lab_config, capsys):
    secret = conninfo_password_part(dsn)
    with pytest.raises(ConfigurationError, match="cannot be parsed") as info:
        connect(dsn)
    assert secret not in exception_text(info.value)
    assert main(["health", "--dsn", dsn]) == 3
    captured = capsys.readouterr()
    assert captured.err
    assert secret not in captured.out + captured.err


def conninfo_password_part(uri: str) -> str:
    return uri.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


# --------------------------------------------------------------------------------------------------
# The CLI

CLI_COMMANDS = {
    "init-db": ["init-db"],
    "refresh": ["refresh", "lab.mv_conc", "lab.mv_keyed"],
    "health": ["health"],
    "audit": ["audit"],
    "log": ["log"],
}


@pytest.mark.parametrize("target", ["ok", "unreachable", "missing_db"])
@pytest.mark.parametrize("command", sorted(CLI_COMMANDS))
def test_cli_output_never_shows_the_password(command, target, lab_db, capsys, monkeypatch, all_logs):
    make_duplicate_row(lab_db)
    dsn = {"ok": with_password(lab_db), "unreachable": unreachable_dsn(),
           "missing_db": missing_db_dsn(lab_db)}[target]
    seen = []
    for as_json in (False, True):
        for via in ("--dsn", "env"):
            argv = list(CLI_COMMANDS[command]) + (["--json"] if as_json else [])
            if via == "--dsn":
                argv += ["--dsn", dsn if target != "ok" or as_json else as_uri(lab_db)]
                monkeypatch.delenv("MV_REFRESH_DSN", raising=False)
            else:
                monkeypatch.setenv("MV_REFRESH_DSN", dsn)
            code = main(argv)
            captured = capsys.readouterr()
            out = captured.out + captured.err
            assert out.strip(), argv
            if target != "ok":
                assert code != 0, (argv, out)
                assert "cannot connect to database" in captured.err, (argv, out)
            assert_clean(out, row_data=True, what=f"{argv}")
            seen.append(out)
    if target == "ok" and command == "refresh":
        assert "lab.mv_conc: OK" in seen[0] and "21000" in seen[0]  # the failure is reported, without data
    assert_clean(all_logs.text, row_data=True, what="log records")
    assert_clean(log_table_text(lab_db), row_data=True, what="ops.mv_refresh_log")


def test_cli_subprocess_output_never_shows_the_password_or_row_data(lab_db, lab_config):
    make_duplicate_row(lab_db)
    env = {**os.environ, "MV_REFRESH_CONFIG": str(lab_config), "MV_REFRESH_DSN": as_uri(lab_db)}
    exe = str(ROOT / ".venv" / "bin" / "mv-refresh")
    refresh = subprocess.run([exe, "refresh", "lab.mv_keyed", "lab.mv_conc"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refresh.returncode == 1, refresh.stderr
    assert "21000" in refresh.stdout and "lab.mv_conc: OK" in refresh.stdout
    failed = subprocess.run([exe, "health", "--json", "--dsn", unreachable_dsn()], env=env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 3 and "127.0.0.1:1" in failed.stderr
    for run in (refresh, failed):
        assert_clean(run.stdout + run.stderr, row_data=True, what=" ".join(run.args))
    assert_clean(log_table_text(lab_db), row_data=True, what="ops.mv_refresh_log")


# --------------------------------------------------------------------------------------------------
# The engine and the 21000 DETAIL


def test_a_21000_failure_keeps_row_data_out_of_the_log_table_and_the_exception(lab_dsn, lab, all_logs):
    from mv_refresh.engine import RefreshFailed, refresh_view

    make_duplicate_row(lab_dsn)
    with pytest.raises(RefreshFailed) as info:
        refresh_view(with_password(lab_dsn), lab, "lab.mv_keyed")
    exc = info.value
    assert exc.result.error_sqlstate == "21000"
    for text in (str(exc), repr(exc), json.dumps(exc.result.as_dict(), default=str), *map(str, exc.args)):
        assert_clean(text, row_data=True, what="RefreshFailed")
    table = log_table_text(lab_dsn)
    assert "21000" in table
    assert_clean(table, row_data=True, what="ops.mv_refresh_log")
    assert_clean(all_logs.text, row_data=True, what="log records")


def test_a_21000_failure_traceback_carries_no_row_data(lab_dsn, lab):
    from mv_refresh.engine import RefreshFailed, refresh_view

    make_duplicate_row(lab_dsn)
    with pytest.raises(RefreshFailed) as info:
        refresh_view(lab_dsn, lab, "lab.mv_keyed")
    assert_clean(exception_text(info.value), row_data=True, what="the traceback")


# --------------------------------------------------------------------------------------------------
# The Airflow operator and sensor

pytest_airflow = pytest.mark.airflow


def _context(run_id: str = "manual__secrets") -> dict:
    # Only the identifiers the operator writes into the log row; Airflow itself decides nothing here.
    return {"ti": SimpleNamespace(dag_id="ops_mv_refresh", run_id=run_id, task_id="refresh_x", try_number=1)}


def _point_airflow_at(monkeypatch, dsn: str) -> None:
    conn = json.loads(airflow_connection_json(dsn))
    assert conn["password"] == PASSWORD
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", json.dumps(conn))


def _operator(view: str):
    from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

    return MaterializedViewRefreshOperator(task_id="refresh_x", view=view)


@pytest_airflow
def test_operator_result_and_logs_carry_no_password(lab_dsn, lab_config, monkeypatch, all_logs, capsys):
    _point_airflow_at(monkeypatch, with_password(lab_dsn))
    result = _operator("lab.mv_conc").execute(_context())
    assert result["status"] == "OK"
    assert_clean(json.dumps(result, default=str), what="the XCom")
    captured = capsys.readouterr()
    logged = all_logs.text + captured.out + captured.err
    assert "lab.mv_conc: OK" in logged  # the capture did catch the operator's log lines
    assert_clean(logged, what="the task log")
    assert_clean(log_table_text(lab_dsn), what="ops.mv_refresh_log")


@pytest_airflow
@pytest.mark.parametrize("case", ["unreachable", "missing_db", "duplicate_rows"])
def test_operator_exceptions_carry_no_password_or_row_data(case, lab_dsn, lab_config, monkeypatch, all_logs,
                                                           capsys):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    if case == "duplicate_rows":
        make_duplicate_row(lab_dsn)
    dsn = {"unreachable": unreachable_dsn(), "missing_db": missing_db_dsn(lab_dsn),
           "duplicate_rows": with_password(lab_dsn)}[case]
    _point_airflow_at(monkeypatch, dsn)
    with pytest.raises(AirflowException) as info:
        _operator("lab.mv_keyed").execute(_context())
    if case == "duplicate_rows":
        assert isinstance(info.value, AirflowFailException) and "21000" in str(info.value)
    else:
        assert "cannot connect" in str(info.value)
    captured = capsys.readouterr()
    for text, what in ((exception_text(info.value), "the task's exception"),
                       (all_logs.text + captured.out + captured.err, "the task log")):
        assert_clean(text, row_data=True, what=what)
    if case == "duplicate_rows":
        assert_clean(log_table_text(lab_dsn), row_data=True, what="ops.mv_refresh_log")


@pytest_airflow
@pytest.mark.parametrize("case", ["unreachable", "missing_db", "failed_refresh"])
def test_sensor_exceptions_carry_no_password_or_row_data(case, lab_db, lab, monkeypatch, all_logs, capsys):
    from airflow.sdk.exceptions import AirflowFailException

    from mv_refresh.airflow.sensors import MaterializedViewHealthSensor
    from mv_refresh.engine import RefreshFailed, RunContext, refresh_view

    if case == "failed_refresh":
        # The critical view's last refresh failed with 21000 in this very run: NO_REFRESH plus the failure.
        make_duplicate_row(lab_db)
        with pytest.raises(RefreshFailed):
            refresh_view(lab_db, lab, "lab.mv_keyed",
                         context=RunContext(run_by="airflow", dag_id="ops_mv_refresh", run_id="manual__secrets"))
    dsn = {"unreachable": unreachable_dsn(), "missing_db": missing_db_dsn(lab_db),
           "failed_refresh": with_password(lab_db)}[case]
    _point_airflow_at(monkeypatch, dsn)
    sensor = MaterializedViewHealthSensor(task_id="health_check", views=["lab.mv_keyed"])
    expected = AirflowFailException if case == "failed_refresh" else psycopg.OperationalError
    with pytest.raises(expected) as info:
        sensor.poke(_context())
    if case == "failed_refresh":
        assert "NO_REFRESH" in str(info.value) and "21000" in str(info.value)
    captured = capsys.readouterr()
    for text, what in ((exception_text(info.value), "the sensor's exception"),
                       (all_logs.text + captured.out + captured.err, "the task log")):
        assert_clean(text, row_data=True, what=what)


@pytest_airflow
def test_a_blocking_sessions_sql_never_reaches_the_log_health_cli_or_alert(lab_db, monkeypatch, all_logs, capsys):
    """The session that blocks a refresh last ran ``ALTER ROLE ... PASSWORD '...'``: who it is, its lock mode,
    state and since when are reported; its SQL text is stored and shown nowhere."""
    from airflow.sdk.exceptions import AirflowException

    from mv_refresh.airflow.alerts import RefreshFailureNotifier
    from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

    secret = f"PwdInQuery-{uuid.uuid4().hex[:8]}"
    role = f"mvr_secret_{uuid.uuid4().hex[:8]}"
    with connect(lab_db, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(role)))
    try:
        with connect(lab_db) as blocker:
            blocker.execute("SELECT count(*) FROM lab.mv_conc")  # ACCESS SHARE, held by the open transaction
            blocker.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(secret)))
            with connect(lab_db) as probe:  # the text is there for anyone allowed to look ...
                assert secret in probe.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                               (blocker.info.backend_pid,)).fetchone()[0]
            monkeypatch.setenv("MV_REFRESH_DSN", lab_db)
            assert main(["refresh", "lab.mv_conc", "--mode", "plain", "--lock-timeout", "0.3"]) == 1
            _point_airflow_at(monkeypatch, with_password(lab_db))
            with pytest.raises(AirflowException) as info:
                MaterializedViewRefreshOperator(task_id="refresh_x", view="lab.mv_conc", mode="plain",
                                                lock_timeout=0.3).execute(_context())
            blocker.rollback()
        _subject, alert = RefreshFailureNotifier.describe({"ti": SimpleNamespace(
            dag_id="ops_mv_refresh", task_id="refresh_x", run_id="r", log_url=None), "exception": info.value})
        health_main = main(["health", "lab.mv_conc"])
        captured = capsys.readouterr()
        with connect(lab_db) as conn:
            health = conn.execute("SELECT row_to_json(h)::text FROM ops.v_mv_health AS h").fetchall()
        shown = {
            "ops.mv_refresh_log": log_table_text(lab_db),
            "ops.v_mv_health": "\n".join(r[0] for r in health),
            "the CLI": captured.out + captured.err,
            "the alert": alert,
            "the task log": all_logs.text,
        }
        assert health_main == 2 and "55P03" in shown["ops.mv_refresh_log"]
        assert "AccessShareLock" in shown["ops.mv_refresh_log"] and "AccessShareLock" in shown["the alert"]
        for where, text in shown.items():
            assert secret not in text, f"another session's SQL text in {where}"
            assert "ALTER ROLE" not in text, f"another session's SQL text in {where}"
    finally:
        with connect(lab_db, autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))
