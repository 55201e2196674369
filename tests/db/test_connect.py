"""``mv_refresh.db.connect``: dead-peer detection on both ends, and the user's own settings always win.

What a killed client or a silent network then does to a running REFRESH is tested with real processes
in tests/faults/test_orphaned_refresh.py and test_celery_faults.py; the timings are in docs/at-scale.md.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from mv_refresh.db import CLIENT_DEFAULTS, SESSION_DEFAULTS, connect


def _settings(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """name -> (setting as SHOW prints it, source) for SESSION_DEFAULTS."""
    rows = conn.execute("SELECT name, current_setting(name), source FROM pg_settings WHERE name = ANY(%s)",
                        (list(SESSION_DEFAULTS),)).fetchall()
    return {name: (value, source) for name, value, source in rows}


def _libpq(conn: psycopg.Connection) -> dict[str, str | None]:
    return {o.keyword.decode(): o.val.decode() if o.val is not None else None for o in conn.pgconn.info}


def test_server_side_settings_are_set_where_nobody_configured_them(empty_dsn):
    with connect(empty_dsn) as conn:
        settings = _settings(conn)
        tcp = conn.execute("SELECT inet_server_addr() IS NOT NULL").fetchone()[0]
    assert set(settings) == set(SESSION_DEFAULTS), "PostgreSQL 15+ has every one of them"
    assert settings["client_connection_check_interval"] == ("5s", "session")
    if tcp:  # over a Unix socket PostgreSQL accepts the keepalive settings but shows (and uses) 0
        assert settings["tcp_keepalives_idle"] == ("30", "session")
        assert settings["tcp_keepalives_interval"] == ("10", "session")
        assert settings["tcp_keepalives_count"] == ("3", "session")
        assert settings["tcp_user_timeout"] == ("60000", "session")
    else:
        assert all(source == "session" for _value, source in settings.values())


def test_settings_survive_a_rollback_of_the_first_transaction(empty_dsn):
    with connect(empty_dsn) as conn:
        assert not conn.autocommit
        conn.execute("SELECT 1")
        conn.rollback()
        assert _settings(conn)["client_connection_check_interval"][0] == "5s"


def test_the_users_options_and_the_databases_settings_win(empty_dsn):
    dbname = conninfo_to_dict(empty_dsn)["dbname"]
    with connect(empty_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET tcp_keepalives_count = 7").format(sql.Identifier(dbname)))
    dsn = f"{empty_dsn} options='-c client_connection_check_interval=2s'"
    with connect(dsn) as conn:
        settings = _settings(conn)
    assert settings["client_connection_check_interval"] == ("2s", "client")
    assert settings["tcp_keepalives_count"][1] == "database"
    assert settings["tcp_keepalives_idle"][1] == "session"  # the rest is still ours


def test_an_explicit_zero_switches_the_check_off(empty_dsn):
    with connect(f"{empty_dsn} options='-c client_connection_check_interval=0'") as conn:
        assert _settings(conn)["client_connection_check_interval"] == ("0", "client")


def test_libpq_parameters_fill_only_what_the_conninfo_leaves_unset(empty_dsn):
    with connect(empty_dsn) as conn:
        assert {k: _libpq(conn)[k] for k in CLIENT_DEFAULTS} == CLIENT_DEFAULTS
    with connect(f"{empty_dsn} keepalives_idle=5 connect_timeout=3 tcp_user_timeout=9000") as conn:
        params = _libpq(conn)
    assert (params["keepalives_idle"], params["connect_timeout"], params["tcp_user_timeout"]) == ("5", "3", "9000")
    assert params["keepalives_interval"] == CLIENT_DEFAULTS["keepalives_interval"]


def test_pgconnect_timeout_in_the_environment_wins(empty_dsn, monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    with connect(empty_dsn) as conn:
        assert _libpq(conn)["connect_timeout"] == "4"


def test_a_service_file_keeps_its_own_settings(empty_dsn, tmp_path, monkeypatch):
    params = conninfo_to_dict(empty_dsn)
    lines = [f"{k}={v}" for k, v in params.items() if v] + ["keepalives_idle=11", "connect_timeout=6"]
    (tmp_path / "pg_service.conf").write_text("[mvr]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    with connect("service=mvr") as conn:
        libpq = _libpq(conn)
        assert (libpq["keepalives_idle"], libpq["connect_timeout"]) == ("11", "6")
        # The server side is ours to set still: a service file cannot hold session settings.
        assert _settings(conn)["client_connection_check_interval"] == ("5s", "session")


def test_later_connections_to_the_same_dsn_get_the_same_settings_without_reading_pg_settings(empty_dsn,
                                                                                          monkeypatch):
    from mv_refresh.db import _SESSION_PLAN

    monkeypatch.delenv("PGOPTIONS", raising=False)
    dsn = f"{empty_dsn} options='-c tcp_user_timeout=1234'"
    with connect(dsn) as first:
        expected = _settings(first)
    assert set(_SESSION_PLAN[(dsn, None)]) == set(SESSION_DEFAULTS) - {"tcp_user_timeout"}
    with connect(dsn) as second:
        assert _settings(second) == expected
