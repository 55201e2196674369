"""The health audit of the catalog's views (what the runbook's ``run_ops_health_audit.py`` did): a handful
of set-based queries over the whole catalog (one per concern, never one per check per view), turned into
:class:`Finding` objects that name the view, what is wrong and what to do about it.

Checks, in canonical order (a view that fails ``exists`` skips the others):

``ops_schema``    the ops schema is missing or incomplete (CRIT; the audit stops there)
``exists``        a catalog view is missing, or is not a materialized view (CRIT)
``populated``     the view was never populated (CRIT for a critical view, else WARN)
``freshness``     the health bucket of ``ops.v_mv_health`` (``ops.mv_health_of`` with the catalog's
                  thresholds when the catalog is not synced): WARN, CRIT, NO_REFRESH
``last_status``   the latest refresh attempt ended ERROR, SKIPPED or ABANDONED (WARN)
``running``       a RUNNING row older than statement + lock timeout (stuck?), or whose backend is gone
                  (abandoned) - judged by pid and backend start, never by age alone (WARN)
``unique_index``  CONCURRENTLY wanted but no usable unique index (CRIT for mode concurrently, WARN for
                  auto), or an INVALID index left by a failed CREATE INDEX CONCURRENTLY (WARN)
``stale_input``   the view was last refreshed before one of its upstream views (WARN)
``unlisted``      a materialized view in a catalog schema that the catalog does not list (INFO)

Catalog names reach PostgreSQL only as bound parameters. The audit never writes (the next refresh, not
the audit, marks abandoned rows).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from .catalog import Catalog, ViewSpec, format_qualified_name, quote_identifier
from .db import connect
from .health import StaleInput, read_health, stale_inputs
from .pg import RELKIND_NAMES, USABLE_UNIQUE_INDEX, set_timeouts

__all__ = ["CHECKS", "EXIT_CODES", "SEVERITIES", "AuditReport", "Finding", "run_audit"]

#: Severities, lowest first.
SEVERITIES = ("OK", "INFO", "WARN", "CRIT")
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
#: The checks, in the order their findings are listed for one view.
CHECKS = ("ops_schema", "exists", "populated", "freshness", "last_status", "running", "unique_index",
          "stale_input", "unlisted")
_CHECK_ORDER = {check: index for index, check in enumerate(CHECKS)}
#: Exit codes: the monitoring-plugin convention (Nagios, Icinga, Zabbix), like `mv-refresh health`.
EXIT_CODES = {"OK": 0, "INFO": 0, "WARN": 1, "CRIT": 2}

# The audit only reads; these (seconds) keep it from hanging behind a migration (ACCESS EXCLUSIVE on the log).
_STATEMENT_TIMEOUT = 60
_LOCK_TIMEOUT = 10
_MESSAGE_LIMIT = 300  # a logged error message quoted in a finding is cut to this many characters


# --------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Finding:
    """One thing the audit found: ``view`` is the display name (None for a run-wide finding)."""

    view: str | None
    check: str
    severity: str
    message: str
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        return cls(data.get("view"), data["check"], data["severity"], data["message"], data.get("fix"))

    def __str__(self) -> str:
        text = f"{self.severity} {self.check}: {self.message}"
        return f"{text} Fix: {self.fix}" if self.fix else text


@dataclass
class AuditReport:
    """Every finding of one audit (highest severity first, then canonical order)."""

    findings: list[Finding]
    views_checked: int

    @property
    def worst(self) -> str:
        """The highest severity found; ``OK`` when nothing was found."""
        return max((f.severity for f in self.findings), key=_RANK.__getitem__, default="OK")

    @property
    def crit(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "CRIT"]

    @property
    def exit_code(self) -> int:
        """0 for OK or INFO, 1 for WARN, 2 for CRIT (the monitoring-plugin convention)."""
        return EXIT_CODES[self.worst]

    def counts(self) -> dict[str, int]:
        """How many findings of each severity (every severity present, highest first)."""
        return {severity: sum(1 for f in self.findings if f.severity == severity)
                for severity in reversed(SEVERITIES) if severity != "OK"}

    def summary(self) -> str:
        """One line for a log or a monitoring system: ``WARN: 0 CRIT, 2 WARN, 1 INFO in 6 views``."""
        counts = ", ".join(f"{n} {severity}" for severity, n in self.counts().items())
        return f"{self.worst}: {counts} in {self.views_checked} views"

    def as_json(self) -> dict[str, Any]:
        return {"worst": self.worst, "exit_code": self.exit_code, "views_checked": self.views_checked,
                "counts": self.counts(), "findings": [f.as_json() for f in self.findings]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditReport:
        """The report back from :meth:`as_json` (the derived keys are recomputed, not read)."""
        return cls([Finding.from_json(f) for f in data["findings"]], views_checked=int(data["views_checked"]))


# --------------------------------------------------------------------------------------------------
# The queries (catalog names arrive as arrays of bound parameters; nothing is formatted into SQL)

_OPS_SCHEMA = """
SELECT current_database(),
       EXISTS (SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
               WHERE n.nspname = 'ops' AND c.relname = 'mv_refresh_log' AND c.relkind IN ('r', 'p')),
       EXISTS (SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
               WHERE n.nspname = 'ops' AND c.relname = 'v_mv_health' AND c.relkind = 'v'),
       EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
               WHERE n.nspname = 'ops' AND p.proname = 'mv_health_of')
