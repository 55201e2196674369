"""The catalog of materialized views (``include/mv_refresh.yaml``) and its strict loader.

The catalog is the allow-list: nothing outside it is ever refreshed. It lists the views in canonical
(refresh) order with their settings, and it is validated when loaded: every problem is a
:class:`CatalogError` that names the file, the line, the entry and the fix.

The loader walks the YAML node tree (``yaml.compose``) instead of loading plain Python objects, so that
every value keeps its line number and a key repeated inside one mapping is caught (PyYAML would silently
keep the last one).

Names follow PostgreSQL's rules: ``schema.name`` where each part is a lowercase unquoted identifier
(``[a-z_][a-z0-9_$]*``) or a double-quoted one (``"Weird MV"``, ``""`` for a quote inside), at most
63 bytes in UTF-8. Parsed names are kept unquoted, as PostgreSQL stores them in the catalogs
(``pg_class.relname``); build SQL from them with ``psycopg.sql.Identifier``, never by formatting text.

Nothing here imports Airflow.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mv_refresh.paths import catalog_path

__all__ = [
    "DEFAULT_CONNECTION_ID",
    "MODES",
    "NAME_MAX_BYTES",
    "VIEW_DEFAULTS",
    "Catalog",
    "CatalogError",
    "ViewSpec",
    "format_qualified_name",
    "load_catalog",
    "parse_catalog",
    "parse_identifier",
    "parse_qualified_name",
]

#: PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated by the server.
NAME_MAX_BYTES = 63
#: Refresh modes: ``auto`` (CONCURRENTLY when possible, else plain, logging why), ``concurrently``
#: (never fall back), ``plain``.
MODES = ("auto", "concurrently", "plain")
SUPPORTED_VERSION = 1
DEFAULT_CONNECTION_ID = "postgres_default"
#: Settings a view inherits when neither the view nor ``defaults:`` sets them.
VIEW_DEFAULTS: dict[str, Any] = {
    "mode": "auto",
    "warn_after_hours": 24.0,
    "crit_after_hours": 48.0,
    "lock_timeout_seconds": 60.0,
    "statement_timeout_seconds": 3600.0,
}

TOP_LEVEL_KEYS = ("version", "connection_id", "defaults", "views")
VIEW_KEYS = (
    "name",
    "description",
    "critical",
    "grain",
    "upstream",
    "mode",
    "warn_after_hours",
    "crit_after_hours",
    "lock_timeout_seconds",
    "statement_timeout_seconds",
)
DEFAULTABLE_KEYS = tuple(VIEW_DEFAULTS)
_HOUR_KEYS = ("warn_after_hours", "crit_after_hours")
_TIMEOUT_KEYS = ("lock_timeout_seconds", "statement_timeout_seconds")
# lock_timeout / statement_timeout are int milliseconds in PostgreSQL: below 1 ms rounds to 0, which
# means "no timeout", and above INT_MAX ms the SET fails.
_MIN_TIMEOUT_SECONDS = 0.001
_MAX_TIMEOUT_SECONDS = 2_147_483.647
_MAX_HOURS = 876_000.0  # 100 years: anything above is a typo, and keeps interval arithmetic sane
_MAX_CONNECTION_ID_LENGTH = 250

# Keys people reach for that mean one of ours (difflib cannot guess these from spelling).
_KEY_HINTS = {
    "depends_on": "upstream",
    "dependencies": "upstream",
    "deps": "upstream",
    "parents": "upstream",
    "sources": "upstream",
    "unique_key": "grain",
    "unique_columns": "grain",
    "key_columns": "grain",
    "primary_key": "grain",
    "keys": "grain",
    "method": "mode",
    "refresh_mode": "mode",
    "concurrent": "mode",
    "concurrently": "mode",
    "lock_timeout": "lock_timeout_seconds",
    "statement_timeout": "statement_timeout_seconds",
    "timeout": "statement_timeout_seconds",
    "mv": "name",
    "view": "name",
    "conn_id": "connection_id",
    "postgres_conn_id": "connection_id",
    "connection": "connection_id",
    "materialized_views": "views",
    "mvs": "views",
}

_MERGE_TAG = "tag:yaml.org,2002:merge"
_UNQUOTED_RE = re.compile(r"[a-z_][a-z0-9_$]*")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_TASK_SAFE_RE = re.compile(r"[a-z_][a-z0-9_]*")
_TASK_UNSAFE_CHAR_RE = re.compile(r"[^A-Za-z0-9_]")
_LOOKS_NUMERIC_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TASK_ID_MAX = 250  # Airflow's limit on task ids

# --------------------------------------------------------------------------------------------------
# Errors


class CatalogError(ValueError):
    """A catalog (or a view name) that cannot be used, with where it is and how to fix it.

    ``source`` is the catalog file (or ``None`` for a name given elsewhere, e.g. on the command line),
    ``line`` the 1-based line in it (``None`` when no line applies, e.g. a missing file), ``entry`` the
    thing at fault (``views[2].mode (ops.mv_x)``, a view name, a top-level key), ``problem`` what is wrong
    and ``fix`` what to do about it.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        entry: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.entry = entry
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        where = ", ".join(
            part for part in (self.source, f"line {self.line}" if self.line is not None else None) if part
        )
        text = self.problem
        if self.entry:
            text = f"{self.entry}: {text}"
        if where:
            text = f"{where}: {text}"
        if self.fix:
            text = f"{text.rstrip('.')}. Fix: {self.fix}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.problem, self.source, self.line, self.entry, self.fix))


