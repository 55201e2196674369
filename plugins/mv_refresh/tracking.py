"""Change tracking and the UNCHANGED proof (docs/change-tracking.md).

``mv-refresh track install`` puts one statement-level trigger, ``mv_refresh_track`` (INSERT, UPDATE, DELETE,
TRUNCATE; ENABLE ALWAYS), on every table a catalog view reads; it calls ``ops.mv_source_changed()`` (V005),
which writes one marker per (table, transaction) into ``ops.mv_source_change`` in the writer's transaction.

A refresh runs in a REPEATABLE READ transaction that first takes ``pg_current_snapshot()``: the REFRESH
sees exactly that snapshot, which ``ops.mv_refresh_state`` keeps with the *basis* of a later proof. The next
refresh may skip the REFRESH (``UNCHANGED``) only when all of this holds, else it refreshes and logs why:

* every table the view reads (partitions and inheritance children included) has the trigger, ENABLE ALWAYS;
  nothing is a foreign table or a materialized view outside the catalog;
* nothing in its tree calls a stable or volatile function, reads the clock or the session, casts through
  text or samples a table;
* the basis is the same as at the last real refresh: the definitions of the view and of every plain view in
  its tree, the user functions it calls, the relations it reads and their storage (TRUNCATE, a rewrite, a
  plain REFRESH of an upstream view replace it), the triggers' rows (a disable/enable cycle rewrites them),
  and the marker table's own storage (a TRUNCATE of the markers would lose changes);
* the view is populated and no marker of a table it reads, or of a catalog view it reads (each refresh of a
  catalog view writes one), comes from a transaction that snapshot did not see.

Writers pay one insert per (table, transaction); nothing is updated in place, so they never queue on one row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from . import pg
from .catalog import Catalog, ViewSpec, format_qualified_name
from .db import safe_message
from .sources import Relation, Tree, digest, read_trees, special_node_reason

TRIGGER_NAME = "mv_refresh_track"
TRIGGER_FUNCTION = "ops.mv_source_changed()"

_TRIGGERS = """
SELECT t.tgrelid, t.oid, t.xmin::text, t.tgenabled::text
FROM pg_trigger AS t
WHERE t.tgrelid = ANY (%(tables)s::oid[]) AND t.tgname = %(name)s AND NOT t.tgisinternal
"""

_MARKERS_STORAGE = """
SELECT c.relfilenode FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'ops' AND c.relname = 'mv_source_change'
"""


@dataclass(frozen=True)
class TriggerState:
    oid: int
    row_version: str
    enabled: str  # O (origin), A (always), R (replica), D (disabled)


@dataclass
class Tracking:
    """What change tracking knows about one view: its tree, its triggers, why it cannot be proven."""

    tree: Tree
    triggers: dict[int, TriggerState]  # table oid -> its mv_refresh_track trigger
    catalog_views: set[int]  # oids of the catalog's materialized views (markers of their refreshes count)
    unprovable: list[str] = field(default_factory=list)
    basis: str = ""

    @property
    def sources(self) -> list[int]:
        """The relations whose markers concern the view: the tables it reads and the catalog views it reads."""
        return sorted({r.oid for r in self.tree.tables} | {m.oid for m in self.tree.matviews})

    def table_state(self, table: Relation) -> str:
        trigger = self.triggers.get(table.oid)
        if trigger is None:
            return "not tracked"
        return {"A": "tracked", "O": "tracked, but not ENABLE ALWAYS", "R": "tracked for replicas only",
                "D": "tracked, but the trigger is disabled"}.get(trigger.enabled, trigger.enabled)


def inspect(conn: psycopg.Connection, view_oids: Iterable[int], catalog_view_oids: set[int]) -> dict[int, Tracking]:
    """Tracking of each materialized view oid: its tree, its triggers, the proof's basis and obstacles."""
    trees = read_trees(conn, view_oids)
    tables = sorted({t.oid for tree in trees.values() for t in tree.tables})
    triggers = {relid: TriggerState(oid, xmin, enabled)
                for relid, oid, xmin, enabled in conn.execute(_TRIGGERS, {"tables": tables, "name": TRIGGER_NAME})}
    markers = conn.execute(_MARKERS_STORAGE).fetchone()
    result = {}
    for oid, tree in trees.items():
        tracking = Tracking(tree, {t.oid: triggers[t.oid] for t in tree.tables if t.oid in triggers},
                            catalog_view_oids)
        tracking.unprovable = _obstacles(tracking)
        parts = tree.fingerprint_parts()
        parts += [f"trg {relid} {t.oid} {t.row_version} {t.enabled}" for relid, t in tracking.triggers.items()]
        parts.append(f"markers {markers[0] if markers else None}")
        tracking.basis = digest(parts)
        result[oid] = tracking
    return result


