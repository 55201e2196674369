"""``mv-refresh``: the engine from a shell, for people and scripts without Airflow.

Every command takes ``--dsn`` (else ``MV_REFRESH_DSN``), ``--config`` (else ``MV_REFRESH_CONFIG``, else
the project's ``include/mv_refresh.yaml``) and ``--json``. Imports are local to each command so that
``mv-refresh --help`` and a cron'd ``mv-refresh health`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out=None, *, wide: bool = False) -> None:
    out = out or sys.stdout
    cells = [[_cell(v, limit=400 if wide else 70) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any, limit: int = 70) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S%z")
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _emit_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _emit(args: argparse.Namespace, payload: Any, headers: Sequence[str] = (), rows=(), *, wide=False) -> None:
    """``payload`` as JSON under --json, else ``rows`` as a table (nothing without ``headers``)."""
    if args.json:
        _emit_json(payload)
    elif headers:
        _print_table(headers, rows, wide=wide)


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def _say(args: argparse.Namespace):
    # Progress goes to stderr under --json so stdout stays one parseable document.
    stream = sys.stderr if args.json else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _load(args: argparse.Namespace):
    from .catalog import load_catalog
    from .db import resolve_dsn

    return resolve_dsn(args.dsn), load_catalog(args.config)


def _read(args: argparse.Namespace, purpose: str, read):
    """``read(conn, catalog)`` on one connection of the command's DSN."""
    from .db import connect

    dsn, catalog = _load(args)
    with connect(dsn, purpose=purpose) as conn:
        return read(conn, catalog)


# ----------------------------------------------------------------------------------------------------


def cmd_init_db(args: argparse.Namespace) -> int:
    from .migrations import init_db

    dsn, catalog = _load(args)
    applied = init_db(dsn, catalog, progress=None if args.json else _say(args))
    if args.json:
        _emit_json({"applied": [m.label for m in applied], "catalog_views": len(catalog.views)})
    else:
        print(f"ops schema up to date ({len(applied)} migration(s) applied now)")
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    from .engine import RefreshFailed, RefreshRefused, RunContext, Sessions, refresh_view

    dsn, catalog = _load(args)
    if args.all == bool(args.views):
        return _fail("mv-refresh refresh: name one or more views, or pass --all (not both)", EXIT_USAGE)
    for flag, value in (("--lock-timeout", args.lock_timeout), ("--statement-timeout", args.statement_timeout)):
        if value is not None and not value > 0:
            return _fail(f"mv-refresh refresh: {flag} must be a positive number of seconds, got {value}", EXIT_USAGE)
    views = list(catalog.views) if args.all else catalog.select(args.views)
    say = _say(args)
    results: list[dict[str, Any]] = []
    blocked: dict[tuple[str, str], str] = {}  # view -> the upstream view that failed in this run
    failed = False
    sessions = Sessions(dsn)  # two connections for the whole run, not two per view
    for spec in views:
        if spec.key in blocked:
            say(f"{spec.display_name}: not refreshed (its upstream {blocked[spec.key]} failed in this run)")
            results.append({"view": spec.display_name, "status": "NOT_RUN",
                            "reason": f"upstream {blocked[spec.key]} failed"})
            continue
        say(f"{spec.display_name}: refreshing ...")
        try:
            result = refresh_view(dsn, catalog, spec, context=RunContext(run_by="cli"), mode=args.mode,
                                  lock_timeout=args.lock_timeout, statement_timeout=args.statement_timeout,
                                  progress=say, force=args.force, sessions=sessions)
        except (RefreshRefused, RefreshFailed) as exc:
            failed = True
            blocked.update((v.key, spec.display_name) for v in catalog.downstream_of(spec))
            if isinstance(exc, RefreshRefused):  # nothing ran for this view; the others still may
                say(f"  {spec.display_name}: REFUSED {exc}")
                results.append({"view": spec.display_name, "status": "REFUSED", "error_message": str(exc)})
                continue
            result = exc.result
        say(f"  {result.summary()}" + (f"  [{result.method_reason}]" if result.method_reason else ""))
        results.append({"view": spec.display_name, **result.as_dict()})
    sessions.close()
    _emit(args, results)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from .db import connect
    from .health import read_health, worst_exit_code

    dsn, catalog = _load(args)
    views = catalog.select(args.views) if args.views else None
    try:
        with connect(dsn, purpose="health") as conn:
            rows = read_health(conn, catalog, views)
    except Exception as exc:  # noqa: BLE001 - any failure to read health is UNKNOWN, never OK
        return _fail(f"UNKNOWN: cannot read health: {exc}", EXIT_UNKNOWN)
    _emit(args, [r.as_json() for r in rows],
          ["view", "bucket", "hours_since_ok", "last_ok_refresh", "last_status", "rows", "last_error"],
          [(r.display_name + (" *" if r.is_critical else ""), r.status_bucket,
            None if r.hours_since_ok_refresh is None else f"{r.hours_since_ok_refresh:.2f}",
            r.last_ok_refresh_finished_at, r.last_status, r.rows_after_refresh, r.last_error) for r in rows])
    unsynced = [r.display_name for r in rows if not r.mirrored]
    if unsynced:
        print(f"note: ops.mv_catalog (what SQL readers of ops.v_mv_health see) is out of step with "
              f"{catalog.source} for {', '.join(unsynced)}: judged with the file's thresholds here; "
              f"run `mv-refresh init-db` to sync it", file=sys.stderr)
    return worst_exit_code(rows)


