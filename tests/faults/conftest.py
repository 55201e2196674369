"""One Celery deployment per test session (tests/support/celery_stack.py), shared by every Celery test.

Started by the first test that asks for it, on the session's PostgreSQL server (15, or the embedded 18):
its metadata database, a redis-server of its own (so a test may restart it), a scheduler, a
dag-processor, an API server and two Celery workers. ``postgres_default`` points at a demo warehouse of
the session; the probe DAGs of ``celery_dags/`` run on lab warehouses that each test creates.

The tests that use it run one after the other (collection puts them first among the fault tests), and
the deployment is stopped as soon as the last of them is done: its processes would otherwise share the
machine's CPUs with the rest of the suite.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PROBE_DAGS = ("mvr_probe_slow_refresh", "mvr_probe_blocked_plain")
_running: list = []  # the session's deployment while it is up


def _uses_stack(item: pytest.Item) -> bool:
    return "celery_stack" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that use the deployment: marked ``celery`` (``-m "not celery"`` skips its ~4 minutes),
    and first among the fault tests, in their own order."""
    for item in items:
        if _uses_stack(item):
            item.add_marker(pytest.mark.celery)
    faults = Path(__file__).parent
    positions = [i for i, item in enumerate(items) if faults in Path(str(item.fspath)).parents]
    ordered = sorted((items[i] for i in positions), key=lambda item: not _uses_stack(item))
    for position, item in zip(positions, ordered, strict=True):
        items[position] = item


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Stop the deployment right after the last test that needs it (once its own fixtures are gone)."""
    result = yield
    if _running and _uses_stack(item):
        later = item.session.items[item.session.items.index(item) + 1:]
        if not any(_uses_stack(other) for other in later):
            _running.pop().stop()
    return result


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
        # Unpausing the hourly DAG (catchup off) makes the scheduler start the latest hourly run at once;
        # wait until it exists, so that every test can wait for the DAG to be idle before its own run.
        stack.wait_for_runs(REFRESH_DAG)
        _running.append(stack)
        yield stack
    finally:
        if stack in _running:
            _running.remove(stack)
        stack.stop()
        pg_server.drop_database(demo)


@pytest.fixture
def lab_connection(celery_stack, lab_dsn) -> Iterator[tuple[str, str]]:
    """A lab warehouse for this test and the id of an Airflow connection to it: (conn_id, dsn)."""
    conn_id = f"lab_{uuid.uuid4().hex[:8]}"
    celery_stack.add_connection(conn_id, lab_dsn)
    yield conn_id, lab_dsn
    celery_stack.api("DELETE", f"/api/v2/connections/{conn_id}", ok=(204, 404))
