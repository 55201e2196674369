"""``MaterializedViewHealthSensor``: the DAG's last word on freshness.

OK -> success. WARN, CRIT or NO_REFRESH -> ``AirflowFailException`` at once (never retried: waiting does
not make a view fresher), with the bucket, the hours and the last error. While a refresh of a checked
view is RUNNING it keeps poking (reschedule mode frees the worker slot between pokes). A database it
cannot reach is an error, never an OK. When the run it belongs to had refreshes that did not end OK, it
fails too, so that the DAG run fails and Airflow's alerting fires even though the sensor is the leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

_FAILED_IN_RUN = """
SELECT DISTINCT ON (schema_name, mv_name) schema_name, mv_name, status, error_sqlstate, error_message
FROM ops.mv_refresh_log
WHERE dag_id = %s AND run_id = %s
ORDER BY schema_name, mv_name, refresh_started_at DESC, id DESC
"""


class MaterializedViewHealthSensor(BaseSensorOperator):
    """Succeed when every checked view is OK; fail at once on WARN, CRIT or NO_REFRESH.

    :param views: ``schema.view`` names to check; default: the catalog's critical views.
    :param conn_id: Airflow Postgres connection id; default: the catalog's ``connection_id``.
    :param catalog_path: catalog YAML; default ``$MV_REFRESH_CONFIG`` or ``include/mv_refresh.yaml``.
    :param check_run: also fail when a refresh of this DAG run did not end OK (default True).
    """

    template_fields: Sequence[str] = ("views", "conn_id")
    ui_color = "#e8f4d9"

    def __init__(
        self,
        *,
        views: Sequence[str] | None = None,
        conn_id: str | None = None,
        catalog_path: str | None = None,
        check_run: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 30)
        kwargs.setdefault("timeout", 60 * 60)
        super().__init__(**kwargs)
        self.views = views
        self.conn_id = conn_id
        self.catalog_path = catalog_path
        self.check_run = check_run

    def poke(self, context: Any) -> bool:
        from mv_refresh.catalog import CatalogError, load_catalog
        from mv_refresh.db import connect
        from mv_refresh.health import read_health

        from .connection import dsn_for_connection

        try:
            catalog = load_catalog(self.catalog_path)
            specs = catalog.select(self.views) if self.views else list(catalog.critical_views)
        except CatalogError as exc:
            raise AirflowFailException(str(exc)) from None
        if not specs:
            raise AirflowFailException(
                "nothing to check: the catalog marks no view `critical: true` and no `views` were given"
            )
        dsn = dsn_for_connection(self.conn_id or catalog.connection_id)
        # Any error reaching the database propagates: the task errors (and may retry); it never passes.
        with connect(dsn, purpose="health sensor") as conn:
            rows = read_health(conn, catalog, specs)
            ti = context["ti"]
            failed_in_run = (
                [r for r in conn.execute(_FAILED_IN_RUN, (ti.dag_id, ti.run_id)) if r[2] != "OK"]
                if self.check_run else []
            )

        missing = {s.key for s in specs} - {(r.schema_name, r.mv_name) for r in rows}
        if missing:
            raise AirflowFailException(
                "no health row for " + ", ".join(catalog.get(k).display_name for k in sorted(missing))
                + ": run `mv-refresh init-db` so the database knows the catalog"
            )
        running = [r for r in rows if r.last_status == "RUNNING"]
        if running:
            self.log.info("waiting: a refresh is running for %s", ", ".join(r.display_name for r in running))
            return False
        for r in rows:
            self.log.info("%s: %s (%s h since the last OK refresh, %s rows)", r.display_name,
                          r.status_bucket, r.hours_since_ok_refresh, r.rows_after_refresh)
        bad = [r for r in rows if r.status_bucket != "OK"]
        problems = [
            f"{r.display_name} is {r.status_bucket}"
            + (f" ({r.hours_since_ok_refresh} h since the last OK refresh"
               f"; warn at {r.warn_after_hours} h, crit above {r.crit_after_hours} h)"
               if r.hours_since_ok_refresh is not None else " (never refreshed OK)")
            + (f"; last error: {r.last_error}" if r.last_error else "")
            for r in bad
        ]
        problems += [
            f"refresh of {schema}.{name} in this run ended {status}"
            + (f" [{state}]" if state else "") + (f": {message}" if message else "")
            for schema, name, status, state, message in failed_in_run
        ]
        if problems:
            raise AirflowFailException("; ".join(problems))
        return True
