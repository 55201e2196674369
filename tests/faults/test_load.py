"""The load test, shortened for CI, on the session's Celery deployment (tests/faults/conftest.py).

ops_mv_refresh over 10 views with a branching graph, runs back to back on two Celery workers, and
`mv-refresh refresh --all` from another process, for 30 seconds. The full form (50 views, 10 minutes,
its own deployment on the machine's Redis) is `make load-test`; its figures are in docs/at-scale.md.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(900)


def test_celery_workers_and_cli_never_refresh_a_view_twice_at_once(celery_stack, ops_dsn):
    from loadtest import report, run_load

    try:
        outcome = run_load(celery_stack, ops_dsn, views=10, seconds=30, log=print)
    finally:
        # Give the session's deployment back its catalog and warehouse.
        celery_stack.use_warehouse(celery_stack.demo_dsn)
        celery_stack.use_catalog(celery_stack.default_catalog_text)
    print(report(outcome))
    assert outcome.problems == []
    assert len(outcome.run_ids) >= 2 and outcome.cli_runs >= 2
    assert outcome.statuses.get("RUNNING") is None and outcome.overlaps == 0
    assert sum(outcome.statuses.values()) == outcome.airflow_attempts + outcome.cli_attempts
    assert set(outcome.run_states.values()) == {"success"}