def _obstacles(tracking: Tracking) -> list[str]:
    """Why this view cannot be proven unchanged (empty: it can, given no pending change)."""
    tree, why = tracking.tree, []
    for table in tree.tables:
        state = tracking.table_state(table)
        if state != "tracked":
            why.append(f"its source {table.display_name}{tree.through(table)} is {state} "
                       f"(`mv-refresh track install {tree.root.display_name}`)")
    for foreign in tree.foreign_tables:
        why.append(f"it reads the foreign table {foreign.display_name}, whose changes happen elsewhere")
    for matview in tree.matviews:
        if matview.oid not in tracking.catalog_views:
            why.append(f"it reads the materialized view {matview.display_name}, which is not in the catalog: "
                       "its refreshes leave no marker")
    for call in tree.mutable_calls:
        why.append(f"it calls {call.signature} ({pg_volatility(call.volatility)}): its result may change "
                   "with no source changing")
    why += [f"it {special_node_reason(node)}" for node in tree.special_nodes]
    return why


def pg_volatility(code: str) -> str:
    return {"i": "immutable", "s": "stable", "v": "volatile"}.get(code, code)


# --------------------------------------------------------------------------------------------------
# The proof, and what a refresh records (both inside the refresh's REPEATABLE READ transaction)

_STATE = """
SELECT view_oid, snapshot, basis, provable, refresh_log_id, rows_after_refresh
FROM ops.mv_refresh_state WHERE schema_name = %s AND mv_name = %s
"""

# A marker of these sources from a transaction the snapshot did not see (xids below its xmin it saw).
_PENDING = """
SELECT m.source_oid, min(m.changed_at), count(*)
FROM ops.mv_source_change AS m
WHERE m.source_oid = ANY (%(sources)s::oid[]) AND m.xid >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(m.xid, %(snapshot)s::pg_snapshot)
GROUP BY m.source_oid
"""

_RECORD = """
INSERT INTO ops.mv_refresh_state AS s
    (schema_name, mv_name, view_oid, snapshot, sources, basis, provable, unprovable_why, refresh_log_id,
     rows_after_refresh)
VALUES (%(schema)s, %(name)s, %(oid)s, %(snapshot)s::pg_snapshot, %(sources)s, %(basis)s, %(provable)s,
        %(why)s, %(log_id)s, %(rows)s)
ON CONFLICT (schema_name, mv_name) DO UPDATE SET
    view_oid = EXCLUDED.view_oid, snapshot = EXCLUDED.snapshot, sources = EXCLUDED.sources,
    basis = EXCLUDED.basis, provable = EXCLUDED.provable, unprovable_why = EXCLUDED.unprovable_why,
    refresh_log_id = EXCLUDED.refresh_log_id, rows_after_refresh = EXCLUDED.rows_after_refresh,
    updated_at = clock_timestamp()
"""


@dataclass(frozen=True)
class Proof:
    """The verdict for one refresh: ``unchanged`` (skip the REFRESH) or why it must run."""

    unchanged: bool
    reason: str  # for the log: what the UNCHANGED relies on, or why a refresh was needed
    snapshot: str  # the transaction's snapshot
    tracking: Tracking
    relies_on: int | None = None  # the log id of the last real refresh
    rows: int | None = None  # carried over from it


def prove(conn: psycopg.Connection, spec: ViewSpec, view_oid: int, populated: bool,
          catalog_view_oids: set[int]) -> Proof:
    """Decide, inside the refresh's REPEATABLE READ transaction, whether the view is provably unchanged."""
    snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
    tracking = inspect(conn, [view_oid], catalog_view_oids)[view_oid]

    def refresh(why: str) -> Proof:
        return Proof(False, why, snapshot, tracking)

    if tracking.unprovable:
        return refresh("not provably unchanged: " + "; ".join(tracking.unprovable))
    if not populated:
        return refresh("")  # the PLAIN refresh's own reason says it: the view is not populated
    state = conn.execute(_STATE, spec.key).fetchone()
    if state is None:
        return refresh("not provably unchanged: no refresh through mv-refresh has recorded what it saw yet")
    state_oid, last_snapshot, basis, provable, log_id, rows = state
    if state_oid != view_oid:
        return refresh("not provably unchanged: the view was dropped and created again since its last refresh")
    if not provable:
        return refresh("not provably unchanged: change tracking was not complete at its last refresh")
    if basis != tracking.basis:
        return refresh("not provably unchanged: its definition, the definitions or storage of what it reads, "
                       "or their tracking triggers changed since its last refresh")
    pending = conn.execute(_PENDING, {"sources": tracking.sources, "snapshot": str(last_snapshot)}).fetchall()
    if pending:
        names = _names(conn, [oid for oid, _at, _n in pending])
        changed = ", ".join(f"{names[oid]} ({count} transaction{'s' if count > 1 else ''} since "
                            f"{at:%Y-%m-%d %H:%M:%S%z})" for oid, at, count in pending)
        return refresh(f"changed: {changed}")
    return Proof(True, f"unchanged since refresh #{log_id}: no committed change to its "
                       f"{len(tracking.sources)} source(s), same definitions and tracking", snapshot, tracking,
                 relies_on=log_id, rows=rows)


