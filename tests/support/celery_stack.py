"""A production-shaped Airflow 3.3 deployment on this machine: CeleryExecutor, Redis, PostgreSQL metadata.

    .venv/bin/python tests/support/celery_stack.py start [--warehouse DSN] [--private-redis]
    .venv/bin/python tests/support/celery_stack.py status
    .venv/bin/python tests/support/celery_stack.py stop
    make celery-up / make celery-down                       # the same

What runs (docs/at-scale.md explains each setting):

* the metadata database: a database of its own on the test PostgreSQL server (``--server``, else
  ``TEST_DATABASE_URL``, else the embedded server of ``make demo`` under ``.demo/pg``), created by
  ``start`` and dropped by ``stop``;
* the broker: the machine's Redis on 127.0.0.1:6379 with a key prefix and a queue name of this
  deployment's own (several deployments share one Redis without sharing a task), or, with
  ``private_redis``, a ``redis-server`` of its own on a free port (a test may restart that one);
* ``airflow scheduler``, ``airflow dag-processor``, ``airflow api-server`` (UI, REST API and the
  execution API the workers talk to; a shared ``[api_auth] jwt_secret``) and two ``airflow celery
  worker`` processes. Each worker runs in a UTS namespace of its own (``unshare --uts``), so its
  hostname differs from the other's as on two machines: Airflow's task-instance ``hostname`` and the
  refresh log's ``client_hostname`` tell them apart.

Every port is picked free at start; everything lives in a temporary AIRFLOW_HOME. ``stop`` ends every
process of the deployment (each component's whole process tree, task processes included), drops the
metadata database and the Redis keys, and removes the home, also after a failed start.

The DAGs: the project's ``dags/`` (bundle ``dags-folder``), plus an optional folder of extra DAGs
(bundle ``mvr-extra``) that the fault tests use. ``ops_mv_refresh`` reads the catalog from
``MV_REFRESH_CONFIG`` = ``<home>/catalog.yaml`` (``use_catalog`` rewrites it) and the warehouse from
the Airflow connection ``postgres_default``, stored in the metadata database (``use_warehouse``).

The helpers the tests need: ``trigger``, ``wait_for_run``, ``task_tries`` (state, hostname and try of
every try of every task), ``reschedules``, ``kill_worker`` / ``start_worker``, ``restart_redis``,
``restart_scheduler``, ``add_connection``, ``api`` (the REST API with a token).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MACHINE_REDIS = ("127.0.0.1", 6379)
STATE_FILE = ROOT / ".demo" / "celery-stack.json"
REFRESH_DAG = "ops_mv_refresh"
# The tasks of ops_mv_refresh besides one per view: the health sensor, and the watcher that fails the run
# when any task failed (skipped in a run where none did).
REFRESH_DAG_LEAVES = frozenset({"health_check", "fail_run_if_any_task_failed"})
EXTRA_BUNDLE = "mvr-extra"


class StackError(RuntimeError):
    """The deployment could not start, or did not do what a helper waited for; names the log to read."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN as the SQLAlchemy URL Airflow's metadata database wants (psycopg 3 driver).

    A Unix-socket directory (the embedded server) goes into the query string, with its port.
    """
    from sqlalchemy.engine import URL

    params = conninfo_to_dict(dsn)
    host = params.get("host") or ""
    query: dict[str, str] = {}
    tcp_host, port = host or None, int(params["port"]) if params.get("port") else None
    if host.startswith("/"):
        query["host"] = host
        if port:
            query["port"] = str(port)
        tcp_host, port = None, None
    return URL.create("postgresql+psycopg", username=params.get("user") or None,
                      password=params.get("password") or None, host=tcp_host, port=port,
                      database=params["dbname"], query=query).render_as_string(hide_password=False)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (a task's process has a process group of its own: follow parents)."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL, *, timeout: float = 15.0) -> list[int]:
    """Send ``sig`` to ``pid`` and every descendant at once; wait for them; return the pids signalled."""
    procs = process_tree(pid)
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in procs]


def uts_prefix(hostname: str) -> list[str]:
    """Run a command in a UTS namespace of its own with ``hostname`` (a second "machine" for Airflow).

    As root a UTS namespace needs nothing else; otherwise an unprivileged user namespace maps us to root
    inside it. ``unshare`` then execs, so the pid we get is the worker's own.
    """
    user_ns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user_ns, "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def stop_all(components: list[Component], *, grace: float) -> None:
    """SIGTERM to every component at once; SIGKILL to what is left of their trees after ``grace``."""
    trees = [process_tree(c.pid) for c in components if c.pid]
    mains = [tree[0] for tree in trees if tree]
    for proc in mains:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mains, timeout=grace)
    leftovers = [p for tree in trees for p in tree]
    for proc in mains:  # children forked meanwhile; is_running() also guards against a reused pid
        try:
            if proc.is_running():
                leftovers += proc.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)
    for component in components:
        if component.process is not None:
            component.process.wait(10)
        component.process, component.pid = None, None


@dataclass
class Component:
    """One long-running process of the deployment."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None
    pid: int | None = None

    def start(self, env: dict[str, str]) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.process.pid

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and psutil.pid_exists(self.pid)

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM, then after ``grace`` seconds SIGKILL to whatever is left of its process tree."""
        stop_all([self], grace=grace)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class CeleryStack:
    """The deployment. ``start()`` brings it up; ``stop()`` takes everything down again."""

    server_dsn: str  # admin DSN of the PostgreSQL server that holds the metadata database
    workers: int = 2
    worker_concurrency: int = 2
    private_redis: bool = False
    extra_dags: Path | None = None
    catalog_text: str | None = None  # default: include/mv_refresh.yaml
    heartbeat_timeout: int = 20  # [scheduler] task_instance_heartbeat_timeout: a dead worker is noticed after this
    queued_timeout: int = 90  # [scheduler] task_queued_timeout: a task message lost with Redis is re-sent after this
    parsing_interval: int = 30  # [dag_processor] min_file_process_interval; use_catalog asks for a parse
    extra_env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _line: None

    def __post_init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.home = Path(tempfile.mkdtemp(prefix=f"mvr-celery-{self.id}-"))
        self.airflow_home = self.home / "airflow"
        self.logs = self.home / "logs"
        self.catalog_path = self.home / "catalog.yaml"
        self.metadata_db = f"mvr_celery_{self.id}"
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.queue = f"mvr-{self.id}"
        self.redis_port = free_port() if self.private_redis else MACHINE_REDIS[1]
        self.redis_prefix = "" if self.private_redis else f"mvr-{self.id}:"
        self.password = secrets.token_urlsafe(12)
        self.components: dict[str, Component] = {}
        self.worker_hostnames = {f"worker{i}": f"mvr-{self.id}-w{i}" for i in range(1, self.workers + 1)}
        self._token: str | None = None
        self._created_db = False
        from cryptography.fernet import Fernet

        # Shared by every component, as in any multi-host deployment: the key that encrypts connection
        # passwords in the metadata database, the JWT secret of the execution API, the UI's session key.
        self._secrets = {"fernet": Fernet.generate_key().decode(), "jwt": secrets.token_hex(32),
                         "api": secrets.token_hex(16)}

    # ----------------------------------------------------------------------------------------------
    # Configuration

    @property
    def default_catalog_text(self) -> str:
        return self.catalog_text or (ROOT / "include" / "mv_refresh.yaml").read_text()

    @property
    def metadata_dsn(self) -> str:
        return with_dbname(self.server_dsn, self.metadata_db)

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """The environment of every component: one configuration, as a Helm chart would render it."""
        bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {}}]
        if self.extra_dags:
            bundles.append({"name": EXTRA_BUNDLE, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                            "kwargs": {"path": str(self.extra_dags)}})
        # The test session's own Airflow settings (a SQLite home, unit-test mode) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MV_REFRESH_"))}
        env.update({
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(2 * self.workers * self.worker_concurrency),
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            # The workers' hostnames exist only in their UTS namespaces, not in DNS: getfqdn() would
            # wait on a resolver; the short name is what the refresh log records anyway.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(self.metadata_dsn),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "7",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(self.queued_timeout),
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.parsing_interval),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(self.parsing_interval),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "MV_REFRESH_CONFIG": str(self.catalog_path),
        })
        if self.redis_prefix:
            env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = self.redis_prefix
        env.update(self.extra_env)
        return env

    # ----------------------------------------------------------------------------------------------
    # Start and stop

    def start(self, *, timeout: float = 240.0) -> CeleryStack:
        """Bring the deployment up and wait until every component is ready; stop it all on failure."""
        started = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.log(f"celery stack {self.id}: start failed; stopping what started (logs in {self.logs})")
            self.stop(keep_logs=True)
            raise
        self.log(f"celery stack {self.id}: up in {time.monotonic() - started:.0f} s at {self.api_url}")
        return self

    def _start(self, timeout: float) -> None:
        from mv_refresh.db import connect

        self._t0 = time.monotonic()
        deadline = self._t0 + timeout
        self.logs.mkdir(parents=True)
        self.airflow_home.mkdir()
        self.catalog_path.write_text(self.default_catalog_text)
        (self.home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        self._check_tools()
        with connect(self.server_dsn, autocommit=True, purpose="celery stack") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.metadata_db)))
        self._created_db = True
        if self.private_redis:
            self._start_redis()
        env = self.env()
        migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                                 timeout=max(deadline - time.monotonic(), 30))
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}")
        phases = [("db migrate", time.monotonic())]
        airflow = str(BIN / "airflow")
        started = [Component(name, [airflow, name], self.logs / f"{name}.log")
                   for name in ("api-server", "scheduler", "dag-processor")]
        started += [self._worker_component(name) for name in self.worker_hostnames]
        for component in started:  # the private redis-server runs already: never start it twice
            self.components[component.name] = component
            component.start(env)
        self._wait_healthy(deadline)
        phases.append(("scheduler, dag-processor, API server healthy", time.monotonic()))
        for name in self.worker_hostnames:
            self._wait_worker_ready(name, deadline)
        phases.append(("workers ready", time.monotonic()))
        self.api("POST", "/api/v2/pools", json={"name": "mv_refresh", "slots": self.workers * self.worker_concurrency,
                                                "description": "mv-refresh refreshes (docs/at-scale.md)"})
        # Parsed, but left paused: unpausing an hourly DAG creates a run at once (the latest cron time),
        # so the caller first points postgres_default at the warehouse (use_warehouse), then unpauses.
        self.wait_for_dag(REFRESH_DAG, timeout=max(deadline - time.monotonic(), 30))
        phases.append((f"{REFRESH_DAG} parsed", time.monotonic()))
        marks = [started for _name, started in phases]
        self.log("celery stack: " + ", ".join(f"{name} +{now - before:.0f} s" for (name, now), before
                                             in zip(phases, [self._t0, *marks[:-1]], strict=True)))

    def _check_tools(self) -> None:
        probe = subprocess.run([*uts_prefix("mvr-probe"), "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise StackError(
                "cannot give the workers hostnames of their own: `unshare --uts` failed "
                f"({probe.stderr.strip()}). Run as root, or allow unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1)."
            )
        if self.private_redis and not shutil.which("redis-server"):
            raise StackError("redis-server is not installed: apt-get install redis-server")
        if not self.private_redis:
            import redis

            try:
                redis.Redis(*MACHINE_REDIS, socket_timeout=3).ping()
            except redis.RedisError as exc:
                raise StackError(
                    f"no Redis answers on {MACHINE_REDIS[0]}:{MACHINE_REDIS[1]} ({exc}): start one "
                    "(`redis-server --daemonize yes`, as .ci/run does) or use --private-redis"
                ) from None

    def _worker_component(self, name: str) -> Component:
        hostname = self.worker_hostnames[name]
        argv = [*uts_prefix(hostname), str(BIN / "airflow"), "celery", "worker", "--celery-hostname",
                f"{name}@{hostname}", "--queues", self.queue, "--concurrency", str(self.worker_concurrency),
                "--skip-serve-logs"]
        return Component(name, argv, self.logs / f"{name}.log")

    def _start_redis(self) -> None:
        redis_component = Component("redis", [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
                                              "--port", str(self.redis_port), "--save", "", "--appendonly", "no",
                                              "--dir", str(self.home)], self.logs / "redis.log")
        redis_component.start(os.environ.copy())
        self.components["redis"] = redis_component
        self._wait(lambda: self._redis_pid() == redis_component.pid, 30,
                   f"our redis-server (pid {redis_component.pid}) answering on port {self.redis_port}", redis_component)

    def _redis_pid(self) -> int | None:
        """The pid of the redis-server that answers on our port (another one may hold the port)."""
        import redis

        try:
            return int(redis.Redis("127.0.0.1", self.redis_port, socket_timeout=1).info("server")["process_id"])
        except redis.RedisError:
            return None

    def stop(self, *, keep_logs: bool = False) -> None:
        """End every process of the deployment, drop its metadata database and Redis keys, remove its home.

        All components get SIGTERM at once (a worker's warm shutdown waits for its running tasks), and
        whatever is left of any component's process tree after the grace period gets SIGKILL.
        """
        stop_all(list(self.components.values()), grace=15)
        self.components.clear()
        if self._created_db:
            from mv_refresh.db import connect

            with connect(self.server_dsn, autocommit=True, purpose="celery stack") as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.metadata_db)))
            self._created_db = False
        if self.redis_prefix:
            self._drop_redis_keys()
        if keep_logs:
            shutil.rmtree(self.airflow_home, ignore_errors=True)
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def _drop_redis_keys(self) -> None:
        import redis

        try:
            client = redis.Redis(*MACHINE_REDIS, socket_timeout=5)
            keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=500))
            keys += [k for k in client.scan_iter(match=f"*{self.queue}*", count=500) if k not in keys]
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # the machine's Redis went away: nothing of ours is left in it either

    def __enter__(self) -> CeleryStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------
    # Waiting

    def _wait(self, predicate: Callable[[], Any], timeout: float, what: str, component: Component | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if component is not None and not component.alive():
                raise StackError(f"{component.name} exited while waiting for {what}; its log "
                                 f"({component.log}) ends:\n{component.tail()}")
            time.sleep(0.5)
        detail = f"; {component.name}'s log ({component.log}) ends:\n{component.tail()}" if component else ""
        raise StackError(f"{what}: not reached in {timeout:.0f} s{detail}")

    def health(self) -> dict[str, Any]:
        try:
            return httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def _wait_healthy(self, deadline: float) -> None:
        api = self.components["api-server"]
        self._wait(lambda: self.health(), deadline - time.monotonic(), "the API server to answer", api)

        def healthy() -> bool:
            health = self.health()
            for name in ("scheduler", "dag-processor"):
                if not self.components[name].alive():
                    raise StackError(f"{name} exited; its log ends:\n{self.components[name].tail()}")
            return all((health.get(part) or {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "dag_processor"))

        self._wait(healthy, deadline - time.monotonic(), "a healthy scheduler and dag-processor", api)

    def _wait_worker_ready(self, name: str, deadline: float) -> None:
        component = self.components[name]
        self._wait(lambda: " ready." in component.log.read_text(errors="replace"), deadline - time.monotonic(),
                   f"Celery worker {name} ready", component)

    # ----------------------------------------------------------------------------------------------
    # The REST API

    def token(self) -> str:
        if self._token is None:
            response = httpx.post(f"{self.api_url}/auth/token", json={"username": "admin", "password": self.password},
                                  timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
            ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        response = httpx.request(method, f"{self.api_url}{path}", json=json, params=params, timeout=60,
                                 headers={"Authorization": f"Bearer {self.token()}"})
        if response.status_code not in ok:
            raise StackError(f"{method} {path} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, *, timeout: float = 120.0, tasks: set[str] | None = None) -> dict:
        """The DAG as the API shows it, once parsed (and, given ``tasks``, once it has exactly those)."""

        def parsed():
            response = httpx.get(f"{self.api_url}/api/v2/dags/{dag_id}", timeout=30,
                                 headers={"Authorization": f"Bearer {self.token()}"})
            if response.status_code != 200:
                return None
            if tasks is not None:
                found = {t["task_id"] for t in self.api("GET", f"/api/v2/dags/{dag_id}/tasks")["tasks"]}
                if found != tasks:
                    return None
            return response.json()

        return self._wait(parsed, timeout, f"DAG {dag_id} parsed", self.components.get("dag-processor"))

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs as the REST API lists them, oldest first."""
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "id", "limit": 100})["dag_runs"]

    def wait_for_runs(self, dag_id: str, count: int = 1, *, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait until ``dag_id`` has at least ``count`` runs (e.g. the one unpausing an hourly DAG creates)."""
        def enough() -> list[dict[str, Any]] | None:
            runs = self.runs(dag_id)
            return runs if len(runs) >= count else None

        return self._wait(enough, timeout, f"{count} run(s) of {dag_id}", self.components.get("scheduler"))

    def active_runs(self, dag_id: str) -> list[str]:
        runs = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]})
        return [r["dag_run_id"] for r in runs["dag_runs"]]

    def wait_idle(self, dag_id: str, *, timeout: float = 300.0) -> None:
        """Wait until ``dag_id`` has no queued or running run (e.g. the one unpausing created)."""
        self._wait(lambda: not self.active_runs(dag_id), timeout, f"{dag_id} without an active run",
                   self.components.get("scheduler"))

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 300.0,
                     states: tuple[str, ...] = ("success", "failed")) -> str:
        return self._wait(lambda: (s := self.run_state(dag_id, run_id)) in states and s, timeout,
                          f"run {run_id} of {dag_id} to end in {'/'.join(states)}", self.components.get("scheduler"))

    def add_connection(self, conn_id: str, dsn: str, *, extra: dict | None = None) -> None:
        """Create (or replace) Airflow connection ``conn_id`` in the metadata database from a libpq DSN."""
        from mv_refresh.airflow.connection import airflow_connection_json

        conn = json.loads(airflow_connection_json(dsn))
        body = {"connection_id": conn_id, "conn_type": "postgres", "host": conn.get("host"),
                "port": conn.get("port"), "login": conn.get("login"), "password": conn.get("password"),
                "schema": conn.get("schema"), "extra": json.dumps({**conn.get("extra", {}), **(extra or {})})}
        self.api("DELETE", f"/api/v2/connections/{conn_id}", ok=(204, 404))
        self.api("POST", "/api/v2/connections", json=body)

    def use_warehouse(self, dsn: str, *, extra: dict | None = None) -> None:
        """Point ``postgres_default`` (what ops_mv_refresh refreshes) at ``dsn``."""
        self.add_connection("postgres_default", dsn, extra=extra)

    def use_catalog(self, text: str, *, timeout: float = 120.0) -> None:
        """Give ops_mv_refresh another catalog and wait until the parsed DAG has its tasks."""
        from mv_refresh.catalog import parse_catalog

        catalog = parse_catalog(text, source="celery stack")
        tmp = self.catalog_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.catalog_path)
        dag = self.api("GET", f"/api/v2/dags/{REFRESH_DAG}")
        self.api("PUT", f"/api/v2/parseDagFile/{dag['file_token']}", ok=(200, 201))
        self.wait_for_dag(REFRESH_DAG, timeout=timeout, tasks={*(v.task_id for v in catalog.views), *REFRESH_DAG_LEAVES})

    # ----------------------------------------------------------------------------------------------
    # What happened (read from the metadata database)

    def query(self, statement: str, params: tuple | dict | None = None) -> list[tuple]:
        from mv_refresh.db import connect

        with connect(self.metadata_dsn, autocommit=True, purpose="celery stack") as conn:
            return conn.execute(statement, params).fetchall()

    def task_tries(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every try of every task of the run, earlier tries included: task_id, try_number, state, hostname."""
        rows = self.query("""
            SELECT task_id, try_number, state, hostname, start_date, end_date, duration FROM task_instance
            WHERE dag_id = %(dag)s AND run_id = %(run)s
            UNION ALL
            SELECT task_id, try_number, state, hostname, start_date, end_date, duration FROM task_instance_history
            WHERE dag_id = %(dag)s AND run_id = %(run)s
            ORDER BY task_id, try_number""", {"dag": dag_id, "run": run_id})
        names = ("task_id", "try_number", "state", "hostname", "start_date", "end_date", "duration")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def reschedules(self, dag_id: str, run_id: str, task_id: str) -> int:
        return self.query("""
            SELECT count(*) FROM task_reschedule AS r JOIN task_instance AS ti ON ti.id = r.ti_id
            WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s""", (dag_id, run_id, task_id))[0][0]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log file as the worker wrote it (all workers share this machine's log folder)."""
        folder = self.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"attempt={try_number}*")))

    # ----------------------------------------------------------------------------------------------
    # Faults

    def worker_of(self, hostname: str) -> str:
        for name, host in self.worker_hostnames.items():
            if host == hostname:
                return name
        raise StackError(f"no worker of this deployment has hostname {hostname!r}: {self.worker_hostnames}")

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL the worker and every process under it at once (a machine gone); return the pids."""
        component = self.components[name]
        pids = kill_tree(component.pid, signal.SIGKILL)
        if component.process is not None:
            component.process.wait(10)
        component.process, component.pid = None, None
        return pids

    def start_worker(self, name: str, *, timeout: float = 120.0) -> None:
        component = self.components.get(name) or self._worker_component(name)
        component.log.write_text("")  # readiness is read from the log: start it afresh
        component.start(self.env())
        self.components[name] = component
        self._wait_worker_ready(name, time.monotonic() + timeout)

    def restart_redis(self, *, down_seconds: float = 0.0) -> None:
        """Stop the private redis-server (its queued messages are lost: no persistence) and start it again."""
        if not self.private_redis:
            raise StackError("restart_redis needs private_redis=True: never restart the machine's shared Redis")
        self.components["redis"].stop(grace=5)
        time.sleep(down_seconds)
        self._start_redis()

    def restart_scheduler(self, *, sig: int = signal.SIGTERM, down_seconds: float = 0.0) -> None:
        scheduler = self.components["scheduler"]
        if sig == signal.SIGKILL:
            kill_tree(scheduler.pid)
            if scheduler.process is not None:
                scheduler.process.wait(10)
            scheduler.process, scheduler.pid = None, None
        else:
            scheduler.stop(grace=30)
        time.sleep(down_seconds)
        scheduler.start(self.env())

    # ----------------------------------------------------------------------------------------------
    # The script form's state file

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "home": str(self.home), "server_dsn": self.server_dsn, "metadata_db": self.metadata_db,
                "api_url": self.api_url, "password": self.password, "redis_prefix": self.redis_prefix,
                "queue": self.queue, "pids": {n: c.pid for n, c in self.components.items()},
                "warehouse_db": getattr(self, "warehouse_db", None)}


# --------------------------------------------------------------------------------------------------
# The script


def _server_dsn(explicit: str | None) -> str:
    if explicit or os.environ.get("TEST_DATABASE_URL"):
        return explicit or os.environ["TEST_DATABASE_URL"]
    from mv_refresh.embedded import start_embedded

    return start_embedded(ROOT / ".demo" / "pg")


def _cmd_start(args: argparse.Namespace) -> int:
    if args.state.exists():
        print(f"a deployment is already recorded in {args.state}: `{Path(sys.argv[0]).name} stop` first",
              file=sys.stderr)
        return 2
    from mv_refresh.catalog import load_catalog
    from mv_refresh.db import connect
    from mv_refresh.demo import load_demo
    from mv_refresh.migrations import init_db

    server = _server_dsn(args.server)
    stack = CeleryStack(server, workers=args.workers, private_redis=args.private_redis, log=print,
                        heartbeat_timeout=60, queued_timeout=600)
    warehouse = args.warehouse or os.environ.get("MV_REFRESH_DSN")
    if not warehouse:
        stack.warehouse_db = f"{stack.metadata_db}_warehouse"
        with connect(server, autocommit=True, purpose="celery stack") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stack.warehouse_db)))
        warehouse = with_dbname(server, stack.warehouse_db)
        init_db(warehouse, load_catalog())
        load_demo(warehouse, drivers=2000)
        print(f"demo warehouse: database {stack.warehouse_db} (dropped by stop)")
    args.state.parent.mkdir(parents=True, exist_ok=True)
    try:
        stack.start()
        stack.use_warehouse(warehouse)
        stack.unpause(REFRESH_DAG)
    except BaseException:
        _drop_warehouse(stack.state())
        raise
    args.state.write_text(json.dumps(stack.state(), indent=2) + "\n")
    os.chmod(args.state, 0o600)
    print(f"""
