"""ops_mv_refresh: keep the catalog's materialized views fresh, and fail loudly when they are not.

Parsing this file reads the catalog YAML and nothing else: no database access, no heavy imports.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from mv_refresh.airflow.alerts import failure_notifier_from_env
from mv_refresh.airflow.operators import MaterializedViewRefreshOperator, view_asset
from mv_refresh.airflow.schedule import refresh_schedule
from mv_refresh.airflow.sensors import MaterializedViewHealthSensor
from mv_refresh.catalog import load_catalog

catalog = load_catalog()
# Refreshes share a pool, so a wide catalog cannot take every worker slot or flood the warehouse with
# concurrent REFRESHes. The pool must exist (`make airflow` creates it); a task in a missing pool is
# never scheduled.
REFRESH_POOL = os.environ.get("MV_REFRESH_POOL") or "mv_refresh"

DOC = f"""
### Materialized view refresh (mv-refresh)

One task per materialized view of the catalog (`{catalog.source}`), wired along the catalog's
`upstream` dependencies in canonical order. Each task is a *logged* refresh: a `RUNNING` row in
`ops.mv_refresh_log`, `REFRESH MATERIALIZED VIEW CONCURRENTLY` where PostgreSQL allows it (plain
otherwise, with the reason logged), the row count, then `OK` or `ERROR`.

* A view whose upstream failed in this run is **not** refreshed (it would read stale input).
* Lock timeouts, deadlocks and lost connections retry with exponential backoff; a bad name, duplicate
  rows or a missing privilege fail at once.
* `health_check` runs last, always: it fails when a critical view is WARN, CRIT or NO_REFRESH, or when
  a refresh of this run failed, so the run fails and the alert fires.
* `fail_run_if_any_task_failed` fails the run whenever any refresh task failed, whatever the reason
  (even one that wrote no log row): a DAG run is only as green as its worst task.

* **When**: every hour, and (unless `MV_REFRESH_EVENTS=off`) shortly after a tracked source commits a
  change: the triggerer watches the change markers, waits for a quiet period, and the run it starts
  refreshes the views that read what changed (the others are UNCHANGED in milliseconds). docs/events.md.
* A view whose sources provably did not change since its last refresh (change tracking:
  `mv-refresh track install`) is not refreshed: its task logs `OK` with method `UNCHANGED` in
  milliseconds, and health counts it as a fresh refresh.

**Trigger params**: `views` to refresh a subset (the others skip, saying why in their log), with
`include_downstream` (default on) adding every view that reads a picked one; `mode` to force `plain` or
`concurrently` for this run; `force` to refresh even unchanged views. Refresh tasks run in the pool
`{REFRESH_POOL}`.

Health by SQL: `SELECT * FROM ops.v_mv_health;` - CLI: `mv-refresh health`.
"""  # noqa: S608 - Markdown for the UI, not a query


@dag(
    dag_id="ops_mv_refresh",
    # Hourly, or as soon as a tracked source commits a change (debounced): MV_REFRESH_EVENTS=off for hourly
    # only. The environment is all it reads (docs/events.md).
    schedule=refresh_schedule(catalog.connection_id),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    tags=["ops", "materialized-views", "mv-refresh"],
    doc_md=DOC,
    render_template_as_native_obj=True,
    default_args={
        "owner": "ops",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        # MV_REFRESH_ALERT: log (default), smtp or slack - see mv_refresh/airflow/alerts.py.
        "on_failure_callback": [failure_notifier_from_env()],
    },
    params={
        # `examples` on the Param itself makes Airflow's trigger form a multi-select of the catalog's views;
        # "null" in the type makes it optional (clearing the select sends null). Names are checked by the
        # refresh tasks against the catalog, with a readable error (a jsonschema `enum` would answer a typo
        # sent through the API with a raw schema dump).
        "views": Param(
            [],
            type=["array", "null"],
            items={"type": "string"},
            examples=catalog.names,
            title="Views to refresh",
            description="Empty: every view. Pick some to refresh only those (and, with include_downstream, "
            "the views that read them); the others skip.",
        ),
        "include_downstream": Param(
            True,
            type="boolean",
            title="Include downstream views",
            description="Also refresh every view that reads a picked view, directly or through others, so "
            "no view is left older than its input.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Refresh even if unchanged",
            description="Run REFRESH even for views that change tracking proves unchanged (else logged UNCHANGED).",
        ),
        "mode": Param(
            "catalog",
            type="string",
            enum=["catalog", "auto", "concurrently", "plain"],
            title="Refresh mode",
            description="catalog: each view's own mode; or force one mode for this run.",
        ),
    },
)
def ops_mv_refresh():
    tasks = {}
    for spec in catalog.views:
        refresh = MaterializedViewRefreshOperator(
            task_id=spec.task_id,
            view=spec.display_name,
            mode="{{ params.mode }}",
            only_views="{{ params.views }}",
            include_downstream="{{ params.include_downstream }}",
            force="{{ params.force }}",
            pool=REFRESH_POOL,
            # The views it reads: with each task's own view as its outlet, the asset graph draws the chain.
            inlets=[view_asset(catalog.get(up).display_name) for up in spec.upstream],
            # Skipped upstreams (a subset run) do not block; a failed one does (stale input).
            trigger_rule="none_failed",
            execution_timeout=timedelta(seconds=spec.statement_timeout_seconds + spec.lock_timeout_seconds + 300),
            doc_md=spec.description,
        )
        for upstream in spec.upstream:
            tasks[upstream] >> refresh
        tasks[spec.key] = refresh

    health = MaterializedViewHealthSensor(
        task_id="health_check",
        trigger_rule="all_done",
        poke_interval=15,
        timeout=60 * 60,
        retries=0,
    )
    list(tasks.values()) >> health

    # health_check (a leaf that runs whatever happened upstream) passing must not make the run green when a
    # refresh task failed: this second leaf runs only then, and fails the run. It sends no alert of its own:
    # the failed task already did.
    @task(trigger_rule="one_failed", retries=0, on_failure_callback=[])
    def fail_run_if_any_task_failed() -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a refresh task of this run failed: see its log (the run fails with it)")

    list(tasks.values()) >> fail_run_if_any_task_failed()


ops_mv_refresh()
