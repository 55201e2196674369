"""What the MV Health page shows, read from the database and drawn as inline SVG; no Airflow import.

Three things, each a pydantic model that the page renders and the JSON endpoints return as they are:

* :class:`ViewStatus`, one per catalog view: its health bucket and hours since the last OK refresh
  (``mv_refresh.health.read_health``, computed in SQL from the database clock), the last status, error,
  row count and method, and the catalog's thresholds.
* :class:`RefreshAttempt`, the last N rows of ``ops.mv_refresh_log`` for a view, newest first.
* :class:`ChainGraph`, the catalog's ``upstream`` edges laid out in layers (a view sits one layer below
  the deepest view it reads), each node carrying its view's bucket.

The ``*_svg`` functions draw them as self-contained SVG (no script, no external reference), so the page
works offline. Every text that comes from the database or the catalog is escaped.
"""

from __future__ import annotations

import graphlib
from datetime import datetime
from html import escape
from typing import Literal

import psycopg
from pydantic import BaseModel, ConfigDict

from .catalog import Catalog
from .health import read_health

Bucket = Literal["OK", "WARN", "CRIT", "NO_REFRESH", "UNKNOWN"]

#: Colours of the health buckets and of log statuses; the page's legend and tests read these.
BUCKET_COLOURS: dict[str, str] = {
    "OK": "#1a7f37",
    "WARN": "#bf8700",
    "CRIT": "#cf222e",
    "NO_REFRESH": "#82071e",
    "UNKNOWN": "#6e7781",
}
STATUS_COLOURS: dict[str, str] = {
    "OK": "#1a7f37",
    "ERROR": "#cf222e",
    "SKIPPED": "#9a6700",
    "ABANDONED": "#bc4c00",
    "RUNNING": "#0969da",
}
DEFAULT_HISTORY = 30
MAX_HISTORY = 500


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewStatus(_Model):
    """One catalog view as the health page shows it."""

    name: str
    schema_name: str
    mv_name: str
    task_id: str
    description: str | None
    critical: bool
    upstream: list[str]
    mode: str
    bucket: Bucket
    hours_since_ok_refresh: float | None
    last_ok_refresh_finished_at: datetime | None
    last_status: str | None
    last_error: str | None
    rows_after_refresh: int | None
    last_method: str | None
    warn_after_hours: float
    crit_after_hours: float
    #: Why the bucket is UNKNOWN (the database does not know the view yet), else None.
    note: str | None = None


class RefreshAttempt(_Model):
    """One row of ``ops.mv_refresh_log``."""

    id: int
    status: str
    refresh_started_at: datetime
    refresh_finished_at: datetime | None
    method: str | None
    rows_after_refresh: int | None
    duration_ms: int | None
    error_sqlstate: str | None
    error_message: str | None
    run_by: str
    dag_id: str | None
    run_id: str | None


class GraphNode(_Model):
    name: str
    bucket: Bucket
    critical: bool
    layer: int
    slot: int


class GraphEdge(_Model):
    """``source`` is read by ``target``: data flows along the edge."""

    source: str
    target: str


class ChainGraph(_Model):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


# --------------------------------------------------------------------------------------------------
# Reading


def read_statuses(conn: psycopg.Connection, catalog: Catalog) -> list[ViewStatus]:
    """One :class:`ViewStatus` per catalog view, in canonical order.

    A view the database does not know yet (``ops.mv_catalog`` is mirrored by ``mv-refresh init-db`` and
    by every refresh) is listed as UNKNOWN with a note saying so, never left out.
    """
    health = {(row.schema_name, row.mv_name): row for row in read_health(conn, catalog)}
    last_method = dict(_last_methods(conn, catalog))
    statuses = []
    for spec in catalog.views:
        row = health.get(spec.key)
        common = {
            "name": spec.display_name,
            "schema_name": spec.schema,
            "mv_name": spec.name,
            "task_id": spec.task_id,
            "description": spec.description,
            "critical": spec.critical,
            "upstream": [catalog.get(key).display_name for key in spec.upstream],
            "mode": spec.mode,
            "last_method": last_method.get(spec.key),
        }
        if row is None:
            statuses.append(ViewStatus(
                **common, bucket="UNKNOWN", hours_since_ok_refresh=None, last_ok_refresh_finished_at=None,
                last_status=None, last_error=None, rows_after_refresh=None,
                warn_after_hours=spec.warn_after_hours, crit_after_hours=spec.crit_after_hours,
                note="not in ops.mv_catalog yet: run `mv-refresh init-db` (or any refresh) to register it",
            ))
            continue
        statuses.append(ViewStatus(
            **common,
            bucket=row.status_bucket,
            hours_since_ok_refresh=_float(row.hours_since_ok_refresh),
            last_ok_refresh_finished_at=row.last_ok_refresh_finished_at,
            last_status=row.last_status,
            last_error=row.last_error,
            rows_after_refresh=row.rows_after_refresh,
            warn_after_hours=float(row.warn_after_hours),
            crit_after_hours=float(row.crit_after_hours),
        ))
    return statuses


