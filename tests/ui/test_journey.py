"""A new user's journey through the Airflow UI, in Debian's Chromium, against `make airflow`.

Sign in through the login form; trigger ops_mv_refresh from the trigger form with one view picked in the
multi-select; watch the run succeed in the grid; open Browse > MV Health and see every view OK; age the
log and see CRIT in red; press "Refresh now" and see the view OK again; read a skipped task's log. The
tests share one server and one tab and run in file order. They save docs/img/trigger-form.png and
docs/img/mv-health.png for docs/ui.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from mv_refresh.catalog import load_catalog
from mv_refresh.db import connect

pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
PLUGIN_ROUTES = [("GET", "/mv-refresh/"), ("GET", "/mv-refresh/api/health"), ("GET", "/mv-refresh/api/history"),
                 ("GET", "/mv-refresh/api/graph"), ("GET", "/mv-refresh/api/runs/x"),
                 ("POST", "/mv-refresh/api/refresh"), ("POST", "/mv-refresh/refresh")]
RUN_SECONDS = 240  # a whole run of the six demo views on a busy 2-core machine, with margin
RED = "rgb(207, 34, 46)"  # dashboard.BUCKET_COLOURS["CRIT"]


def _api(airflow_ui, path: str) -> dict:
    response = httpx.get(f"{airflow_ui.url}{path}", headers={"Authorization": f"Bearer {airflow_ui.api_token()}"})
    response.raise_for_status()
    return response.json()


def _runs(airflow_ui) -> list[dict]:
    return _api(airflow_ui, "/api/v2/dags/ops_mv_refresh/dagRuns?order_by=run_after")["dag_runs"]


def test_anonymous_requests_to_the_plugin_are_refused(browser, airflow_ui):
    anonymous = browser.new_context()
    try:
        for method, path in PLUGIN_ROUTES:
            response = anonymous.request.fetch(f"{airflow_ui.url}{path}", method=method, data={"view": "x"}
                                               if method == "POST" else None)
            assert response.status == 401, (method, path, response.status)
            assert response.json() == {"detail": "Not authenticated"}
        page = anonymous.new_page()
        page.goto(f"{airflow_ui.url}/mv-refresh/")
        assert "Not authenticated" in page.content() and "mv_yango" not in page.content()
    finally:
        anonymous.close()


def test_make_airflow_shows_the_login_and_is_sized_to_the_machine(airflow_ui):
    assert f"sign in as: admin / {airflow_ui.password}" in airflow_ui.banner
    assert str(airflow_ui.home / "simple_auth_manager_passwords.json.generated") in airflow_ui.banner
    assert "Unpause on trigger" in airflow_ui.banner
    pool = _api(airflow_ui, "/api/v2/pools/mv_refresh")
    assert pool["slots"] == 4
    # Parallelism from the CPU count (2 per CPU, 4 to 32): as many LocalExecutor workers, not always 32.
    workers = [line for line in airflow_ui.command_lines() if "LocalExecutor" in line]
    assert len(workers) == min(32, max(4, 2 * len(os.sched_getaffinity(0))))


def test_sign_in_and_trigger_one_view_from_the_form_then_watch_it_succeed_in_the_grid(page, airflow_ui):
    catalog = load_catalog()
    first = catalog.views[0].display_name
    page.goto(f"{airflow_ui.url}/dags/ops_mv_refresh")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(airflow_ui.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dags/ops_mv_refresh")

    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Views to refresh")).to_be_visible()
    expect(dialog.get_by_text("Include downstream views")).to_be_visible()
    dialog.locator("#element_views").click()
    options = page.get_by_role("option")
    expect(options).to_have_count(len(catalog.views))
    assert options.all_inner_texts() == catalog.names
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=IMAGES / "trigger-form.png")
    page.get_by_role("option", name=first, exact=True).click()
    dialog.get_by_role("button", name="Trigger").click()

    page.wait_for_url(re.compile(r".*/dags/ops_mv_refresh/runs/manual__[^/]+$"), timeout=120_000)
    run_id = page.url.rsplit("/runs/", 1)[1]
    run_id = httpx.URL(f"/{run_id}").path.lstrip("/")  # percent-decoded
    expect(page.get_by_test_id("state-badge").first).to_have_text(re.compile("Success"), timeout=RUN_SECONDS * 1000)
    # The grid has this run's column: a cell for each refresh task and for health_check.
    cells = page.locator(f'[data-run-id="{run_id}"][data-task-id^="refresh_"] [data-testid="task-state-badge"]')
    expect(cells).to_have_count(len(catalog.views))
    expect(page.locator(f'[data-run-id="{run_id}"][data-task-id="health_check"] [data-testid="task-state-badge"]')
           ).to_have_count(1)

    run = _api(airflow_ui, f"/api/v2/dags/ops_mv_refresh/dagRuns/{run_id}")
    assert run["state"] == "success" and run["triggering_user_name"] == "admin"
    assert run["conf"]["views"] == [first] and run["conf"]["include_downstream"] is True
    with connect(airflow_ui.dsn) as conn:
        refreshed = [r[0] for r in conn.execute(
            "SELECT mv_name FROM ops.mv_refresh_log WHERE run_id = %s AND status = 'OK' ORDER BY id", (run_id,))]
    assert refreshed == [v.name for v in catalog.views]  # the view picked, and every view that reads it
    # What docs/ui.md says about "Unpause on trigger": the DAG was paused, the form unpaused it, and the
    # scheduler started the latest hourly run as well.
    assert any(r["run_type"] == "scheduled" for r in _runs(airflow_ui))


def test_mv_health_every_view_ok_then_crit_in_red_then_refresh_now(page, airflow_ui):
    catalog = load_catalog()
    critical = catalog.critical_views[0].display_name
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="MV Health").click()
    page.wait_for_url("**/plugin/mv-health")
    health = page.frame_locator("iframe")
    expect(health.locator("#health tbody tr")).to_have_count(len(catalog.views))
    expect(health.locator('#health tbody tr[data-bucket="OK"]')).to_have_count(len(catalog.views))

    # Age the critical view's log by 50 hours: above its crit threshold (48 h).
    with connect(airflow_ui.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE ops.mv_refresh_log SET refresh_started_at = refresh_started_at - interval '50 hours',"
            " refresh_finished_at = refresh_finished_at - interval '50 hours',"
            " refreshed_at = refreshed_at - interval '50 hours'"
            " WHERE (schema_name, mv_name) = (%s, %s)", catalog.get(critical).key)
    page.reload()
    row = page.frame_locator("iframe").locator(f'#health tr[data-view="{critical}"]')
    expect(row).to_have_attribute("data-bucket", "CRIT")
    bucket = row.locator(".bucket")
    expect(bucket).to_have_text("CRIT")
    assert bucket.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.screenshot(path=IMAGES / "mv-health.png")
    page.set_viewport_size({"width": 1400, "height": 1000})

    before = {r["dag_run_id"] for r in _runs(airflow_ui)}
    row.get_by_role("button", name="Refresh now").click()
    health = page.frame_locator("iframe")
    expect(health.locator("#triggered")).to_be_visible()
    # The page follows the run and reloads when it ends: the view is OK again.
    expect(health.locator(f'#health tr[data-view="{critical}"]')).to_have_attribute(
        "data-bucket", "OK", timeout=RUN_SECONDS * 1000)
    new = [r for r in _runs(airflow_ui) if r["dag_run_id"] not in before]
    assert len(new) == 1
    assert new[0]["state"] == "success" and new[0]["triggering_user_name"] == "admin"
    assert new[0]["conf"] == {"views": [critical], "include_downstream": True}


def test_a_skipped_task_says_why_in_its_log(page, airflow_ui):
    catalog = load_catalog()
    critical = catalog.critical_views[0].display_name
    run = [r for r in _runs(airflow_ui) if r["conf"].get("views") == [critical]][-1]
    first = catalog.views[0]
    page.goto(f"{airflow_ui.url}/dags/ops_mv_refresh/runs/{run['dag_run_id']}/tasks/{first.task_id}")
    expect(page.get_by_text(f"Skipping {first.display_name}: not selected in this run (views: {critical}")
           ).to_be_visible()