def cmd_plan(args: argparse.Namespace) -> int:
    import os

    from .catalog import load_catalog
    from .db import connect, resolve_dsn

    if args.discover:
        from .sources import discover_catalog

        with connect(resolve_dsn(args.dsn), purpose="plan") as conn:
            print(discover_catalog(conn, args.discover), end="")
        return EXIT_OK
    catalog = load_catalog(args.config)
    problems = sources = None
    if args.validate or args.dsn or os.environ.get("MV_REFRESH_DSN"):
        from .tracking import status
        from .troubleshoot import validate_plan

        # Without a database the plan is the catalog alone; with one, each view's sources too.
        with connect(resolve_dsn(args.dsn), purpose="plan") as conn:
            sources = {row["view"]: row for row in status(conn, catalog, list(catalog.views))}
            if args.validate:
                problems = validate_plan(conn, catalog)
    plan = [
        {"position": v.position, "view": v.display_name, "task_id": v.task_id, "critical": v.critical,
         "mode": v.mode, "on_unchanged": v.on_unchanged, "grain": list(v.grain),
         "upstream": [catalog.get(u).display_name for u in v.upstream],
         **({"sources": sources[v.display_name]["sources"], "provable": sources[v.display_name]["provable"],
             "why_not_provable": sources[v.display_name]["why_not"]} if sources else {})}
        for v in catalog.views
    ]
    if args.json:
        payload: dict[str, Any] = {"catalog": catalog.source, "views": plan}
        if problems is not None:
            payload["problems"] = [p.as_dict() for p in problems]
        _emit_json(payload)
    else:
        print(f"catalog: {catalog.source}")
        _print_table(["#", "view", "mode", "critical", "upstream"],
                     [(p["position"] + 1, p["view"], p["mode"], "yes" if p["critical"] else "",
                       ", ".join(p["upstream"])) for p in plan])
        if sources:
            print("\nsources (from pg_depend; change tracking: `mv-refresh track status`):")
            _print_table(["view", "source", "kind", "state"],
                         [(p["view"] if i == 0 else "", s["source"], s["kind"], s["state"])
                          for p in plan for i, s in enumerate(p["sources"] or [{"source": "-", "kind": "-",
                                                                                 "state": "-"}])], wide=True)
        if problems is not None:
            if problems:
                print("\nchecked against pg_depend:")
                _print_table(["severity", "view", "problem", "fix"],
                             [(p.severity, p.view, p.message, p.fix) for p in problems], wide=True)
            else:
                print("\nchecked against pg_depend: the catalog's order and upstream match the database")
    return EXIT_FAILED if problems and any(p.severity == "ERROR" for p in problems) else EXIT_OK


def cmd_track(args: argparse.Namespace) -> int:
    from . import tracking
    from .db import connect

    dsn, catalog = _load(args)
    if args.action != "status" and args.all == bool(args.views):
        return _fail(f"mv-refresh track {args.action}: name one or more views, or pass --all (not both)", EXIT_USAGE)
    views = catalog.select(args.views) if args.views else list(catalog.views)
    say = _say(args)
    with connect(dsn, autocommit=True, purpose=f"track {args.action}") as conn:
        if args.action == "status":
            report = tracking.status(conn, catalog, views)
            if args.json:
                _emit_json(report)
            else:
                for row in report:
                    verdict = "can be proven unchanged" if row["provable"] else "always refreshed"
                    print(f"{row['view']}: {verdict}")
                    for source in row["sources"]:
                        print(f"    {source['source']} ({source['kind']}): {source['state']}")
                    for why in row["why_not"]:
                        print(f"    - {why}")
            return EXIT_OK if all(r["provable"] for r in report) else EXIT_FAILED
        say(f"{'installing' if args.action == 'install' else 'removing'} change tracking for "
            f"{len(views)} view(s):")
        changes = (tracking.install(conn, catalog, views, progress=say) if args.action == "install"
                   else tracking.remove(conn, catalog, views, progress=say))
    _emit(args, [c.as_json() for c in changes])
    return EXIT_FAILED if any(c.action == "failed" for c in changes) else EXIT_OK


