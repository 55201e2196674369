"""ops_mv_health_audit: the daily health audit of the catalog's views (and on demand).

Parsing reads nothing: the catalog and the database are read by the task.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from mv_refresh.airflow.alerts import failure_notifier_from_env


@dag(
    dag_id="ops_mv_health_audit",
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ops", "materialized-views", "mv-refresh", "audit"],
    doc_md="""
### Health audit of the materialized views (daily at 06:00 UTC, or trigger it)

For every view of the catalog: does it exist and is it populated; its freshness bucket; the last
status and error; RUNNING rows that are stuck or whose backend is gone; a missing or INVALID unique
index where the view wants CONCURRENTLY; a view older than one of its upstream views (stale input);
and materialized views in the catalog's schemas that the catalog does not list.

The task logs the findings as a table, returns them as JSON (XCom), and **fails when any finding is
CRIT**, naming it. Same engine as `mv-refresh audit`.

Then **prune_log** deletes log rows older than `MV_REFRESH_LOG_KEEP_DAYS` days (default 90), never a
view's newest OK row or newest outcome (`mv-refresh log prune`). It needs a role that may DELETE from
the log, which the refreshing role may not: set `MV_REFRESH_MAINTENANCE_CONN_ID` to a connection of such a
role (`least_privilege.sql -v maintainer=...`). Without it the task is skipped, saying why.
""",
    default_args={
        "owner": "ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "on_failure_callback": [failure_notifier_from_env()],
    },
)
def ops_mv_health_audit():
    @task
    def audit() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from mv_refresh.airflow.connection import dsn_for_connection
        from mv_refresh.audit import run_audit
        from mv_refresh.catalog import load_catalog

        catalog = load_catalog()
        report = run_audit(dsn_for_connection(catalog.connection_id), catalog)
        for finding in report.findings:
            print(f"{finding.severity:<5} {finding.check:<13} {finding.view or '-'}: {finding.message}"
                  + (f" (fix: {finding.fix})" if finding.fix else ""))
        print(f"{report.views_checked} views checked; worst: {report.worst}")
        if report.crit:
            raise AirflowFailException(
                f"{len(report.crit)} CRIT finding(s): "
                + "; ".join(f"{f.view or '-'}: {f.message}" for f in report.crit)
            )
        return report.as_json()

    @task
    def prune_log() -> dict:
        import os

        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from mv_refresh.airflow.connection import dsn_for_connection
        from mv_refresh.catalog import load_catalog
        from mv_refresh.db import connect
        from mv_refresh.retention import missing_delete_privilege, prune_log

        configured = os.environ.get("MV_REFRESH_MAINTENANCE_CONN_ID")
        keep_days = int(os.environ.get("MV_REFRESH_LOG_KEEP_DAYS") or 90)
        conn_id = configured or load_catalog().connection_id
        with connect(dsn_for_connection(conn_id), autocommit=True, purpose="log prune") as conn:
            refused = missing_delete_privilege(conn)
            if refused and configured:
                raise AirflowFailException(f"connection {conn_id!r}: {refused}")
            if refused:
                print(f"log not pruned: {refused}")  # a skip's reason never reaches the task log otherwise
                raise AirflowSkipException(f"log not pruned: {refused}")
            report = prune_log(conn, keep_days=keep_days, progress=print)
        print(report.summary())
        return report.as_json()

    # Independent leaves: a CRIT audit must not stop retention, and a pruned log must not hide a CRIT audit.
    audit()
    prune_log()


ops_mv_health_audit()