"""

# What pg_class says about each catalog view (the usable-index rule is pg.USABLE_UNIQUE_INDEX).
_VIEWS = sql.SQL("""
SELECT v.ord,
       n.oid IS NOT NULL AS schema_exists,
       c.relkind,
       c.relispopulated,
       EXISTS (SELECT 1 FROM pg_index AS i WHERE i.indrelid = c.oid AND {usable}) AS has_usable_unique_index,
       ARRAY(SELECT format('%%I.%%I', n.nspname, ic.relname)
             FROM pg_index AS i JOIN pg_class AS ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND NOT i.indisvalid
             ORDER BY ic.relname) AS invalid_indexes
FROM unnest(%(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS v (schema_name, mv_name, ord)
LEFT JOIN pg_namespace AS n ON n.nspname = v.schema_name
LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = v.mv_name
ORDER BY v.ord
""").format(usable=USABLE_UNIQUE_INDEX)

# What the log says about each view: its latest outcome (ops.mv_refresh_outcome_of, V004: index reads only,
# whatever the size of the log) and its newest OK refreshed_at.
_LOG = """
SELECT v.ord, o.last_status, o.last_sqlstate, o.last_error, o.last_finished_at, o.ok_refreshed_at,
       o.running_log_id IS NOT NULL
FROM unnest(%(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS v (schema_name, mv_name, ord)
CROSS JOIN LATERAL ops.mv_refresh_outcome_of(v.schema_name, v.mv_name) AS o
ORDER BY v.ord
"""

# RUNNING rows with their age and whether their backend still exists (ops.mv_refresh_backend_gone, V004:
# the engine reaps by the same rule).
_RUNNING = """
SELECT v.ord, l.id, l.backend_pid, l.backend_start, l.refresh_started_at,
       extract(epoch FROM now() - l.refresh_started_at)::float8 AS age_seconds,
       ops.mv_refresh_backend_gone(l.backend_pid, l.backend_start) IS NULL AS backend_alive
FROM unnest(%(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS v (schema_name, mv_name, ord)
JOIN ops.mv_refresh_log AS l
  ON l.mv_name = v.mv_name AND l.schema_name = v.schema_name AND l.status = 'RUNNING'
ORDER BY v.ord, l.refresh_started_at, l.id
"""

_UNLISTED = """
SELECT n.nspname::text, c.relname::text
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind = 'm'
  AND n.nspname = ANY (%(used_schemas)s::text[])
  AND NOT EXISTS (SELECT 1 FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS v (schema_name, mv_name)
                  WHERE v.schema_name = n.nspname::text AND v.mv_name = c.relname::text)
ORDER BY n.nspname, c.relname
"""



# --------------------------------------------------------------------------------------------------
# The audit


class _Collector:
    """Findings with their sort key: severity (desc), canonical position, check, order found."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, int, int, Finding]] = []

    def add(self, position: int, *findings: Finding | None) -> None:
        for finding in filter(None, findings):  # a check with nothing to say gives None
            key = (-_RANK[finding.severity], position, _CHECK_ORDER.get(finding.check, len(CHECKS)),
                   len(self._items))
            self._items.append((*key, finding))

    def sorted(self) -> list[Finding]:
        return [item[-1] for item in sorted(self._items, key=lambda item: item[:-1])]


def run_audit(dsn: str, catalog: Catalog) -> AuditReport:
    """Audit every view of ``catalog`` in one READ ONLY REPEATABLE READ transaction (one snapshot).

    Raises psycopg errors it cannot judge (no connection, no privilege to read the ops schema): the
    caller reports those as UNKNOWN, never as OK.
    """
    found = _Collector()
    views = list(catalog.views)
    with connect(dsn, purpose="audit") as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        set_timeouts(conn, lock=_LOCK_TIMEOUT, statement=_STATEMENT_TIMEOUT, local=True)
        problem = _check_ops_schema(conn)
        if problem is not None:
            found.add(-1, problem)
            return AuditReport(found.sorted(), views_checked=0)

        params = {"schemas": [v.schema for v in views], "names": [v.name for v in views]}
        # Every query covers the whole catalog; a view that fails `exists` is skipped in Python.
        present: set[int] = set()
        for ord_, schema_exists, relkind, populated, usable_index, invalid_indexes in conn.execute(
            _VIEWS, params
        ):
            spec = views[ord_ - 1]
            finding = _check_exists(catalog, spec, schema_exists, relkind)
            if finding is not None:
                found.add(ord_ - 1, finding)
                continue
            present.add(ord_)
            found.add(ord_ - 1, None if populated else _not_populated(spec),
                      *_check_indexes(catalog, spec, usable_index, invalid_indexes))

        # Freshness with the catalog file's thresholds, whether or not ops.mv_catalog is in step with it.
        for ord_, health in enumerate(read_health(conn, catalog), start=1):
            if ord_ in present:
                found.add(ord_ - 1, _check_freshness(views[ord_ - 1], health))

        for ord_, status, sqlstate, message, finished, _refreshed_at, running in conn.execute(_LOG, params):
            # A RUNNING row (alive or abandoned) is the `running` check's to report.
            if ord_ in present and not running and status in ("ERROR", "SKIPPED", "ABANDONED"):
                found.add(ord_ - 1, _last_status(views[ord_ - 1], status, sqlstate, message, finished))

        for ord_, log_id, pid, backend_start, started, age, alive in conn.execute(_RUNNING, params):
            if ord_ in present:
                found.add(ord_ - 1, _check_running(views[ord_ - 1], log_id, pid, backend_start, started, age, alive))

        # Views older than a view they read (an upstream view missing from the database still has its log).
        for item in stale_inputs(conn, catalog, [views[ord_ - 1] for ord_ in sorted(present)]):
            found.add(item.view.position, _stale_input(item))

        used_schemas = sorted({v.schema for v in views})
        unlisted = conn.execute(_UNLISTED, {**params, "used_schemas": used_schemas}).fetchall()
        for offset, (schema, name) in enumerate(unlisted):
            found.add(len(views) + offset, _unlisted(catalog, schema, name))

    return AuditReport(found.sorted(), views_checked=len(views))


# --------------------------------------------------------------------------------------------------
# The checks: each turns what a query read into a finding (or None)


def _check_ops_schema(conn: psycopg.Connection) -> Finding | None:
    database, has_log, has_health_view, has_health_function = conn.execute(_OPS_SCHEMA).fetchone()
    if not has_log:
        return Finding(None, "ops_schema", "CRIT",
                       f"ops.mv_refresh_log does not exist in database {database}: mv-refresh is not set up "
                       "there, so no refresh is logged and no view can be audited",
                       "run `mv-refresh init-db` against this database (and check that the DSN names the "
                       "right one)")
    missing = [name for name, ok in (("ops.v_mv_health", has_health_view),
                                     ("ops.mv_health_of()", has_health_function)) if not ok]
    if missing:
        return Finding(None, "ops_schema", "CRIT",
                       f"the ops schema in database {database} is incomplete: {', '.join(missing)} "
                       "missing, so freshness cannot be judged",
                       "run `mv-refresh init-db` to apply the missing migrations")
    return None


def _check_exists(catalog: Catalog, spec: ViewSpec, schema_exists: bool, relkind: str | None) -> Finding | None:
    name = spec.display_name
    if relkind == "m":
        return None
    if relkind is None:
        why = "" if schema_exists else f" (its schema {quote_identifier(spec.schema)} does not exist either)"
        return Finding(name, "exists", "CRIT",
                       f"{name} is in the catalog but does not exist in the database{why}: nothing can "
                       "refresh or read it",
                       f"create the materialized view, or remove it from the catalog ({catalog.where(spec)})")
    what = RELKIND_NAMES.get(relkind, f"a relation of kind {relkind!r}")
    return Finding(name, "exists", "CRIT", f"{name} is {what}, not a materialized view: it cannot be refreshed",
                   f"fix the name in the catalog ({catalog.where(spec)}), or replace {name} with a "
                   "materialized view")


def _not_populated(spec: ViewSpec) -> Finding:
    name = spec.display_name
    return Finding(name, "populated", "CRIT" if spec.critical else "WARN",
                   f"{name} is not populated (created or last refreshed WITH NO DATA): every "
                   "query on it fails with 'materialized view has not been populated'",
                   f"mv-refresh refresh {_arg(name)}")


def _check_indexes(
    catalog: Catalog, spec: ViewSpec, usable_index: bool, invalid_indexes: list[str]
) -> list[Finding]:
    name = spec.display_name
    findings = []
    prepare = f"mv-refresh prepare-concurrently {_arg(name)}"
    if not spec.grain:
        prepare = f"add a grain to the catalog entry of {name} ({catalog.where(spec)}) and run {prepare}"
    if spec.mode in ("auto", "concurrently") and not usable_index:
        message = (f"{name} has no valid unique index on plain columns without WHERE, so PostgreSQL "
                   "cannot refresh it CONCURRENTLY: ")
        if spec.mode == "concurrently":
            message += ("its mode is 'concurrently', so every refresh fails (the engine never falls "
                        "back), and a manual plain refresh takes ACCESS EXCLUSIVE and blocks readers")
        else:
            message += ("refreshes fall back to PLAIN, which takes ACCESS EXCLUSIVE and blocks readers "
                        "for the whole refresh")
        findings.append(Finding(name, "unique_index", "CRIT" if spec.mode == "concurrently" else "WARN",
                                message, prepare))
    for index in invalid_indexes:
        findings.append(Finding(
            name, "unique_index", "WARN",
            f"{name} has the INVALID index {index} (left by a failed CREATE INDEX CONCURRENTLY, "
            "which CREATE INDEX IF NOT EXISTS then accepts silently): it is never used, yet every "
            "refresh maintains it",
            f"DROP INDEX CONCURRENTLY {index}; then "
            + (prepare if spec.grain else "rebuild it (CREATE UNIQUE INDEX CONCURRENTLY) after fixing "
               "whatever made it fail"),
        ))
    return findings


def _check_freshness(spec: ViewSpec, health) -> Finding | None:
    bucket, name = health.status_bucket, spec.display_name
    if bucket == "OK":
        return None
    thresholds = f"WARN from {_num(health.warn_after_hours)} h, CRIT above {_num(health.crit_after_hours)} h"
    if not health.mirrored:
        thresholds += ("; ops.mv_catalog (what SQL readers of ops.v_mv_health see) is out of step with the "
                       "catalog file for this view: `mv-refresh init-db` syncs it")
    fix = (f"mv-refresh refresh {_arg(name)} (or trigger the ops_mv_refresh DAG); if refreshes keep failing, "
           "read the view's latest rows in ops.mv_refresh_log")
    severity = "CRIT" if spec.critical else "WARN"
    if bucket in ("WARN", "CRIT"):
        return Finding(name, "freshness", bucket,
                       f"{name} was last refreshed OK {_num(health.hours_since_ok_refresh)} h ago (finished "
                       f"{_ts(health.last_ok_refresh_finished_at)}): {bucket} ({thresholds})", fix)
    if bucket == "NO_REFRESH":
        return Finding(name, "freshness", severity,
                       f"{name} has never been refreshed OK (no OK row in ops.mv_refresh_log): NO_REFRESH "
                       f"({thresholds})", fix)
    return Finding(name, "freshness", severity, f"{name}: unknown health bucket {bucket!r} ({thresholds})",
                   "run `mv-refresh init-db` so the health views match this version of mv-refresh")


_STATUS_FIXES = {
    "ERROR": "fix the cause the error names, then mv-refresh refresh {arg}",
    "SKIPPED": "another refresh of {name} held it for longer than its lock timeout: look for overlapping "
    "runs (the DAG and the CLI at once, or a hung refresh), then mv-refresh refresh {arg}",
    "ABANDONED": "the refresh's backend died before reporting (a killed worker or a terminated "
    "session): mv-refresh refresh {arg}",
}


def _last_status(
    spec: ViewSpec, status: str, sqlstate: str | None, message: str | None, finished: datetime
) -> Finding:
    name = spec.display_name
    code = f" [{sqlstate}]" if sqlstate else ""
    text = _clip(message) if message else "no error message logged"
    return Finding(name, "last_status", "WARN",
                   f"the latest refresh attempt of {name} (finished {_ts(finished)}) ended {status}{code}: {text}",
                   _STATUS_FIXES[status].format(name=name, arg=_arg(name)))


def _check_running(spec: ViewSpec, log_id: int, pid: int | None, backend_start: datetime | None,
                   started: datetime, age_seconds: float, alive: bool) -> Finding | None:
    name = spec.display_name
    if not alive:
        if pid is None:
            backend = "no backend pid was logged for it"
        else:
            since = f", started {_ts(backend_start)}" if backend_start else ""
            backend = f"its backend (pid {pid}{since}) is gone"
        return Finding(name, "running", "WARN",
                       f"log row {log_id} of {name} (started {_ts(started)}) is RUNNING but {backend}: "
                       "abandoned; the next refresh marks it ABANDONED",
                       f"mv-refresh refresh {_arg(name)} (it marks the row ABANDONED and refreshes the view)")
    limit = spec.statement_timeout_seconds + spec.lock_timeout_seconds
    if age_seconds <= limit:
        return None
    return Finding(name, "running", "WARN",
                   f"a refresh of {name} (log row {log_id}, backend pid {pid}) has been RUNNING for "
                   f"{_duration(age_seconds)} since {_ts(started)}, longer than its statement timeout plus lock "
                   f"timeout ({_duration(limit)}): stuck?",
                   f"look at pid {pid} in pg_stat_activity (state, wait_event, query); if it is hung, end it "
                   f"with SELECT pg_cancel_backend({pid}) and refresh again")


def _stale_input(item: StaleInput) -> Finding:
    name, up_name = item.view.display_name, item.upstream.display_name
    through = "" if item.direct else " (through other catalog views)"
    return Finding(name, "stale_input", "WARN",
                   f"{name} was last refreshed OK at {_ts(item.view_refreshed_at)}, before its upstream "
                   f"{up_name}{through} (refreshed OK at {_ts(item.upstream_refreshed_at)}): it does not "
                   f"reflect {up_name}'s current data",
                   f"mv-refresh refresh {_arg(name)} (or trigger the ops_mv_refresh DAG, which refreshes in "
                   "canonical order)")


def _unlisted(catalog: Catalog, schema: str, name: str) -> Finding:
    shown = format_qualified_name(schema, name)
    return Finding(shown, "unlisted", "INFO",
                   f"{shown} is a materialized view in schema {quote_identifier(schema)}, which the catalog "
                   "uses, but the catalog does not list it: nothing refreshes or monitors it",
                   f"add it to the catalog ({catalog.source}) if it should be refreshed, or ignore this")


# --------------------------------------------------------------------------------------------------
# Formatting


def _arg(name: str) -> str:
    """A view name as a shell argument in a suggested command (``lab."Weird MV"`` needs quotes)."""
    return shlex.quote(name)


def _ts(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value is not None else "-"


def _num(value: Decimal | float | None) -> str:
    return "?" if value is None else f"{float(value):g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."
