"""Thin Airflow 3 operators over the engine. Imported by DAG files; the engine never imports this."""