def _rebuild_error(cls: type[CatalogError], problem, source, line, entry, fix) -> CatalogError:
    return cls(problem, source=source, line=line, entry=entry, fix=fix)


# --------------------------------------------------------------------------------------------------
# Names


class _NameProblem(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _show(text: object, limit: int = 80) -> str:
    """A printable, bounded rendering of user input for messages."""
    if isinstance(text, str) and len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    if isinstance(text, int) and text.bit_length() > 256:
        # YAML reads hex/binary/sexagesimal literals of any length; Python refuses to print an int of
        # more than 4,300 digits, and no setting wants one anyway.
        return f"an integer of {text.bit_length():,} bits"
    shown = repr(text)
    return shown if len(shown) <= limit + 2 else shown[:limit] + "..."


_QUOTE_FIX = 'double-quote a part that really contains such characters, e.g. ops."my view"'


def _scan_identifier(text: str, pos: int, role: str) -> tuple[str, int]:
    """Read one identifier of ``text`` starting at ``pos``; return its unquoted value and the end."""
    if pos >= len(text):
        raise _NameProblem(f"the {role} is missing", "write it as schema.name")
    first = text[pos]
    if first == '"':
        pieces: list[str] = []
        i = pos + 1
        while True:
            j = text.find('"', i)
            if j < 0:
                raise _NameProblem(
                    f"the double quote opened at position {pos} is never closed",
                    'close the quoted identifier with " (write a double quote inside it as "")',
                )
            pieces.append(text[i:j])
            if text.startswith('"', j + 1):  # "" is an escaped quote inside a quoted identifier
                pieces.append('"')
                i = j + 2
                continue
            end = j + 1
            break
        value = "".join(pieces)
        if not value:
            raise _NameProblem(
                f'the {role} is an empty quoted identifier ("")',
                "PostgreSQL has no empty identifiers: write the real name",
            )
        if "\x00" in value:
            raise _NameProblem(
                f"the {role} contains a NUL character", "remove it: PostgreSQL names cannot hold NUL"
            )
    else:
        match = _WORD_RE.match(text, pos)
        if match is None:
            raise _NameProblem(
                f"unexpected {first!r} at position {pos} where the {role} should start",
                "an unquoted identifier starts with a lowercase letter or _ and holds only a-z, 0-9, _ "
                f"and $; {_QUOTE_FIX}",
            )
        value = match.group()
        end = match.end()
        if not _UNQUOTED_RE.fullmatch(value):
            raise _NameProblem(
                f"the unquoted {role} {value!r} has uppercase letters (PostgreSQL folds unquoted names "
                "to lowercase, so it would name a different object)",
                "write it in lowercase, or double-quote it to keep the case",
            )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _NameProblem(
            f"the {role} is not valid Unicode (it holds a lone surrogate)", "write the name in valid UTF-8"
        ) from None
    if size > NAME_MAX_BYTES:
        raise _NameProblem(
            f"the {role} is {size} bytes long in UTF-8; PostgreSQL identifiers hold at most "
            f"{NAME_MAX_BYTES} bytes (NAMEDATALEN) and longer ones are silently truncated",
            f"shorten it to {NAME_MAX_BYTES} bytes or fewer",
        )
    return value, end


def _parse_qualified(text: object) -> tuple[str, str]:
    if not isinstance(text, str):
        raise _NameProblem(f"a view name must be text, not {type(text).__name__}", "write it as schema.name")
    if not text:
        raise _NameProblem("the name is empty", "write it as schema.name, e.g. ops.mv_orders")
    if text != text.strip():
        raise _NameProblem("the name has whitespace around it", "remove the whitespace: write schema.name")
    if text.startswith("."):
        raise _NameProblem("the schema before the '.' is empty", "write it as schema.name")
    schema, pos = _scan_identifier(text, 0, "schema")
    if pos == len(text):
        raise _NameProblem(
            "the schema is missing (only one part was given)",
            f"write it as schema.name, e.g. ops.{text}",
        )
    if text[pos] != ".":
        raise _NameProblem(
            f"unexpected {text[pos : pos + 20]!r} at position {pos} after the schema",
            f"write it as schema.name; {_QUOTE_FIX}",
        )
    pos += 1
    if pos == len(text):
        raise _NameProblem("the name after the '.' is empty", "write it as schema.name")
    name, pos = _scan_identifier(text, pos, "name")
    if pos < len(text):
        if text[pos] == ".":
            raise _NameProblem(
                "too many dotted parts: a view is named by exactly two (schema.name)",
                "write it as schema.name, without a database or another qualifier",
            )
        raise _NameProblem(
            f"unexpected {text[pos : pos + 20]!r} at position {pos} after the name",
            f"remove it: a view name is schema.name and nothing else; {_QUOTE_FIX}",
        )
    return schema, name


def parse_qualified_name(
    text: str, *, source: str | None = None, line: int | None = None, entry: str | None = None
) -> tuple[str, str]:
    """Parse ``schema.name`` (each part plain lowercase or double-quoted) into its unquoted parts.

    ``'ops."Weird MV"'`` gives ``("ops", "Weird MV")``. Anything else (one part, three parts,
    whitespace, trailing text such as ``; drop table x``, uppercase unquoted letters, a part over 63
    bytes) raises :class:`CatalogError`; no other exception escapes for any ``str`` input. ``source``,
    ``line`` and ``entry`` only label the error.
    """
    try:
        return _parse_qualified(text)
    except _NameProblem as exc:
        raise CatalogError(
            f"invalid view name {_show(text)}: {exc.problem}",
            source=source,
            line=line,
            entry=entry,
            fix=exc.fix,
        ) from None


def parse_identifier(
    text: str, *, source: str | None = None, line: int | None = None, entry: str | None = None
) -> str:
    """Parse one identifier (a column of a grain) with the rules of :func:`parse_qualified_name`."""
    try:
        if not isinstance(text, str):
            raise _NameProblem(
                f"a column name must be text, not {type(text).__name__}", "write the column name"
            )
        if not text:
            raise _NameProblem("the column name is empty", "write the column name")
        if text != text.strip():
            raise _NameProblem("the column name has whitespace around it", "remove the whitespace")
        value, pos = _scan_identifier(text, 0, "column name")
        if pos < len(text):
            if text[pos] == ".":
                raise _NameProblem(
                    "a column name has exactly one part",
                    "write the bare column name, without a table or schema",
                )
            raise _NameProblem(
                f"unexpected {text[pos : pos + 20]!r} at position {pos} after the column name",
                f"remove it; {_QUOTE_FIX.replace('ops.', '')}",
            )
        return value
    except _NameProblem as exc:
        raise CatalogError(
            f"invalid column name {_show(text)}: {exc.problem}",
            source=source,
            line=line,
            entry=entry,
            fix=exc.fix,
        ) from None


def _display_identifier(value: str) -> str:
    if _UNQUOTED_RE.fullmatch(value):
        return value
    return '"' + value.replace('"', '""') + '"'


def format_qualified_name(schema: str, name: str) -> str:
    """``schema.name`` for people, quoting a part only when it is not a plain lowercase identifier.

    The result parses back with :func:`parse_qualified_name`. It is for messages and logs, not SQL
    (it does not quote reserved words): build SQL with ``psycopg.sql.Identifier``.
    """
    return f"{_display_identifier(schema)}.{_display_identifier(name)}"


def _task_id(schema: str, name: str) -> str:
    if _TASK_SAFE_RE.fullmatch(name) and len(name) <= _TASK_ID_MAX - len("refresh_"):
        return f"refresh_{name}"
    raw = f"refresh_{schema}_{name}"
    safe = _TASK_UNSAFE_CHAR_RE.sub("_", raw)
    if safe != raw or len(safe) > _TASK_ID_MAX:
        # NUL cannot occur in an identifier, so it separates the parts unambiguously.
        digest = hashlib.sha256(f"{schema}\x00{name}".encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[: _TASK_ID_MAX - 9]}_{digest}"
    return safe


# --------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class ViewSpec:
    """One view of the catalog, with every setting resolved (the view's own, else defaults)."""

    schema: str
    name: str
    description: str | None = None
    critical: bool = False
    grain: tuple[str, ...] = ()
    upstream: tuple[tuple[str, str], ...] = ()
    mode: str = "auto"
    warn_after_hours: float = 24.0
    crit_after_hours: float = 48.0
    lock_timeout_seconds: float = 60.0
    statement_timeout_seconds: float = 3600.0
    on_unchanged: str = "skip"
    position: int = 0
    line: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """``(schema, name)``, unquoted: how the log and ``pg_class`` name the view."""
        return (self.schema, self.name)

    @property
    def display_name(self) -> str:
        """``schema.name``, double-quoting a part only when needed; parses back to :attr:`key`."""
        return format_qualified_name(self.schema, self.name)

    @property
    def task_id(self) -> str:
        """The Airflow task id: ``refresh_<name>`` for a plain name.

        Other names give ``refresh_<schema>_<name>`` with every character outside ``[A-Za-z0-9_]``
        replaced by ``_`` and, when that changed anything, a stable 8-hex-digit hash of the real name
        appended (so two names that sanitize alike still differ).
        """
        return _task_id(self.schema, self.name)

    def __str__(self) -> str:
        return self.display_name


#: How callers name a view: ``"schema.name"`` text, a ``(schema, name)`` key, or the ViewSpec itself.
ViewRef = str | tuple[str, str] | ViewSpec


@dataclass(frozen=True)
class Catalog:
    """The views, in canonical order, and where they came from."""

    source: str
    connection_id: str
    views: tuple[ViewSpec, ...]
    _by_key: dict[tuple[str, str], ViewSpec] = field(init=False, repr=False, compare=False)
    _readers: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        views = tuple(self.views)
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "_by_key", {view.key: view for view in views})
        readers: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for view in views:
            for up in view.upstream:
                readers.setdefault(up, []).append(view.key)
        object.__setattr__(self, "_readers", {key: tuple(keys) for key, keys in readers.items()})

    # -- lookups ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ViewSpec]:
        return iter(self.views)

    def __len__(self) -> int:
        return len(self.views)

    def __contains__(self, ref: object) -> bool:
        try:
            return self._key_of(ref) in self._by_key  # type: ignore[arg-type]
        except CatalogError:
            return False

    @property
    def names(self) -> list[str]:
        """The display names, in canonical order."""
        return [view.display_name for view in self.views]

    @property
    def critical_views(self) -> list[ViewSpec]:
        """The views marked ``critical: true``, in canonical order."""
        return [view for view in self.views if view.critical]

    def _key_of(self, ref: ViewRef) -> tuple[str, str]:
        if isinstance(ref, ViewSpec):
            return ref.key
        if isinstance(ref, tuple):
            if len(ref) == 2 and all(isinstance(part, str) for part in ref):
                return (ref[0], ref[1])
            raise CatalogError(
                f"a view key must be a (schema, name) pair of strings, not {_show(ref)}",
                entry=_show(ref),
                fix="pass 'schema.name' or ('schema', 'name')",
            )
        if isinstance(ref, str):
            return parse_qualified_name(ref, entry=_show(ref))
        raise CatalogError(
            f"a view is named by text or a (schema, name) pair, not {type(ref).__name__}",
            entry=_show(ref),
            fix="pass 'schema.name' or ('schema', 'name')",
        )

    def _not_listed(
        self, keys: list[tuple[str, str]], malformed: list[CatalogError] | None = None
    ) -> CatalogError:
        shown = [format_qualified_name(*key) for key in keys]
        problems = []
        if shown:
            verb = "is" if len(shown) == 1 else "are"
            problems.append(f"{', '.join(shown)} {verb} not in the catalog")
        for exc in malformed or ():
            problems.append(exc.problem)
        hints = []
        for text in shown:
            close = difflib.get_close_matches(text, self.names, n=1)
            if close:
                hints.append(f"did you mean {close[0]} (for {text})?")
        fix = " ".join(
            hints + [f"the catalog is the allow-list: add it to {self.source} or pick one of: "]
        ) + ", ".join(self.names)
        return CatalogError("; ".join(problems), source=self.source, entry=", ".join(shown) or None, fix=fix)

    def get(self, name: ViewRef) -> ViewSpec:
        """The view named ``schema.name`` (or by its ``(schema, name)`` key); CatalogError if unlisted."""
        key = self._key_of(name)
        view = self._by_key.get(key)
        if view is None:
            raise self._not_listed([key])
        return view

    def select(self, names: Iterable[ViewRef]) -> list[ViewSpec]:
        """The named views in canonical order, each once; one CatalogError lists every unknown name."""
        if isinstance(names, (str, ViewSpec)):
            names = [names]
        wanted: set[tuple[str, str]] = set()
        unknown: list[tuple[str, str]] = []
        malformed: list[CatalogError] = []
        for ref in names:
            try:
                key = self._key_of(ref)
            except CatalogError as exc:
                malformed.append(exc)
                continue
            if key in self._by_key:
                wanted.add(key)
            elif key not in unknown:
                unknown.append(key)
        if unknown or malformed:
            raise self._not_listed(unknown, malformed)
        return [view for view in self.views if view.key in wanted]

    def _closure(
        self, start: tuple[str, str], edges: dict[tuple[str, str], Iterable[tuple[str, str]]]
    ) -> list[ViewSpec]:
        seen: set[tuple[str, str]] = set()
        stack = [start]
        while stack:
            for nxt in edges.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        seen.discard(start)
        return [view for view in self.views if view.key in seen]

    def downstream_of(self, view: ViewRef) -> list[ViewSpec]:
        """Every view that reads ``view``, directly or through others, in canonical order."""
        return self._closure(self.get(view).key, self._readers)

    def upstream_of(self, view: ViewRef) -> list[ViewSpec]:
        """Every view ``view`` reads, directly or through others, in canonical order."""
        edges = {spec.key: spec.upstream for spec in self.views}
        return self._closure(self.get(view).key, edges)