_LAST_METHODS = """
SELECT k.schema_name, k.mv_name, l.method
FROM unnest(%s::text[], %s::text[]) AS k(schema_name, mv_name)
CROSS JOIN LATERAL (
    SELECT method FROM ops.mv_refresh_log AS l
    WHERE l.schema_name = k.schema_name AND l.mv_name = k.mv_name AND l.method IS NOT NULL
    ORDER BY l.refresh_started_at DESC, l.id DESC
    LIMIT 1
) AS l
"""


def _last_methods(conn: psycopg.Connection, catalog: Catalog):
    rows = conn.execute(_LAST_METHODS, ([v.schema for v in catalog.views], [v.name for v in catalog.views]))
    for schema, name, method in rows:
        yield (schema, name), method


_HISTORY = """
SELECT k.schema_name, k.mv_name, l.id, l.status, l.refresh_started_at, l.refresh_finished_at, l.method,
       l.rows_after_refresh, l.duration_ms, l.error_sqlstate, l.error_message, l.run_by, l.dag_id, l.run_id
FROM unnest(%s::text[], %s::text[]) AS k(schema_name, mv_name)
CROSS JOIN LATERAL (
    SELECT * FROM ops.mv_refresh_log AS l
    WHERE l.schema_name = k.schema_name AND l.mv_name = k.mv_name
    ORDER BY l.refresh_started_at DESC, l.id DESC
    LIMIT %s
) AS l
ORDER BY k.schema_name, k.mv_name, l.refresh_started_at DESC, l.id DESC
"""

_ATTEMPT_FIELDS = ("id", "status", "refresh_started_at", "refresh_finished_at", "method", "rows_after_refresh",
                   "duration_ms", "error_sqlstate", "error_message", "run_by", "dag_id", "run_id")


def read_history(
    conn: psycopg.Connection, catalog: Catalog, views: list[str] | None = None, *, limit: int = DEFAULT_HISTORY
) -> dict[str, list[RefreshAttempt]]:
    """The last ``limit`` attempts of each view (default: every catalog view), newest first, by name.

    Names are checked against the catalog first (``Catalog.select``: one error lists every unknown name),
    so nothing outside it is ever read. ``limit`` is clamped to 1..:data:`MAX_HISTORY`.
    """
    chosen = catalog.select(views) if views is not None else list(catalog.views)
    limit = max(1, min(int(limit), MAX_HISTORY))
    history: dict[str, list[RefreshAttempt]] = {spec.display_name: [] for spec in chosen}
    by_key = {spec.key: spec.display_name for spec in chosen}
    rows = conn.execute(_HISTORY, ([v.schema for v in chosen], [v.name for v in chosen], limit))
    for schema, name, *values in rows:
        history[by_key[(schema, name)]].append(RefreshAttempt(**dict(zip(_ATTEMPT_FIELDS, values, strict=True))))
    return history


