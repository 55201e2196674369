#!/usr/bin/env bash
# `make airflow`: airflow standalone (LocalExecutor, SQLite) on the demo database, for triggering
# ops_mv_refresh from the UI and watching MV Health. Run `make demo` first, or set MV_REFRESH_DSN.
#   AIRFLOW_PORT (default 8080; a free port when 8080 is taken), AIRFLOW__CORE__PARALLELISM (default
#   2 per CPU, at least 4), MV_REFRESH_POOL / MV_REFRESH_POOL_SLOTS (default mv_refresh / 4),
#   MV_REFRESH_EVENTS (default on: a committed change of a tracked source starts a run, after
#   MV_REFRESH_EVENTS_QUIET_SECONDS of quiet, default 30; off: hourly only; docs/events.md).
# Ctrl-C (or SIGTERM) stops Airflow and every process it started: see mv_refresh/airflow/standalone.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
if [ -z "${MV_REFRESH_DSN:-}" ]; then
  MV_REFRESH_DSN=$("$BIN/mv-refresh" embedded start --data-dir "$ROOT/.demo/pg")
  export MV_REFRESH_DSN
fi
"$BIN/mv-refresh" init-db > /dev/null
# shellcheck source=scripts/airflow-env.sh
source "$ROOT/scripts/airflow-env.sh"
case "${MV_REFRESH_EVENTS,,}" in off|false|0|no) ;; *)
  # Event-driven runs watch the change markers: the sources must be tracked (idempotent; a view missing
  # from the database is reported and skipped).
  echo "change tracking on the catalog's sources (mv-refresh track install --all); runs start on committed changes"
  "$BIN/mv-refresh" track install --all > "$AIRFLOW_HOME/track-install.log" 2>&1 \
    || { cat "$AIRFLOW_HOME/track-install.log"; echo "mv-refresh track install failed: event-driven runs will not see those tables"; }
esac

PORT=${AIRFLOW_PORT:-8080}
if ! "$BIN/python" -c 'import sys; from mv_refresh.airflow.standalone import port_is_free as f; sys.exit(0 if f(int(sys.argv[1])) else 1)' "$PORT"; then
  WANTED=$PORT
  PORT=$("$BIN/python" -c 'from mv_refresh.airflow.standalone import free_port; print(free_port())')
  echo "port $WANTED is taken (another Airflow?): using $PORT"
fi
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"

echo "Airflow metadata (SQLite, $AIRFLOW_HOME) and the pool $MV_REFRESH_POOL ($MV_REFRESH_POOL_SLOTS slots)"
"$BIN/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
"$BIN/airflow" pools set "$MV_REFRESH_POOL" "$MV_REFRESH_POOL_SLOTS" "mv-refresh: refreshes of materialized views" > /dev/null

echo "Starting airflow standalone on http://localhost:$PORT (parallelism $AIRFLOW__CORE__PARALLELISM); the login is shown once it is ready."
exec "$BIN/python" -m mv_refresh.airflow.standalone run --port "$PORT" --pool-slots "$MV_REFRESH_POOL_SLOTS"
