"""``MaterializedViewRefreshOperator``: one logged refresh, as an Airflow task.

Follows Airflow's custom-operator guide: keyword-only arguments, no work in ``__init__``, the connection
resolved in ``execute``, ``template_fields`` for what a run may override. Errors map onto Airflow's
retry semantics the way ``BaseSQLOperator`` does it: what a retry can fix raises ``AirflowException``
(the task retries with exponential backoff), what it cannot raises ``AirflowFailException``. When Airflow
stops the task (SIGTERM, a task timeout), ``on_kill`` cancels the refresh's statement on the server and
the log row ends ERROR ("interrupted"), instead of a backend refreshing on for nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# Values of the DAG's `mode` param that mean "do what the catalog says".
CATALOG_MODE = ("", "catalog", "None")


def view_asset(view: str) -> Asset:
    """The Asset a refresh task updates: ``mv-refresh://<schema>/<view>`` (each part percent-encoded)."""
    from mv_refresh.catalog import format_qualified_name, parse_qualified_name

    schema, name = parse_qualified_name(view)
    return Asset(uri=f"mv-refresh://{quote(schema, safe='')}/{quote(name, safe='')}",
                 name=format_qualified_name(schema, name))


class MaterializedViewRefreshOperator(BaseOperator):
    """Refresh one materialized view of the catalog, logged in ``ops.mv_refresh_log``.

    :param view: ``schema.view`` as written in the catalog (the catalog is the allow-list).
    :param conn_id: Airflow Postgres connection id; default: the catalog's ``connection_id``.
    :param catalog_path: catalog YAML; default ``$MV_REFRESH_CONFIG`` or ``include/mv_refresh.yaml``.
    :param mode: ``auto`` / ``concurrently`` / ``plain``; empty or ``catalog``: the catalog's mode.
    :param only_views: when non-empty, the task refreshes only if ``view`` is listed, else it is skipped
        (the DAG's ``views`` trigger param; templated).
    :param lock_timeout: seconds, overrides the catalog. :param statement_timeout: seconds, likewise.
    :param force: refresh even when change tracking proves the view unchanged (templated; the DAG's ``force``).
    """

    template_fields: Sequence[str] = ("view", "conn_id", "mode", "only_views", "lock_timeout", "statement_timeout",
                                      "force")
    ui_color = "#d8ecf7"

    def __init__(
        self,
        *,
        view: str,
        conn_id: str | None = None,
        catalog_path: str | None = None,
        mode: str | None = None,
        only_views: Any = None,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
        force: Any = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [view_asset(view)])
        super().__init__(**kwargs)
        self.view = view
        self.conn_id = conn_id
        self.catalog_path = catalog_path
        self.mode = mode
        self.only_views = only_views
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.force = force
        self._cancel = None

    def on_kill(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel("the Airflow task was stopped (on_kill)")

    def execute(self, context: Any) -> dict[str, Any]:
        import psycopg

        from mv_refresh.catalog import CatalogError, load_catalog
        from mv_refresh.engine import CancelHandle, RefreshFailed, RunContext, refresh_view

        try:
            catalog = load_catalog(self.catalog_path)
            spec = catalog.get(self.view)
            wanted = _as_list(self.only_views)
            if wanted and spec.key not in {catalog.get(v).key for v in wanted}:
                raise AirflowSkipException(f"{spec.display_name} is not among the views asked for: {wanted}")
        except CatalogError as exc:
            raise AirflowFailException(str(exc)) from None

        from mv_refresh.db import ConfigurationError

        from .connection import dsn_for_connection

        dsn = dsn_for_connection(self.conn_id or catalog.connection_id)
        ti = context["ti"]
        run_context = RunContext(run_by="airflow", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                 try_number=ti.try_number)
        mode = None if self.mode in CATALOG_MODE or self.mode is None else str(self.mode)
        self._cancel = CancelHandle()
        try:
            result = refresh_view(
                dsn, catalog, spec, context=run_context, mode=mode,
                lock_timeout=_seconds(self.lock_timeout), statement_timeout=_seconds(self.statement_timeout),
                progress=self.log.info, cancel=self._cancel, force=_flag(self.force),
            )
        except (CatalogError, ConfigurationError) as exc:  # refused before any SQL ran: a retry cannot help
            raise AirflowFailException(str(exc)) from None
        except RefreshFailed as exc:
            if exc.retryable:
                raise AirflowException(f"{exc} (retryable)") from None
            raise AirflowFailException(str(exc)) from None
        except psycopg.OperationalError as exc:  # could not connect: the database may come back
            raise AirflowException(str(exc)) from None
        self.log.info("%s", result.summary())
        if result.method_reason:
            self.log.info("method %s: %s", result.method, result.method_reason)
        return {
            "view": spec.display_name,
            "status": result.status,
            "method": result.method,
            "method_reason": result.method_reason,
            "rows_after_refresh": result.rows_after_refresh,
            "duration_ms": result.duration_ms,
            "log_id": result.log_id,
        }


def _as_list(value: Any) -> list[str]:
    if value in (None, "", "None"):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    return [str(v) for v in value if str(v).strip()]


def _flag(value: Any) -> bool:
    """A templated boolean: True, "True", "true" (a rendered Jinja value) are true; everything else is not."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _seconds(value: Any) -> float | None:
    if value in (None, "", "None"):
        return None
    return float(value)
