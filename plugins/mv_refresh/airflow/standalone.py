"""Run ``airflow standalone`` and stop it with nothing left behind (``make airflow``, the browser tests).

``airflow standalone`` starts the scheduler, the dag-processor, the API server and the triggerer as
children; LocalExecutor workers and task supervisors start below them, and each task process puts
itself in a process group of its own (``setpgid``). Killing standalone's group therefore misses
processes, and a SIGTERM to standalone itself (it only handles Ctrl-C) leaves all of them running.

:class:`Standalone` starts it in a session of its own (a terminal's Ctrl-C reaches this process, which
then shuts down in order) and :meth:`Standalone.stop` ends the whole tree: SIGINT to standalone (its own
orderly shutdown), then SIGTERM, then SIGKILL to whatever is still alive, found by walking the process
tree. On Linux this process also becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a process
whose parent died first is re-parented here and still found.

Imports nothing from Airflow; ``python -m mv_refresh.airflow.standalone`` is what ``scripts/airflow.sh``
runs (docs/ui.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

_PR_SET_CHILD_SUBREAPER = 36
HEALTH_PATH = "/api/v2/monitor/health"
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the kernel has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.send_signal(sig)


def stop_tree(root: subprocess.Popen, *, graceful: float = 20.0, term: float = 10.0,
              log: Callable[[str], None] = print) -> list[str]:
    """Stop ``root`` and every process below it; return what had to be killed (empty: all stopped cleanly).

    SIGINT to ``root`` first (``airflow standalone`` stops its components on Ctrl-C), then SIGTERM to every
    process still in the tree after ``graceful`` seconds, then SIGKILL after ``term`` more. The tree is
    walked again at each step (and from this process too, which adopts orphans as a subreaper), so
    processes started during the shutdown are not missed.
    """
    me = os.getpid()

    def tree() -> list[psutil.Process]:
        found = {p.pid: p for p in descendants(root.pid)}
        with contextlib.suppress(psutil.NoSuchProcess):
            if root.poll() is None:
                found[root.pid] = psutil.Process(root.pid)
        for orphan in descendants(me):  # adopted as subreaper (or our own helpers: spare none of the tree)
            found.setdefault(orphan.pid, orphan)
        return list(found.values())

    killed: list[str] = []
    if root.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            root.send_signal(signal.SIGINT)
    deadline = time.monotonic() + graceful
    while time.monotonic() < deadline and tree():
        _reap(root)
        time.sleep(0.2)
    remaining = tree()
    if remaining:
        log(f"still running after {graceful:.0f} s: {_describe(remaining)}; sending SIGTERM")
        _signal_all(remaining, signal.SIGTERM)
        _, remaining = psutil.wait_procs(remaining, timeout=term)
        remaining = [p for p in tree() if p.is_running()] or remaining
    if remaining:
        killed = [_describe([p]) for p in remaining]
        log(f"still running after SIGTERM: {', '.join(killed)}; sending SIGKILL")
        _signal_all(remaining, signal.SIGKILL)
        psutil.wait_procs(remaining, timeout=5)
    _reap(root)
    return killed


def _reap(root: subprocess.Popen) -> None:
    root.poll()
    while True:  # adopted orphans that have exited are our zombies now
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _describe(processes: list[psutil.Process]) -> str:
    parts = []
    for process in processes:
        try:
            parts.append(f"{process.pid} ({' '.join(process.cmdline()[:3])[:60]})")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            parts.append(str(process.pid))
    return ", ".join(parts)


class Standalone:
    """One ``airflow standalone`` with its output in ``log_path``, on ``port`` of 127.0.0.1."""

    def __init__(self, *, airflow: str, env: dict[str, str], port: int, log_path: Path) -> None:
        self.airflow = airflow
        self.env = env
        self.port = port
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        become_subreaper()
        # A background job starts with SIGINT ignored, and exec keeps it ignored: standalone would then
        # miss the SIGINT that asks it to stop its components in order. Give it the default for the exec.
        restore = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            restore = signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen([self.airflow, "standalone"], env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + HEALTH_PATH, timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until the API answers and reports every component healthy; an error with the log's tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited early; its log ends with:\n{self.tail()}")
            report = self.health()
            if report and all(report.get(c, {}).get("status") == "healthy" for c in COMPONENTS):
                return
            time.sleep(1)
        raise TimeoutError(f"airflow standalone was not healthy after {timeout:.0f} s; its log ends with:\n"
                           f"{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, log: Callable[[str], None] = print) -> list[str]:
        if self.process is None:
            return []
        return stop_tree(self.process, log=log)


def password_of(airflow_home: Path, user: str = "admin") -> str | None:
    """The generated password of ``user`` (simple auth manager), or None when there is none yet."""
    path = Path(os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                or airflow_home / "simple_auth_manager_passwords.json.generated")
    try:
        return json.loads(path.read_text()).get(user)
    except (OSError, ValueError):
        return None


def _run(args: argparse.Namespace) -> int:
    """``make airflow``: start, say how to sign in, and on Ctrl-C or SIGTERM stop everything."""
    home = Path(os.environ["AIRFLOW_HOME"])
    log_path = home / "standalone.log"
    airflow = str(Path(sys.executable).with_name("airflow"))
    server = Standalone(airflow=airflow, env=dict(os.environ), port=args.port, log_path=log_path)
    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    print(f"airflow standalone started (pid {server.process.pid}); its output goes to {log_path}", flush=True)
    shown = False
    try:
        while not stopping:
            if server.process.poll() is not None:
                print(f"airflow standalone exited with {server.process.returncode}; the log ends with:\n"
                      f"{server.tail()}", flush=True)
                break
            if not shown:
                report = server.health()
                if report and all(report.get(c, {}).get("status") == "healthy" for c in COMPONENTS):
                    shown = True
                    print(_banner(args, home), flush=True)
            time.sleep(0.5)
    finally:
        print("stopping airflow standalone and everything it started ...", flush=True)
        killed = server.stop()
        leftover = descendants(os.getpid())
        print("stopped: no process left" if not leftover else f"left running: {_describe(leftover)}",
              f"({len(killed)} had to be killed)" if killed else "", flush=True)
    return 0 if not descendants(os.getpid()) else 1


def _banner(args: argparse.Namespace, home: Path) -> str:
    password = password_of(home)
    where = Path(os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                 or home / "simple_auth_manager_passwords.json.generated")
    return "\n".join([
        "",
        f"Airflow is ready: http://localhost:{args.port}/   (MV Health: Browse > MV Health, "
        f"or http://localhost:{args.port}/mv-refresh/)",
        f"  sign in as: admin / {password or '(see the file below)'}",
        f"  password file: {where}",
        "  DAG ops_mv_refresh: Trigger -> pick views (empty = all), include_downstream, mode",
        f"  pool {os.environ.get('MV_REFRESH_POOL', 'mv_refresh')}: {args.pool_slots} slots; "
        f"parallelism {os.environ.get('AIRFLOW__CORE__PARALLELISM', '?')}",
        "  Note: the DAG starts paused. 'Unpause on trigger' (ticked by default in the trigger form) unpauses it,",
        "  and an unpaused ops_mv_refresh also starts its latest hourly run (catchup is off: just the one) before",
        "  or alongside yours; it then runs every hour while this is up. Pause it again to stop that.",
        *(["  Event-driven runs are on: a committed change to a tracked source starts a run after a "
           f"{os.environ.get('MV_REFRESH_EVENTS_QUIET_SECONDS') or 30} s quiet period (MV_REFRESH_EVENTS=off: hourly only;",
           "  docs/events.md)."]
          if (os.environ.get("MV_REFRESH_EVENTS") or "on").lower() not in ("off", "false", "0", "no") else []),
        "  Ctrl-C stops Airflow and every process it started.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mv_refresh.airflow.standalone", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run airflow standalone in the foreground until Ctrl-C or SIGTERM")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--pool-slots", type=int, default=4)
    args = parser.parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
