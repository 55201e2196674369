"""Health of the catalog's views: ``ops.mv_health_of`` (computed in SQL, database clock) for each view.

The catalog file is the source of truth for the process that reads: every view it lists gets a row, judged
with the file's own thresholds, whether or not ``ops.mv_catalog`` (the mirror SQL readers use) is in step.
A view is never left out: a monitoring check that cannot see a view must not report OK for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from .catalog import Catalog, ViewSpec, format_qualified_name

# Exit codes of `mv-refresh health`: the monitoring-plugin convention (Nagios, Icinga, Zabbix).
EXIT_OK, EXIT_WARN, EXIT_CRIT, EXIT_UNKNOWN = 0, 1, 2, 3
BUCKET_EXIT = {"OK": EXIT_OK, "WARN": EXIT_WARN, "CRIT": EXIT_CRIT, "NO_REFRESH": EXIT_CRIT}


@dataclass(frozen=True)
class ViewHealth:
    schema_name: str
    mv_name: str
    last_ok_refresh_finished_at: datetime | None
    hours_since_ok_refresh: Decimal | None
    status_bucket: str
    last_status: str | None
    last_error: str | None
    rows_after_refresh: int | None
    is_critical: bool
    warn_after_hours: Decimal
    crit_after_hours: Decimal
    method: str | None  # of the newest OK refresh
    duration_ms: int | None  # of the newest OK refresh
    mirrored: bool  # ops.mv_catalog lists the view with the file's thresholds and critical flag

    @property
    def display_name(self) -> str:
        return format_qualified_name(self.schema_name, self.mv_name)

    @property
    def refreshing(self) -> bool:
        """A refresh of the view is under way (its backend is alive)."""
        return self.last_status == "RUNNING"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif isinstance(value, Decimal):
                out[key] = float(value)
        return out


_QUERY = """
SELECT v.schema_name, v.mv_name, h.last_ok_refresh_finished_at, h.hours_since_ok_refresh, h.status_bucket,
       h.last_status, h.last_error, h.rows_after_refresh, v.critical, v.warn, v.crit, o.ok_method,
       o.ok_duration_ms,
       coalesce(m.warn_after_hours = v.warn AND m.crit_after_hours = v.crit AND m.is_critical = v.critical, false)
FROM unnest(%(schemas)s::text[], %(names)s::text[], %(critical)s::boolean[], %(warn)s::numeric[],
            %(crit)s::numeric[]) WITH ORDINALITY AS v (schema_name, mv_name, critical, warn, crit, ord)
CROSS JOIN LATERAL ops.mv_health_of(v.schema_name, v.mv_name, v.warn, v.crit) AS h
CROSS JOIN LATERAL ops.mv_refresh_outcome_of(v.schema_name, v.mv_name) AS o
LEFT JOIN ops.mv_catalog AS m ON m.schema_name = v.schema_name AND m.mv_name = v.mv_name
ORDER BY v.ord
"""


def read_health(conn: psycopg.Connection, catalog: Catalog,
                views: list[ViewSpec] | None = None) -> list[ViewHealth]:
    """One row per view of ``views`` (default: the whole catalog), in the order given, never fewer."""
    chosen = list(views) if views is not None else list(catalog.views)
    rows = conn.execute(_QUERY, {
        "schemas": [v.schema for v in chosen], "names": [v.name for v in chosen],
        "critical": [v.critical for v in chosen], "warn": [v.warn_after_hours for v in chosen],
        "crit": [v.crit_after_hours for v in chosen],
    }).fetchall()
    return [ViewHealth(*row) for row in rows]


# Each view's newest OK row (as ops.mv_refresh_outcome_of orders them: one entry of the partial OK index), with
# its method and the run that wrote it.
_LAST_OK = """
SELECT v.schema_name, v.mv_name, ok.refreshed_at, ok.method, ok.dag_id, ok.run_id
FROM unnest(%s::text[], %s::text[]) AS v (schema_name, mv_name)
CROSS JOIN LATERAL (
    SELECT l.refreshed_at, l.method, l.dag_id, l.run_id
    FROM ops.mv_refresh_log AS l
    WHERE l.mv_name = v.mv_name AND l.schema_name = v.schema_name AND l.status = 'OK'
    ORDER BY l.refresh_finished_at DESC, l.id DESC
    LIMIT 1
) AS ok
"""


@dataclass(frozen=True)
class StaleInput:
    """A view whose data is older than the data of a view it reads, directly or through others."""

    view: ViewSpec
    upstream: ViewSpec  # the most recently refreshed of the views it is older than
    view_refreshed_at: datetime
    upstream_refreshed_at: datetime
    direct: bool  # the view reads it itself (else through other catalog views)

    def __str__(self) -> str:
        how = "which it reads" if self.direct else "which it reads through other views"
        return (f"{self.view.display_name} (data of {self.view_refreshed_at:%Y-%m-%d %H:%M:%S%z}) is older than "
                f"{self.upstream.display_name} (data of {self.upstream_refreshed_at:%Y-%m-%d %H:%M:%S%z}), {how}")


def stale_inputs(conn: psycopg.Connection, catalog: Catalog, views: list[ViewSpec] | None = None, *,
                 refreshed_by_run: tuple[str, str] | None = None) -> list[StaleInput]:
    """Views (default: all) last refreshed OK before a view they read, directly or through other views: their
    data misses what that view holds now. One entry per view: the newest such input.

    An input whose newest OK row is ``UNCHANGED`` changed no data, so it makes nobody stale. With
    ``refreshed_by_run`` (dag_id, run_id), only inputs whose newest refresh that run made count: what the run
    itself left behind (a subset run without its downstream views), as against a refresh from the CLI or
    another run that lands while this one checks (a race the next run settles).
    """
    chosen = list(views) if views is not None else list(catalog.views)
    needed = {v.key: v for v in chosen} | {up.key: up for v in chosen for up in catalog.upstream_of(v)}
    rows = conn.execute(_LAST_OK, ([k[0] for k in needed], [k[1] for k in needed])).fetchall()
    last_ok = {(schema, name): at for schema, name, at, *_ in rows if at is not None}
    changed = {(schema, name) for schema, name, at, method, dag_id, run_id in rows
               if at is not None and method != "UNCHANGED"
               and (refreshed_by_run is None or (dag_id, run_id) == tuple(refreshed_by_run))}
    found = []
    for view in chosen:
        mine = last_ok.get(view.key)
        newer = [up for up in catalog.upstream_of(view)
                 if mine is not None and up.key in changed and last_ok[up.key] > mine]
        if newer:
            newest = max(newer, key=lambda up: last_ok[up.key])
            found.append(StaleInput(view, newest, mine, last_ok[newest.key], newest.key in view.upstream))
    return found


def worst_exit_code(rows: list[ViewHealth]) -> int:
    """The exit code for a set of rows: the worst bucket wins; nothing to judge is UNKNOWN."""
    if not rows:
        return EXIT_UNKNOWN
    return max(BUCKET_EXIT.get(r.status_bucket, EXIT_UNKNOWN) for r in rows)
