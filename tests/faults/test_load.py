"""Fault 8, shortened for CI: Airflow workers (LocalExecutor, parallelism 4) and two CLI loops at once.

The full form (50 views, three minutes) is `make load-test`.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.airflow


def test_airflow_workers_and_cli_processes_never_refresh_a_view_twice_at_once(ops_dsn):
    from loadtest import run_load

    outcome = run_load(ops_dsn, views=10, seconds=40, log=lambda _line: None)
    assert outcome.problems == []
    assert outcome.dag_runs and outcome.cli_runs >= 2
    assert outcome.statuses.get("RUNNING") is None
    assert sum(outcome.statuses.values()) == outcome.airflow_attempts + outcome.cli_attempts
