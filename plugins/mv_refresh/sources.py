"""What a materialized view reads, from PostgreSQL's own catalogs (``pg_rewrite``, ``pg_depend``, ``pg_inherits``).

A view's *tree* starts at its rewrite rule and descends through plain views (whose rules are read too) down
to the relations that hold data: tables (with their partitions and inheritance children, which a query of
the parent reads), foreign tables and materialized views. Alongside, the functions and operators its rules
call (by the node tree: built-in functions are pinned and never appear in ``pg_depend``) with their
volatility, and the node kinds whose result depends on the session or the clock.

Used by change tracking (which tables to put triggers on; what a proof must check), by ``plan`` (each view's
sources), ``plan --validate`` (the declared ``upstream`` against the real reads) and ``plan --discover``
(a catalog written from the database). Nothing is ever parsed from SQL text: the relations and functions
are the catalogs' own rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from .catalog import format_qualified_name

USER_OID_START = 16384  # FirstNormalObjectId: below it, PostgreSQL's own objects (never redefined)

# Every relation reachable from the roots: descend from each root and through plain views only; then the
# inheritance descendants (partitions, children) of every relation reached. `via` is the chain of plain
# views a relation is read through (empty when the root reads it directly; the shortest chain wins).
_TREE = """
WITH RECURSIVE walk (root, relid, via) AS (
    SELECT r, r, ARRAY[]::oid[] FROM unnest(%(roots)s::oid[]) AS r
  UNION ALL
    SELECT w.root, d.refobjid, CASE WHEN w.relid = w.root THEN w.via ELSE w.via || w.relid END
    FROM walk AS w
    JOIN pg_class AS c ON c.oid = w.relid
    JOIN pg_rewrite AS rw ON rw.ev_class = w.relid
    JOIN pg_depend AS d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> w.relid
    WHERE (w.relid = w.root OR c.relkind = 'v') AND NOT d.refobjid = ANY (w.via)
),
reached AS (
    SELECT DISTINCT ON (root, relid) root, relid, via FROM walk ORDER BY root, relid, cardinality(via)
),
family (root, relid, via) AS (
    SELECT root, relid, via FROM reached
  UNION
    SELECT f.root, i.inhrelid, f.via FROM family AS f JOIN pg_inherits AS i ON i.inhparent = f.relid
)
SELECT DISTINCT ON (f.root, f.relid) f.root, c.oid, c.relkind::text, n.nspname::text, c.relname::text,
       c.relfilenode, f.via, CASE WHEN c.relkind IN ('m', 'v') THEN md5(pg_get_viewdef(c.oid)) END
