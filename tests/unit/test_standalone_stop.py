"""`make airflow` stops everything it started: the process-tree stop of mv_refresh.airflow.standalone on a
small tree that has what airflow standalone's has (a child in a session of its own, an orphan whose
parent exited, a process that ignores SIGTERM), in a child interpreter (it becomes a subreaper)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason=("the stop relies on prctl(PR_SET_CHILD_SUBREAPER), which only Linux has; "
                                       "make airflow and CI run on Linux"))

SCENARIO = textwrap.dedent(r"""
    import json, os, subprocess, sys, time
    import psutil
    from mv_refresh.airflow.standalone import become_subreaper, descendants, stop_tree

    tag = sys.argv[1]
    assert become_subreaper()
    root = subprocess.Popen(["bash", "-c", f'''
        sleep 300.{tag} &                                   # an ordinary child
        setsid sleep 301.{tag} &                            # a session (and process group) of its own
        (sleep 302.{tag} &)                                 # an orphan: its parent exits at once
        bash -c "trap '' TERM; exec sleep 303.{tag}" &      # deaf to SIGTERM: only SIGKILL ends it
        wait'''], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sleeps_below():
        found = {}
        for p in descendants(root.pid) + descendants(os.getpid()):
            try:
                if p.name() == "sleep":
                    found[p.pid] = (p, p.cmdline()[1].split(".")[0])
            except psutil.Error:
                continue  # gone (or a zombie) meanwhile
        return found

    deadline = time.monotonic() + 30
    while len(sleeps_below()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeps = sleeps_below()
    seen = [p for p, _ in sleeps.values()] + [psutil.Process(root.pid)]
    killed = stop_tree(root, graceful=1, term=1, log=lambda line: None)

    def alive(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    print(json.dumps({"sleeps": sorted(name for _, name in sleeps.values()), "killed": killed,
                      "alive": [p.pid for p in seen if alive(p)]}))
""")


def _kill_tagged(tag: str) -> None:
    for process in psutil.process_iter(["cmdline"]):
        if any(tag in part for part in process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                process.kill()


def test_stop_tree_leaves_no_process_behind():
    tag = str(uuid.uuid4().int % 10**9)  # marks this test's processes, to clean up whatever happens
    try:
        done = subprocess.run([sys.executable, "-c", SCENARIO, tag], capture_output=True, text=True, timeout=120)
    finally:
        _kill_tagged(tag)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sleeps"] == ["300", "301", "302", "303"], report  # the orphan (302) was found too
    assert report["alive"] == [], report
    # Only the process that ignores SIGTERM needed SIGKILL; the others went on SIGINT or SIGTERM.
    assert len(report["killed"]) == 1 and "sleep 303" in report["killed"][0], report
