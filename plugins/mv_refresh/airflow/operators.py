"""``MaterializedViewRefreshOperator``: one logged refresh, as an Airflow task.

Follows Airflow's custom-operator guide: keyword-only arguments, no work in ``__init__``, the connection
resolved in ``execute``, ``template_fields`` for what a run may override. Errors map onto Airflow's
retry semantics the way ``BaseSQLOperator`` does it: what a retry can fix raises ``AirflowException``
(the task retries with exponential backoff), what it cannot raises ``AirflowFailException``. When Airflow
stops the task (SIGTERM, a task timeout), ``on_kill`` cancels the refresh's statement on the server and
the log row ends ERROR ("interrupted"), instead of a backend refreshing on for nobody.
"""

from __future__ import annotations

import difflib
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
    :param only_views: when non-empty, the task refreshes only if ``view`` is selected, else it is skipped
        (the DAG's ``views`` trigger param; templated). A name outside the catalog fails the task at once.
    :param include_downstream: with ``only_views``, also select every view that reads a listed view,
        directly or through others, so that no view is left older than its input (default True; templated).
    :param lock_timeout: seconds, overrides the catalog. :param statement_timeout: seconds, likewise.
    :param force: refresh even when change tracking proves the view unchanged (templated; the DAG's ``force``).
    """

    template_fields: Sequence[str] = (
        "view", "conn_id", "mode", "only_views", "include_downstream", "lock_timeout", "statement_timeout",
        "force",
    )
    ui_color = "#d8ecf7"

    def __init__(
        self,
        *,
        view: str,
        conn_id: str | None = None,
        catalog_path: str | None = None,
        mode: str | None = None,
        only_views: Any = None,
        include_downstream: Any = True,
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
        self.include_downstream = include_downstream
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
        except CatalogError as exc:
            raise AirflowFailException(str(exc)) from None
        skip_reason = why_not_selected(catalog, spec, self.only_views, self.include_downstream)
        if skip_reason:
            # Airflow's task runner logs a skip as "Skipping task." with the message only as a structured
            # `reason` field, inside the collapsed "Post Execute" group of the UI's log view: say it here,
            # as an ordinary line among the task's own output.
            self.log.info("Skipping %s: %s", spec.display_name, skip_reason)
            raise AirflowSkipException(skip_reason)

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
                progress=self.log.info, cancel=self._cancel, force=_as_bool(self.force, "force", default=False),
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
        # The asset event tells the story of this refresh (an UNCHANGED one says so: consumers may skip it).
        events = context.get("outlet_events")  # always there in Airflow; absent when execute() is called bare
        for outlet in self.outlets if events is not None else ():
            events[outlet].extra = {
                "view": spec.display_name, "status": result.status, "method": result.method,
                "rows": result.rows_after_refresh, "duration_ms": result.duration_ms, "log_id": result.log_id,
            }
        return {
            "view": spec.display_name,
            "status": result.status,
            "method": result.method,
            "method_reason": result.method_reason,
            "rows_after_refresh": result.rows_after_refresh,
            "duration_ms": result.duration_ms,
            "log_id": result.log_id,
        }


def selected_views(catalog: Any, only_views: Any, include_downstream: Any = True) -> list[Any] | None:
    """The views a run refreshes, in canonical order; ``None`` when ``only_views`` is empty (every view).

    ``only_views`` is the DAG's ``views`` param (a list, a comma- or newline-separated text, or empty);
    with ``include_downstream`` every view that reads a listed one (``Catalog.downstream_of``) comes too.
    A name outside the catalog raises ``AirflowFailException`` naming it, the closest catalog name and
    the views to choose from: a retry cannot fix a typo, and no view of the run is refreshed.
    """
    wanted = _as_list(only_views)
    if not wanted:
        return None
    downstream = _as_bool(include_downstream, "include_downstream")
    unknown = [name for name in wanted if name not in catalog]
    if unknown:
        named = []
        for name in unknown:
            close = difflib.get_close_matches(name, catalog.names, n=1)
            named.append(repr(name) + (f" (did you mean {close[0]}?)" if close else ""))
        raise AirflowFailException(
            f"the run's `views` param names {'a view' if len(unknown) == 1 else 'views'} outside the catalog: "
            f"{', '.join(named)}. No view is refreshed in this run. Trigger it again with views from: "
            f"{', '.join(catalog.names)}; or leave `views` empty to refresh every view"
        )
    chosen = catalog.select(wanted)
    keys = {view.key for view in chosen}
    if downstream:
        for view in chosen:
            keys.update(reader.key for reader in catalog.downstream_of(view))
    return [view for view in catalog.views if view.key in keys]


def why_not_selected(catalog: Any, spec: Any, only_views: Any, include_downstream: Any = True) -> str | None:
    """Why the task of ``spec`` skips in a run with these params, or ``None`` when it refreshes."""
    selection = selected_views(catalog, only_views, include_downstream)
    if selection is None or spec.key in {view.key for view in selection}:
        return None
    asked = ", ".join(catalog.get(name).display_name for name in _as_list(only_views))
    reason = f"not selected in this run (views: {asked}"
    reason += "; with include_downstream)" if _as_bool(include_downstream, "include_downstream") else ")"
    stale_input = [catalog.get(key) for key in spec.upstream if key in {view.key for view in selection}]
    if stale_input:
        reason += (
            f"; it reads {', '.join(view.display_name for view in stale_input)}, refreshed in this run, so "
            f"{spec.display_name} stays older than its input until it is refreshed too"
        )
    return reason


def _as_bool(value: Any, name: str, default: bool = True) -> bool:
    """A templated boolean param (a bool, or its rendered text); empty means ``default``."""
    if isinstance(value, bool):
        return value
    if value in (None, "", "None"):
        return default
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise AirflowFailException(f"the run's `{name}` param is {value!r}, not a boolean: pass true or false")


def _as_list(value: Any) -> list[str]:
    if value in (None, "", "None"):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    return [str(v) for v in value if str(v).strip()]


def _seconds(value: Any) -> float | None:
    if value in (None, "", "None"):
        return None
    return float(value)
