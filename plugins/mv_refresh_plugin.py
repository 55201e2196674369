"""Airflow plugin: the MV Health page (Browse > MV Health), a FastAPI app mounted at ``/mv-refresh``.

A thin module at the top of ``plugins/``: Airflow's plugin loader imports each file here under its bare
name, so the code lives in the ``mv_refresh`` package (kept away from the loader by ``.airflowignore``).
The app and its access rules are in ``mv_refresh/airflow/ui.py``; docs/ui.md describes the page.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/mv-refresh"


class MvHealthApp:
    """The page's ASGI app, built on its first request.

    Every Airflow process imports the plugins, task processes included, and only the API server serves
    the page: building it here would load FastAPI and Airflow's API security module into every task.
    """

    def __init__(self) -> None:
        self._app = None

    @property
    def app(self):
        if self._app is None:
            from mv_refresh.airflow.ui import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


class MvRefreshPlugin(AirflowPlugin):
    name = "mv_refresh"
    fastapi_apps = [{"app": MvHealthApp(), "url_prefix": URL_PREFIX, "name": "MV Health"}]
    # With url_route, Airflow's UI shows the page inside itself (an iframe of href) under /plugin/mv-health.
    external_views = [
        {
            "name": "MV Health",
            "href": f"{URL_PREFIX}/",
            "url_route": "mv-health",
            "destination": "nav",
            "category": "browse",
        }
    ]
