"""How long a REFRESH goes on after its client is gone: SIGKILLed, or cut off by a silent network.

    .venv/bin/python bench/orphan_timings.py                     # embedded PostgreSQL 18
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/orphan_timings.py
    make orphan-timings                                          # both, one after the other

Each case runs the real CLI (``mv-refresh refresh``) on a view whose refresh takes REFRESH_SECONDS and
waits until the REFRESH statement is active, then:

* ``killed``: SIGKILL the CLI (the kernel closes its sockets: the server gets a FIN). Measured: how long
  the backend goes on, and whether the orphaned REFRESH committed.
* ``silent``: the network between the CLI and the server goes silent (tests/support/silent_network.py:
  a private server of the same major version in a network namespace, blackhole routes both ways; needs
  root). Measured: when the CLI gives up (exits), and when the backend is gone.

Variants of the connection (the same code path, ``mv_refresh.db.connect``):
* ``defaults``: the package's CLIENT_DEFAULTS and SESSION_DEFAULTS;
* ``no check interval`` / ``no server keepalives``: the defaults with one server-side half switched off;
* ``off``: every one of them switched off in the conninfo (what a plain connection does);
* ``short``: the short values the fault tests set through the Airflow connection's extras.

Raw results go to bench/out/orphan_timings-<server>.json; a table is printed. Never a test: nothing fails
on a number (the exit status is non-zero only when a case could not run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import BENCH_DIR, BIN, ROOT, Databases, print_plain_table, say

sys.path.insert(0, str(ROOT / "tests" / "support"))

REFRESH_SECONDS = 90
OBSERVE_SECONDS = REFRESH_SECONDS + 30

VARIANTS = {
    "defaults": "",
    # Each server-side half alone, to show what it buys.
    "no check interval": "options='-c client_connection_check_interval=0'",
    "no server keepalives": ("options='-c tcp_keepalives_idle=0 -c tcp_keepalives_interval=0 "
                             "-c tcp_keepalives_count=0 -c tcp_user_timeout=0'"),
    "off": ("keepalives=0 tcp_user_timeout=0 options='-c client_connection_check_interval=0 "
            "-c tcp_keepalives_idle=0 -c tcp_keepalives_interval=0 -c tcp_keepalives_count=0 "
            "-c tcp_user_timeout=0'"),
    "short": ("keepalives_idle=2 keepalives_interval=1 tcp_user_timeout=5000 "
              "options='-c client_connection_check_interval=1s -c tcp_keepalives_idle=2 "
              "-c tcp_keepalives_interval=1 -c tcp_user_timeout=5000'"),
}

SETUP_SQL = """
CREATE SCHEMA orphan;
CREATE TABLE orphan.sleep (seconds double precision NOT NULL);
INSERT INTO orphan.sleep VALUES (0);
CREATE MATERIALIZED VIEW orphan.mv_slow AS
    SELECT g AS id, clock_timestamp() AS refreshed
    FROM orphan.sleep AS s, LATERAL pg_sleep(s.seconds) AS z, generate_series(1, 10) AS g;
CREATE UNIQUE INDEX ON orphan.mv_slow (id);
"""

CATALOG = """version: 1
defaults:
  statement_timeout_seconds: 600
  lock_timeout_seconds: 600
views:
  - name: orphan.mv_slow
