"""A DAG file of a test's own, run by Airflow through dag.test() (which runs DAGs of configured bundles)."""

from __future__ import annotations

import json
from pathlib import Path


def probe_dag(tmp_path: Path, monkeypatch, dag_id: str, source: str):
    """Write ``source`` as ``<tmp>/dags/<dag_id>.py``, add that folder as a DAG bundle, and return the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    (dags / f"{dag_id}.py").write_text(source)
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {"name": "test-probes", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(dags)}},
    ]))
    bag = DagBag(dag_folder=str(dags), bundle_path=dags, bundle_name="test-probes")
    assert bag.import_errors == {}
    return bag.dags[dag_id]
