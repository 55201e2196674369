"""Least privilege (docs/security.md): a refresher that is neither a superuser nor the views' owner.

Every role here is real and created for the test (unique names: roles are cluster-wide), logs in over the
server's trust authentication, and is dropped afterwards (DROP OWNED, DROP ROLE). The rights are set up
the documented way, by running include/sql/ops/least_privilege.sql with psql: as the owner of the ops
tables (part 1) and as the owner of the views (part 2).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mv_refresh import privileges
from mv_refresh.catalog import parse_catalog
from mv_refresh.db import connect
from mv_refresh.embedded import psql_path
from mv_refresh.engine import RefreshFailed, RefreshRefused, RunContext, refresh_view
from mv_refresh.migrations import applied_versions, discover_migrations, sync_catalog
from mv_refresh.paths import SQL_OPS_DIR

SCRIPT = SQL_OPS_DIR / "least_privilege.sql"

SEC_CATALOG = """
version: 1
defaults:
  lock_timeout_seconds: 10
  statement_timeout_seconds: 60
views:
  - name: sec.mv_allowed
  - name: sec.mv_plain
  - name: sec.mv_keyed
    grain: [k]
  - name: sec."Odd Name"
  - name: sec.mv_private
"""

# What the owner lets the refresher refresh; sec.mv_private stays the owner's alone.
GRANTED_VIEWS = 'sec.mv_allowed,sec.mv_plain,sec.mv_keyed,sec."Odd Name"'

OWNER_SQL = """
CREATE TABLE sec.src (id integer PRIMARY KEY, grp integer NOT NULL);
INSERT INTO sec.src SELECT g, g % 7 FROM generate_series(1, 500) AS g;
CREATE MATERIALIZED VIEW sec.mv_allowed AS SELECT id, grp FROM sec.src;
CREATE UNIQUE INDEX mv_allowed_id ON sec.mv_allowed (id);
CREATE MATERIALIZED VIEW sec.mv_plain AS SELECT grp, count(*) AS n FROM sec.src GROUP BY grp;
CREATE TABLE sec.keyed (k integer NOT NULL, v text NOT NULL);
INSERT INTO sec.keyed SELECT g, 'v' || g FROM generate_series(1, 50) AS g;
CREATE MATERIALIZED VIEW sec.mv_keyed AS SELECT k, v FROM sec.keyed;
CREATE UNIQUE INDEX mv_keyed_k ON sec.mv_keyed (k);
CREATE MATERIALIZED VIEW sec."Odd Name" AS SELECT id FROM sec.src WHERE id <= 10;
CREATE UNIQUE INDEX odd_name_id ON sec."Odd Name" (id);
CREATE MATERIALIZED VIEW sec.mv_private AS SELECT id FROM sec.src;
CREATE TABLE sec.not_a_view (id integer);
"""


def _as(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    return make_conninfo(**params)


def run_script(dsn: str, **variables: str) -> subprocess.CompletedProcess:
    """``psql -f least_privilege.sql -v name=value ...`` as the role of ``dsn``."""
    args = [psql_path(), "-X", "-d", dsn, "-f", str(SCRIPT)]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    return proc.stdout


@dataclass
class Sec:
    """The test database and its roles: ``admin`` owns the ops tables (it ran the migrations)."""

    admin: str  # DSN of the superuser that created the database and ran init-db
    dbname: str
    owner: str
    refresher: str
    reader: str
    nobody: str
    maintain: bool  # the server has the MAINTAIN privilege (PostgreSQL 17+)

    def dsn(self, role: str) -> str:
        return _as(self.admin, role)

    def execute(self, role: str, statement, params=None) -> None:
        with connect(self.dsn(role) if role != "admin" else self.admin, autocommit=True) as conn:
            conn.execute(statement, params)

    def scalar(self, statement, params=None, role: str = "admin"):
        with connect(self.dsn(role) if role != "admin" else self.admin, autocommit=True) as conn:
            return conn.execute(statement, params).fetchone()[0]

    def grant_ops(self) -> str:
        """Part 1 of the script, as the owner of the ops tables."""
        return _ok(run_script(self.admin, refresher=self.refresher, reader=self.reader, part="ops"))

    def grant_views(self, method: str = "auto", views: str = GRANTED_VIEWS) -> str:
        """Part 2 of the script, as the owner of the views."""
        return _ok(run_script(self.dsn(self.owner), refresher=self.refresher, views=views, method=method))

    def let_refresher_create_schemas(self) -> None:
        self.execute("admin", sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(self.dbname), sql.Identifier(self.refresher)))

    def setup(self, method: str = "auto") -> None:
        self.grant_ops()
        self.grant_views(method)

    def uses_function(self, method: str) -> bool:
        return method == "function" or not self.maintain


@pytest.fixture
def sec(pg_server, lab_dsn) -> Iterator[Sec]:
    suffix = uuid.uuid4().hex[:10]
    state = Sec(admin=lab_dsn, dbname=conninfo_to_dict(lab_dsn)["dbname"], owner=f"mvr_owner_{suffix}",
                refresher=f"mvr_refresher_{suffix}", reader=f"mvr_reader_{suffix}",
                nobody=f"mvr_nobody_{suffix}", maintain=pg_server.version_num >= 170000)
    roles = [state.owner, state.refresher, state.reader, state.nobody]
    role_list = sql.SQL(", ").join(map(sql.Identifier, roles))
    with connect(pg_server.admin_dsn, autocommit=True) as admin:
        for role in roles:
            # LOGIN, NOSUPERUSER, NOCREATEROLE, NOCREATEDB: the defaults, spelt out.
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB").format(
                sql.Identifier(role)))
    try:
        with connect(lab_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "CREATE SCHEMA sec AUTHORIZATION {owner}; "
                # The views' owner may create the function and its allow-list in ops, and read the
                # catalog mirror (the script's default list of views).
                "GRANT USAGE, CREATE ON SCHEMA ops TO {owner}; GRANT SELECT ON ops.mv_catalog TO {owner}"
            ).format(owner=sql.Identifier(state.owner)))
            sync_catalog(conn, parse_catalog(SEC_CATALOG))
        state.execute(state.owner, OWNER_SQL)
        yield state
    finally:
        with connect(lab_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role_list))
        with connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role_list))


@pytest.fixture
def catalog():
    return parse_catalog(SEC_CATALOG, source="security catalog")


def _log(sec: Sec, mv: str) -> list[dict]:
    with connect(sec.admin) as conn:
        cur = conn.execute("SELECT * FROM ops.mv_refresh_log WHERE schema_name = 'sec' AND mv_name = %s "
                           "ORDER BY id", (mv,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def _access(sec: Sec, view: str) -> privileges.RefreshAccess:
    with connect(sec.dsn(sec.refresher), autocommit=True) as conn:
        oid = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'sec' AND c.relname = %s", (view,)).fetchone()[0]
        return privileges.check_access(conn, oid)


# --------------------------------------------------------------------------------------------------
# (a) the documented setup lets the refresher refresh


def test_the_roles_are_what_the_issue_says(sec):
    sec.setup()
    with connect(sec.admin) as conn:
        flags = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
                             (sec.refresher,)).fetchone()
        owners = {r[0] for r in conn.execute(
            "SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'sec' AND c.relkind = 'm'")}
        member = conn.execute("SELECT pg_has_role(%s, %s, 'USAGE')", (sec.refresher, sec.owner)).fetchone()[0]
    assert flags == (False, False)
    assert owners == {sec.owner} and not member


@pytest.mark.parametrize("method", ["auto", "function"])
def test_the_refresher_refreshes_granted_views_with_an_ok_row(sec, catalog, method):
    sec.setup(method)
    sec.execute(sec.owner, "INSERT INTO sec.src SELECT g, g % 7 FROM generate_series(501, 520) AS g")
    dsn = sec.dsn(sec.refresher)
    via_function = sec.uses_function(method)
    expected_path = privileges.PATH_FUNCTION if via_function else privileges.PATH_MAINTAIN
    assert _access(sec, "mv_allowed").path == expected_path

    result = refresh_view(dsn, catalog, "sec.mv_allowed", context=RunContext(run_by="cli"))
    assert (result.status, result.method, result.rows_after_refresh) == ("OK", "CONCURRENTLY", 520)
    [row] = _log(sec, "mv_allowed")
    assert (row["status"], row["method"], row["rows_after_refresh"]) == ("OK", "CONCURRENTLY", 520)
    assert row["db_user"] == sec.refresher and row["error_sqlstate"] is None
    if via_function:
        assert row["method_reason"].startswith(f"via ops.refresh_materialized_view (runs as {sec.owner}); ")
    else:
        assert "via ops.refresh_materialized_view" not in row["method_reason"]
    # The least-privilege grants include what change tracking records: the refresh is not told otherwise.
    assert "change tracking unavailable" not in row["method_reason"]

    plain = refresh_view(dsn, catalog, "sec.mv_plain")
    assert (plain.status, plain.method, plain.rows_after_refresh) == ("OK", "PLAIN", 7)
    assert "no valid unique index" in plain.method_reason
    assert ("via ops.refresh_materialized_view" in plain.method_reason) == via_function

    odd = refresh_view(dsn, catalog, 'sec."Odd Name"')
    assert (odd.status, odd.method, odd.rows_after_refresh) == ("OK", "CONCURRENTLY", 10)
    # The data really is new: the refresh ran with the owner's rights, not as a no-op.
    assert sec.scalar("SELECT count(*) FROM sec.mv_allowed") == 520


def test_the_function_path_keeps_the_engines_error_handling(sec, catalog):
    """Through the function, duplicate keys are still an ERROR with no fallback and no row data."""
    sec.setup("function")
    sec.execute(sec.owner, "INSERT INTO sec.keyed VALUES (7, 'secret value for key 7')")
    with pytest.raises(RefreshFailed) as info:
        refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_keyed")
    assert not info.value.retryable
    rows = _log(sec, "mv_keyed")
    assert len(rows) == 1, "no second (PLAIN) attempt"
    assert (rows[0]["status"], rows[0]["method"], rows[0]["error_sqlstate"]) == ("ERROR", "CONCURRENTLY", "23505")
    assert "secret value" not in rows[0]["error_message"]
    assert sec.scalar("SELECT count(*) FROM sec.mv_keyed") == 50


def test_the_function_path_falls_back_to_plain_once(sec, catalog):
    """CONCURRENTLY refused after the choice (index dropped meanwhile): PLAIN once, through the function."""
    import threading
    import time

    sec.setup("function")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    with connect(sec.dsn(sec.owner)) as saboteur:
        saboteur.execute("DROP INDEX sec.mv_allowed_id")  # ACCESS EXCLUSIVE until commit
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while not sec.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                             "AND usename = %s", (sec.refresher,)):
            assert time.monotonic() < deadline, "the refresh never waited for the lock"
            time.sleep(0.05)
        saboteur.commit()
    thread.join(30)
    result = outcome["result"]
    assert (result.status, result.method) == ("OK", "PLAIN")
    assert "CONCURRENTLY refused (55000" in result.method_reason
    assert "via ops.refresh_materialized_view" in result.method_reason


def test_rows_are_not_counted_without_select_and_the_refresh_still_counts_as_ok(sec, catalog):
    sec.setup()
    sec.execute(sec.owner, sql.SQL("REVOKE SELECT ON sec.mv_plain FROM {}").format(sql.Identifier(sec.refresher)))
    result = refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_plain")
    assert result.status == "OK" and result.rows_after_refresh is None
    assert f'rows not counted: role {sec.refresher} may not SELECT the view' in result.method_reason
    assert "rows not counted" in result.summary()


# --------------------------------------------------------------------------------------------------
# (b) no right to refresh: a permanent permission error that says what to do


def _expected_fix(sec: Sec, via_function: bool) -> str:
    if via_function:
        return "least_privilege.sql"
    return "GRANT MAINTAIN" if sec.maintain else "least_privilege.sql"


@pytest.mark.parametrize("method", ["auto", "function"])
def test_a_view_without_the_grant_fails_at_once_with_42501_naming_role_view_and_fix(sec, catalog, method):
    sec.setup(method)
    via_function = sec.uses_function(method)
    with pytest.raises(RefreshFailed) as info:
        refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_private")
    result = info.value.result
    assert not info.value.retryable and not result.retryable
    assert (result.status, result.error_sqlstate) == ("ERROR", "42501")
    message = result.error_message
    assert message.startswith(f'permission denied: role {sec.refresher} may not refresh sec.mv_private')
    assert _expected_fix(sec, via_function) in message
    if via_function:
        assert "allow-list" in message
    [row] = _log(sec, "mv_private")
    assert (row["status"], row["error_sqlstate"], row["error_message"]) == ("ERROR", "42501", message)
    assert row["db_user"] == sec.refresher
    # Health shows a failing refresh with its reason, not a view that merely went stale.
    health = sec.scalar("SELECT row(status_bucket, last_status, last_error)::text "
                        "FROM ops.mv_health_of('sec', 'mv_private')")
    assert "NO_REFRESH" in health and "ERROR" in health and "permission denied" in health
    assert sec.scalar("SELECT count(*) FROM ops.mv_refresh_log WHERE status = 'SKIPPED'") == 0


def test_without_any_setup_postgresql_refuses_and_the_message_says_what_to_run(sec, catalog):
    sec.grant_ops()  # the refresher may write the log and name the views, nothing more
    sec.execute(sec.owner, sql.SQL("GRANT USAGE ON SCHEMA sec TO {}").format(sql.Identifier(sec.refresher)))
    assert _access(sec, "mv_allowed").path == privileges.PATH_NONE
    with pytest.raises(RefreshFailed) as info:
        refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")
    result = info.value.result
    assert not info.value.retryable and result.error_sqlstate == "42501"
    assert f'role {sec.refresher}' in result.error_message and "sec.mv_allowed" in result.error_message
    # PostgreSQL's own words stay in the message.
    said = "permission denied for materialized view" if sec.maintain else "must be owner of materialized view"
    assert said in result.error_message
    assert ("GRANT MAINTAIN" if sec.maintain else "least_privilege.sql") in result.error_message
    assert sec.scalar("SELECT relispopulated FROM pg_class WHERE oid = 'sec.mv_allowed'::regclass")


def test_without_log_grants_the_refresh_is_refused_before_it_starts(sec, catalog):
    sec.grant_views("function")  # may refresh, may not write the log
    with pytest.raises(RefreshRefused, match=rf'role {sec.refresher} cannot write the refresh log'
                                             r".*least_privilege\.sql"):
        refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")


@pytest.mark.airflow
def test_the_operator_fails_a_permission_error_without_retry(sec, airflow_conn, tmp_path):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

    def context(task_id: str) -> dict:  # only what the operator writes into the log row
        return {"ti": SimpleNamespace(dag_id="ops_mv_refresh", run_id="manual__sec", task_id=task_id, try_number=1)}

    sec.setup()
    path = tmp_path / "sec.yaml"
    path.write_text(SEC_CATALOG)
    airflow_conn(sec.dsn(sec.refresher))
    ok = MaterializedViewRefreshOperator(task_id="refresh_mv_allowed", view="sec.mv_allowed",
                                         catalog_path=str(path))
    assert ok.execute(context("refresh_mv_allowed"))["status"] == "OK"
    denied = MaterializedViewRefreshOperator(task_id="refresh_mv_private", view="sec.mv_private",
                                             catalog_path=str(path))
    with pytest.raises(AirflowFailException, match="42501.*permission denied"):
        denied.execute(context("refresh_mv_private"))


# --------------------------------------------------------------------------------------------------
# (c) the function refreshes nothing but the owner's allow-listed materialized views


_TRIPWIRE_SQL = """
CREATE SCHEMA {schema};
CREATE TABLE {schema}.tripwire (who name NOT NULL DEFAULT current_user, what text NOT NULL);
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
GRANT INSERT ON {schema}.tripwire TO PUBLIC;
CREATE FUNCTION {schema}.trip(what text) RETURNS integer LANGUAGE sql
    AS $$ INSERT INTO {schema}.tripwire (what) VALUES (what) RETURNING 1 $$;