def chain_graph(catalog: Catalog, statuses: list[ViewStatus] | None = None) -> ChainGraph:
    """The ``upstream`` graph in layers: roots on layer 0, every other view one below its deepest input."""
    bucket = {s.name: s.bucket for s in statuses or ()}
    sorter = graphlib.TopologicalSorter({spec.key: spec.upstream for spec in catalog.views})
    layer: dict[tuple[str, str], int] = {}
    for key in sorter.static_order():
        layer[key] = 1 + max((layer[up] for up in catalog.get(key).upstream), default=-1)
    slots: dict[int, int] = {}
    nodes = []
    for spec in catalog.views:  # canonical order inside a layer
        depth = layer[spec.key]
        slot = slots.get(depth, 0)
        slots[depth] = slot + 1
        nodes.append(GraphNode(name=spec.display_name, bucket=bucket.get(spec.display_name, "UNKNOWN"),
                               critical=spec.critical, layer=depth, slot=slot))
    edges = [GraphEdge(source=catalog.get(up).display_name, target=spec.display_name)
             for spec in catalog.views for up in spec.upstream]
    return ChainGraph(nodes=nodes, edges=edges)


def _float(value) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# Drawing (inline SVG)

_FONT = "font-family='system-ui, sans-serif'"


def _attr(text: object) -> str:
    return escape(str(text), quote=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "-"


def _tooltip(attempt: RefreshAttempt) -> str:
    parts = [f"{_when(attempt.refresh_started_at)}: {attempt.status}"]
    if attempt.method:
        parts.append(attempt.method)
    if attempt.duration_ms is not None:
        parts.append(f"{attempt.duration_ms} ms")
    if attempt.rows_after_refresh is not None:
        parts.append(f"{attempt.rows_after_refresh:,} rows")
    if attempt.error_sqlstate or attempt.error_message:
        parts.append(f"[{attempt.error_sqlstate or '?'}] {attempt.error_message or ''}".strip())
    return " · ".join(parts)


def _empty_chart(title: str, width: int, height: int) -> str:
    return (f"<svg class='chart' role='img' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'><title>{_attr(title)}: no refresh logged yet</title>"
            f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' {_FONT} font-size='12' fill='#6e7781'>"
            "no refresh logged yet</text></svg>")


def bar_chart_svg(attempts: list[RefreshAttempt], *, metric: Literal["duration_ms", "rows_after_refresh"],
                  title: str, unit: str, width: int = 360, height: int = 120) -> str:
    """One bar per attempt, oldest on the left, coloured by its status; the scale's top is labelled."""
    points = [a for a in reversed(attempts) if getattr(a, metric) is not None]
    if not points:
        return _empty_chart(title, width, height)
    top = max(getattr(a, metric) for a in points) or 1
    left, bottom, plot_h = 44, height - 18, height - 30
    step = min((width - left - 6) / len(points), 24.0)  # a few points stay thin bars, not blocks
    end = step * len(points)  # the newest date goes under the last bar, when there is room for both
    bars = []
    for i, attempt in enumerate(points):
        value = getattr(attempt, metric)
        bar_h = max(1.0, plot_h * value / top)
        x = left + i * step
        bars.append(
            f"<rect x='{x + step * 0.12:.1f}' y='{bottom - bar_h:.1f}' width='{max(step * 0.76, 1):.1f}' "
            f"height='{bar_h:.1f}' fill='{STATUS_COLOURS.get(attempt.status, '#6e7781')}'>"
            f"<title>{_attr(_tooltip(attempt))}</title></rect>")
    return (
        f"<svg class='chart' role='img' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        f"xmlns='http://www.w3.org/2000/svg' data-metric='{metric}' data-points='{len(points)}'>"
        f"<title>{_attr(title)}</title>"
        f"<text x='2' y='{bottom - plot_h + 4}' {_FONT} font-size='10' fill='#57606a'>{_attr(_short(top))}</text>"
        f"<text x='2' y='{bottom}' {_FONT} font-size='10' fill='#57606a'>0 {_attr(unit)}</text>"
        f"<line x1='{left}' y1='{bottom}' x2='{width - 4}' y2='{bottom}' stroke='#d0d7de'/>"
        f"<line x1='{left}' y1='{bottom - plot_h}' x2='{width - 4}' y2='{bottom - plot_h}' stroke='#eaeef2' "
        "stroke-dasharray='3 3'/>"
        + "".join(bars)
        + f"<text x='{left}' y='{height - 4}' {_FONT} font-size='10' fill='#57606a'>"
        f"{_attr(_when(points[0].refresh_started_at))}</text>"
        + (f"<text x='{left + end:.1f}' y='{height - 4}' text-anchor='end' {_FONT} font-size='10' fill='#57606a'>"
           f"{_attr(_when(points[-1].refresh_started_at))}</text>" if end > 250 else "")
        + "</svg>"
    )


def timeline_svg(attempts: list[RefreshAttempt], *, title: str, width: int = 360, height: int = 34) -> str:
    """One square per attempt, oldest on the left, in its status colour, with the details as a tooltip."""
    if not attempts:
        return _empty_chart(title, width, height)
    points = list(reversed(attempts))
    cell = min(22.0, (width - 4) / len(points))
    squares = "".join(
        f"<rect class='attempt' data-status='{_attr(a.status)}' x='{2 + i * cell:.1f}' y='4' "
        f"width='{max(cell - 2, 1):.1f}' height='{height - 8}' rx='2' "
        f"fill='{STATUS_COLOURS.get(a.status, '#6e7781')}'><title>{_attr(_tooltip(a))}</title></rect>"
        for i, a in enumerate(points)
    )
    return (f"<svg class='timeline' role='img' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'><title>{_attr(title)}</title>{squares}</svg>")


def graph_svg(graph: ChainGraph, *, node_height: int = 34, gap_x: int = 24, gap_y: int = 26) -> str:
    """The chain top to bottom (inputs above their readers), each view boxed in its bucket's colour."""
    if not graph.nodes:
        return _empty_chart("dependency graph", 300, 40)
    # Wide enough for the longest label (12 px text, about 7 px a character) and the bucket on the right.
    node_width = int(min(max(len(n.name) for n in graph.nodes), 44) * 7.2 + 110)
    layers = 1 + max(n.layer for n in graph.nodes)
    widest = 1 + max(n.slot for n in graph.nodes)
    width = widest * node_width + (widest - 1) * gap_x + 8
    height = layers * node_height + (layers - 1) * gap_y + 8
    place = {n.name: (4 + n.slot * (node_width + gap_x), 4 + n.layer * (node_height + gap_y)) for n in graph.nodes}
    edges = []
    for edge in graph.edges:
        (sx, sy), (tx, ty) = place[edge.source], place[edge.target]
        x1, y1 = sx + node_width / 2, sy + node_height
        x2, y2 = tx + node_width / 2, ty - 2
        mid = (y1 + y2) / 2
        edges.append(f"<path class='edge' d='M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} "
                     f"{x2:.0f},{y2:.0f}' fill='none' stroke='#8c959f' stroke-width='1.5' "
                     "marker-end='url(#mvr-arrow)'/>")
    boxes = []
    for node in graph.nodes:
        x, y = place[node.name]
        colour = BUCKET_COLOURS[node.bucket]
        label = node.name if len(node.name) <= 44 else node.name[:43] + "…"
        boxes.append(
            f"<g class='node' data-view='{_attr(node.name)}' data-bucket='{node.bucket}'>"
            f"<title>{_attr(node.name)}: {node.bucket}{' (critical)' if node.critical else ''}</title>"
            f"<rect x='{x}' y='{y}' width='{node_width}' height='{node_height}' rx='6' fill='{colour}' "
            f"fill-opacity='0.12' stroke='{colour}' stroke-width='{3 if node.critical else 1.5}'/>"
            f"<rect x='{x}' y='{y}' width='8' height='{node_height}' rx='3' fill='{colour}'/>"
            f"<text x='{x + 16}' y='{y + node_height / 2 + 4}' {_FONT} font-size='12' fill='#1f2328'>"
            f"{_attr(label)}</text>"
            f"<text x='{x + node_width - 8}' y='{y + node_height / 2 + 4}' text-anchor='end' {_FONT} "
            f"font-size='11' font-weight='600' fill='{colour}'>{node.bucket}</text></g>")
    return (
        f"<svg class='graph' role='img' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        "xmlns='http://www.w3.org/2000/svg'><title>dependency graph of the catalog's views</title>"
        "<defs><marker id='mvr-arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#8c959f'/></marker></defs>"
        + "".join(edges) + "".join(boxes) + "</svg>"
    )


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:g}"
