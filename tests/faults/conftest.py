"""One Celery deployment per test session (tests/support/celery_stack.py), shared by every Celery test.

Started by the first test that asks for it, on the session's PostgreSQL server (15, or the embedded 18):
its metadata database, a redis-server of its own (so a test may restart it), a scheduler, a
dag-processor, an API server and two Celery workers. ``postgres_default`` points at a demo warehouse of
the session; the probe DAGs of ``celery_dags/`` run on lab warehouses that each test creates.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PROBE_DAGS = ("mvr_probe_slow_refresh", "mvr_probe_blocked_plain")


@pytest.fixture(scope="session")
def celery_stack(pg_server, demo_template, tmp_path_factory) -> Iterator:
    from celery_stack import REFRESH_DAG, CeleryStack
    from lab import LAB_CATALOG

    extra = tmp_path_factory.mktemp("celery-dags")
    for probe in (Path(__file__).parent / "celery_dags").glob("*.py"):
        shutil.copy(probe, extra)
    (extra / "lab.yaml").write_text(LAB_CATALOG)
    stack = CeleryStack(pg_server.admin_dsn, private_redis=True, extra_dags=extra, log=print)
    demo = pg_server.create_database("celery_demo", template=demo_template)
    try:
        stack.start()
        stack.demo_dsn = pg_server.dsn(demo)
        stack.use_warehouse(stack.demo_dsn)
        for dag_id in (REFRESH_DAG, *PROBE_DAGS):
            stack.wait_for_dag(dag_id)
            stack.unpause(dag_id)
        yield stack
    finally:
        stack.stop()
        pg_server.drop_database(demo)


@pytest.fixture
def lab_connection(celery_stack, lab_dsn) -> Iterator[tuple[str, str]]:
    """A lab warehouse for this test and the id of an Airflow connection to it: (conn_id, dsn)."""
    conn_id = f"lab_{uuid.uuid4().hex[:8]}"
    celery_stack.add_connection(conn_id, lab_dsn)
    yield conn_id, lab_dsn
    celery_stack.api("DELETE", f"/api/v2/connections/{conn_id}", ok=(204, 404))
