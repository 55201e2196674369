"""mv-refresh: logged refreshes of PostgreSQL materialized views (docs/architecture.md).

The engine (catalog, migrations, refresh, health) is plain psycopg 3 and imports nothing from Airflow,
so the CLI, the Airflow operators and the tests share one code path. Airflow-specific code lives in
``mv_refresh.airflow`` and is imported only by DAG files and the Airflow plugin.
"""

__version__ = "0.2.0"
