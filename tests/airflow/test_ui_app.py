"""The MV Health app inside Airflow's own API app (no browser): who gets in, what the JSON says, and
"Refresh now" creating a run through Airflow's REST API as the signed-in user.

The app under test is the one Airflow's plugin manager mounts from ``plugins/`` (``create_app()`` of
``airflow.api_fastapi.app``), with Airflow's real auth manager and JWTs, and a real test database
behind ``postgres_default``.
"""

from __future__ import annotations

import re

import httpx
import pytest

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = pytest.mark.airflow
ROUTES = [("GET", "/mv-refresh/"), ("GET", "/mv-refresh/api/health"), ("GET", "/mv-refresh/api/history"),
          ("GET", "/mv-refresh/api/graph"), ("GET", "/mv-refresh/api/runs/manual__x"),
          ("POST", "/mv-refresh/api/refresh"), ("POST", "/mv-refresh/refresh"), ("GET", "/mv-refresh/api/pools")]


@pytest.fixture(scope="module")
def airflow_app(airflow_db):
    """Airflow's API app with this project's plugin mounted, its DAGs in the metadata database."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "mv-refresh tests only: " + "x" * 64)
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    # What the dag-processor does: the bundle, then its DAGs, into the metadata database.
    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert bag.import_errors == {}
        sync_bag_to_db(bag, bundle.name, bundle.version)
    purge_cached_app()
    app = create_app()
    mounted = [route.app for route in app.routes if getattr(route, "path", None) == "/mv-refresh"]
    assert len(mounted) == 1, "the plugin's app is not mounted at /mv-refresh"
    # Airflow's API is this same app: "Refresh now" reaches it in-process instead of over a socket.
    mounted[0].app.state.api_transport = httpx.ASGITransport(app=app)
    yield app
    purge_cached_app()
    patch.undo()


def _token(role: str, username: str | None = None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username or role.lower(), role=role))


@pytest.fixture
def client(airflow_app):
    from fastapi.testclient import TestClient

    with TestClient(airflow_app) as c:
        yield c


@pytest.fixture
def healthy_db(demo_dsn, airflow_conn):
    """The demo views, each refreshed twice (so the charts have points), behind postgres_default."""
    from mv_refresh.engine import refresh_view

    airflow_conn(demo_dsn)
    catalog = load_catalog()
    for _ in range(2):
        for spec in catalog.views:
            refresh_view(demo_dsn, catalog, spec)
    return demo_dsn


# ------------------------------------------------------------------------------------------ access


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_anonymous_requests_get_401_and_no_data(client, method, path):
    response = client.request(method, path, json={"view": "x"} if path.endswith("api/refresh") else None,
                              data={"view": "x"} if path.endswith("/refresh") and "api" not in path else None)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_forged_token_gets_403(client, method, path):
    forged = _token("ADMIN")[:-4] + "AAAA"
    response = client.request(method, path, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 403, response.text
    assert "mv_" not in response.text


def test_the_schema_and_docs_pages_do_not_exist(client):
    for path in ("/mv-refresh/openapi.json", "/mv-refresh/docs", "/mv-refresh/redoc"):
        response = client.get(path)
        assert response.status_code in (401, 404), path
        assert "mv_refresh" not in response.text and "/api/health" not in response.text


def test_a_viewer_reads_but_cannot_trigger(client, healthy_db):
    viewer = {"Authorization": f"Bearer {_token('VIEWER')}"}
    assert client.get("/mv-refresh/api/health", headers=viewer).status_code == 200
    view = load_catalog().views[0].display_name
    refused = client.post("/mv-refresh/api/refresh", json={"view": view}, headers=viewer)
    assert refused.status_code == 403, refused.text


def test_the_ui_cookie_signs_in_like_the_airflow_ui_does(client, healthy_db):
    client.cookies.set("_token", _token("VIEWER"))
    page = client.get("/mv-refresh/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


def test_the_plugin_is_listed_with_its_browse_entry(client):
    admin = {"Authorization": f"Bearer {_token('ADMIN')}"}
    plugins = client.get("/api/v2/plugins", headers=admin).json()["plugins"]
    ours = [p for p in plugins if p["name"] == "mv_refresh"]
    assert len(ours) == 1
    assert ours[0]["fastapi_apps"][0]["url_prefix"] == "/mv-refresh"
    view = ours[0]["external_views"][0]
    assert (view["name"], view["href"], view["category"], view["destination"]) == (
        "MV Health", "/mv-refresh/", "browse", "nav")
    assert view["url_route"] == "mv-health"  # shown inside the UI, not as a bare link


# -------------------------------------------------------------------------------------------- data


def test_health_json_has_every_view_with_bucket_method_and_thresholds(client, healthy_db):
    catalog = load_catalog()
    rows = client.get("/mv-refresh/api/health", headers={"Authorization": f"Bearer {_token('VIEWER')}"}).json()
    assert [r["name"] for r in rows] == catalog.names
    assert {r["bucket"] for r in rows} == {"OK"}
    assert {r["last_method"] for r in rows} == {"CONCURRENTLY"}  # the second round of refreshes
    with connect(healthy_db) as conn:
        counts = dict(conn.execute("SELECT mv_name, rows_after_refresh FROM ops.v_mv_health").fetchall())
    for row, spec in zip(rows, catalog.views, strict=True):
        assert row["rows_after_refresh"] == counts[spec.name] > 0
        assert (row["warn_after_hours"], row["crit_after_hours"]) == (spec.warn_after_hours, spec.crit_after_hours)
        assert row["upstream"] == [catalog.get(k).display_name for k in spec.upstream]
        assert 0 <= row["hours_since_ok_refresh"] < 0.1


def test_history_json_is_newest_first_and_bounded(client, healthy_db):
    catalog = load_catalog()
    viewer = {"Authorization": f"Bearer {_token('VIEWER')}"}
    history = client.get("/mv-refresh/api/history", params={"limit": 1}, headers=viewer).json()
    assert list(history) == catalog.names
    assert all(len(attempts) == 1 and attempts[0]["method"] == "CONCURRENTLY" for attempts in history.values())
    first = catalog.views[0].display_name
    both = client.get("/mv-refresh/api/history", params={"view": first}, headers=viewer).json()
    assert list(both) == [first]
    started = [a["refresh_started_at"] for a in both[first]]
    assert len(started) == 2 and started == sorted(started, reverse=True)
    assert [a["method"] for a in both[first]] == ["CONCURRENTLY", "PLAIN"]
    unknown = client.get("/mv-refresh/api/history", params={"view": first + "x"}, headers=viewer)
    assert unknown.status_code == 404 and f"did you mean {first}" in unknown.json()["detail"]
    too_many = client.get("/mv-refresh/api/history", params={"limit": 501}, headers=viewer)
    assert too_many.status_code == 422


def test_graph_json_is_the_chain_with_buckets(client, healthy_db):
    catalog = load_catalog()
    with connect(healthy_db, autocommit=True) as conn:  # the critical last view: 50 h old -> CRIT
        conn.execute("UPDATE ops.mv_refresh_log SET refresh_started_at = refresh_started_at - interval '50 hours',"
                     " refresh_finished_at = refresh_finished_at - interval '50 hours',"
                     " refreshed_at = refreshed_at - interval '50 hours' WHERE mv_name = %s",
                     (catalog.views[-1].name,))
    graph = client.get("/mv-refresh/api/graph", headers={"Authorization": f"Bearer {_token('VIEWER')}"}).json()
    assert [(n["name"], n["layer"], n["bucket"]) for n in graph["nodes"]] == [
        (v.display_name, i, "CRIT" if i == len(catalog.views) - 1 else "OK") for i, v in enumerate(catalog.views)]
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {
        (catalog.get(u).display_name, v.display_name) for v in catalog.views for u in v.upstream}


def test_the_page_shows_buckets_graph_and_charts_inline(client, healthy_db):
    catalog = load_catalog()
    html = client.get("/mv-refresh/", headers={"Authorization": f"Bearer {_token('VIEWER')}"}).text
    for spec in catalog.views:
        assert f'<tr data-view="{spec.display_name}" data-bucket="OK">' in html
    assert html.count("class='node'") == len(catalog.views)
    assert html.count("data-metric='duration_ms' data-points='2'") == len(catalog.views)
    assert html.count("class='attempt' data-status='OK'") == 2 * len(catalog.views)
    # Offline: nothing is loaded from anywhere else.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_an_unreachable_warehouse_is_a_503_that_says_where(client, airflow_conn, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT",
                       '{"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "u",'
                       ' "password": "s3cr3t", "schema": "warehouse"}')
    viewer = {"Authorization": f"Bearer {_token('VIEWER')}"}
    response = client.get("/mv-refresh/api/health", headers=viewer)
    assert response.status_code == 503
    assert "warehouse" in response.json()["detail"] and "s3cr3t" not in response.text
    page = client.get("/mv-refresh/", headers=viewer)
    assert page.status_code == 503 and "cannot be read" in page.text and "s3cr3t" not in page.text


# --------------------------------------------------------------------------------------- triggering


def _runs(dag_id: str = "ops_mv_refresh"):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [(r.run_id, r.conf, r.triggering_user_name, r.run_type)
                for r in session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id)]


def test_refresh_now_creates_a_run_through_the_api_as_the_caller(client, healthy_db):
    catalog = load_catalog()
    third = catalog.views[2]
    before = {r[0] for r in _runs()}
    response = client.post("/mv-refresh/api/refresh", json={"view": third.display_name},
                           headers={"Authorization": f"Bearer {_token('USER', 'alice')}"})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["views"] == [v.display_name for v in catalog.views[2:]]
    assert run["triggered_by"] == "alice" and run["state"] == "queued"
    assert run["grid_url"].endswith(f"/dags/ops_mv_refresh/runs/{run['dag_run_id'].replace(':', '%3A').replace('+', '%2B')}")
    created = [r for r in _runs() if r[0] not in before]
    assert created == [(run["dag_run_id"], {"views": [third.display_name], "include_downstream": True}, "alice",
                        "manual")]
    state = client.get(f"/mv-refresh/api/runs/{run['dag_run_id']}",
                       headers={"Authorization": f"Bearer {_token('VIEWER')}"}).json()
    assert state["state"] == "queued" and state["triggering_user_name"] == "alice"


def test_refresh_now_from_the_page_uses_the_cookie_and_comes_back(client, healthy_db):
    view = load_catalog().views[-1].display_name
    client.cookies.set("_token", _token("USER", "bob"))
    response = client.post("/mv-refresh/refresh", data={"view": view}, follow_redirects=False,
                           headers={"Origin": "http://testserver"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("./?triggered=manual__")
    assert _runs()[-1][2] == "bob"
    page = client.get("/mv-refresh/" + response.headers["location"][2:])
    assert 'id="triggered"' in page.text and view in page.text


def test_refresh_now_refuses_another_site_and_unknown_views(client, healthy_db):
    before = len(_runs())
    client.cookies.set("_token", _token("ADMIN"))
    view = load_catalog().views[0].display_name
    cross = client.post("/mv-refresh/refresh", data={"view": view}, headers={"Origin": "https://evil.example"},
                        follow_redirects=False)
    assert cross.status_code == 403
    unknown = client.post("/mv-refresh/api/refresh", json={"view": view + "x"})
    assert unknown.status_code == 404 and f"did you mean {view}" in unknown.json()["detail"]
    form = client.post("/mv-refresh/refresh", data={"view": view + "x"}, follow_redirects=False)
    assert form.status_code == 303 and "error=" in form.headers["location"]
    assert len(_runs()) == before


def test_an_undefined_connection_is_a_503_that_names_it(client, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_POSTGRES_DEFAULT", raising=False)
    response = client.get("/mv-refresh/api/health", headers={"Authorization": f"Bearer {_token('VIEWER')}"})
    assert response.status_code == 503
    assert "'postgres_default' is not defined" in response.json()["detail"]


# ------------------------------------------------------------------------------------------ pools


def test_a_missing_pool_is_reported_on_the_page_and_in_json_until_it_exists(client, healthy_db):
    """Airflow never schedules a task whose pool does not exist (and says so only in the scheduler's log):
    the page names the pool, its tasks and the command that creates it; once the pool exists, it is quiet."""
    admin = {"Authorization": f"Bearer {_token('ADMIN')}"}
    pool = next(t["pool"] for t in client.get("/api/v2/dags/ops_mv_refresh/tasks", headers=admin).json()["tasks"]
                if t["task_id"].startswith("refresh_"))
    client.delete(f"/api/v2/pools/{pool}", headers=admin)  # whatever an earlier test left
    try:
        states = {p["name"]: p for p in client.get("/mv-refresh/api/pools", headers=admin).json()}
        refresh_tasks = sorted(v.task_id for v in load_catalog().views)
        assert states[pool] == {"name": pool, "exists": False, "slots": None, "tasks": refresh_tasks,
                                "fix": f"airflow pools set {pool} 4 'mv-refresh: refreshes of materialized views'"}
        assert states["default_pool"]["exists"] is True and "health_check" in states["default_pool"]["tasks"]
        page = client.get("/mv-refresh/", headers=admin)
        assert page.status_code == 200
        assert f'id="missing-pool-{pool}"' in page.text and f"airflow pools set {pool} 4" in page.text

        created = client.post("/api/v2/pools", json={"name": pool, "slots": 2}, headers=admin)
        assert created.status_code == 201, created.text
        states = {p["name"]: p for p in client.get("/mv-refresh/api/pools", headers=admin).json()}
        assert (states[pool]["exists"], states[pool]["slots"], states[pool]["fix"]) == (True, 2, None)
        assert "missing-pool" not in client.get("/mv-refresh/", headers=admin).text
    finally:
        client.delete(f"/api/v2/pools/{pool}", headers=admin)
