"""`make airflow` stops everything it started: the process-tree stop of mv_refresh.airflow.standalone on a
small tree that has what airflow standalone's has (a child in a session of its own, an orphan whose
parent exited, a process that ignores SIGTERM), in a child interpreter (it becomes a subreaper)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees as Linux has them")

SCENARIO = textwrap.dedent(r"""
    import json, os, subprocess, time
    import psutil
    from mv_refresh.airflow.standalone import become_subreaper, descendants, stop_tree

    assert become_subreaper()
    root = subprocess.Popen(["bash", "-c", '''
        sleep 300 &                                   # an ordinary child
        setsid sleep 301 &                            # a session (and process group) of its own
        (sleep 302 &)                                 # an orphan: its parent exits at once
        bash -c "trap '' TERM; exec sleep 303" &      # deaf to SIGTERM: only SIGKILL ends it
        wait'''], start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = list({p.pid: p for p in descendants(root.pid) + descendants(os.getpid())}.values())
        if {"300", "301", "302", "303"} <= {" ".join(p.cmdline()[1:]) for p in seen if p.name() == "sleep"}:
            break
        time.sleep(0.05)
    sleeps = sorted(" ".join(p.cmdline()[1:]) for p in seen if p.name() == "sleep")
    seen = {p.pid: p for p in seen}
    seen[root.pid] = psutil.Process(root.pid)
    killed = stop_tree(root, graceful=1, term=1, log=lambda line: None)
    print(json.dumps({"seen": sorted(seen), "sleeps": sleeps, "killed": killed,
                      "alive": [pid for pid, p in seen.items() if p.is_running() and p.status() != "zombie"]}))
""")


def test_stop_tree_leaves_no_process_behind():
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sleeps"] == ["300", "301", "302", "303"], report  # the orphan (302) was found too
    assert report["alive"] == [], report
    # Only the process that ignores SIGTERM needed SIGKILL; the others went on SIGINT or SIGTERM.
    assert len(report["killed"]) == 1 and "sleep 303" in report["killed"][0], report
