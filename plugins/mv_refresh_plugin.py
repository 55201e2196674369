"""Airflow plugin: the MV Health page (Browse > MV Health), a FastAPI app mounted at ``/mv-refresh``.

A thin module at the top of ``plugins/``: Airflow's plugin loader imports each file here under its bare
name, so the code lives in the ``mv_refresh`` package (kept away from the loader by ``.airflowignore``).
The app and its access rules are in ``mv_refresh/airflow/ui.py``; docs/ui.md describes the page.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mv_refresh.airflow.ui import URL_PREFIX, create_app


class MvRefreshPlugin(AirflowPlugin):
    name = "mv_refresh"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "MV Health"}]
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