def _names(conn: psycopg.Connection, oids: list[int]) -> dict[int, str]:
    rows = conn.execute("SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class AS c JOIN pg_namespace AS n"
                        " ON n.oid = c.relnamespace WHERE c.oid = ANY (%s::oid[])", (oids,)).fetchall()
    found = {oid: format_qualified_name(schema, name) for oid, schema, name in rows}
    return {oid: found.get(oid, f"relation {oid} (dropped)") for oid in oids}


def record(conn: psycopg.Connection, spec: ViewSpec, view_oid: int, proof: Proof, *, log_id: int | None,
           rows: int | None, refreshed: bool) -> None:
    """What the view's contents reflect now: the snapshot and the basis; a real refresh is also a change
    of the view for the views that read it (a marker, in this same transaction)."""
    tracking = proof.tracking
    conn.execute(_RECORD, {
        "schema": spec.schema, "name": spec.name, "oid": view_oid, "snapshot": proof.snapshot,
        "sources": tracking.sources, "basis": tracking.basis, "provable": not tracking.unprovable,
        "why": "; ".join(tracking.unprovable) or None, "log_id": log_id if refreshed else proof.relies_on,
        "rows": rows,
    })
    if refreshed:
        conn.execute("INSERT INTO ops.mv_source_change (source_oid) VALUES (%s)", (view_oid,))


def set_rows(conn: psycopg.Connection, spec: ViewSpec, rows: int) -> None:
    conn.execute("UPDATE ops.mv_refresh_state SET rows_after_refresh = %s WHERE schema_name = %s AND mv_name = %s",
                 (rows, *spec.key))


def forget_markers_seen_by_all(conn: psycopg.Connection) -> int:
    """Delete the markers every view that reads their source has seen (in its recorded snapshot).

    Exact, whatever long transactions elsewhere on the server hold back: a marker stays only while a view
    reading its table (or catalog view) has a snapshot that does not see it.
    """
    return conn.execute("""
        DELETE FROM ops.mv_source_change AS m
        WHERE NOT EXISTS (SELECT 1 FROM ops.mv_refresh_state AS s
                          WHERE m.source_oid = ANY (s.sources) AND NOT pg_visible_in_snapshot(m.xid, s.snapshot))
    """).rowcount


# May this role record what a refresh saw (V005 applied and the grants given)? A scalar SQL expression.
AVAILABLE = """
SELECT coalesce(bool_and(has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
                         AND (c.relname = 'mv_source_change' OR has_table_privilege(c.oid, 'UPDATE'))), false)
       AND count(*) = 2
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'ops' AND c.relname IN ('mv_source_change', 'mv_refresh_state')
"""


# --------------------------------------------------------------------------------------------------
# track install / status / remove


@dataclass
class TableChange:
    table: str
    action: str  # installed / already / enabled always / removed / kept / not trackable / failed
    detail: str | None = None

    def as_json(self) -> dict:
        return {"table": self.table, "action": self.action, "detail": self.detail}


def _catalog_trees(conn: psycopg.Connection, catalog: Catalog, views: list[ViewSpec]) -> tuple[dict, set[int]]:
    present = dict(conn.execute(
        "SELECT v.ord, c.oid FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS v (s, n, ord)"
        " JOIN pg_namespace AS ns ON ns.nspname = v.s JOIN pg_class AS c ON c.relnamespace = ns.oid"
        " AND c.relname = v.n AND c.relkind = 'm'",
        ([v.schema for v in catalog.views], [v.name for v in catalog.views])).fetchall())
    oids = {catalog.views[ord_ - 1].key: oid for ord_, oid in present.items()}
    chosen = {v.key: oids.get(v.key) for v in views}
    trackings = inspect(conn, [oid for oid in chosen.values() if oid], set(oids.values()))
    return {key: trackings.get(oid) for key, oid in chosen.items()}, set(oids.values())


