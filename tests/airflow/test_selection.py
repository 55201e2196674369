"""Which views a triggered run refreshes: the `views` and `include_downstream` params, skips that say why,
and a name outside the catalog answered in words rather than a schema dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = pytest.mark.airflow
DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags["ops_mv_refresh"]


def _states(run) -> dict[str, str]:
    """The states of the refresh tasks and of health_check (the DAG may have other leaves besides)."""
    return {ti.task_id: ti.state for ti in run.get_task_instances()
            if ti.task_id.startswith("refresh_") or ti.task_id == "health_check"}


def _populated(dsn: str) -> None:
    """The demo views are created WITH NO DATA: refresh them all once, as an earlier run would have."""
    from mv_refresh.engine import refresh_view

    catalog = load_catalog()
    for spec in catalog.views:
        refresh_view(dsn, catalog, spec)


def _refreshed_by(dsn: str, run) -> list[str]:
    with connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT mv_name FROM ops.mv_refresh_log WHERE status = 'OK' AND run_id = %s ORDER BY id", (run.run_id,))]


# ------------------------------------------------------------------------------------ the selection


def test_empty_selection_means_every_view():
    from mv_refresh.airflow.operators import selected_views

    catalog = load_catalog()
    for empty in (None, [], "", "None"):
        assert selected_views(catalog, empty) is None


def test_include_downstream_adds_every_reader_in_canonical_order():
    from mv_refresh.airflow.operators import selected_views

    catalog = load_catalog()
    third = catalog.views[2]
    chosen = selected_views(catalog, [third.display_name], include_downstream=True)
    assert chosen == list(catalog.views[2:])
    assert chosen == [third, *catalog.downstream_of(third)]
    assert selected_views(catalog, [third.display_name], include_downstream=False) == [third]
    # Text from the API or the CLI (`-c '{"views": "a, b"}'`), and a string boolean, mean the same.
    assert selected_views(catalog, f"{catalog.views[5].display_name}, {third.display_name}", "false") == [
        third, catalog.views[5]]


def test_a_name_outside_the_catalog_is_a_readable_permanent_failure():
    from airflow.sdk.exceptions import AirflowFailException

    from mv_refresh.airflow.operators import selected_views

    catalog = load_catalog()
    typo = catalog.views[1].display_name.replace("ledger", "ledgr")
    with pytest.raises(AirflowFailException) as info:
        selected_views(catalog, [catalog.views[0].display_name, typo])
    text = str(info.value)
    assert typo in text and f"did you mean {catalog.views[1].display_name}" in text
    assert "views" in text and "Failed validating" not in text and "schema[" not in text
    with pytest.raises(AirflowFailException, match="include_downstream.*not a boolean"):
        selected_views(catalog, [catalog.views[0].display_name], include_downstream="maybe")


def test_a_skipped_view_that_reads_a_refreshed_one_says_it_is_left_behind():
    from mv_refresh.airflow.operators import why_not_selected

    catalog = load_catalog()
    first, second, third = catalog.views[:3]
    assert why_not_selected(catalog, second, [first.display_name], include_downstream=True) is None
    behind = why_not_selected(catalog, second, [first.display_name], include_downstream=False)
    assert behind.startswith(f"not selected in this run (views: {first.display_name})")
    assert f"it reads {first.display_name}, refreshed in this run" in behind
    assert "older than its input" in behind
    # The view after it reads only `second`, which this run leaves alone: nothing to warn about.
    assert "older" not in why_not_selected(catalog, third, [first.display_name], include_downstream=False)


def test_the_dag_offers_the_views_as_an_optional_multi_select():
    """What Airflow's trigger form reads: a multi-select needs `examples` on the Param, optional needs null."""
    catalog = load_catalog()
    params = _dag().params
    views = params.get_param("views")
    assert views.schema["examples"] == catalog.names
    assert "null" in views.schema["type"] and "array" in views.schema["type"]
    assert views.resolve(None) is None and views.resolve([]) == []
    assert params.get_param("include_downstream").value is True
    assert params.get_param("include_downstream").schema["type"] == "boolean"


def test_refresh_tasks_share_the_pool():
    dag = _dag()
    refresh = [t for t in dag.tasks if t.task_id.startswith("refresh_")]
    assert refresh and {t.pool for t in refresh} == {"mv_refresh"}


# -------------------------------------------------------------------------------------- whole runs


def test_a_subset_run_refreshes_the_view_and_its_readers_and_skips_the_rest_saying_why(
        demo_dsn, airflow_db, airflow_conn, capsys):
    airflow_conn(demo_dsn)
    _populated(demo_dsn)
    catalog = load_catalog()
    third = catalog.views[2]
    run = _dag().test(run_conf={"views": [third.display_name]})
    states = _states(run)
    assert run.state == "success", states
    assert states == {**{v.task_id: "skipped" for v in catalog.views[:2]},
                      **{v.task_id: "success" for v in catalog.views[2:]}, "health_check": "success"}
    assert _refreshed_by(demo_dsn, run) == [v.name for v in catalog.views[2:]]
    out = capsys.readouterr()
    assert f"Skipping {catalog.views[0].display_name}: not selected in this run (views: {third.display_name}" \
        in out.out + out.err


def test_without_downstream_only_the_view_refreshes_and_its_reader_says_it_is_left_behind(
        demo_dsn, airflow_db, airflow_conn, capsys):
    airflow_conn(demo_dsn)
    _populated(demo_dsn)
    catalog = load_catalog()
    third, fourth = catalog.views[2], catalog.views[3]
    run = _dag().test(run_conf={"views": [third.display_name], "include_downstream": False})
    states = _states(run)
    assert states[third.task_id] == "success"
    assert {states[v.task_id] for v in catalog.views if v != third} == {"skipped"}
    assert _refreshed_by(demo_dsn, run) == [third.name]
    out = capsys.readouterr()
    assert (f"Skipping {fourth.display_name}: not selected in this run (views: {third.display_name}); "
            f"it reads {third.display_name}, refreshed in this run") in out.out + out.err
    # health_check says so: the critical view, which reads the refreshed view through others, is now older
    # than its input: the run fails and the alert fires; the other views left behind are named in its log.
    critical = catalog.critical_views[0]
    assert states["health_check"] == "failed" and run.state == "failed"
    assert (f"{critical.display_name} (data of " in out.out + out.err
            and f"is older than {third.display_name}" in out.out + out.err)
    assert f"{fourth.display_name} (data of " in out.out + out.err and "not a checked view" in out.out + out.err


def test_a_typo_fails_the_run_in_words_and_refreshes_nothing(demo_dsn, airflow_db, airflow_conn, capsys):
    airflow_conn(demo_dsn)
    catalog = load_catalog()
    typo = catalog.views[0].display_name + "x"
    run = _dag().test(run_conf={"views": [typo]})
    states = _states(run)
    assert run.state == "failed"
    assert states[catalog.views[0].task_id] == "failed"
    assert {states[v.task_id] for v in catalog.views[1:]} == {"upstream_failed"}
    with connect(demo_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ops.mv_refresh_log").fetchone() == (0,)
    out = capsys.readouterr()
    assert f"the run's `views` param names a view outside the catalog: '{typo}'" in out.out + out.err
    assert f"did you mean {catalog.views[0].display_name}" in out.out + out.err
