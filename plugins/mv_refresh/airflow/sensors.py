"""``MaterializedViewHealthSensor``: the DAG's last word on freshness.

OK -> success. WARN, CRIT or NO_REFRESH -> ``AirflowFailException`` at once (never retried: waiting does
not make a view fresher), with the bucket, the hours and the last error. A checked view left older than a
view it reads (a run that refreshed an upstream view but not this one) fails it too; every other view of
the catalog in that state is named in the log. While a refresh of a checked
view is RUNNING *and its backend is alive* it keeps poking (reschedule mode frees the worker slot between
pokes); a RUNNING row whose backend is gone is an abandoned refresh, judged at once. A database it cannot
reach is an error, never an OK. When the run it belongs to had refreshes that did not end OK, it fails
too, naming them. Every poke logs the views it checked as a small table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

# The newest row of each view written by this DAG run, with its liveness when it is RUNNING.
_OUTCOMES_OF_RUN = """
SELECT DISTINCT ON (schema_name, mv_name) schema_name, mv_name, status, error_sqlstate, error_message,
       CASE WHEN status = 'RUNNING' THEN ops.mv_refresh_backend_gone(backend_pid, backend_start) END
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
        from mv_refresh.catalog import CatalogError, format_qualified_name, load_catalog
        from mv_refresh.db import connect
        from mv_refresh.health import read_health, stale_inputs

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
            # What this run left behind fails it; a view made stale by a refresh from elsewhere (the CLI,
            # another run) while this run checks is reported only: the next run settles it, the audit names it.
            stale = stale_inputs(conn, catalog, refreshed_by_run=(ti.dag_id, ti.run_id))
            elsewhere = [s for s in stale_inputs(conn, catalog) if s.view.key not in {x.view.key for x in stale}]
            of_run = conn.execute(_OUTCOMES_OF_RUN, (ti.dag_id, ti.run_id)).fetchall() if self.check_run else []
        self._log_table(rows)

        running = [r for r in rows if r.refreshing]
        running_in_run = [(s, n) for s, n, status, _state, _msg, gone in of_run if status == "RUNNING" and gone is None]
        if running or running_in_run:
            waiting = [r.display_name for r in running] + [format_qualified_name(*key) for key in running_in_run]
            self.log.info("waiting: a refresh is running for %s", ", ".join(dict.fromkeys(waiting)))
            return False
        problems = [
            f"{r.display_name} is {r.status_bucket}"
            + (f" ({r.hours_since_ok_refresh} h since the last OK refresh"
               f"; warn at {r.warn_after_hours} h, crit above {r.crit_after_hours} h)"
               if r.hours_since_ok_refresh is not None else " (never refreshed OK)")
            + (f"; last error: {r.last_error}" if r.last_error else "")
            for r in rows if r.status_bucket != "OK"
        ]
        checked = {s.key for s in specs}
        for item in stale:
            if item.view.key in checked:
                problems.append(f"{item}: refresh {item.view.display_name} (or run with include_downstream)")
            else:
                self.log.warning("%s (not a checked view: reported, not failed)", item)
        for item in elsewhere:
            self.log.warning("%s (refreshed outside this run: reported, not failed; the next run refreshes it)", item)
        for schema, name, status, state, message, gone in of_run:
            if status == "OK":
                continue
            if status == "RUNNING":  # its backend is gone: the refresh was abandoned (a killed worker)
                status, state, message = "ABANDONED", None, gone
            problems.append(f"refresh of {format_qualified_name(schema, name)} in this run ended {status}"
                            + (f" [{state}]" if state else "") + (f": {message}" if message else ""))
        if problems:
            raise AirflowFailException("; ".join(problems))
        return True

    def _log_table(self, rows) -> None:
        """The checked views as a small table in the task log (what a person reads after an alert)."""
        header = ("view", "bucket", "hours_since_ok", "last_status", "rows", "last_error")
        cells = [header] + [
            (r.display_name, r.status_bucket, "-" if r.hours_since_ok_refresh is None else str(r.hours_since_ok_refresh),
             r.last_status or "-", "-" if r.rows_after_refresh is None else f"{r.rows_after_refresh:,}",
             (r.last_error or "-")[:80])
            for r in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in cells]
        self.log.info("health of the checked views:\n%s", "\n".join(lines))