def install(conn: psycopg.Connection, catalog: Catalog, views: list[ViewSpec], *, lock_timeout: float = 5.0,
            progress: Callable[[str], None] | None = None) -> list[TableChange]:
    """Put the trigger on every table the views read; one short transaction per table (``conn`` autocommit)."""
    say = progress or (lambda _line: None)
    trackings, _ = _catalog_trees(conn, catalog, views)
    tables: dict[int, Relation] = {}
    for key, tracking in trackings.items():
        if tracking is None:
            say(f"{format_qualified_name(*key)}: not a materialized view in the database; nothing to track")
            continue
        tables.update({t.oid: t for t in tracking.tree.tables})
    existing = {relid: t for tracking in trackings.values() if tracking for relid, t in tracking.triggers.items()}
    changes = []
    for oid, table in sorted(tables.items(), key=lambda item: item[1].key):
        trigger = existing.get(oid)
        if trigger is not None and trigger.enabled == "A":
            changes.append(TableChange(table.display_name, "already"))
            say(f"  {table.display_name}: already tracked")
            continue
        target = sql.Identifier(table.schema, table.name)
        try:
            with conn.transaction():
                pg.set_timeouts(conn, lock=lock_timeout, local=True)
                if trigger is None:
                    conn.execute(sql.SQL(
                        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                        "FOR EACH STATEMENT EXECUTE FUNCTION ops.mv_source_changed()"
                    ).format(sql.Identifier(TRIGGER_NAME), target))
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(
                    target, sql.Identifier(TRIGGER_NAME)))
        except psycopg.Error as exc:
            detail = _install_fix(exc, table)
            changes.append(TableChange(table.display_name, "failed", detail))
            say(f"  {table.display_name}: FAILED {detail}")
            continue
        action = "installed" if trigger is None else "enabled always"
        changes.append(TableChange(table.display_name, action))
        say(f"  {table.display_name}: {action}")
    return changes


def _install_fix(exc: psycopg.Error, table: Relation) -> str:
    text = f"[{exc.sqlstate}] {safe_message(exc)}"
    if exc.sqlstate == "42501":
        text += (f"; the trigger needs the owner of {table.display_name} (ENABLE ALWAYS is the owner's), and "
                 f"EXECUTE on {TRIGGER_FUNCTION}: run `mv-refresh track install` as that role")
    elif exc.sqlstate == "55P03":
        text += "; a long transaction holds the table: run `mv-refresh track install` again when it ends"
    return text


def remove(conn: psycopg.Connection, catalog: Catalog, views: list[ViewSpec],
           progress: Callable[[str], None] | None = None) -> list[TableChange]:
    """Drop the trigger from the tables the views read, except those another catalog view still reads."""
    say = progress or (lambda _line: None)
    chosen, _ = _catalog_trees(conn, catalog, views)
    others, _ = _catalog_trees(conn, catalog, [v for v in catalog.views if v.key not in chosen])
    still_read: dict[int, str] = {}
    for key, tracking in others.items():
        for table in tracking.tree.tables if tracking else ():
            still_read.setdefault(table.oid, format_qualified_name(*key))
    changes = []
    seen: set[int] = set()
    for tracking in chosen.values():
        for table in tracking.tree.tables if tracking else ():
            if table.oid in seen or table.oid not in tracking.triggers:
                continue
            seen.add(table.oid)
            if table.oid in still_read:
                changes.append(TableChange(table.display_name, "kept", f"{still_read[table.oid]} reads it too"))
                say(f"  {table.display_name}: kept ({still_read[table.oid]} reads it too)")
                continue
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(TRIGGER_NAME), sql.Identifier(table.schema, table.name)))
            changes.append(TableChange(table.display_name, "removed"))
            say(f"  {table.display_name}: removed")
    return changes


def status(conn: psycopg.Connection, catalog: Catalog, views: list[ViewSpec]) -> list[dict]:
    """Per view: each source and whether it is tracked, and whether the view can be proven unchanged."""
    trackings, _ = _catalog_trees(conn, catalog, views)
    report = []
    for spec in views:
        tracking = trackings[spec.key]
        if tracking is None:
            report.append({"view": spec.display_name, "provable": False, "sources": [],
                           "why_not": ["not a materialized view in the database"]})
            continue
        tree = tracking.tree
        sources = [{"source": t.display_name + tree.through(t), "kind": "table", "state": tracking.table_state(t)}
                   for t in tree.tables]
        sources += [{"source": m.display_name + tree.through(m), "kind": "materialized view",
                     "state": "catalog view" if m.oid in tracking.catalog_views else "outside the catalog"}
                    for m in tree.matviews]
        sources += [{"source": f.display_name + tree.through(f), "kind": "foreign table", "state": "not trackable"}
                    for f in tree.foreign_tables]
        report.append({"view": spec.display_name, "provable": not tracking.unprovable, "sources": sources,
                       "why_not": tracking.unprovable})
    return report