"""


def _tripwire(sec: Sec, schema: str) -> list[tuple[str, str]]:
    with connect(sec.admin) as conn:
        return conn.execute(sql.SQL("SELECT who::text, what FROM {}.tripwire ORDER BY what").format(
            sql.Identifier(schema))).fetchall()


def _call_function(sec: Sec, schema: str, name: str, concurrently: bool = False, *, options: str | None = None):
    dsn = sec.dsn(sec.refresher)
    if options:
        dsn = make_conninfo(dsn, options=options)
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT ops.refresh_materialized_view(%s, %s, %s)", (schema, name, concurrently))


def _refused(sec: Sec, schema: str, name: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        _call_function(sec, schema, name)
    return info.value


def test_the_function_is_definer_pinned_and_not_public(sec):
    sec.setup("function")
    with connect(sec.admin) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig, "
            "       has_function_privilege('public', p.oid, 'EXECUTE'), "
            "       has_function_privilege(%s, p.oid, 'EXECUTE'), has_function_privilege(%s, p.oid, 'EXECUTE')"
            "  FROM pg_proc p WHERE p.oid = 'ops.refresh_materialized_view(text, text, boolean)'::regprocedure",
            (sec.refresher, sec.nobody)).fetchone()
        allowlist = conn.execute(
            "SELECT pg_get_userbyid(relowner), has_table_privilege('public', oid, 'SELECT'), "
            "       has_table_privilege(%s, oid, 'INSERT') "
            "  FROM pg_class WHERE oid = 'ops.mv_refresh_allowlist'::regclass", (sec.refresher,)).fetchone()
        listed = conn.execute("SELECT schema_name, mv_name FROM ops.mv_refresh_allowlist ORDER BY 1, 2").fetchall()
    assert row == (sec.owner, True, ["search_path=pg_catalog, pg_temp"], False, True, False)
    assert allowlist == (sec.owner, False, False)
    assert listed == [("sec", "Odd Name"), ("sec", "mv_allowed"), ("sec", "mv_keyed"), ("sec", "mv_plain")]


def test_a_shadow_view_in_the_refreshers_own_schema_is_refused(sec):
    sec.setup("function")
    sec.let_refresher_create_schemas()
    # Same name as an allowed view, in a schema the refresher owns; refreshing it would run trip() as the owner.
    sec.execute(sec.refresher, sql.SQL(_TRIPWIRE_SQL.format(schema="shadow")))
    sec.execute(sec.refresher, "CREATE MATERIALIZED VIEW shadow.mv_allowed AS SELECT shadow.trip('refreshed') AS x "
                               "WITH NO DATA")
    error = _refused(sec, "shadow", "mv_allowed")
    assert error.sqlstate == "42501" and "not on the refresh allow-list" in error.diag.message_primary
    for name in ("mv_allowed; DROP TABLE sec.src", 'mv_allowed"', "MV_ALLOWED", "mv_private"):
        assert _refused(sec, "sec", name).sqlstate == "42501"
    assert _tripwire(sec, "shadow") == []
    assert sec.scalar("SELECT count(*) FROM sec.src") == 500


def test_an_allow_listed_name_the_refresher_occupies_is_refused(sec):
    """The owner allow-listed a view in a schema the refresher can write, before creating it."""
    sec.setup("function")
    sec.let_refresher_create_schemas()
    sec.execute("admin", sql.SQL("CREATE SCHEMA shared; GRANT USAGE, CREATE ON SCHEMA shared TO {}, {}").format(
        sql.Identifier(sec.refresher), sql.Identifier(sec.owner)))
    sec.execute(sec.owner, "INSERT INTO ops.mv_refresh_allowlist (schema_name, mv_name) "
                           "VALUES ('shared', 'mv_report'), ('shared', 'report_table'), ('sec', 'not_a_view')")
    sec.execute(sec.refresher, sql.SQL(_TRIPWIRE_SQL.format(schema="trap")))
    sec.execute(sec.refresher, "CREATE MATERIALIZED VIEW shared.mv_report AS SELECT trap.trip('refreshed') AS x "
                               "WITH NO DATA")
    sec.execute(sec.refresher, "CREATE TABLE shared.report_table (x integer)")

    occupied = _refused(sec, "shared", "mv_report")
    assert occupied.sqlstate == "42501"
    assert f"belongs to {sec.refresher}, not to {sec.owner}" in occupied.diag.message_primary
    assert _refused(sec, "shared", "report_table").sqlstate == "42809"  # not a materialized view
    assert _refused(sec, "sec", "not_a_view").sqlstate == "42809"
    assert _refused(sec, "shared", "mv_gone").sqlstate == "42501"  # not listed: no lookup at all
    assert _tripwire(sec, "trap") == []
    assert sec.scalar("SELECT relispopulated FROM pg_class WHERE oid = 'shared.mv_report'::regclass") is False


# --------------------------------------------------------------------------------------------------
# (d) the function ignores the caller's search_path


_TRAPS_SQL = """
CREATE FUNCTION evil.eq_name_text(name, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('=(name,text)'); RETURN $1::text OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.eq_name_text);
CREATE FUNCTION evil.eq_text(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('=(text,text)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq_text);
CREATE FUNCTION evil.ne_char("char", "char") RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('<>(char,char)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR evil.<> (LEFTARG = "char", RIGHTARG = "char", FUNCTION = evil.ne_char);
CREATE FUNCTION evil.ne_oid(oid, oid) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('<>(oid,oid)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR evil.<> (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.ne_oid);
CREATE FUNCTION evil.format(text, text, text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('format'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION evil.pg_get_userbyid(oid) RETURNS name LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.trip('pg_get_userbyid'); RETURN pg_catalog.pg_get_userbyid($1); END $$;
"""

_TRAP_PROBE = """
SELECT 'a'::name = 'a'::text, 'a'::text = 'a'::text, 'm'::"char" <> 'r'::"char", 1::oid <> 2::oid,
       format('%I.%I', 'a'::text, 'b'::text), pg_get_userbyid(10)
"""

_EVIL_PATH = "-c search_path=evil,pg_catalog"


def test_the_function_ignores_the_callers_search_path(sec):
    sec.setup("function")
    sec.let_refresher_create_schemas()
    sec.execute(sec.refresher, sql.SQL(_TRIPWIRE_SQL.format(schema="evil")))
    sec.execute(sec.refresher, _TRAPS_SQL)
    # The traps work: with evil first on the path, each one shadows PostgreSQL's own.
    with connect(make_conninfo(sec.dsn(sec.refresher), options=_EVIL_PATH), autocommit=True) as conn:
        conn.execute(_TRAP_PROBE)
        conn.execute("TRUNCATE evil.tripwire")
    assert sec.scalar("SELECT count(*) FROM evil.tripwire") == 0
    with connect(make_conninfo(sec.dsn(sec.refresher), options=_EVIL_PATH), autocommit=True) as conn:
        conn.execute(_TRAP_PROBE)
    assert [what for _who, what in _tripwire(sec, "evil")] == sorted(
        ["<>(char,char)", "<>(oid,oid)", "=(name,text)", "=(text,text)", "format", "pg_get_userbyid"])
    sec.execute(sec.refresher, "TRUNCATE evil.tripwire")

    # The same session path, calling the function: every path through it, and not one trap fires.
    sec.execute(sec.owner, "INSERT INTO sec.src VALUES (501, 1)")
    _call_function(sec, "sec", "mv_allowed", True, options=_EVIL_PATH)
    _call_function(sec, "sec", "mv_plain", False, options=_EVIL_PATH)
    with pytest.raises(psycopg.Error):
        _call_function(sec, "sec", "mv_private", options=_EVIL_PATH)  # not listed
    sec.execute(sec.owner, "INSERT INTO ops.mv_refresh_allowlist VALUES ('sec', 'not_a_view')")
    with pytest.raises(psycopg.Error):
        _call_function(sec, "sec", "not_a_view", options=_EVIL_PATH)  # not a materialized view
    assert _tripwire(sec, "evil") == []
    assert sec.scalar("SELECT count(*) FROM sec.mv_allowed") == 501


# --------------------------------------------------------------------------------------------------
# (e) after V003 the log is readable by grant only


def test_v003_is_a_migration_and_public_has_nothing_in_ops(sec):
    assert 3 in [m.version for m in discover_migrations()]
    with connect(sec.admin) as conn:
        assert 3 in applied_versions(conn)
        public = conn.execute(
            "SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
            "     unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(privilege) "
            "WHERE n.nspname = 'ops' AND c.relkind IN ('r', 'v', 'm') "
            "  AND c.relname IN ('mv_refresh_log', 'mv_catalog', 'schema_migrations', 'v_mv_health', "
            "                    'v_yango_cabinet_claims_mv_health') "
            "  AND has_table_privilege('public', c.oid, p.privilege)").fetchall()
        create = conn.execute("SELECT has_schema_privilege('public', 'ops', 'CREATE')").fetchone()[0]
    assert public == [] and create is False


def test_a_role_without_grants_cannot_read_the_log(sec):
    sec.grant_ops()
    # Even with USAGE on ops (say, to read the views that live there), the tables stay closed.
    sec.execute("admin", sql.SQL("GRANT USAGE ON SCHEMA ops TO {}").format(sql.Identifier(sec.nobody)))
    sec.execute("admin", "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status, refresh_finished_at) "
                         "VALUES ('sec', 'mv_allowed', 'ERROR', clock_timestamp())")
    with connect(sec.dsn(sec.nobody), autocommit=True) as conn:
        for query in ("SELECT * FROM ops.mv_refresh_log", "SELECT * FROM ops.mv_catalog",
                      "SELECT * FROM ops.schema_migrations", "SELECT * FROM ops.v_mv_health",
                      "SELECT * FROM ops.v_yango_cabinet_claims_mv_health",
                      "SELECT * FROM ops.mv_health_of('sec', 'mv_allowed')",
                      "INSERT INTO ops.mv_refresh_log (schema_name, mv_name, status) VALUES ('x', 'y', 'RUNNING')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)


def test_a_reader_with_the_documented_grants_reads_log_and_health(sec, catalog):
    sec.setup()
    refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")
    with connect(sec.dsn(sec.reader), autocommit=True) as conn:
        assert conn.execute("SELECT status, db_user FROM ops.mv_refresh_log").fetchall() == [("OK", sec.refresher)]
        health = conn.execute("SELECT mv_name, status_bucket FROM ops.v_mv_health "
                              "WHERE schema_name = 'sec' ORDER BY position").fetchall()
        assert ("mv_allowed", "OK") in health and ("mv_private", "NO_REFRESH") in health
        assert len(conn.execute("SELECT * FROM ops.v_yango_cabinet_claims_mv_health").fetchall()) == 1
        assert conn.execute("SELECT status_bucket FROM ops.mv_health_of('sec', 'mv_allowed')").fetchone() == ("OK",)
        for query in ("UPDATE ops.mv_refresh_log SET status = 'OK'", "DELETE FROM ops.mv_refresh_log",
                      "SELECT * FROM ops.schema_migrations", "SELECT count(*) FROM sec.mv_allowed"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
    # The refresher writes rows and finishes them, but cannot erase the history.
    with connect(sec.dsn(sec.refresher), autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM ops.mv_refresh_log")


# --------------------------------------------------------------------------------------------------
# (f) the DBA's script


@pytest.mark.parametrize("method", ["auto", "function"])
def test_the_script_runs_cleanly_twice_as_the_owner_with_the_catalog_as_default(sec, method):
    sec.grant_ops()
    first = _ok(run_script(sec.dsn(sec.owner), refresher=sec.refresher, method=method))
    assert "Part 1 skipped" in first  # the owner of the views does not own the ops tables
    again = _ok(run_script(sec.dsn(sec.owner), refresher=sec.refresher, method=method))
    assert "Result" in again
    uses_function = sec.uses_function(method)
    # The default list is the catalog mirror: every catalog view, sec.mv_private included.
    for view in ("mv_allowed", "mv_plain", "mv_keyed", "Odd Name", "mv_private"):
        access = _access(sec, view)
        assert access.path == (privileges.PATH_FUNCTION if uses_function else privileges.PATH_MAINTAIN), view
        assert access.can_select, view
    if uses_function:
        assert sec.scalar("SELECT count(*) FROM ops.mv_refresh_allowlist") == 5


def test_the_script_says_what_it_needs(sec):
    missing = run_script(sec.dsn(sec.owner))
    assert missing.returncode != 0 and "refresher" in missing.stderr
    unknown = run_script(sec.dsn(sec.owner), refresher=f"{sec.refresher}_nope")
    assert unknown.returncode != 0 and "does not exist" in unknown.stderr
    bad = run_script(sec.dsn(sec.owner), refresher=sec.refresher, views="sec.a.b")
    assert bad.returncode != 0 and "is not schema.name" in bad.stderr
    # A superuser must not own the SECURITY DEFINER function (the lab views belong to the superuser).
    superuser = run_script(sec.admin, refresher=sec.refresher, views="lab.mv_conc", method="function")
    assert superuser.returncode != 0 and "refusing to create ops.refresh_materialized_view" in superuser.stderr
    assert sec.scalar("SELECT to_regprocedure('ops.refresh_materialized_view(text, text, boolean)')") is None
    if not sec.maintain:
        no_maintain = run_script(sec.dsn(sec.owner), refresher=sec.refresher, method="maintain")
        assert no_maintain.returncode != 0 and "no MAINTAIN privilege" in no_maintain.stderr


def test_the_script_leaves_views_of_other_owners_alone(sec):
    out = _ok(run_script(sec.dsn(sec.owner), refresher=sec.refresher, views="sec.mv_allowed,lab.mv_conc,sec.nope"))
    assert "owned by" in out
    assert "does not exist" in out
    with connect(sec.admin) as conn:
        assert conn.execute("SELECT has_table_privilege(%s, 'lab.mv_conc', 'SELECT')",
                            (sec.refresher,)).fetchone()[0] is False


def test_the_script_is_in_the_ops_folder_but_is_no_migration():
    assert SCRIPT.exists()
    assert SCRIPT.name not in {m.path.name for m in discover_migrations()}
    assert Path(SQL_OPS_DIR / "V003__log_grants.sql").exists()


def test_the_maintainer_prunes_the_tracker_installs_and_the_refresher_does_neither(sec, catalog):
    """-v maintainer: DELETE on the log (retention); -v tracker: EXECUTE on the trigger function. The refresher
    keeps its mirror row and the change-tracking state in step, and may erase nothing."""
    from mv_refresh.retention import PruneRefused, prune_log
    from mv_refresh.tracking import install

    _ok(run_script(sec.admin, refresher=sec.refresher, reader=sec.reader, maintainer=sec.nobody,
                   tracker=sec.owner, part="ops"))
    sec.grant_views()
    sec.execute("admin", sql.SQL("GRANT CREATE ON SCHEMA sec TO {}").format(sql.Identifier(sec.owner)))
    sec.execute("admin", sql.SQL("ALTER TABLE sec.src OWNER TO {}").format(sql.Identifier(sec.owner)))
    with connect(sec.dsn(sec.owner), autocommit=True) as conn:  # the tables' owner installs the trigger
        changes = install(conn, catalog, catalog.select(["sec.mv_allowed"]))
    assert [(c.table, c.action) for c in changes] == [("sec.src", "installed")]
    result = refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")
    assert result.status == "OK" and "change tracking unavailable" not in (result.method_reason or "")
    again = refresh_view(sec.dsn(sec.refresher), catalog, "sec.mv_allowed")
    assert (again.status, again.method) == ("OK", "UNCHANGED")
    assert sec.scalar("SELECT count(*) FROM ops.mv_catalog WHERE mv_name = 'mv_allowed'") == 1
    with connect(sec.dsn(sec.refresher), autocommit=True) as conn, pytest.raises(PruneRefused):
        prune_log(conn, keep_days=1)
    with connect(sec.dsn(sec.nobody), autocommit=True) as conn:
        assert prune_log(conn, keep_days=1).deleted == 0  # nothing old enough; but allowed