"""


def _prepare(dsn: str) -> None:
    from mv_refresh.catalog import parse_catalog
    from mv_refresh.db import connect
    from mv_refresh.migrations import init_db

    init_db(dsn, parse_catalog(CATALOG, source="orphan timings"))
    with connect(dsn) as conn:
        conn.execute(SETUP_SQL)
        conn.execute("UPDATE orphan.sleep SET seconds = %s", (REFRESH_SECONDS,))


def _scalar(dsn: str, query: str, params=None):
    from mv_refresh.db import connect

    with connect(dsn, autocommit=True, purpose="orphan observer") as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def _start_refresh(client_dsn: str, observer_dsn: str, catalog: Path) -> tuple[subprocess.Popen, int, str]:
    """The CLI refreshing orphan.mv_slow; returns once its REFRESH statement is active."""
    before = _scalar(observer_dsn, "SELECT max(refreshed)::text FROM orphan.mv_slow")
    child = subprocess.Popen([str(BIN / "mv-refresh"), "--dsn", client_dsn, "--config", str(catalog),
                              "refresh", "orphan.mv_slow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # This database only: the server may be shared, and other sessions refresh views too.
        pid = _scalar(observer_dsn, "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                                    "AND datname = current_database() AND query ILIKE 'REFRESH MATERIALIZED VIEW%%'")
        if pid:
            return child, pid, before
        time.sleep(0.1)
    child.kill()
    child.wait()
    raise RuntimeError("the REFRESH never became active")


def _backend_alive(observer_dsn: str, pid: int) -> bool:
    return bool(_scalar(observer_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)))


def killed_case(dsn: str, variant: str, catalog: Path) -> dict:
    client_dsn = f"{dsn} {VARIANTS[variant]}".strip()
    child, pid, before = _start_refresh(client_dsn, dsn, catalog)
    time.sleep(1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    gone = None
    while time.monotonic() - killed < OBSERVE_SECONDS:
        if not _backend_alive(dsn, pid):
            gone = time.monotonic() - killed
            break
        time.sleep(0.1)
    after = _scalar(dsn, "SELECT max(refreshed)::text FROM orphan.mv_slow")
    if gone is None:
        _scalar(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    return {"scenario": "killed", "variant": variant, "backend_gone_s": gone, "refresh_committed": after != before}


def silent_case(major: int, variant: str, catalog: Path) -> dict:
    from silent_network import SilentNetwork

    with SilentNetwork(major) as net:
        observer = net.socket_dsn()
        _prepare(observer)
        client_dsn = f"{net.tcp_dsn()} {VARIANTS[variant]}".strip()
        child, pid, before = _start_refresh(client_dsn, observer, catalog)
        time.sleep(1)
        net.silence()
        cut = time.monotonic()
        gave_up = gone = None
        while time.monotonic() - cut < OBSERVE_SECONDS and (gave_up is None or gone is None):
            if gave_up is None and child.poll() is not None:
                gave_up = time.monotonic() - cut
            if gone is None and not _backend_alive(observer, pid):
                gone = time.monotonic() - cut
            time.sleep(0.1)
        after = _scalar(observer, "SELECT max(refreshed)::text FROM orphan.mv_slow")
        if child.poll() is None:
            child.kill()
            child.wait()
        return {"scenario": "silent", "variant": variant, "client_gave_up_s": gave_up, "backend_gone_s": gone,
                "refresh_committed": after != before}


def _fmt(seconds: float | None) -> str:
    return f"> {OBSERVE_SECONDS} s" if seconds is None else f"{seconds:.1f} s"


def main() -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every `finally` below cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    databases = Databases.from_environment()
    results: list[dict] = []
    failed = False
    try:
        dsn = databases.database("orphans")
        version = _scalar(dsn, "SHOW server_version_num")
        major = int(version) // 10000
        say(f"PostgreSQL {major}; each REFRESH takes {REFRESH_SECONDS} s; observed for up to {OBSERVE_SECONDS} s")
        _prepare(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            catalog = Path(tmp) / "catalog.yaml"
            catalog.write_text(CATALOG)
            cases = [("killed", v) for v in ("defaults", "no check interval", "off")]
            if os.geteuid() == 0:
                cases += [("silent", v) for v in ("short", "defaults", "no check interval", "no server keepalives",
                                                  "off")]
            for scenario, variant in cases:
                say(f"  {scenario} / {variant} ...")
                try:
                    result = (killed_case(dsn, variant, catalog) if scenario == "killed"
                              else silent_case(major, variant, catalog))
                except Exception as exc:  # noqa: BLE001 - reported, the other cases still run
                    failed = True
                    result = {"scenario": scenario, "variant": variant, "error": str(exc)}
                result["postgres"] = major
                results.append(result)
                say(f"    {result}")
    finally:
        databases.cleanup()
    rows = [[r["scenario"], r["variant"], _fmt(r.get("client_gave_up_s")) if r["scenario"] == "silent" else "killed",
             _fmt(r.get("backend_gone_s")), "yes" if r.get("refresh_committed") else "no", r.get("error", "")]
            for r in results]
    print_plain_table(["client gone by", "connection settings", "client gave up after", "backend gone after",
                       "orphan committed", "error"], rows)
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    (out / f"orphan_timings-pg{major}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