def cmd_log(args: argparse.Namespace) -> int:
    from .troubleshoot import recent_log

    rows = _read(args, "log", lambda conn, catalog: recent_log(conn, catalog, args.view, status=args.status,
                                                               limit=args.limit))
    _emit(args, rows, ["id", "view", "status", "method", "started", "ms", "rows", "sqlstate", "error", "by"],
          [(r["id"], r["view"], r["status"], r["method"], r["refresh_started_at"], r["duration_ms"],
            r["rows_after_refresh"], r["error_sqlstate"], r["error_message"], r["task_id"] or r["run_by"])
           for r in rows])
    return EXIT_OK


def cmd_log_prune(args: argparse.Namespace) -> int:
    from .db import connect, resolve_dsn
    from .retention import PruneRefused, prune_log

    with connect(resolve_dsn(args.dsn), autocommit=True, purpose="log prune") as conn:
        try:
            report = prune_log(conn, keep_days=args.keep_days, batch_size=args.batch_size, progress=_say(args))
        except PruneRefused as exc:
            return _fail(f"mv-refresh log prune: {exc}", EXIT_FAILED)
    if args.json:
        _emit_json(report.as_json())
    else:
        print(report.summary())
    return EXIT_OK


def cmd_blockers(args: argparse.Namespace) -> int:
    from .troubleshoot import lock_report

    rows = _read(args, "blockers", lambda conn, catalog: lock_report(conn, catalog, args.view))
    if not rows and not args.json:
        print("no session holds or waits for a lock on the catalog's views")
        return EXIT_OK
    _emit(args, rows, ["view", "pid", "user", "lock", "mode", "granted", "blocked_by", "waiting_s", "state", "query"],
          [(r["view"], r["pid"], r["usename"], r["lock_kind"], r["mode"], "yes" if r["granted"] else "WAITING",
            ", ".join(map(str, r["blocked_by"])) or None,
            None if r.get("waiting_seconds") is None else f"{r['waiting_seconds']:.1f}", r["state"], r["query"])
           for r in rows])
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import run_audit

    dsn, catalog = _load(args)
    try:
        report = run_audit(dsn, catalog)
    except Exception as exc:  # noqa: BLE001 - an audit that cannot run is UNKNOWN, never clean
        return _fail(f"UNKNOWN: cannot run the audit: {exc}", EXIT_UNKNOWN)
    if args.json:
        _emit_json(report.as_json())
        return report.exit_code
    if report.findings:
        _print_table(["severity", "check", "view", "finding", "fix"],
                     [(f.severity, f.check, f.view, f.message, f.fix) for f in report.findings], wide=True)
    print(report.summary())
    return report.exit_code


def cmd_prepare_concurrently(args: argparse.Namespace) -> int:
    from .prerequisites import DuplicatesFound, PrerequisiteError, prepare_concurrently

    dsn, catalog = _load(args)
    try:
        result = prepare_concurrently(dsn, catalog, args.view, progress=_say(args))
    except PrerequisiteError as exc:
        report = exc.report if isinstance(exc, DuplicatesFound) else None
        if args.json:
            _emit_json({"ok": False, "duplicates": report.as_json()} if report is not None
                       else {"ok": False, "error": str(exc)})
        elif report is not None:
            print(f"  {report.duplicate_grains:,} duplicated grain(s); the worst {len(report.top)}:")
            _print_table([*report.grain, "count_duplicates"],
                         [[row[c] for c in (*report.grain, "count_duplicates")] for row in report.top])
        return _fail(f"mv-refresh: {exc}", EXIT_FAILED)
    if args.json:
        _emit_json({"ok": True, **result.as_json()})
    else:
        print(f"{result.verified.view}: ready for REFRESH MATERIALIZED VIEW CONCURRENTLY "
              f"({result.index.index_name}: {result.index.action})")
    return EXIT_OK


