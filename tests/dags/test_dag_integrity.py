"""DAG integrity, in the style of the Astro CLI scaffold: every DAG imports, is tagged, and retries."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in dagbag.import_errors.items())
    assert "ops_mv_refresh" in dagbag.dags


def test_every_dag_has_tags(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"


def test_refresh_tasks_retry_at_least_twice_with_backoff(dagbag):
    dag = dagbag.dags["ops_mv_refresh"]
    refresh = [t for t in dag.tasks if t.task_id.startswith("refresh_")]
    assert len(refresh) == 6
    for task in refresh:
        assert task.retries >= 2, f"{task.task_id} retries {task.retries}"
        assert task.retry_exponential_backoff


def test_ops_mv_refresh_shape(dagbag):
    from mv_refresh.catalog import load_catalog

    catalog = load_catalog()
    dag = dagbag.dags["ops_mv_refresh"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    # Hourly, or on a committed change of a tracked source (MV_REFRESH_EVENTS, default on).
    assert dag.timetable.timetable.expression == "0 * * * *"
    assert [w.name for w in dag.timetable.asset_condition.watchers] == ["mv_refresh_source_changes"]
    expected = [v.task_id for v in catalog.views]
    leaves = {"health_check", "fail_run_if_any_task_failed"}
    assert [t.task_id for t in dag.topological_sort() if t.task_id not in leaves] == expected
    for view in catalog.views:
        task = dag.get_task(view.task_id)
        assert {u for u in task.upstream_task_ids} == {catalog.get(u).task_id for u in view.upstream}
        # Outlet: its own view; inlets: the views it reads (the asset graph draws the chain).
        assert [a.name for a in task.outlets] == [view.display_name]
        assert sorted(a.name for a in task.inlets) == sorted(catalog.get(u).display_name for u in view.upstream)
    health = dag.get_task("health_check")
    assert health.trigger_rule == "all_done"
    assert health.upstream_task_ids == set(expected)
    assert health.retries == 0
    # A second leaf fails the run when any refresh task failed, even if health_check passes.
    watcher = dag.get_task("fail_run_if_any_task_failed")
    assert watcher.trigger_rule == "one_failed" and watcher.retries == 0
    assert watcher.upstream_task_ids == set(expected)
    assert set(dag.params.keys()) >= {"views", "mode"}


def test_parsing_touches_no_database(monkeypatch):
    """Parsing reads the catalog YAML and nothing else: any connection attempt becomes an import error."""
    import psycopg
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args, **kwargs):
        raise AssertionError("a DAG file opened a database connection at parse time")

    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    assert "ops_mv_refresh" in bag.dags


def test_parsing_imports_nothing_heavy():
    """The DAG file pulls in neither the engine, psycopg, nor the Postgres hook when parsed.

    (Airflow itself imports each provider package's metadata module; the hook is what costs.)
    """
    import subprocess
    import sys

    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ops_mv_refresh_probe', {str(DAGS_DIR / 'ops_mv_refresh.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('psycopg', 'mv_refresh.engine', 'airflow.providers.postgres.hooks.postgres', 'pandas') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    [verdict] = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert verdict == "HEAVY=", out.stdout
