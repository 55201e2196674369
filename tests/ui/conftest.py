"""One real Airflow for the browser tests: ``scripts/airflow.sh`` (what ``make airflow`` runs) on a free port,
its own AIRFLOW_HOME, SQLite metadata, and a test database cloned from the demo template; Debian's
Chromium driven by Playwright.

The server is stopped the way a person stops ``make airflow`` (SIGINT, as Ctrl-C sends), and the session
then fails if any process that carries this AIRFLOW_HOME in its environment is still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# What the browser may do here: no GPU, no sandbox (root in CI), no calls home, no updates.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STARTUP_SECONDS = 300


@dataclass
class AirflowUI:
    url: str
    home: Path
    dsn: str
    password: str
    banner: str
    pid: int

    def command_lines(self) -> list[str]:
        """What `make airflow` runs now: the command line of every live process below it."""
        try:
            below = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        lines = []
        for process in below:
            with contextlib.suppress(psutil.Error):  # gone, or a zombie, meanwhile
                lines.append(" ".join(process.cmdline()))
        return lines

    def api_token(self) -> str:
        """A JWT for the REST API, obtained like any API client does: username and password."""
        import httpx

        response = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.password})
        response.raise_for_status()
        return response.json()["access_token"]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_running(seen: list[psutil.Process], home: Path) -> list[psutil.Process]:
    """Of the processes seen in the tree, those still alive; and any other whose environment names this
    AIRFLOW_HOME (a process started during the shutdown; setproctitle hides the environment of some)."""
    alive = {p.pid: p for p in seen if _alive(p)}
    for process in psutil.process_iter():
        try:
            if process.pid not in alive and process.environ().get("AIRFLOW_HOME") == str(home):
                alive[process.pid] = process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(alive.values())


@pytest.fixture(scope="session")
def airflow_ui(pg_server, demo_template, tmp_path_factory) -> Iterator[AirflowUI]:
    from mv_refresh.airflow.standalone import free_port, password_of

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests use Debian's Chromium (apt-get install -y chromium)")
    dbname = pg_server.create_database(f"ui{uuid.uuid4().hex[:8]}", template=demo_template)
    dsn = pg_server.dsn(dbname)
    home = tmp_path_factory.mktemp("airflow-home")
    port = free_port()
    # The test session's own Airflow settings (tests/conftest.py) must not leak into this server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({"MV_REFRESH_DSN": dsn, "MV_REFRESH_AIRFLOW_HOME": str(home), "AIRFLOW_PORT": str(port),
                "PYTHONUNBUFFERED": "1"})
    log_path = home.parent / "make-airflow.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["bash", str(ROOT / "scripts" / "airflow.sh")], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while "Airflow is ready" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make airflow did not get ready (exit {process.poll()}):\n{log_path.read_text()[-4000:]}"
                            f"\n--- standalone.log:\n{_tail(home / 'standalone.log')}")
            time.sleep(1)
        time.sleep(1)  # the banner's last lines
        password = password_of(home)
        assert password, "no generated admin password"
        yield AirflowUI(url=f"http://127.0.0.1:{port}", home=home, dsn=dsn, password=password,
                        banner=log_path.read_text(errors="replace"), pid=process.pid)
    finally:
        try:
            seen = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            seen = []
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            pass
        stopped_in = time.monotonic() - started
        leftovers = _still_running(seen, home)
        for leftover in leftovers:  # never leave anything behind, even when the check below fails
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(leftovers, timeout=10)
        pg_server.drop_database(dbname)
        print(f"\nmake airflow stopped in {stopped_in:.1f} s after SIGINT; log: {log_path}")
        if leftovers:
            pytest.fail(f"after SIGINT, make airflow left {len(leftovers)} of its {len(seen)} process(es) running: "
                        + ", ".join(f"{p.pid}" for p in leftovers) + f"\n{log_path.read_text()[-2000:]}")
        assert len(seen) >= 5, f"only {len(seen)} processes were seen below make airflow: the check saw nothing"


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


@pytest.fixture(scope="session")
def browser(airflow_ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def page(browser, airflow_ui):
    """One signed-in tab for the whole journey (the tests in test_journey.py run in order)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser step leaves a screenshot of the tab next to the server's log, for the reader."""
    report = yield
    if report.when == "call" and report.failed and "page" in item.funcargs:
        home = item.funcargs["airflow_ui"].home if "airflow_ui" in item.funcargs else Path("/tmp")
        path = home.parent / f"failed-{item.name}.png"
        with contextlib.suppress(Exception):
            item.funcargs["page"].screenshot(path=path, full_page=True)
            report.sections.append(("screenshot", str(path)))
    return report
