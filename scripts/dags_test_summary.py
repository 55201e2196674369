"""Condense the log of `airflow dags test` to what a person wants to see: each task's own messages.

Reads the log on stdin. Keeps the lines that mv-refresh's operators and sensor wrote (one per view:
mode, rows, duration; then the health verdict), every error, and the run's final state.
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(r"^\S+T(?P<time>\d\d:\d\d:\d\d)\.\d+Z \[(?P<level>\w+)\s*\] (?P<msg>.*?)(?: \[(?P<logger>[\w.]+)\])?(?: \w+=.*)?$")
RUN_END = re.compile(r"Marking run <DagRun (?P<dag>\S+) .*> (?P<state>successful|failed)")


def main() -> int:
    for raw in sys.stdin:
        match = LINE.match(raw.rstrip("\n"))
        if not match:
            continue
        msg, logger, level = match["msg"], match["logger"] or "", match["level"]
        end = RUN_END.search(msg)
        if end:
            print(f"{match['time']}  DAG run of {end['dag']}: {end['state'].upper()}")
        elif msg.startswith("[DAG TEST] starting task_id="):
            print(f"{match['time']}  {msg.split('=', 1)[1].split()[0]}")
        elif "mv_refresh" in logger or level in ("error", "critical"):
            text = msg if len(msg) <= 200 else msg[:197] + "..."
            print(f"{match['time']}    {'ERROR ' if level == 'error' else ''}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
