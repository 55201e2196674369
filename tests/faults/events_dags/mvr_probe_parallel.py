"""A DAG the event-driven standalone test triggers (tests/faults/test_events_standalone.py): the project's
refresh operator over a catalog with independent branches and a diamond (``parallel.yaml``, written next
to this file by the test), wired along the catalog's ``upstream`` and run in the refresh pool, as
``ops_mv_refresh`` does it: independent views refresh at the same time, no more at once than the pool's slots.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from mv_refresh.airflow.operators import MaterializedViewRefreshOperator
from mv_refresh.catalog import load_catalog

CATALOG = Path(__file__).with_name("parallel.yaml")

if CATALOG.exists():
    catalog = load_catalog(str(CATALOG))
    with DAG("mvr_probe_parallel", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
             tags=["mv-refresh-tests"], default_args={"retries": 0}):
        tasks: dict = {}
        for spec in catalog.views:
            tasks[spec.key] = MaterializedViewRefreshOperator(
                task_id=spec.task_id, view=spec.display_name, catalog_path=str(CATALOG),
                pool=os.environ.get("MV_REFRESH_POOL") or "mv_refresh")
            for upstream in spec.upstream:
                tasks[upstream] >> tasks[spec.key]