FROM family AS f
JOIN pg_class AS c ON c.oid = f.relid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
ORDER BY f.root, f.relid, cardinality(f.via)
"""

# What the rewrite rules call, by the node tree's own fields. OpExpr keeps only the operator in a stored
# rule (its opfuncid is looked up at run time), so operators go through pg_operator.oprcode.
_CALLS = r"""
SELECT DISTINCT r.ev_class, p.oid, p.oid::regprocedure::text, p.provolatile::text, p.xmin::text
FROM pg_rewrite AS r
CROSS JOIN LATERAL regexp_matches(r.ev_action::text, ':(funcid|opfuncid|aggfnoid|winfnoid|opno) (\d+)', 'g') AS m
LEFT JOIN pg_operator AS o ON m[1] = 'opno' AND o.oid = m[2]::oid
JOIN pg_proc AS p ON p.oid = CASE WHEN m[1] = 'opno' THEN o.oprcode::oid ELSE m[2]::oid END
WHERE r.ev_class = ANY (%(rules)s::oid[])
"""

# Node kinds whose value depends on the clock, the session or chance, whatever functions are called.
_SPECIAL_NODES = {
    "SQLVALUEFUNCTION": "reads the clock or the session (CURRENT_DATE, CURRENT_TIMESTAMP, CURRENT_USER, ...)",
    "COERCEVIAIO": "casts a value through its text form, whose result can depend on session settings "
                   "(TimeZone, DateStyle)",
    "TABLESAMPLECLAUSE": "samples a table (TABLESAMPLE)",
}
_SPECIAL = """
SELECT r.ev_class, array_remove(ARRAY[{checks}], NULL)
FROM pg_rewrite AS r WHERE r.ev_class = ANY (%(rules)s::oid[])
""".format(checks=", ".join(f"CASE WHEN r.ev_action::text LIKE '%%{{{node} %%' THEN '{node}' END"
                             for node in _SPECIAL_NODES))

RELKIND_WORDS = {"r": "table", "p": "partitioned table", "f": "foreign table", "m": "materialized view",
                 "v": "view", "S": "sequence"}
VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}


@dataclass(frozen=True)
class Relation:
    oid: int
    relkind: str
    schema: str
    name: str
    relfilenode: int
    via: tuple[int, ...] = ()  # oids of the plain views it is read through
    definition_md5: str | None = None  # views and materialized views

    @property
    def display_name(self) -> str:
        return format_qualified_name(self.schema, self.name)

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)


@dataclass(frozen=True)
class Call:
    oid: int
    signature: str
    volatility: str  # i / s / v
    row_version: str  # pg_proc.xmin: changes when the function is redefined


@dataclass
class Tree:
    """Everything one materialized view reads, and what its query calls."""

    root: Relation
    relations: list[Relation] = field(default_factory=list)  # everything below the root
    calls: list[Call] = field(default_factory=list)
    special_nodes: list[str] = field(default_factory=list)

    def of_kind(self, *relkinds: str) -> list[Relation]:
        return [r for r in self.relations if r.relkind in relkinds]

    @property
    def tables(self) -> list[Relation]:
        """Tables a change of which changes the view: plain and partitioned tables, partitions, children."""
        return self.of_kind("r", "p")

    @property
    def matviews(self) -> list[Relation]:
        return self.of_kind("m")

    @property
    def plain_views(self) -> list[Relation]:
        return self.of_kind("v")

    @property
    def foreign_tables(self) -> list[Relation]:
        return self.of_kind("f")

    @property
    def mutable_calls(self) -> list[Call]:
        return [c for c in self.calls if c.volatility != "i"]

    def through(self, relation: Relation) -> str:
        """`` (through the plain view v1 -> v2)`` for messages; empty when read directly."""
        if not relation.via:
            return ""
        names = {r.oid: r.display_name for r in self.relations}
        chain = " -> ".join(names.get(oid, str(oid)) for oid in relation.via)
        return f" (through the plain view{'s' if len(relation.via) > 1 else ''} {chain})"

    def fingerprint_parts(self) -> list[str]:
        """What must stay as it is for the view to keep its meaning: the definitions of the view and of every
        plain view in its tree, the relations it reads (and their storage, which TRUNCATE, a table rewrite or
        a plain REFRESH replaces), and the user functions it calls (their rows change when redefined)."""
        parts = [f"def {self.root.oid} {self.root.definition_md5}"]
        for rel in self.relations:
            if rel.relkind == "v":
                parts.append(f"def {rel.oid} {rel.definition_md5}")
            else:
                parts.append(f"rel {rel.oid} {rel.relkind} {rel.relfilenode}")
        parts += [f"fn {c.oid} {c.row_version}" for c in self.calls if c.oid >= USER_OID_START]
        return parts


def read_trees(conn: psycopg.Connection, roots: Iterable[int]) -> dict[int, Tree]:
    """The tree of each root oid (a materialized view), read in three queries whatever their number."""
    roots = sorted(set(roots))
    trees: dict[int, Tree] = {}
    rows = conn.execute(_TREE, {"roots": roots}).fetchall()
    for root, oid, relkind, schema, name, relfilenode, via, md5 in rows:
        relation = Relation(oid, relkind, schema, name, relfilenode, tuple(via or ()), md5)
        if oid == root:
            trees[root] = Tree(relation)
    for root, oid, relkind, schema, name, relfilenode, via, md5 in rows:
        if oid != root and root in trees:
            trees[root].relations.append(Relation(oid, relkind, schema, name, relfilenode, tuple(via or ()), md5))
    rule_owner: dict[int, list[int]] = {}
    for root, tree in trees.items():
        for rel in [tree.root, *tree.plain_views]:
            rule_owner.setdefault(rel.oid, []).append(root)
    rules = sorted(rule_owner)
    for ev_class, oid, signature, volatility, xmin in conn.execute(_CALLS, {"rules": rules}):
        for root in rule_owner[ev_class]:
            if all(c.oid != oid for c in trees[root].calls):
                trees[root].calls.append(Call(oid, signature, volatility, xmin))
    for ev_class, nodes in conn.execute(_SPECIAL, {"rules": rules}):
        for root in rule_owner[ev_class]:
            trees[root].special_nodes.extend(n for n in nodes if n not in trees[root].special_nodes)
    for tree in trees.values():
        tree.relations.sort(key=lambda r: (r.schema, r.name))
        tree.calls.sort(key=lambda c: c.signature)
    return trees


def special_node_reason(node: str) -> str:
    return _SPECIAL_NODES[node]


def digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


_MATVIEWS_IN = """
SELECT c.oid, n.nspname::text, c.relname::text
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname = ANY (%s::text[])
ORDER BY n.nspname, c.relname
"""

# A unique index CONCURRENTLY can use, with its columns in index order (the grain).
_GRAIN = """
SELECT DISTINCT ON (i.indrelid) i.indrelid,
       ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, n)
             JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)
