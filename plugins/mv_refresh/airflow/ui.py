"""The MV Health page: a FastAPI app that Airflow's API server mounts at ``/mv-refresh`` (see
``plugins/mv_refresh_plugin.py``); docs/ui.md describes the page, its routes and its JSON.

Authentication and authorization are Airflow's own. Airflow does not protect a plugin's app, so every
route here depends on ``airflow.api_fastapi.core_api.security.requires_access_dag``: the caller is
resolved from the ``Authorization: Bearer`` header or the UI's ``_token`` cookie (``get_user``), and the
auth manager must let that user read the ``ops_mv_refresh`` DAG (``GET``) or, for "Refresh now", create
runs of it (``POST`` on ``DagAccessEntity.RUN``). Anonymous: 401; a bad token or too little access: 403.

"Refresh now" does not create the run itself: it calls Airflow's REST API
(``POST /api/v2/dags/ops_mv_refresh/dagRuns``) with the caller's own credential, so the API applies its
checks again, and the run is recorded as triggered by that user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict

DAG_ID = "ops_mv_refresh"
_TEMPLATES = Path(__file__).with_name("templates")
_API_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class RefreshRequest(BaseModel):
    """Body of ``POST /api/refresh``."""

    model_config = ConfigDict(extra="forbid")

    view: str
    include_downstream: bool = True


class PoolState(BaseModel):
    """A pool that tasks of ``ops_mv_refresh`` run in, and whether Airflow has it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    exists: bool | None  # None: the caller may not read pools
    slots: int | None
    tasks: list[str]
    fix: str | None  # the command that creates it, when it is missing


class TriggeredRun(BaseModel):
    """What ``POST /api/refresh`` answers: the run Airflow created, and whether it can start."""

    model_config = ConfigDict(extra="forbid")

    dag_id: str
    dag_run_id: str
    state: str
    views: list[str]
    include_downstream: bool
    triggered_by: str | None
    dag_is_paused: bool | None
    grid_url: str


# --------------------------------------------------------------------------------------------------
# Access: Airflow's own dependencies


def _read_access():
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", param_dag_id=DAG_ID))


def _trigger_access():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=DAG_ID))


def _same_origin(request: Request) -> None:
    """Refuse a cookie-authenticated POST sent from another site (the cookie is SameSite=Lax already)."""
    from airflow.configuration import conf

    if request.headers.get("authorization"):
        return  # a bearer token is not sent by browsers on their own: no cross-site risk
    origin = request.headers.get("origin")
    # This site, as the browser sees it: the Host header, or what a reverse proxy says it forwarded, or
    # the configured public URL.
    ours = {request.headers.get("host"), request.headers.get("x-forwarded-host"),
            urlsplit(conf.get("api", "base_url", fallback="") or "").netloc} - {None, ""}
    if origin and origin != "null" and urlsplit(origin).netloc not in ours:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"cross-site request refused (Origin {origin})")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


def _caller_credential(request: Request) -> str:
    """The credential this request was authenticated with: its bearer token, else the UI's cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:  # get_user() accepted the request, so one of the two is there
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not authenticated")
    return token


# --------------------------------------------------------------------------------------------------
# Data


def _catalog():
    from mv_refresh.catalog import CatalogError, load_catalog

    try:
        return load_catalog()
    except CatalogError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"the catalog cannot be loaded: {exc}") from None


def _connect(catalog):
    """A connection to the warehouse through the catalog's Airflow connection, as the refresh tasks use."""
    import psycopg
    from airflow.sdk.exceptions import AirflowNotFoundException

    from mv_refresh.db import ConfigurationError, connect

    from .connection import dsn_for_connection

    try:
        return connect(dsn_for_connection(catalog.connection_id), purpose="health page")
    except (psycopg.OperationalError, ConfigurationError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except AirflowNotFoundException:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"Airflow connection {catalog.connection_id!r} is not defined: define it (e.g. "
            f"AIRFLOW_CONN_{catalog.connection_id.upper()}) so the page can read the warehouse",
        ) from None


def _read(catalog, history: int, views: list[str] | None = None):
    import psycopg

    from mv_refresh.catalog import CatalogError
    from mv_refresh.dashboard import read_history, read_statuses

    with _connect(catalog) as conn:
        try:
            statuses = read_statuses(conn, catalog)
            attempts = read_history(conn, catalog, views, limit=history)
        except CatalogError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except psycopg.errors.UndefinedTable:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the ops schema is missing in this database: run `mv-refresh init-db` once",
            ) from None
    return statuses, attempts


HistoryParam = Annotated[int, Query(ge=1, le=500, description="how many refresh attempts per view")]


# --------------------------------------------------------------------------------------------------
# Triggering through Airflow's API


