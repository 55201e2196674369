#!/usr/bin/env bash
# `make demo`: the main job, end to end, on the embedded PostgreSQL unless MV_REFRESH_DSN names a database.
#   1. start (or reuse) the embedded PostgreSQL under .demo/pg
#   2. apply the ops schema (mv-refresh init-db), load the demo warehouse (once per scale), and track its
#      sources, so that a second `make demo` with no change logs every view UNCHANGED
#   3. run the ops_mv_refresh DAG in-process with `airflow dags test` (SQLite metadata under .demo/)
#   4. print the health table
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
DEMO=$ROOT/.demo
mkdir -p "$DEMO"
step() { printf '\n==> %s\n' "$*"; }

if [ -z "${MV_REFRESH_DSN:-}" ]; then
  step "embedded PostgreSQL in .demo/pg"
  MV_REFRESH_DSN=$("$BIN/mv-refresh" embedded start --data-dir "$DEMO/pg")
  export MV_REFRESH_DSN
  echo "$MV_REFRESH_DSN"
else
  step "database from MV_REFRESH_DSN"
  "$BIN/python" -c 'import os; from mv_refresh.db import redact; print(redact(os.environ["MV_REFRESH_DSN"]))'
fi

step "ops schema (mv-refresh init-db)"
"$BIN/mv-refresh" init-db

step "demo warehouse (${DEMO_DRIVERS:-default} drivers)"
"$BIN/mv-refresh" demo-load --if-needed ${DEMO_DRIVERS:+--drivers "$DEMO_DRIVERS"}

step "change tracking on the warehouse's sources (mv-refresh track install --all)"
"$BIN/mv-refresh" track install --all

# shellcheck source=scripts/airflow-env.sh
source "$ROOT/scripts/airflow-env.sh"
if [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
  step "Airflow metadata database (SQLite, .demo/airflow)"
  "$BIN/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
fi

step "airflow dags test ops_mv_refresh  (full log: .demo/airflow/dags-test.log)"
set +e
"$BIN/airflow" dags test ops_mv_refresh > "$AIRFLOW_HOME/dags-test.log" 2>&1
rc=$?
set -e
# What the tasks themselves said: one line per view (mode, rows, duration), then the health verdict.
"$BIN/python" "$ROOT/scripts/dags_test_summary.py" < "$AIRFLOW_HOME/dags-test.log"
if [ $rc -ne 0 ]; then
  echo "airflow dags test failed (exit $rc); last lines of .demo/airflow/dags-test.log:"
  tail -40 "$AIRFLOW_HOME/dags-test.log"
fi

step "health (mv-refresh health)"
set +e
"$BIN/mv-refresh" health
health_rc=$?
set -e
[ $rc -eq 0 ] || exit $rc
exit $health_rc