# --------------------------------------------------------------------------------------------------
# Loading


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return f"the value {_show(node.value, 40)}"


def _type_name(value: object) -> str:
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {_show(value, 40)}"
    if isinstance(value, (int, float)):
        return f"the number {_show(value, 40)}"
    return f"{type(value).__name__} {_show(value, 40)}"


def _label(path: str, view: str | None) -> str:
    return f"{path} ({view})" if view else path


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()

    def error(
        self,
        problem: str,
        *,
        node: Node | None = None,
        line: int | None = None,
        entry: str | None = None,
        fix: str | None = None,
    ) -> CatalogError:
        if line is None and node is not None:
            line = _line(node)
        return CatalogError(problem, source=self.source, line=line, entry=entry, fix=fix)

    # -- YAML building blocks -----------------------------------------------------------------------

    def value(self, node: Node, entry: str, expected: str, fix: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(f"expected {expected}, got {_kind(node)}", node=node, entry=entry, fix=fix)
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # a bad explicit tag, a malformed timestamp or base64, ...
            reason = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise self.error(
                f"cannot read the value {_show(node.value, 40)}: {reason}", node=node, entry=entry, fix=fix
            ) from None

    def mapping(
        self, node: Node, entry: str, allowed: tuple[str, ...], *, misplaced: dict[str, str] | None = None
    ) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.error(
                f"expected a mapping of keys ({', '.join(allowed)}), got {_kind(node)}",
                node=node,
                entry=entry,
                fix="write it as `key: value` lines indented under it",
            )
        found: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise self.error(
                    "YAML merge keys (<<) are not supported",
                    node=key_node,
                    entry=entry,
                    fix="write the keys out; settings shared by many views belong in the top-level defaults:",
                )
            key = self.value(key_node, entry, "a key", "write keys as plain words, e.g. `mode: auto`")
            if not isinstance(key, str):
                raise self.error(
                    f"a key must be text, got {_type_name(key)}",
                    node=key_node,
                    entry=entry,
                    fix=f"use one of the allowed keys: {', '.join(allowed)}",
                )
            if key not in allowed:
                if misplaced and key in misplaced:
                    raise self.error(
                        f"key {key!r} is not allowed here", node=key_node, entry=entry, fix=misplaced[key]
                    )
                raise self.error(
                    f"unknown key {key!r}", node=key_node, entry=entry, fix=_unknown_key_fix(key, allowed)
                )
            if key in found:
                first = _line(found[key][0])
                raise self.error(
                    f"key {key!r} appears twice in the same mapping (first at line {first}, again at line "
                    f"{_line(key_node)}); YAML would silently keep only the last",
                    node=key_node,
                    entry=entry,
                    fix=f"keep one of the two {key!r} lines (line {first} or line {_line(key_node)})",
                )
            found[key] = (key_node, value_node)
        return found

    def sequence(self, node: Node, entry: str, fix: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(f"expected a list, got {_kind(node)}", node=node, entry=entry, fix=fix)
        return list(node.value)

    # -- typed values -------------------------------------------------------------------------------

    def text(self, node: Node, entry: str, what: str, fix: str) -> str:
        value = self.value(node, entry, what, fix)
        if not isinstance(value, str):
            raise self.error(f"expected {what}, got {_type_name(value)}", node=node, entry=entry, fix=fix)
        return value

    def boolean(self, node: Node, entry: str) -> bool:
        fix = "write true or false (without quotes)"
        value = self.value(node, entry, "true or false", fix)
        if not isinstance(value, bool):
            raise self.error(
                f"expected true or false, got {_type_name(value)}", node=node, entry=entry, fix=fix
            )
        return value

    def number(self, node: Node, entry: str, key: str) -> float:
        example = _fmt_number(VIEW_DEFAULTS[key])
        fix = f"write a plain number greater than 0, e.g. {key}: {example}"
        value = self.value(node, entry, "a number", fix)
        if isinstance(value, str) and _LOOKS_NUMERIC_RE.fullmatch(value.strip()):
            if "e" in value.lower():
                fix = (
                    f"write it as a plain number without quotes or exponent, e.g. {key}: {example} "
                    "(YAML 1.1 reads 1e3 as text)"
                )
            else:
                fix = f"remove the quotes: {key}: {value.strip()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"expected a number, got {_type_name(value)}", node=node, entry=entry, fix=fix)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.error(
                f"{key} must be a finite number, got {node.value!r}", node=node, entry=entry, fix=fix
            )
        if number <= 0:
            raise self.error(
                f"{key} must be greater than 0, got {node.value}", node=node, entry=entry, fix=fix
            )
        if key in _TIMEOUT_KEYS and not _MIN_TIMEOUT_SECONDS <= number <= _MAX_TIMEOUT_SECONDS:
            raise self.error(
                f"{key} must be between {_MIN_TIMEOUT_SECONDS} and {_MAX_TIMEOUT_SECONDS} seconds "
                f"(PostgreSQL counts it in whole milliseconds, and 0 would mean no timeout), got {node.value}",
                node=node,
                entry=entry,
                fix=fix,
            )
        if key in _HOUR_KEYS and number > _MAX_HOURS:
            raise self.error(
                f"{key} must be at most {_fmt_number(_MAX_HOURS)} hours (100 years), got {node.value}",
                node=node,
                entry=entry,
                fix=fix,
            )
        return number

    def mode(self, node: Node, entry: str) -> str:
        fix = f"use one of: {', '.join(MODES)}"
        value = self.value(node, entry, "a refresh mode", fix)
        if isinstance(value, str) and value not in MODES:
            close = difflib.get_close_matches(value.lower(), MODES, n=1)
            if close:
                fix = f"did you mean {close[0]!r}? Use one of: {', '.join(MODES)}"
        if not isinstance(value, str) or value not in MODES:
            raise self.error(f"unknown refresh mode {_show(value, 40)}", node=node, entry=entry, fix=fix)
        return value

    def setting(self, key: str, node: Node, entry: str) -> Any:
        if key == "mode":
            return self.mode(node, entry)
        return self.number(node, entry, key)

    # -- the document -------------------------------------------------------------------------------

    def parse(self, text: str) -> Catalog:
        root = self.compose(text)
        if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
            raise self.error(
                "the catalog is empty",
                line=1,
                entry="catalog",
                fix="write `version: 1` and a `views:` list (see include/mv_refresh.yaml)",
            )
        top = self.mapping(root, "top level", TOP_LEVEL_KEYS)

        if "version" not in top:
            raise self.error(
                "the catalog has no version",
                node=root,
                entry="version",
                fix=f"add `version: {SUPPORTED_VERSION}` at the top of the file",
            )
        version_node = top["version"][1]
        version_fix = f"write `version: {SUPPORTED_VERSION}` (the only catalog format this mv-refresh reads)"
        version = self.value(version_node, "version", "a version number", version_fix)
        if isinstance(version, bool) or not isinstance(version, int) or version != SUPPORTED_VERSION:
            raise self.error(
                f"unsupported catalog version {_show(version, 40)}",
                node=version_node,
                entry="version",
                fix=version_fix,
            )

        connection_id = DEFAULT_CONNECTION_ID
        if "connection_id" in top:
            conn_node = top["connection_id"][1]
            conn_fix = f"write the Airflow connection id, e.g. `connection_id: {DEFAULT_CONNECTION_ID}`"
            connection_id = self.text(conn_node, "connection_id", "an Airflow connection id", conn_fix)
            if (
                not connection_id
                or len(connection_id) > _MAX_CONNECTION_ID_LENGTH
                or any(ch.isspace() or not ch.isprintable() for ch in connection_id)
            ):
                raise self.error(
                    f"invalid Airflow connection id {_show(connection_id, 40)}: it must be 1 to "
                    f"{_MAX_CONNECTION_ID_LENGTH} characters without spaces",
                    node=conn_node,
                    entry="connection_id",
                    fix=conn_fix,
                )

        defaults = self.defaults(top["defaults"][1]) if "defaults" in top else {}

        if "views" not in top:
            raise self.error(
                "the catalog has no views",
                node=root,
                entry="views",
                fix="add a `views:` list with one `- name: schema.view` entry per materialized view",
            )
        views_node = top["views"][1]
        items = self.sequence(
            views_node, "views", "write views as a list of mappings, each starting with `- name: schema.view`"
        )
        if not items:
            raise self.error(
                "the views list is empty",
                node=views_node,
                entry="views",
                fix="list at least one view: `- name: schema.view`",
            )
        raw_views = [self.view(index, item, defaults) for index, item in enumerate(items)]
        views = self.check_graph(raw_views)
        return Catalog(source=self.source, connection_id=connection_id, views=views)

    def compose(self, text: str) -> Node | None:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            detail = exc.problem or "malformed YAML"
            if exc.context:
                detail = f"{exc.context}, {detail}"
            raise self.error(
                f"invalid YAML: {detail}",
                line=mark.line + 1 if mark is not None else None,
                entry="YAML syntax",
                fix="correct the YAML at that line (indentation, quotes, colons; quote values holding ': ' "
                "or starting with a special character)",
            ) from None
        except yaml.reader.ReaderError as exc:
            line = text[: exc.position].count("\n") + 1 if isinstance(text, str) else None
            raise self.error(
                f"invalid character in the file: {exc.reason} (#x{exc.character:04x})"
                if isinstance(exc.character, int)
                else f"invalid input: {exc.reason}",
                line=line,
                entry="YAML syntax",
                fix="remove the control character (save the file as plain UTF-8 text)",
            ) from None
        except yaml.YAMLError as exc:
            raise self.error(
                f"invalid YAML: {str(exc).splitlines()[0]}",
                line=1,
                entry="YAML syntax",
                fix="correct the YAML syntax",
            ) from None
        except RecursionError:
            raise self.error(
                "the YAML is nested too deeply to read",
                line=1,
                entry="YAML syntax",
                fix="the catalog needs only views: a list of flat mappings",
            ) from None

    def defaults(self, node: Node) -> dict[str, tuple[Any, int]]:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        view_only = {
            key: f"set {key} on each view, not under defaults (defaults may hold: {', '.join(DEFAULTABLE_KEYS)})"
            for key in VIEW_KEYS
            if key not in DEFAULTABLE_KEYS
        }
        found = self.mapping(node, "defaults", DEFAULTABLE_KEYS, misplaced=view_only)
        result: dict[str, tuple[Any, int]] = {}
        for key, (key_node, value_node) in found.items():
            result[key] = (self.setting(key, value_node, f"defaults.{key}"), _line(key_node))
        if "warn_after_hours" in result and "crit_after_hours" in result:
            warn, crit = result["warn_after_hours"][0], result["crit_after_hours"][0]
            if warn >= crit:
                raise self.error(
                    f"warn_after_hours ({_fmt_number(warn)}) must be less than crit_after_hours "
                    f"({_fmt_number(crit)})",
                    line=result["crit_after_hours"][1],
                    entry="defaults",
                    fix="raise crit_after_hours above warn_after_hours, or lower warn_after_hours",
                )
        return result

    def view(self, index: int, node: Node, defaults: dict[str, tuple[Any, int]]) -> _RawView:
        path = f"views[{index}]"
        if not isinstance(node, MappingNode):
            raise self.error(
                f"expected a view (a mapping with at least `name:`), got {_kind(node)}",
                node=node,
                entry=path,
                fix="write each view as `- name: schema.view` followed by its settings, indented",
            )
        found = self.mapping(node, _label(path, _peek_name(node)), VIEW_KEYS)
        if "name" not in found:
            raise self.error(
                "the view has no name", node=node, entry=path, fix="add `name: schema.view` to this entry"
            )
        name_key, name_node = found["name"]
        name_text = self.text(name_node, f"{path}.name", "a view name", "write it as `name: schema.view`")
        schema, name = parse_qualified_name(
            name_text, source=self.source, line=_line(name_node), entry=f"{path}.name"
        )
        shown = format_qualified_name(schema, name)

        def entry(suffix: str) -> str:
            return _label(f"{path}.{suffix}", shown)

        settings: dict[str, Any] = {key: value for key, (value, _line_no) in defaults.items()}
        origin: dict[str, str] = {
            key: f"defaults (line {line_no})" for key, (_v, line_no) in defaults.items()
        }
        for key in DEFAULTABLE_KEYS:
            if key in found:
                key_node, value_node = found[key]
                settings[key] = self.setting(key, value_node, entry(key))
                origin[key] = f"line {_line(key_node)}"
        for key, value in VIEW_DEFAULTS.items():
            settings.setdefault(key, value)
            origin.setdefault(key, "built-in default")
        if settings["warn_after_hours"] >= settings["crit_after_hours"]:
            own = [key for key in ("crit_after_hours", "warn_after_hours") if key in found]
            where = found[own[0]][0] if own else node
            raise self.error(
                f"warn_after_hours ({_fmt_number(settings['warn_after_hours'])}, from "
                f"{origin['warn_after_hours']}) must be less than crit_after_hours "
                f"({_fmt_number(settings['crit_after_hours'])}, from {origin['crit_after_hours']})",
                node=where,
                entry=entry(own[0]) if own else _label(path, shown),
                fix="raise crit_after_hours above warn_after_hours, or lower warn_after_hours",
            )

        description = None
        if "description" in found:
            desc_node = found["description"][1]
            value = self.value(desc_node, entry("description"), "text", "write the description as text")
            if value is not None and not isinstance(value, str):
                raise self.error(
                    f"expected text, got {_type_name(value)}",
                    node=desc_node,
                    entry=entry("description"),
                    fix="put the description in quotes",
                )
            description = (value.strip() or None) if isinstance(value, str) else None

        critical = self.boolean(found["critical"][1], entry("critical")) if "critical" in found else False

        grain: tuple[str, ...] = ()
        if "grain" in found:
            grain = self.grain(found["grain"][1], entry("grain"), f"{path}.grain", shown)

        upstream: list[tuple[tuple[str, str], int, str]] = []
        if "upstream" in found:
            upstream = self.upstream(found["upstream"][1], entry("upstream"), f"{path}.upstream", shown)

        spec = ViewSpec(
            schema=schema,
            name=name,
            description=description,
            critical=critical,
            grain=grain,
            upstream=tuple(key for key, _line_no, _entry in upstream),
            mode=settings["mode"],
            warn_after_hours=float(settings["warn_after_hours"]),
            crit_after_hours=float(settings["crit_after_hours"]),
            lock_timeout_seconds=float(settings["lock_timeout_seconds"]),
            statement_timeout_seconds=float(settings["statement_timeout_seconds"]),
            position=index,
            line=_line(node),
        )
        return _RawView(spec=spec, path=path, name_line=_line(name_key), upstream=upstream)

    def grain(self, node: Node, entry: str, path: str, shown: str) -> tuple[str, ...]:
        fix = "write the columns that identify a row as a list, e.g. grain: [driver_id, milestone_value]"
        items = self.sequence(node, entry, fix)
        if not items:
            raise self.error(
                "the grain is an empty list",
                node=node,
                entry=entry,
                fix=f"{fix}; or remove grain if the view has none",
            )
        columns: list[str] = []
        seen_at: dict[str, int] = {}
        for position, item in enumerate(items):
            item_entry = _label(f"{path}[{position}]", shown)
            text = self.text(item, item_entry, "a column name", fix)
            column = parse_identifier(text, source=self.source, line=_line(item), entry=item_entry)
            if column in seen_at:
                raise self.error(
                    f"column {_display_identifier(column)} is listed twice in the grain (as "
                    f"{path}[{seen_at[column]}] and {path}[{position}])",
                    node=item,
                    entry=item_entry,
                    fix="remove the repeated column",
                )
            seen_at[column] = position
            columns.append(column)
        return tuple(columns)

    def upstream(
        self, node: Node, entry: str, path: str, shown: str
    ) -> list[tuple[tuple[str, str], int, str]]:
        fix = "write the catalog views this view reads as a list, e.g. upstream: [ops.mv_orders], or []"
        items = self.sequence(node, entry, fix)
        result: list[tuple[tuple[str, str], int, str]] = []
        seen_at: dict[tuple[str, str], int] = {}
        for position, item in enumerate(items):
            item_entry = _label(f"{path}[{position}]", shown)
            text = self.text(item, item_entry, "a view name", fix)
            key = parse_qualified_name(text, source=self.source, line=_line(item), entry=item_entry)
            if key in seen_at:
                raise self.error(
                    f"upstream {format_qualified_name(*key)} is listed twice (as {path}[{seen_at[key]}] "
                    f"and {path}[{position}])",
                    node=item,
                    entry=item_entry,
                    fix="remove the repeated entry",
                )
            seen_at[key] = position
            result.append((key, _line(item), item_entry))
        return result

    # -- across views -------------------------------------------------------------------------------

    def check_graph(self, raw_views: list[_RawView]) -> tuple[ViewSpec, ...]:
        by_key: dict[tuple[str, str], _RawView] = {}
        for raw in raw_views:
            first = by_key.get(raw.spec.key)
            if first is not None:
                raise self.error(
                    f"duplicate view {raw.spec.display_name}: it is already listed as {first.path} at line "
                    f"{first.name_line}",
                    line=raw.name_line,
                    entry=_label(raw.path, raw.spec.display_name),
                    fix=f"remove one of the two entries (line {first.name_line} or line {raw.name_line})",
                )
            by_key[raw.spec.key] = raw

        by_task: dict[str, _RawView] = {}
        for raw in raw_views:
            task_id = raw.spec.task_id
            other = by_task.get(task_id)
            if other is not None:
                raise self.error(
                    f"{raw.spec.display_name} and {other.spec.display_name} ({other.path}, line "
                    f"{other.name_line}) would both get the Airflow task id {task_id}",
                    line=raw.name_line,
                    entry=_label(raw.path, raw.spec.display_name),
                    fix="keep only one of them in this catalog (task ids are refresh_<view name>), or "
                    "rename one of the views",
                )
            by_task[task_id] = raw

        known = ", ".join(raw.spec.display_name for raw in raw_views)
        for raw in raw_views:
            for key, line, item_entry in raw.upstream:
                shown = format_qualified_name(*key)
                if key == raw.spec.key:
                    raise self.error(
                        f"{raw.spec.display_name} lists itself as upstream",
                        line=line,
                        entry=item_entry,
                        fix="remove this upstream entry: a view cannot read itself",
                    )
                if key not in by_key:
                    close = difflib.get_close_matches(shown, [r.spec.display_name for r in raw_views], n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise self.error(
                        f"upstream {shown} is not in the catalog",
                        line=line,
                        entry=item_entry,
                        fix=f"{hint}add {shown} to the catalog above {raw.spec.display_name}, or remove it "
                        f"from upstream (upstream names catalog views only: {known})",
                    )

        cycle = _find_cycle(raw_views)
        if cycle is not None:
            edges = []
            for reader, read in zip(cycle, cycle[1:], strict=False):
                raw = by_key[reader]
                line = next(line for key, line, _e in raw.upstream if key == read)
                edges.append((raw, read, line))
            path_text = " -> ".join(format_qualified_name(*key) for key in cycle)
            choices = "; ".join(
                f"{format_qualified_name(*read)} from the upstream of {raw.spec.display_name} (line {line})"
                for raw, read, line in edges
            )
            first_raw, _read, first_line = edges[0]
            raise self.error(
                f"dependency cycle: {path_text} (each view lists the next one as upstream)",
                line=first_line,
                entry=_label(f"{first_raw.path}.upstream", first_raw.spec.display_name),
                fix=f"remove one of these upstream entries: {choices}",
            )

        for raw in raw_views:
            for key, line, item_entry in raw.upstream:
                read = by_key[key]
                if read.spec.position > raw.spec.position:
                    raise self.error(
                        f"upstream {read.spec.display_name} is listed below {raw.spec.display_name} "
                        f"({read.path}, line {read.name_line}), but views are refreshed top to bottom",
                        line=line,
                        entry=item_entry,
                        fix=f"move {read.spec.display_name} above {raw.spec.display_name} (upstream views "
                        "come first in the catalog)",
                    )
        return tuple(raw.spec for raw in raw_views)


@dataclass(frozen=True)
class _RawView:
    spec: ViewSpec
    path: str
    name_line: int
    upstream: list[tuple[tuple[str, str], int, str]]


def _find_cycle(raw_views: list[_RawView]) -> list[tuple[str, str]] | None:
    """The first dependency cycle (as a closed path ``[a, b, ..., a]``), or None; iterative DFS."""
    graph = {raw.spec.key: [key for key, _line, _entry in raw.upstream] for raw in raw_views}
    position = {raw.spec.key: raw.spec.position for raw in raw_views}
    done: set[tuple[str, str]] = set()
    for start in graph:
        if start in done:
            continue
        path = [start]
        on_path = {start: 0}
        iterators = [iter(graph[start])]
        while iterators:
            nxt = next(iterators[-1], None)
            if nxt is None:
                finished = path.pop()
                iterators.pop()
                del on_path[finished]
                done.add(finished)
                continue
            if nxt in on_path:
                loop = path[on_path[nxt] :]
                first = min(range(len(loop)), key=lambda i: position[loop[i]])
                loop = loop[first:] + loop[:first]
                return loop + [loop[0]]
            if nxt not in done and nxt in graph:
                on_path[nxt] = len(path)
                path.append(nxt)
                iterators.append(iter(graph[nxt]))
    return None


def _peek_name(node: MappingNode) -> str | None:
    """The view's display name, if its ``name:`` is readable, to label errors found before it is parsed."""
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, ScalarNode)
            and key_node.value == "name"
            and isinstance(value_node, ScalarNode)
        ):
            try:
                return format_qualified_name(*parse_qualified_name(value_node.value))
            except CatalogError:
                return None
    return None