def cmd_catalog_schema(args: argparse.Namespace) -> int:
    from .catalog import catalog_json_schema

    print(json.dumps(catalog_json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_demo_load(args: argparse.Namespace) -> int:
    from .db import resolve_dsn
    from .demo import load_demo, loaded_drivers

    dsn = resolve_dsn(args.dsn)
    if args.if_needed and loaded_drivers(dsn) == args.drivers:
        _say(args)(f"demo warehouse already loaded with {args.drivers:,} drivers; keeping it")
        return EXIT_OK
    _emit(args, load_demo(dsn, drivers=args.drivers, progress=_say(args)))
    return EXIT_OK


def cmd_embedded(args: argparse.Namespace) -> int:
    from .embedded import start_embedded, stop_embedded

    if args.action == "start":
        print(start_embedded(args.data_dir))
    else:
        stop_embedded(args.data_dir)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS,
                        help="PostgreSQL URI or conninfo (default: $MV_REFRESH_DSN)")
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="catalog YAML (default: $MV_REFRESH_CONFIG, else include/mv_refresh.yaml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout")

    parser = argparse.ArgumentParser(
        prog="mv-refresh", parents=[common],
        description="Logged refreshes of PostgreSQL materialized views (the engine of the ops_mv_refresh DAG).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str, description: str, *, parents=(common,), **kwargs):
        p = sub.add_parser(name, parents=list(parents), help=help, description=description, **kwargs)
        p.set_defaults(func=func)
        return p

    all_views = {"action": "store_true", "help": "every view of the catalog"}
    one_view = {"nargs": "?", "metavar": "VIEW", "help": "one catalog view (default: all)"}

    command("init-db", cmd_init_db, "create or upgrade the ops schema; sync the catalog",
            "Apply the ops schema migrations (idempotent, safe to run concurrently) and mirror the catalog "
            "into ops.mv_catalog.")

    p = command("refresh", cmd_refresh, "logged refresh of views, in canonical order",
                "Refresh the named catalog views (or --all) in canonical order, each with a row in "
                "ops.mv_refresh_log. Exit 0 only when every view is OK.")
    p.add_argument("views", nargs="*", metavar="VIEW", help="schema.view names from the catalog")
    p.add_argument("--all", **all_views)
    p.add_argument("--mode", choices=["auto", "concurrently", "plain"], help="override the catalog's mode")
    p.add_argument("--lock-timeout", type=float, metavar="S", help="lock timeout in seconds (overrides catalog)")
    p.add_argument("--statement-timeout", type=float, metavar="S",
                   help="statement timeout in seconds (overrides catalog)")
    p.add_argument("--force", action="store_true",
                   help="refresh even views that change tracking proves unchanged (else logged UNCHANGED)")

    p = command("health", cmd_health, "freshness table; exit 0 OK, 1 WARN, 2 CRIT, 3 unknown",
                "Read ops.v_mv_health. Exit codes follow the monitoring-plugin convention: 0 OK, 1 WARN, 2 "
                "CRIT or NO_REFRESH, 3 unknown.")
    p.add_argument("views", nargs="*", metavar="VIEW", help="limit to these views (default: all)")

    command("audit", cmd_audit, "health audit of every catalog view; exit 2 on CRIT",
            "For every catalog view: exists and populated, freshness, last status and error, stuck or "
            "abandoned RUNNING rows, missing or INVALID unique index where CONCURRENTLY is wanted, stale "
            "input (older than an upstream view), and materialized views the catalog does not list. Exit 0 "
            "OK/INFO, 1 WARN, 2 CRIT, 3 unknown.")

    p = command("prepare-concurrently", cmd_prepare_concurrently,
                "the runbook's steps 1-3: duplicates, unique index (concurrently), verify",
                "For a catalog view with a grain: (1) find duplicate grains and stop if any (exit 1, "
                "printing the worst 200); (2) CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "
                "ux_<view>_grain, rebuilding an INVALID leftover; (3) verify it is listed and valid. "
                "Idempotent.")
    p.add_argument("view", metavar="VIEW", help="schema.view from the catalog (must have a grain)")

    p = command("plan", cmd_plan, "the canonical order and dependency graph of the catalog",
                "Print the catalog's canonical order and upstream graph; with --validate, compare it with "
                "what PostgreSQL records (pg_depend): exit 1 on an error.")
    p.add_argument("--validate", action="store_true", help="check the graph against pg_depend (needs a DSN)")
    p.add_argument("--discover", nargs="+", metavar="SCHEMA",
                   help="print a catalog (YAML) for every materialized view of these schemas, upstream from "
                        "pg_depend, grain from a unique index (needs a DSN)")

    p = command("track", cmd_track, "change tracking on the views' sources: install, status, remove",
                "install: a statement trigger (INSERT, UPDATE, DELETE, TRUNCATE; ENABLE ALWAYS) on every "
                "table the views read, recording each committed change in ops.mv_source_change, so that a "
                "refresh of a view whose sources did not change is logged UNCHANGED instead of run. Needs "
                "the tables' owner. status: per view, its sources and whether it can be proven unchanged "
                "(exit 1 if not). remove: drop the triggers (tables another catalog view reads keep theirs).")
    p.add_argument("action", choices=["install", "status", "remove"])
    p.add_argument("views", nargs="*", metavar="VIEW", help="catalog views (status: default all)")
    p.add_argument("--all", **all_views)

    # `mv-refresh log prune ...`: routed to log-prune by main() (a VIEW is always schema.name, never "prune").
    p = command("log", cmd_log, "recent rows of ops.mv_refresh_log",
                "The newest refresh attempts, newest first (the runbook's troubleshooting queries as a "
                "command).",
                epilog="`mv-refresh log prune --keep-days N` deletes old rows: see `mv-refresh log prune --help`.")
    p.add_argument("view", **one_view)
    p.add_argument("--status", help="RUNNING, OK, ERROR, SKIPPED or ABANDONED")
    p.add_argument("--limit", type=int, default=20, help="how many rows (default 20)")

    p = command("log-prune", cmd_log_prune, "delete log rows older than N days (`mv-refresh log prune`)",
                "Delete rows of ops.mv_refresh_log that started more than --keep-days days ago, in batches, "
                "never the newest OK row of a view, the newest outcome of a view, or a RUNNING row. Needs "
                "DELETE on ops.mv_refresh_log (a maintenance role: the refreshing role has none, so it "
                "cannot erase history).",
                prog="mv-refresh log prune")
    p.add_argument("--keep-days", type=_positive_int, required=True, metavar="N",
                   help="keep rows that started within the last N days")
    p.add_argument("--batch-size", type=_positive_int, default=10_000, metavar="ROWS",
                   help="rows deleted per transaction (default 10,000)")

    p = command("blockers", cmd_blockers, "sessions holding or waiting for locks on the views",
                "Who holds or waits for a lock on the catalog's views or on their refresh advisory locks "
                "(pg_locks, pg_blocking_pids), with their queries.")
    p.add_argument("view", **one_view)

    p = sub.add_parser("catalog", help="about the catalog file itself",
                       description="Commands about the catalog file (include/mv_refresh.yaml).")
    p = p.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND").add_parser(
        "schema", help="print the catalog's JSON Schema",
        description="Print the catalog's JSON Schema (Draft 2020-12), as shipped in "
                    "include/mv_refresh.schema.json: editors with yaml-language-server check and complete "
                    "the catalog with it (docs/catalog.md).")
    p.set_defaults(func=cmd_catalog_schema)

    p = command("demo-load", cmd_demo_load, "create and fill the demo warehouse",
                "Create the demo Yango warehouse (source tables in schema yango, the six views in ops) and "
                "fill it deterministically at the given scale.")
    p.add_argument("--drivers", type=int, default=None, help="scale: number of drivers")
    p.add_argument("--if-needed", action="store_true",
                   help="do nothing when the warehouse is already loaded at this scale")

    p = command("embedded", cmd_embedded, "start or stop the embedded PostgreSQL used by the demo",
                "Start (or reuse) / stop an embedded PostgreSQL in DATA_DIR; start prints its URI.", parents=())
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--data-dir", required=True)
    return parser