def _api_base(request: Request) -> str:
    """Where Airflow's API answers: ``[api] base_url`` when set, else the address this request reached."""
    from airflow.configuration import conf

    configured = conf.get("api", "base_url", fallback="") or ""
    if configured:
        return configured.rstrip("/")
    from airflow.api_fastapi.app import API_ROOT_PATH

    server = request.scope.get("server")
    if not server or server[1] is None:  # a Unix socket: the address the client used
        return f"{request.url.scheme}://{request.url.netloc}{API_ROOT_PATH.rstrip('/')}"
    host, port = server
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{request.url.scheme}://{host}:{port}{API_ROOT_PATH.rstrip('/')}"


async def _airflow_api(request: Request, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = getattr(request.app.state, "api_transport", None)
    async with httpx.AsyncClient(base_url=_api_base(request), transport=transport, timeout=_API_TIMEOUT) as client:
        try:
            return await client.request(
                method, path, headers={"Authorization": f"Bearer {_caller_credential(request)}"}, **kwargs)
        except httpx.HTTPError as exc:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY,
                f"Airflow's API did not answer at {_api_base(request)} ({exc}); set [api] base_url to the URL "
                "the API server is reachable at",
            ) from None


def _api_error(response: httpx.Response, doing: str) -> HTTPException:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # a validation error: a list of {loc, msg}
        detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return HTTPException(response.status_code, f"Airflow refused to {doing}: {detail}")


