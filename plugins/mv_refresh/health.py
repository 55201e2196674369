"""Health of the catalog's views, read from ``ops.v_mv_health`` (computed in SQL, database clock)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from .catalog import Catalog

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

    @property
    def display_name(self) -> str:
        return f"{self.schema_name}.{self.mv_name}"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif isinstance(value, Decimal):
                out[key] = float(value)
        return out


_QUERY = """
SELECT schema_name, mv_name, last_ok_refresh_finished_at, hours_since_ok_refresh, status_bucket,
       last_status, last_error, rows_after_refresh, is_critical, warn_after_hours, crit_after_hours
FROM ops.v_mv_health
WHERE (schema_name, mv_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY position
"""


def read_health(conn: psycopg.Connection, catalog: Catalog, views: list | None = None) -> list[ViewHealth]:
    """Health rows for ``views`` (ViewSpecs; default: the whole catalog), in canonical order."""
    chosen = list(views) if views is not None else list(catalog.views)
    rows = conn.execute(_QUERY, ([v.schema for v in chosen], [v.name for v in chosen])).fetchall()
    return [ViewHealth(*row) for row in rows]


def worst_exit_code(rows: list[ViewHealth]) -> int:
    """The exit code for a set of rows: the worst bucket wins; nothing to judge is UNKNOWN."""
    if not rows:
        return EXIT_UNKNOWN
    return max(BUCKET_EXIT.get(r.status_bucket, EXIT_UNKNOWN) for r in rows)
