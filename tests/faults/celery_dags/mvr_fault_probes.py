"""DAGs the Celery fault tests trigger (tests/faults/test_celery_faults.py).

The project's own operator on the lab views of tests/support/lab.py, with short fixed retry delays, so a
test sees a failed try and its retry within seconds. The test session copies this file into the
deployment's extra DAG folder and writes the lab catalog next to it (``lab.yaml``); each run names its
warehouse in the ``conn_id`` param (a connection the test created through the REST API).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param

from mv_refresh.airflow.operators import MaterializedViewRefreshOperator

LAB_CATALOG = str(Path(__file__).with_name("lab.yaml"))
START = pendulum.datetime(2026, 1, 1, tz="UTC")
PARAMS = {
    "conn_id": Param("postgres_default", type="string", description="the lab warehouse's connection id"),
    "statement_timeout": Param(600, type="integer"),
    "lock_timeout": Param(10, type="integer"),
}

# A worker killed or cut off mid-refresh: one slow refresh (lab.sleep_seconds says how slow).
with DAG("mvr_probe_slow_refresh", schedule=None, start_date=START, catchup=False, params=PARAMS,
         tags=["mv-refresh-tests"], default_args={"retries": 3, "retry_delay": timedelta(seconds=2)}):
    MaterializedViewRefreshOperator(task_id="refresh_mv_slow", view="lab.mv_slow", conn_id="{{ params.conn_id }}",
                                    catalog_path=LAB_CATALOG, lock_timeout="{{ params.lock_timeout }}",
                                    statement_timeout="{{ params.statement_timeout }}")

# A long reader blocking a PLAIN refresh while other refreshes run beside it on both workers.
with DAG("mvr_probe_blocked_plain", schedule=None, start_date=START, catchup=False, params=PARAMS,
         tags=["mv-refresh-tests"], default_args={"retries": 8, "retry_delay": timedelta(seconds=2)}):
    MaterializedViewRefreshOperator(task_id="refresh_mv_conc", view="lab.mv_conc", mode="plain",
                                    conn_id="{{ params.conn_id }}", catalog_path=LAB_CATALOG,
                                    lock_timeout="{{ params.lock_timeout }}")
    for index, other in enumerate(("lab.mv_noidx", "lab.mv_partial", "lab.mv_keyed", "lab.mv_unpop")):
        MaterializedViewRefreshOperator(task_id=f"load_{index}", view=other, conn_id="{{ params.conn_id }}",
                                        catalog_path=LAB_CATALOG)