Airflow (CeleryExecutor, {stack.workers} workers: {', '.join(stack.worker_hostnames.values())})
  UI / REST API  {stack.api_url}   login admin / {stack.password}
  logs           {stack.logs}
  trigger        curl -X POST {stack.api_url}/api/v2/dags/{REFRESH_DAG}/dagRuns -H "Authorization: Bearer $TOKEN" \\
                   -H 'Content-Type: application/json' -d '{{"logical_date": null}}'
  stop           {Path(sys.executable).relative_to(ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable} \
tests/support/celery_stack.py stop""")
    return 0


def _drop_warehouse(state: dict[str, Any]) -> None:
    if state.get("warehouse_db"):
        from mv_refresh.db import connect

        with connect(state["server_dsn"], autocommit=True, purpose="celery stack") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(state["warehouse_db"])))


def _stack_from_state(state: dict[str, Any]) -> CeleryStack:
    stack = CeleryStack.__new__(CeleryStack)
    stack.server_dsn, stack.id, stack.home = state["server_dsn"], state["id"], Path(state["home"])
    stack.airflow_home, stack.logs = stack.home / "airflow", stack.home / "logs"
    stack.metadata_db, stack.redis_prefix, stack.queue = state["metadata_db"], state["redis_prefix"], state["queue"]
    stack.private_redis, stack._created_db = not state["redis_prefix"], True
    stack.components = {name: Component(name, [], stack.logs / f"{name}.log", pid=pid)
                        for name, pid in state["pids"].items()}
    return stack


def _cmd_stop(args: argparse.Namespace) -> int:
    if not args.state.exists():
        print(f"no deployment recorded in {args.state}: nothing to stop")
        return 0
    state = json.loads(args.state.read_text())
    stack = _stack_from_state(state)
    stack.stop()
    _drop_warehouse(state)
    args.state.unlink()
    print(f"stopped deployment {state['id']}: processes ended, database {state['metadata_db']} dropped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if not args.state.exists():
        print("no deployment running (none recorded)")
        return 1
    state = json.loads(args.state.read_text())
    for name, pid in state["pids"].items():
        print(f"{name:14} pid {pid:<8} {'running' if pid and psutil.pid_exists(pid) else 'GONE'}")
    try:
        print(json.dumps(httpx.get(f"{state['api_url']}/api/v2/monitor/health", timeout=5).json(), indent=2))
    except httpx.HTTPError as exc:
        print(f"API server at {state['api_url']} does not answer: {exc}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=STATE_FILE, help=f"where start records the deployment "
                        f"(default {STATE_FILE.relative_to(ROOT)})")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the deployment in the background")
    start.add_argument("--server", help="admin DSN of the PostgreSQL server for the metadata database "
                       "(default: TEST_DATABASE_URL, else the embedded server under .demo/pg)")
    start.add_argument("--warehouse", help="DSN of the warehouse for postgres_default (default: MV_REFRESH_DSN, "
                       "else a demo warehouse created next to the metadata database)")
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--private-redis", action="store_true", help="a redis-server of its own instead of "
                       "the machine's on 127.0.0.1:6379")
    commands.add_parser("stop", help="stop it and remove everything it created")
    commands.add_parser("status", help="its processes and health")
    args = parser.parse_args(argv)
    return {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}[args.command](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "plugins"))
    sys.exit(main())