FROM pg_index AS i
WHERE i.indrelid = ANY (%s::oid[]) AND i.indisunique AND i.indisvalid AND i.indislive
  AND i.indpred IS NULL AND i.indexprs IS NULL
ORDER BY i.indrelid, i.indnatts, i.indexrelid
"""


def discover_catalog(conn: psycopg.Connection, schemas: list[str]) -> str:
    """A catalog (YAML text) for every materialized view of ``schemas``, in a topological order.

    ``upstream`` lists the discovered views each one reads (directly or through plain views); ``grain`` is
    the shortest unique index CONCURRENTLY can use. Reads of materialized views outside the schemas are
    noted in a comment (nothing here would refresh them).
    """
    from graphlib import TopologicalSorter

    views = conn.execute(_MATVIEWS_IN, (schemas,)).fetchall()
    by_oid = {oid: format_qualified_name(schema, name) for oid, schema, name in views}
    trees = read_trees(conn, by_oid)
    grains = dict(conn.execute(_GRAIN, (list(by_oid),)).fetchall())
    graph = {oid: {m.oid for m in trees[oid].matviews if m.oid in by_oid} for oid in by_oid}
    sorter = TopologicalSorter(graph)
    order: list[int] = []
    sorter.prepare()
    while sorter.is_active():  # each wave in name order: the same database gives the same text
        ready = sorted(sorter.get_ready(), key=by_oid.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    lines = [
        "# yaml-language-server: $schema=./mv_refresh.schema.json",
        f"# Written by `mv-refresh plan --discover {' '.join(schemas)}`: every materialized view of those schemas,",
        "# upstream before downstream. Mark the views an alert should watch `critical: true`.",
        "version: 1",
        "views:",
    ]
    for oid in order:
        lines.append(f"  - name: {_yaml_text(by_oid[oid])}")
        upstream = sorted(graph[oid], key=order.index)
        if upstream:
            lines.append(f"    upstream: [{', '.join(_yaml_text(by_oid[u]) for u in upstream)}]")
        if grains.get(oid):
            lines.append(f"    grain: [{', '.join(_yaml_text(_column(c)) for c in grains[oid])}]")
        outside = [m.display_name for m in trees[oid].matviews if m.oid not in by_oid]
        if outside:
            lines.append(f"    # also reads {', '.join(outside)}, outside these schemas: refreshed elsewhere")
    return "\n".join(lines) + "\n"


_PLAIN_YAML = re.compile(r"[a-z_][a-z0-9_$.]*")


def _column(name: str) -> str:
    return format_qualified_name("x", name).split(".", 1)[1]


def _yaml_text(text: str) -> str:
    """A YAML scalar for a (quoted-as-needed) name: plain when safe, else single-quoted."""
    if _PLAIN_YAML.fullmatch(text):
        return text
    return "'" + text.replace("'", "''") + "'"
