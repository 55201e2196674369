# Sourced by scripts/demo.sh and scripts/airflow.sh: a self-contained Airflow home under .demo/airflow
# (or MV_REFRESH_AIRFLOW_HOME; SQLite metadata) that sees this project's dags/ and plugins/, and the
# postgres_default connection pointing at MV_REFRESH_DSN.
# airflow standalone starts its components as `airflow ...` subprocesses: the venv must be on PATH.
export PATH="$BIN:$PATH"
export AIRFLOW_HOME="${MV_REFRESH_AIRFLOW_HOME:-$ROOT/.demo/airflow}"
mkdir -p "$AIRFLOW_HOME"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
# Sized to the machine: Airflow's default parallelism (32) means 32 LocalExecutor workers, whatever the
# CPU count. Two task slots per CPU, at least 4 and at most Airflow's 32; AIRFLOW__CORE__PARALLELISM wins.
CPUS=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
PARALLELISM_DEFAULT=$(( CPUS * 2 < 4 ? 4 : (CPUS * 2 > 32 ? 32 : CPUS * 2) ))
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$PARALLELISM_DEFAULT}"
# The pool the refresh tasks run in (dags/ops_mv_refresh.py reads MV_REFRESH_POOL), and its size.
export MV_REFRESH_POOL="${MV_REFRESH_POOL:-mv_refresh}"
export MV_REFRESH_POOL_SLOTS="${MV_REFRESH_POOL_SLOTS:-4}"
# Event-driven runs (docs/events.md): on unless MV_REFRESH_EVENTS=off; the DAG reads these when parsed.
export MV_REFRESH_EVENTS="${MV_REFRESH_EVENTS:-on}"
AIRFLOW_CONN_POSTGRES_DEFAULT=$("$BIN/python" -c 'import os; from mv_refresh.airflow.connection import airflow_connection_json as j; print(j(os.environ["MV_REFRESH_DSN"]))')
export AIRFLOW_CONN_POSTGRES_DEFAULT