def _unknown_key_fix(key: str, allowed: tuple[str, ...]) -> str:
    suggestion = _KEY_HINTS.get(key.lower()) if isinstance(key, str) else None
    if suggestion not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    listing = f"Allowed keys: {', '.join(allowed)}"
    if suggestion:
        return f"did you mean {suggestion!r}? {listing}"
    return f"remove it, or use one of the allowed keys. {listing}"


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Validate the catalog in ``text`` (YAML); ``source`` names it in errors and in ``Catalog.source``."""
    return _Parser(source).parse(text)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the catalog: ``path``, else ``MV_REFRESH_CONFIG``, else ``include/mv_refresh.yaml``."""
    chosen = catalog_path(path)
    if path:
        origin = "given explicitly"
    elif os.environ.get("MV_REFRESH_CONFIG"):
        origin = "from MV_REFRESH_CONFIG"
    else:
        origin = "the default; MV_REFRESH_CONFIG is not set"
    fix = (
        "create it, or point MV_REFRESH_CONFIG (the CLI's --config) at an existing catalog such as "
        "include/mv_refresh.yaml"
    )
    try:
        data = chosen.read_bytes()
    except FileNotFoundError:
        raise CatalogError(
            f"catalog file not found ({origin})", source=str(chosen), entry="catalog", fix=fix
        ) from None
    except OSError as exc:
        raise CatalogError(
            f"cannot read the catalog file ({origin}): {exc.strerror or exc}",
            source=str(chosen),
            entry="catalog",
            fix=fix,
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(
            f"the catalog is not valid UTF-8 (byte {exc.start})",
            source=str(chosen),
            line=data[: exc.start].count(b"\n") + 1,
            entry="catalog",
            fix="save the file as UTF-8",
        ) from None
    return parse_catalog(text, source=str(chosen))
