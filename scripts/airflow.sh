#!/usr/bin/env bash
# `make airflow`: airflow standalone (UI on :8080, LocalExecutor, SQLite) on the demo database, for
# triggering ops_mv_refresh from the UI. Run `make demo` first, or set MV_REFRESH_DSN.
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
cat <<MSG
Starting airflow standalone on http://localhost:8080
  login: admin; the password is printed below ("Password for user 'admin'") and kept in
  $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
  DAG: ops_mv_refresh (Trigger -> pick views / mode). Ctrl-C stops it.
MSG
exec "$BIN/airflow" standalone