def _raise_interrupted(signum: int, _frame) -> None:
    from .engine import Interrupted

    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["log", "prune"]:
        argv = ["log-prune", *argv[2:]]
    args = build_parser().parse_args(argv)
    for name, default in (("dsn", None), ("config", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if getattr(args, "drivers", 0) is None:
        from .demo import DEFAULT_DEMO_DRIVERS

        args.drivers = DEFAULT_DEMO_DRIVERS

    import signal
    import threading

    import psycopg

    from .catalog import CatalogError
    from .db import ConfigurationError
    from .migrations import MigrationError

    # SIGINT and SIGTERM stop the command the same way: the statement under way is cancelled on the server,
    # a refresh's log row is finished as ERROR ("interrupted by SIGTERM"), and the exit code says which signal.
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can only go there
    previous = ({sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
                if in_main_thread else {})
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        return _fail(f"mv-refresh: {exc or 'SIGINT'}: interrupted, stopped", getattr(exc, "exit_code", 130))
    except (CatalogError, ConfigurationError, ValueError) as exc:
        return _fail(f"mv-refresh: {exc}", EXIT_UNKNOWN if args.command == "health" else EXIT_USAGE)
    except (psycopg.Error, MigrationError) as exc:  # one clear line, no traceback
        return _fail(f"mv-refresh: {exc}", EXIT_UNKNOWN if args.command == "health" else EXIT_FAILED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