async def trigger_refresh(request: Request, view: str, include_downstream: bool) -> TriggeredRun:
    """Create a run of ``ops_mv_refresh`` for ``view`` through Airflow's REST API, as the caller."""
    from airflow.api_fastapi.app import API_ROOT_PATH

    from mv_refresh.catalog import CatalogError

    from .operators import selected_views

    catalog = _catalog()
    try:
        spec = catalog.get(view)
    except CatalogError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    runs = selected_views(catalog, [spec.display_name], include_downstream)
    body = {
        "logical_date": None,
        "conf": {"views": [spec.display_name], "include_downstream": include_downstream},
        "note": f"Refresh now ({spec.display_name}) from the MV Health page",
    }
    response = await _airflow_api(request, "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json=body)
    if response.status_code >= 400:
        raise _api_error(response, f"trigger {DAG_ID}")
    run = response.json()
    dag = await _airflow_api(request, "GET", f"/api/v2/dags/{DAG_ID}")
    paused = dag.json().get("is_paused") if dag.status_code == 200 else None
    return TriggeredRun(
        dag_id=DAG_ID,
        dag_run_id=run["dag_run_id"],
        state=run["state"],
        views=[v.display_name for v in runs or ()],
        include_downstream=include_downstream,
        triggered_by=run.get("triggering_user_name"),
        dag_is_paused=paused,
        grid_url=f"{API_ROOT_PATH.rstrip('/')}/dags/{DAG_ID}/runs/{quote(run['dag_run_id'], safe='')}",
    )


async def pool_states(request: Request) -> list[PoolState]:
    """The pools the DAG's tasks use, as Airflow's API shows them to the caller.

    A task in a pool that does not exist is never scheduled, and Airflow says so only in the scheduler's
    log: the page shows it instead. Read through the REST API (the DAG as serialized, the pools), so it is
    the pool the DAG really uses, whatever the environment of this process says.
    """
    tasks = await _airflow_api(request, "GET", f"/api/v2/dags/{DAG_ID}/tasks")
    if tasks.status_code >= 400:
        raise _api_error(tasks, f"read the tasks of {DAG_ID}")
    by_pool: dict[str, list[str]] = {}
    for task in tasks.json().get("tasks", []):
        by_pool.setdefault(task.get("pool") or "default_pool", []).append(task["task_id"])
    states = []
    for name, task_ids in sorted(by_pool.items()):
        response = await _airflow_api(request, "GET", f"/api/v2/pools/{quote(name, safe='')}")
        exists = {200: True, 404: False}.get(response.status_code)
        slots = response.json().get("slots") if exists else None
        fix = (f"airflow pools set {name} 4 'mv-refresh: refreshes of materialized views'"
               if exists is False else None)
        states.append(PoolState(name=name, exists=exists, slots=slots, tasks=sorted(task_ids), fix=fix))
    return states


# --------------------------------------------------------------------------------------------------
# The app


def create_app() -> FastAPI:
    """The app Airflow mounts at ``/mv-refresh``; every route needs read access to ``ops_mv_refresh``."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup, escape

    from mv_refresh import dashboard

    app = FastAPI(
        title="mv-refresh: MV Health",
        # The schema and docs pages would be routes without the access check: none.
        openapi_url=None, docs_url=None, redoc_url=None,
        dependencies=[_read_access()],
    )
    # Where Airflow's API answers, when not over HTTP at _api_base() (tests hand in an ASGI transport).
    app.state.api_transport = None
    templates = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
    # Long view names wrap after a "_" or "." instead of in the middle of a word.
    templates.filters["breakable"] = lambda text: Markup(
        str(escape(text)).replace("_", "_<wbr>").replace(".", ".<wbr>"))

    @app.get("/", response_class=HTMLResponse, summary="the MV Health page")
    async def page(request: Request, history: HistoryParam = dashboard.DEFAULT_HISTORY,
                   triggered: str | None = None, view: str | None = None, error: str | None = None,
                   paused: bool = False) -> HTMLResponse:
        from starlette.concurrency import run_in_threadpool

        catalog = _catalog()
        problem, statuses, attempts = None, [], {}
        try:
            statuses, attempts = await run_in_threadpool(_read, catalog, history)
        except HTTPException as exc:
            if exc.status_code != status.HTTP_503_SERVICE_UNAVAILABLE:
                raise
            problem = exc.detail
        try:
            missing_pools = [p for p in await pool_states(request) if p.exists is False]
        except HTTPException:
            missing_pools = []  # the DAG not parsed yet, or the API unreachable: nothing to say about pools
        graph = dashboard.chain_graph(catalog, statuses)
        charts = {
            name: {
                "timeline": Markup(dashboard.timeline_svg(runs, title=f"{name}: statuses")),
                "duration": Markup(dashboard.bar_chart_svg(
                    runs, metric="duration_ms", title=f"{name}: refresh duration (ms)", unit="ms")),
                "rows": Markup(dashboard.bar_chart_svg(
                    runs, metric="rows_after_refresh", title=f"{name}: rows after refresh", unit="rows")),
            }
            for name, runs in attempts.items()
        }
        from airflow.api_fastapi.app import API_ROOT_PATH

        html = templates.get_template("mv_health.html").render(
            statuses=statuses, charts=charts, graph=Markup(dashboard.graph_svg(graph)), history=history,
            bucket_colours=dashboard.BUCKET_COLOURS, status_colours=dashboard.STATUS_COLOURS,
            problem=problem, missing_pools=missing_pools, triggered=triggered, triggered_view=view, error=error, paused=paused, dag_id=DAG_ID,
            airflow_root=API_ROOT_PATH.rstrip("/"), catalog_source=catalog.source,
        )
        return HTMLResponse(html, status_code=503 if problem else 200)

    @app.get("/api/health", response_model=list[dashboard.ViewStatus], summary="one row per catalog view")
    def health() -> list[dashboard.ViewStatus]:
        catalog = _catalog()
        with _connect(catalog) as conn:
            return dashboard.read_statuses(conn, catalog)

    @app.get("/api/history", response_model=dict[str, list[dashboard.RefreshAttempt]],
             summary="the last refresh attempts of each view (or of the views named), newest first")
    def history_of(limit: HistoryParam = dashboard.DEFAULT_HISTORY,
                   view: Annotated[list[str] | None, Query()] = None) -> dict[str, list[dashboard.RefreshAttempt]]:
        return _read(_catalog(), limit, view)[1]

    @app.get("/api/graph", response_model=dashboard.ChainGraph, summary="the upstream graph with each bucket")
    def graph() -> dashboard.ChainGraph:
        catalog = _catalog()
        with _connect(catalog) as conn:
            return dashboard.chain_graph(catalog, dashboard.read_statuses(conn, catalog))

    @app.get("/api/pools", response_model=list[PoolState],
             summary="the pools the DAG's tasks run in, and whether each exists (a missing one never runs them)")
    async def pools(request: Request) -> list[PoolState]:
        return await pool_states(request)

    @app.post("/api/refresh", response_model=TriggeredRun, status_code=status.HTTP_201_CREATED,
              dependencies=[_trigger_access(), Depends(_same_origin)],
              summary="trigger ops_mv_refresh for one view (and, by default, its readers)")
    async def refresh(request: Request, body: RefreshRequest) -> TriggeredRun:
        return await trigger_refresh(request, body.view, body.include_downstream)

    @app.post("/refresh", dependencies=[_trigger_access(), Depends(_same_origin)],
              summary="the page's Refresh now button: trigger, then back to the page")
    async def refresh_from_page(request: Request, view: Annotated[str, Form()],
                                include_downstream: Annotated[bool, Form()] = True) -> RedirectResponse:
        try:
            run = await trigger_refresh(request, view, include_downstream)
            query = {"triggered": run.dag_run_id, "view": view}
            if run.dag_is_paused:
                query["paused"] = "1"
        except HTTPException as exc:
            query = {"error": str(exc.detail), "view": view}
        # Relative, so it lands back on the page wherever Airflow (and so this app) is mounted.
        return RedirectResponse(f"./?{urlencode(query)}", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/api/runs/{dag_run_id}", summary="state of a run of ops_mv_refresh (for the page's banner)")
    async def run_state(request: Request, dag_run_id: str) -> dict[str, Any]:
        response = await _airflow_api(request, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(dag_run_id, safe='')}")
        if response.status_code >= 400:
            raise _api_error(response, f"read run {dag_run_id}")
        run = response.json()
        return {key: run.get(key) for key in ("dag_run_id", "state", "triggering_user_name", "start_date",
                                              "end_date", "conf")}

    return app
