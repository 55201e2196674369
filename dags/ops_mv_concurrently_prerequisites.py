"""ops_mv_concurrently_prerequisites: the runbook's steps 1-3 for REFRESH ... CONCURRENTLY, on demand.

Parsing reads the catalog YAML only; the work happens in the tasks.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from mv_refresh.airflow.alerts import failure_notifier_from_env
from mv_refresh.catalog import load_catalog

catalog = load_catalog()
with_grain = [v.display_name for v in catalog.views if v.grain]
default_view = next((v.display_name for v in catalog.critical_views if v.grain), with_grain[0] if with_grain else "")


def _engine_args(view: str):
    from mv_refresh.airflow.connection import dsn_for_connection
    from mv_refresh.catalog import load_catalog

    current = load_catalog()
    return dsn_for_connection(current.connection_id), current, view


@dag(
    dag_id="ops_mv_concurrently_prerequisites",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ops", "materialized-views", "mv-refresh"],
    doc_md="""
### Prerequisites for REFRESH MATERIALIZED VIEW CONCURRENTLY (runbook steps 1-3)

Pick a view (those with a `grain` in the catalog), trigger:

1. **check_duplicates**: grains with more than one row; if any, the task fails and its log lists them
   (the worst 200) - nothing is built.
2. **create_unique_index**: `CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ux_<view>_grain` (readers and
   writers go on); an INVALID leftover of an earlier failed build is dropped and rebuilt.
3. **verify_unique_index**: listed in `pg_indexes` and `pg_index.indisvalid`.

Same engine as `mv-refresh prepare-concurrently VIEW`.
""",
    default_args={"owner": "ops", "retries": 0, "on_failure_callback": [failure_notifier_from_env()]},
    params={
        "view": Param(default_view, type="string", enum=with_grain or [""], title="View",
                      description="The materialized view to prepare (catalog views with a grain)."),
    },
)
def ops_mv_concurrently_prerequisites():
    @task
    def check_duplicates(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mv_refresh.prerequisites import PrerequisiteError, find_duplicates

        try:
            report = find_duplicates(*_engine_args(params["view"]))
        except PrerequisiteError as exc:
            raise AirflowFailException(str(exc)) from None
        if not report.ok:
            lines = [f"{', '.join(f'{c}={row[c]!r}' for c in report.grain)}: {row['count_duplicates']} rows"
                     for row in report.top]
            raise AirflowFailException(
                f"{report.view}: {report.duplicate_grains:,} duplicated grain(s) of ({', '.join(report.grain)}); "
                f"no index built. The worst {len(lines)}:\n" + "\n".join(lines)
            )
        print(f"{report.view}: {report.total_rows:,} rows, no duplicated grain")
        return report.as_json()

    @task
    def create_unique_index(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mv_refresh.prerequisites import PrerequisiteError, ensure_unique_index

        try:
            return ensure_unique_index(*_engine_args(params["view"]), progress=print).as_json()
        except PrerequisiteError as exc:
            raise AirflowFailException(str(exc)) from None

    @task
    def verify_unique_index(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mv_refresh.prerequisites import PrerequisiteError, verify_unique_index

        try:
            report = verify_unique_index(*_engine_args(params["view"]))
        except PrerequisiteError as exc:
            raise AirflowFailException(str(exc)) from None
        print(f"{report.view}: {report.indexdef} (valid)")
        return report.as_json()

    check_duplicates() >> create_unique_index() >> verify_unique_index()


ops_mv_concurrently_prerequisites()
