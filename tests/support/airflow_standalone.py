"""``make airflow`` (scripts/airflow.sh: ``airflow standalone`` with its triggerer) on a given warehouse, driven
through the REST API: for the event-driven tests (tests/faults/test_events_standalone.py) and bench/lag.py.

The server runs on a free port with its own AIRFLOW_HOME and SQLite metadata; it is stopped the way a
person stops ``make airflow`` (SIGINT), and anything left of its process tree is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "ops_mv_refresh"
CRITICAL_VIEW = "ops.mv_yango_cabinet_claims_for_collection"

# A new claim in the demo warehouse: the latest filing of an existing (driver, milestone) grain, so the
# critical view's row of that grain shows the new claim_id once the chain is refreshed. Returns the id.
NEW_CLAIM_SQL = """
INSERT INTO yango.cabinet_claims
    (claim_id, driver_id, milestone_value, filing_seq, filed_at, amount, currency, cabinet_status)
SELECT (SELECT max(claim_id) + 1 FROM yango.cabinet_claims), c.driver_id, c.milestone_value, c.filing_seq + 1,
       c.filed_at + interval '1 day', c.amount, c.currency, 'SUBMITTED'
FROM yango.cabinet_claims AS c
ORDER BY c.filed_at DESC, c.claim_id DESC
LIMIT 1
RETURNING claim_id
"""


class StandaloneError(RuntimeError):
    pass


@dataclass
class MakeAirflow:
    """One ``scripts/airflow.sh`` on ``dsn``; ``extra_env`` on top of this process's environment (minus
    AIRFLOW_*: a test session's own Airflow settings must not leak into the server)."""

    dsn: str
    home: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = print
    process: subprocess.Popen | None = None
    password: str | None = None
    _client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"{self.home.name}-make-airflow.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({"MV_REFRESH_DSN": self.dsn, "MV_REFRESH_AIRFLOW_HOME": str(self.home),
                    "AIRFLOW_PORT": str(self.port), "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 300.0) -> MakeAirflow:
        from mv_refresh.airflow.standalone import password_of

        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(["bash", str(ROOT / "scripts" / "airflow.sh")], cwd=ROOT, env=self.env(),
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = time.monotonic()
        while "Airflow is ready" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() - started > timeout:
                text = self.log_path.read_text(errors="replace")[-4000:]
                self.stop()
                raise StandaloneError(f"make airflow did not get ready (exit {self.process.poll()}):\n{text}\n"
                                      f"--- standalone.log:\n{self.tail()}")
            time.sleep(1)
        self.password = password_of(self.home)
        self.log(f"make airflow ready in {time.monotonic() - started:.0f} s on {self.url} (log {self.log_path})")
        return self

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join((self.home / "standalone.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(none)"

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return
        try:
            seen = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            seen = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(90)
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(left, timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    # ----------------------------------------------------------------------------------------------
    # REST API

    def client(self) -> httpx.Client:
        """An API client signed in as admin (the password ``airflow standalone`` generated)."""
        if self._client is None:
            response = httpx.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.password},
                                  timeout=30)
            response.raise_for_status()
            self._client = httpx.Client(base_url=self.url, timeout=60,
                                        headers={"Authorization": f"Bearer {response.json()['access_token']}"})
        return self._client

    def api(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any) -> Any:
        """``method path`` on the REST API (``json=``, ``params=``); the decoded answer, or an error naming it."""
        response = self.client().request(method, path, **kwargs)
        if response.status_code not in ok:
            raise StandaloneError(f"{method} {path} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, poll: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StandaloneError(f"timed out after {timeout:.0f} s waiting for {what}\n--- standalone.log:\n"
                                      f"{self.tail()}")
            if self.process is not None and self.process.poll() is not None:
                raise StandaloneError(f"make airflow exited while waiting for {what}\n{self.tail()}")
            time.sleep(poll)

    def wait_for_dag(self, dag_id: str = DAG_ID, timeout: float = 180.0) -> dict:
        def parsed():
            response = self.client().get(f"/api/v2/dags/{dag_id}")
            return response.json() if response.status_code == 200 else None

        return self.wait(parsed, timeout, f"DAG {dag_id} parsed")

    def unpause(self, dag_id: str = DAG_ID) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str = DAG_ID) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})

    def runs(self, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first."""
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "id", "limit": 100})["dag_runs"]

    def active_runs(self, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        return [r for r in self.runs(dag_id) if r["state"] in ("queued", "running")]

    def wait_idle(self, dag_id: str = DAG_ID, timeout: float = 600.0) -> None:
        self.wait(lambda: not self.active_runs(dag_id), timeout, f"{dag_id} without an active run", poll=2.0)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> str:
        def ended():
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        return self.wait(ended, timeout, f"run {run_id} to end", poll=2.0)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def watcher_triggers(self) -> list[dict[str, Any]]:
        """The asset watchers' triggers as the metadata database has them (SQLite, read only)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT t.id, t.classpath, t.triggerer_id FROM trigger AS t "
                              "JOIN asset_watcher AS w ON w.trigger_id = t.id").fetchall()
        return [{"id": i, "classpath": c, "triggerer_id": tr} for i, c, tr in rows]


def insert_claim(dsn: str) -> int:
    """Commit a new claim (NEW_CLAIM_SQL); its claim_id."""
    from mv_refresh.db import connect

    with connect(dsn, autocommit=True) as conn:
        return conn.execute(NEW_CLAIM_SQL).fetchone()[0]


def critical_view_has_claim(dsn: str, claim_id: int) -> bool:
    from psycopg import sql

    from mv_refresh.catalog import parse_qualified_name
    from mv_refresh.db import connect

    with connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE claim_id = %s)").format(
            sql.Identifier(*parse_qualified_name(CRITICAL_VIEW)))
        return conn.execute(query, (claim_id,)).fetchone()[0]
