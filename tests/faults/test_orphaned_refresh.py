"""A refresh whose client is SIGKILLed stops on the server and is rolled back, instead of refreshing (and
committing) for the rest of its statement: mv_refresh.db.connect sets client_connection_check_interval
(docs/at-scale.md). The same fault through a Celery worker is in test_celery_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import LAB_CATALOG, lab_catalog, scalar, set_sleep, wait_for
from refresh_log import log_rows

from mv_refresh.engine import refresh_view

BIN = Path(sys.executable).parent


def test_killed_client_stops_its_refresh_within_the_check_interval_and_rolls_it_back(lab_dsn, tmp_path):
    catalog = tmp_path / "lab.yaml"
    catalog.write_text(LAB_CATALOG)
    set_sleep(lab_dsn, 60)
    # A PLAIN refresh writes a new relation file: a different filenode afterwards means it committed.
    filenode = scalar(lab_dsn, "SELECT pg_relation_filenode('lab.mv_slow')")
    cli = subprocess.Popen([str(BIN / "mv-refresh"), "--dsn", lab_dsn, "--config", str(catalog), "refresh",
                            "lab.mv_slow", "--mode", "plain"], env=os.environ.copy(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = wait_for(lambda: scalar(lab_dsn, "SELECT max(pid) FROM pg_stat_activity WHERE state = 'active' "
                                           "AND datname = current_database() "
                                           "AND query LIKE 'REFRESH MATERIALIZED VIEW%%'"),
                   timeout=60, what="the REFRESH running")
    cli.send_signal(signal.SIGKILL)
    cli.wait(10)
    killed = time.monotonic()
    wait_for(lambda: not scalar(lab_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)),
             timeout=30, what="the orphaned backend gone")
    assert time.monotonic() - killed < 15, "the orphan outlived client_connection_check_interval (5 s) by far"
    assert scalar(lab_dsn, "SELECT pg_relation_filenode('lab.mv_slow')") == filenode, "the orphan committed"
    # The next refresh finds the orphan's RUNNING row, its backend gone: ABANDONED, then its own OK.
    set_sleep(lab_dsn, 0)
    assert refresh_view(lab_dsn, lab_catalog(), "lab.mv_slow").status == "OK"
    assert [r["status"] for r in log_rows(lab_dsn, "mv_slow")] == ["ABANDONED", "OK"]
