"""The catalog of materialized views (``include/mv_refresh.yaml``): its schema and its strict loader.

The catalog is the allow-list: nothing outside it is ever refreshed. It lists the views in canonical
(refresh) order with their settings. Its shape is declared once, as pydantic models, which also give
the JSON Schema editors check it with (``mv-refresh catalog schema``). The loader adds what a schema
cannot say: the line of every problem, keys repeated in a mapping (YAML would silently keep the last),
and the checks across views (duplicates, unknown or misplaced upstream views, cycles, Airflow task
ids). All problems of a file are reported at once, as one :class:`CatalogError` whose every line names
the file, the line, the entry and the fix. docs/catalog.md describes every key.

Names follow PostgreSQL's rules (:mod:`mv_refresh.names`). Nothing here imports Airflow.
"""

from __future__ import annotations

import difflib
import graphlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mv_refresh.names import (
    NAME_MAX_BYTES,
    CatalogError,
    format_qualified_name,
    parse_identifier,
    parse_qualified_name,
    quote_identifier,
    show,
)
from mv_refresh.paths import catalog_path
from mv_refresh.yamldoc import Loc, Problem, YamlDocument, describe

__all__ = [
    "DEFAULT_CONNECTION_ID", "MAX_CATALOG_BYTES", "MODES", "NAME_MAX_BYTES", "ON_UNCHANGED", "VIEW_DEFAULTS",
    "VIEW_KEYS", "Catalog", "CatalogError", "CatalogFile", "ViewRef", "ViewSpec", "catalog_json_schema",
    "format_qualified_name", "load_catalog", "parse_catalog", "parse_identifier", "parse_qualified_name",
    "quote_identifier",
]

#: Refresh modes: ``auto`` (CONCURRENTLY when possible, else plain, logging why), ``concurrently``
#: (never fall back), ``plain``.
MODES = ("auto", "concurrently", "plain")
#: What a refresh does when it can prove the view's sources unchanged since its last OK refresh.
ON_UNCHANGED = ("skip", "refresh")
SUPPORTED_VERSION = 1
DEFAULT_CONNECTION_ID = "postgres_default"
#: The demo catalog is 4 KB and 500 views take about 80 KB: a bigger file is a mistake, and would slow
#: down every DAG parse.
MAX_CATALOG_BYTES = 1024 * 1024
MAX_HOURS = 876_000.0  # 100 years: anything above is a typo, and keeps interval arithmetic sane
# lock_timeout / statement_timeout are int milliseconds in PostgreSQL: below 1 ms rounds to 0, which
# means "no timeout", and above INT_MAX ms the SET fails.
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 0.001, 2_147_483.647
SCHEMA_ID = "urn:mv-refresh:catalog:1"
_TASK_ID_MAX = 250  # Airflow's limit on task ids

# --------------------------------------------------------------------------------------------------
# The schema


def _refuse(problem: str, fix: str, at: int | None = None) -> PydanticCustomError:
    """A problem in our own words; ``at`` is the item of a list at fault."""
    return PydanticCustomError("catalog", "{problem}", {"problem": problem, "fix": fix, "at": at})


def _checked(parse: Callable[[str], Any]) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            parse(text)
        except CatalogError as exc:
            raise _refuse(exc.problem, exc.fix or "") from None
        return text

    return check


def _unique(parse: Callable[[str], Any], what: str) -> Callable[[list[str]], list[str]]:
    def check(items: list[str]) -> list[str]:
        seen: dict[Any, int] = {}
        for index, text in enumerate(items):
            key = parse(text)
            if (first := seen.setdefault(key, index)) != index:
                shown = quote_identifier(key) if isinstance(key, str) else format_qualified_name(*key)
                raise _refuse(f"{what} {shown} is listed twice (as items {first} and {index})",
                              "remove the repeated entry", at=index)
        return items

    return check


def _connection_id(text: str) -> str:
    if not text or len(text) > 250 or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise _refuse(f"invalid Airflow connection id {show(text, 40)}: it must be 1 to 250 characters "
                      "without spaces", _FIX["connection_id"])
    return text


# For editors: the shape of a name (the loader also checks lengths and escapes).
_PART = r'(?:[a-z_][a-z0-9_$]*|(?:[Uu]&)?"(?:[^"]|"")+")'
ViewName = Annotated[str, AfterValidator(_checked(parse_qualified_name)), WithJsonSchema(
    {"type": "string", "pattern": f"^{_PART}\\.{_PART}$", "description": "schema.view (docs/catalog.md)"})]
Column = Annotated[str, AfterValidator(_checked(parse_identifier)),
                   WithJsonSchema({"type": "string", "pattern": f"^{_PART}$"})]
Hours = Annotated[float, Field(gt=0, le=MAX_HOURS, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=MIN_TIMEOUT_SECONDS, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]


class _Strict(BaseModel):
    # strict: a quoted number or a quoted true stays an error, as the user wrote it.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _thresholds(model: _Settings, fallback: _Settings | None, own: str) -> None:
    """warn_after_hours < crit_after_hours, once ``model``'s unset ones come from ``fallback``."""
    told = {}
    for key in ("warn_after_hours", "crit_after_hours"):
        if key in model.model_fields_set:
            told[key] = (getattr(model, key), own)
        elif fallback is not None and key in fallback.model_fields_set:
            told[key] = (getattr(fallback, key), "defaults")
        else:
            told[key] = (VIEW_DEFAULTS[key], "built-in")
    if told["warn_after_hours"][0] >= told["crit_after_hours"][0]:
        at = "crit_after_hours" if told["crit_after_hours"][1] == own else "warn_after_hours"
        raise PydanticCustomError("thresholds", "warn_after_hours must be below crit_after_hours",
                                  {"told": told, "at": at})


class _Settings(_Strict):
    mode: Literal["auto", "concurrently", "plain"] = Field("auto", description=(
        "auto: CONCURRENTLY when the view has a valid unique index without WHERE, else plain (the log "
        "says why); concurrently: never fall back; plain: always REFRESH without CONCURRENTLY."))
    warn_after_hours: Hours = Field(24.0, description="Health is WARN from this many hours since the "
                                    "last OK refresh; below crit_after_hours.")
    crit_after_hours: Hours = Field(48.0, description="Health is CRIT above this many hours since the "
                                    "last OK refresh.")
    lock_timeout_seconds: Seconds = Field(60.0, description="How long a refresh waits for its locks "
                                          "before giving up (a retryable failure).")
    statement_timeout_seconds: Seconds = Field(3600.0, description="How long the REFRESH may run.")
    on_unchanged: Literal["skip", "refresh"] = Field("skip", description=(
        "When the sources are provably unchanged since the last OK refresh: skip logs an UNCHANGED row "
        "instead of refreshing; refresh refreshes anyway."))


class Defaults(_Settings):
    """Settings every view inherits unless it sets its own."""

    @model_validator(mode="after")
    def _warn_below_crit(self) -> Defaults:
        _thresholds(self, None, "defaults")
        return self


class _ViewKeys(_Strict):
    name: ViewName = Field(description="schema.view; double-quote a part with capitals or other "
                           "characters: 'ops.\"Weird MV\"'", examples=["ops.mv_orders"])
    description: str | None = Field(None, description="Free text, shown in the UI and the CLI.")
    critical: bool = Field(False, description="Checked by the health_check sensor and the health audit.")
    grain: Annotated[list[Column], AfterValidator(_unique(parse_identifier, "column"))] = Field(
        default_factory=list, min_length=1, examples=[["driver_id", "milestone_value"]],
        description="The columns that identify a row: for the duplicate check and the unique index "
                    "REFRESH ... CONCURRENTLY needs.")
    upstream: Annotated[list[ViewName], AfterValidator(_unique(parse_qualified_name, "upstream"))] = Field(
        default_factory=list, description="Catalog views this view reads; each listed above this view.")


class ViewEntry(_Settings, _ViewKeys):  # in this order, pydantic lists the _ViewKeys first
    """One materialized view. A setting it does not set comes from defaults:, else the built-in default."""

    model_config = ConfigDict(title="View")

    @model_validator(mode="after")
    def _warn_below_crit(self, info: ValidationInfo) -> ViewEntry:
        own = {"warn_after_hours", "crit_after_hours"} & self.model_fields_set
        defaults = (info.context or {}).get("defaults", Defaults())
        if own and (defaults is not None or len(own) == 2):  # bad defaults are reported on their own
            _thresholds(self, defaults, "view")
        return self


class CatalogFile(_Strict):
    """The catalog of materialized views that mv-refresh refreshes, in canonical (refresh) order."""

    model_config = ConfigDict(title="mv-refresh catalog")

    version: Annotated[int, Field(ge=1, le=1, json_schema_extra={"const": 1})] = Field(
        description="The catalog format; 1 is the only one.")
    connection_id: Annotated[str, AfterValidator(_connection_id)] = Field(
        DEFAULT_CONNECTION_ID, description="The Airflow connection of the warehouse.",
        json_schema_extra={"minLength": 1, "maxLength": 250, "pattern": r"^\S+$"})
    defaults: Defaults | None = Field(None, description="Settings every view inherits.")
    views: list[ViewEntry] = Field(min_length=1, description="The views, upstream ones first.")

    @model_validator(mode="wrap")
    @classmethod
    def _views_see_defaults(cls, data: Any, handler: Callable[[Any], CatalogFile],
                            info: ValidationInfo) -> CatalogFile:
        # A view checks its thresholds against the defaults it inherits: validate those first, for it.
        if isinstance(info.context, dict) and isinstance(data, dict):
            try:
                info.context["defaults"] = Defaults.model_validate(data.get("defaults") or {})
            except ValidationError:
                info.context["defaults"] = None  # the handler reports these problems
        return handler(data)


#: Settings a view inherits when neither the view nor ``defaults:`` sets them.
VIEW_DEFAULTS: dict[str, Any] = {key: info.default for key, info in _Settings.model_fields.items()}
VIEW_KEYS = tuple(ViewEntry.model_fields)


def catalog_json_schema() -> dict[str, Any]:
    """The catalog's JSON Schema (Draft 2020-12), as shipped in ``include/mv_refresh.schema.json``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **CatalogFile.model_json_schema()}


# --------------------------------------------------------------------------------------------------
# The resolved catalog


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
        """``schema.name`` as PostgreSQL would quote it; parses back to :attr:`key`."""
        return format_qualified_name(self.schema, self.name)

    @property
    def task_id(self) -> str:
        """The Airflow task id: ``refresh_<name>`` for a plain name.

        Other names give ``refresh_<schema>_<name>`` with every character outside ``[A-Za-z0-9_]``
        replaced by ``_`` and, when that changed anything, a stable 8-hex-digit hash of the real name
        appended (so two names that sanitize alike still differ).
        """
        if re.fullmatch(r"[a-z_][a-z0-9_]*", self.name) and len(self.name) <= _TASK_ID_MAX - 8:
            return f"refresh_{self.name}"
        raw = f"refresh_{self.schema}_{self.name}"
        safe = re.sub(r"[^A-Za-z0-9_]", "_", raw)
        if safe != raw or len(safe) > _TASK_ID_MAX:
            # NUL cannot occur in an identifier, so it separates the parts unambiguously.
            digest = hashlib.sha256(f"{self.schema}\x00{self.name}".encode("utf-8", "surrogatepass"))
            safe = f"{safe[: _TASK_ID_MAX - 9]}_{digest.hexdigest()[:8]}"
        return safe

    def __str__(self) -> str:
        return self.display_name


#: How callers name a view: ``"schema.name"`` text, a ``(schema, name)`` key, or the ViewSpec itself.
ViewRef = str | tuple[str, str] | ViewSpec


def _listing(names: list[str], limit: int = 30) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


@dataclass(frozen=True)
class Catalog:
    """The views, in canonical order (every view below the views it reads), and where they came from."""

    source: str
    connection_id: str
    views: tuple[ViewSpec, ...]
    _by_key: dict[tuple[str, str], ViewSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "_by_key", {view.key: view for view in self.views})

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

    def where(self, view: ViewSpec) -> str:
        """Where ``view`` is written, for messages: ``<file>, line N``."""
        return f"{self.source}, line {view.line}" if view.line else self.source

    @property
    def critical_views(self) -> list[ViewSpec]:
        """The views marked ``critical: true``, in canonical order."""
        return [view for view in self.views if view.critical]

    def _key_of(self, ref: ViewRef) -> tuple[str, str]:
        if isinstance(ref, ViewSpec):
            return ref.key
        if isinstance(ref, str):
            return parse_qualified_name(ref, entry=show(ref))
        if isinstance(ref, tuple) and len(ref) == 2 and all(isinstance(part, str) for part in ref):
            return (ref[0], ref[1])
        what = f"a (schema, name) pair of strings, not {show(ref)}" if isinstance(ref, tuple) else \
            f"text or a (schema, name) pair, not {type(ref).__name__}"
        raise CatalogError(f"a view is named by {what}", entry=show(ref),
                           fix="pass 'schema.name' or ('schema', 'name')")

    def _not_listed(self, keys: list[tuple[str, str]], malformed: Iterable[CatalogError] = ()
                    ) -> CatalogError:
        shown = [format_qualified_name(*key) for key in keys]
        verb = "is" if len(shown) == 1 else "are"
        problems = [f"{', '.join(shown)} {verb} not in the catalog"] if shown else []
        hints = [f"did you mean {close[0]} (for {text})?" for text in shown
                 if (close := difflib.get_close_matches(text, self.names, n=1))]
        fix = " ".join([*hints, f"the catalog is the allow-list: add it to {self.source} or pick one of: "
                        f"{_listing(self.names)}"])
        return CatalogError("; ".join(problems + [exc.problem for exc in malformed]), source=self.source,
                            entry=", ".join(shown) or None, fix=fix)

    def get(self, name: ViewRef) -> ViewSpec:
        """The view named ``schema.name`` (or by its ``(schema, name)`` key); CatalogError if unlisted."""
        key = self._key_of(name)
        if key not in self._by_key:
            raise self._not_listed([key])
        return self._by_key[key]

    def select(self, names: Iterable[ViewRef]) -> list[ViewSpec]:
        """The named views in canonical order, each once; one CatalogError lists every unknown name."""
        wanted: set[tuple[str, str]] = set()
        unknown: list[tuple[str, str]] = []
        malformed: list[CatalogError] = []
        for ref in [names] if isinstance(names, (str, ViewSpec)) else names:
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

    # The views are in canonical order (the loader checks it): one pass finds all that a view reaches.

    def downstream_of(self, view: ViewRef) -> list[ViewSpec]:
        """Every view that reads ``view``, directly or through others, in canonical order."""
        start = self.get(view).key
        reached = {start}
        for spec in self.views:
            if reached.intersection(spec.upstream):
                reached.add(spec.key)
        return [spec for spec in self.views if spec.key in reached and spec.key != start]

    def upstream_of(self, view: ViewRef) -> list[ViewSpec]:
        """Every view ``view`` reads, directly or through others, in canonical order."""
        needed = set(self.get(view).upstream)
        for spec in reversed(self.views):
            if spec.key in needed:
                needed.update(spec.upstream)
        return [spec for spec in self.views if spec.key in needed]


# --------------------------------------------------------------------------------------------------
# Loading: the YAML as plain data with the line of everything, pydantic, then the checks across views

# Keys people reach for that mean one of ours (difflib cannot guess these from spelling).
_KEY_HINTS = {
    "depends_on": "upstream", "dependencies": "upstream", "deps": "upstream", "parents": "upstream",
    "sources": "upstream", "unique_key": "grain", "unique_columns": "grain", "key_columns": "grain",
    "primary_key": "grain", "keys": "grain", "method": "mode", "refresh_mode": "mode", "concurrent": "mode",
    "concurrently": "mode", "lock_timeout": "lock_timeout_seconds", "timeout": "statement_timeout_seconds",
    "statement_timeout": "statement_timeout_seconds", "mv": "name", "view": "name", "mvs": "views",
    "conn_id": "connection_id", "postgres_conn_id": "connection_id", "connection": "connection_id",
    "materialized_views": "views", "if_unchanged": "on_unchanged", "unchanged": "on_unchanged",
}
_FIX = {
    "version": f"write `version: {SUPPORTED_VERSION}` at the top (the only catalog format mv-refresh reads)",
    "connection_id": f"write the Airflow connection id, e.g. `connection_id: {DEFAULT_CONNECTION_ID}`",
    "views": "write views as a list of mappings, one per view, each starting with `- name: schema.view`",
    "defaults": "write it as `key: value` lines indented under it",
    "name": "write it as `name: schema.view`",
    "description": "put the description in quotes",
    "critical": "write true or false (without quotes)",
    "grain": "write the columns that identify a row as a list, e.g. grain: [driver_id, milestone_value]",
    "upstream": "write the catalog views this view reads as a list, e.g. upstream: [ops.mv_orders], or []",
    "mode": f"use one of: {', '.join(MODES)}",
    "on_unchanged": f"use one of: {', '.join(ON_UNCHANGED)}",
}
_WHAT = {"name": "a view name", "upstream": "a view name", "grain": "a column name", "mode": "a refresh mode",
         "on_unchanged": "an on_unchanged value", "connection_id": "an Airflow connection id",
         "views": "a view (a mapping with at least `name:`)", "defaults": "a mapping of keys"}
_RANGE = {"hours": ("greater than 0 and at most 876000 hours (100 years)", ""),
          "seconds": (f"between {MIN_TIMEOUT_SECONDS} and {MAX_TIMEOUT_SECONDS} seconds",
                      " (PostgreSQL counts it in whole milliseconds, and 0 would mean no timeout)")}
_NUMERIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    if loc in ((), ("defaults",)):
        return Defaults if loc else CatalogFile
    return ViewEntry if len(loc) == 2 and loc[0] == "views" else None


def _words(kind: str, key: str, value: Any) -> tuple[str, str]:
    """What is wrong with ``value`` at ``key`` (pydantic's error ``kind``), and the fix."""
    fix = _FIX.get(key, "see docs/catalog.md")
    if key.endswith(("_hours", "_seconds")):
        bound, why = _RANGE[key.rsplit("_", 1)[1]]
        example = f"{key}: {_fmt(VIEW_DEFAULTS[key])}"
        fix = f"write a plain number {bound}, e.g. {example}"
        if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
            fix = f"remove the quotes: {key}: {value.strip()}" if "e" not in value.lower() else "write it " \
                f"as a plain number without quotes or exponent, e.g. {example} (YAML 1.1 reads 1e3 as text)"
        if kind in ("greater_than", "greater_than_equal", "less_than_equal"):
            return f"{key} must be {bound}{why}, got {_fmt(value)}", fix
        if kind == "finite_number" or (isinstance(value, int) and not isinstance(value, bool)):
            return f"{key} must be a finite number, got {show(value)}", fix  # inf, nan, 0xfff...fff
        return f"expected a number, got {describe(value)}", fix
    if key == "version":
        return f"unsupported catalog version {show(value, 40)}", fix
    if kind == "too_short":
        return f"the {key} list is empty", fix + "; or remove grain if the view has none" * (key == "grain")
    if kind == "literal_error" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        choices = MODES if key == "mode" else ON_UNCHANGED
        close = difflib.get_close_matches(value.lower(), choices, n=1) if isinstance(value, str) else []
        hint = f"did you mean {close[0]!r}? Use one of: {', '.join(choices)}" if close else fix
        return f"unknown {_WHAT[key].partition(' ')[2]} {show(value, 40)}", hint
    what = {"list_type": "a list", "bool_type": "true or false"}.get(kind) or _WHAT.get(key, "text")
    return f"expected {what}, got {describe(value)}", fix


def _unknown_key_fix(key: str, allowed: list[str]) -> str:
    hint = _KEY_HINTS.get(key.lower())
    close = [hint] if hint in allowed else difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    listing = f"Allowed keys: {', '.join(allowed)}"
    return f"did you mean {close[0]!r}? {listing}" if close else \
        f"remove it, or use one of the allowed keys. {listing}"


class _Document(YamlDocument):
    """The catalog's YAML, and its problems in our words."""

    def view_key(self, index: Any) -> tuple[str, str] | None:
        views = self.data.get("views") if isinstance(self.data, dict) else None
        raw = views[index] if isinstance(views, list) and isinstance(index, int) else None
        try:
            return parse_qualified_name(raw["name"]) if isinstance(raw, dict) and "name" in raw else None
        except CatalogError:
            return None

    def error(self, found: Problem) -> CatalogError:
        """``views[2].mode (ops.mv_x)``: the entry as a path, with the name of its view."""
        loc = found.loc
        entry = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)[1:] or "top level"
        if len(loc) >= 2 and loc[0] == "views" and (key := self.view_key(loc[1])):
            entry += f" ({format_qualified_name(*key)})"
        model = _model_at(loc)
        fix = found.fix or (f"use one of the allowed keys: {', '.join(model.model_fields)}" if model else
                            _FIX.get(_key(loc), "see docs/catalog.md"))
        return CatalogError(found.problem, source=self.source, line=found.line, entry=entry, fix=fix)

    def explain(self, error: dict[str, Any]) -> Problem | None:
        """A pydantic error in our words: where (loc and line), what is wrong, and the fix."""
        kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx") or {}
        key = _key(loc)
        if any(loc[:n] in self.refused for n in range(len(loc) + 1)):
            return None
        if kind == "catalog":  # our validators' own words
            loc = loc if ctx["at"] is None else (*loc, ctx["at"])
            return Problem(self.line_of(loc), loc, ctx["problem"], ctx["fix"])
        if kind == "thresholds":
            def told(key: str) -> str:
                value, origin = ctx["told"][key]
                at = {"view": f"line {self.line_of((*loc, key), key=True)}", "built-in": "built-in default",
                      "defaults": f"defaults (line {self.line_of(('defaults', key), key=True)})"}
                return f"{key} ({_fmt(value)}, from {at[origin]})"

            return Problem(self.line_of((*loc, ctx["at"]), key=True), (*loc, ctx["at"]),
                           f"{told('warn_after_hours')} must be less than {told('crit_after_hours')}",
                           "raise crit_after_hours above warn_after_hours, or lower warn_after_hours")
        if kind == "extra_forbidden":
            allowed = list(_model_at(loc[:-1]).model_fields)  # type: ignore[union-attr]
            if loc[:-1] == ("defaults",) and key in ViewEntry.model_fields:
                return Problem(self.line_of(loc, key=True), loc[:-1], f"key {key!r} is not allowed here",
                               f"set {key} on each view, not under defaults (defaults may hold: "
                               f"{', '.join(allowed)})")
            return Problem(self.line_of(loc, key=True), loc[:-1], f"unknown key {key!r}",
                           _unknown_key_fix(key, allowed))
        if kind == "missing" and key == "name":
            return Problem(self.line_of(loc[:-1]), loc[:-1], "the view has no name",
                           "add `name: schema.view` to this entry")
        if kind == "missing":
            return Problem(self.lines.get(()), loc, f"the catalog has no {key}", _FIX[key])
        return Problem(self.line_of(loc), loc, *_words(kind, key, error.get("input")))

    # -- across views -------------------------------------------------------------------------------

    def check_views(self) -> list[Problem]:
        """Duplicates, task ids, upstream references, cycles and order: what no single view shows."""
        views = self.data.get("views") if isinstance(self.data, dict) else None
        count = len(views) if isinstance(views, list) else 0
        keys = {i: key for i in range(count) if (key := self.view_key(i))}
        found: list[Problem] = []
        first_at: dict[tuple[str, str], int] = {}
        task_ids: dict[str, int] = {}
        line = {i: self.lines[("views", i, "name")] for i in keys}
        name = {i: format_qualified_name(*key) for i, key in keys.items()}
        for i, key in keys.items():
            first, task_id = first_at.setdefault(key, i), ViewSpec(*key).task_id
            other = task_ids.setdefault(task_id, i) if first == i else i
            if first != i:
                found.append(Problem(line[i], ("views", i), f"duplicate view {name[i]}: it is already "
                                     f"listed as views[{first}] at line {line[first]}", "remove one of the "
                                     f"two entries (line {line[first]} or line {line[i]})"))
            elif other != i:
                found.append(Problem(line[i], ("views", i), f"{name[i]} and {name[other]} (views[{other}], "
                                     f"line {line[other]}) would both get the Airflow task id {task_id}",
                                     "keep only one of them in this catalog (task ids are refresh_<view "
                                     "name>), or rename one of the views"))
        listed = [name[i] for i in first_at.values()]
        graph: dict[tuple[str, str], dict[tuple[str, str], Loc]] = {key: {} for key in first_at}
        for i, key in keys.items():
            ups = views[i].get("upstream") if first_at[key] == i else None
            for j, text in enumerate(ups if isinstance(ups, list) else []):
                up, loc = _try(parse_qualified_name, text), ("views", i, "upstream", j)
                shown = up and format_qualified_name(*up)
                if up == key:
                    found.append(Problem(self.lines[loc], loc, f"{shown} lists itself as upstream",
                                         "remove this upstream entry: a view cannot read itself"))
                elif up and up not in first_at:
                    close = difflib.get_close_matches(shown, listed, n=1)
                    found.append(Problem(self.lines[loc], loc, f"upstream {shown} is not in the catalog",
                                         (f"did you mean {close[0]}? " if close else "") + f"add {shown} "
                                         f"to the catalog above {name[i]}, or remove it from upstream "
                                         f"(upstream names catalog views only: {_listing(listed)})"))
                elif up:
                    graph[key].setdefault(up, loc)
        cycles = self.cycles(graph, first_at)
        for ups in graph.values() if not cycles else ():  # the order is moot while views go round
            for up, loc in ups.items():
                if (at := first_at[up]) > loc[1]:
                    found.append(Problem(self.lines[loc], loc, f"upstream {name[at]} is listed below "
                                         f"{name[loc[1]]} (views[{at}], line {line[at]}), but views are "
                                         f"refreshed top to bottom", f"move {name[at]} above {name[loc[1]]} "
                                         "(upstream views come first in the catalog)"))
        return found + cycles

    def cycles(self, graph: dict[tuple[str, str], dict[tuple[str, str], Loc]],
               position: dict[tuple[str, str], int]) -> list[Problem]:
        """Every dependency cycle, as a path from its earliest view (each is cut to look for the next)."""
        found: list[Problem] = []
        while True:
            try:
                graphlib.TopologicalSorter(graph).prepare()
                return found
            except graphlib.CycleError as exc:
                loop = exc.args[1][-2::-1]  # graphlib writes the view read before its reader: reverse it
            start = min(range(len(loop)), key=lambda n: position[loop[n]])
            loop = loop[start:] + loop[:start]
            steps = [(reader, read, graph[reader][read])
                     for reader, read in zip(loop, [*loop[1:], loop[0]], strict=True)]
            choices = "; ".join(f"{format_qualified_name(*read)} from the upstream of "
                                f"{format_qualified_name(*reader)} (line {self.lines[loc]})"
                                for reader, read, loc in steps)
            path = " -> ".join(format_qualified_name(*key) for key in [*loop, loop[0]])
            first = steps[0][2]
            found.append(Problem(self.lines[first], first[:-1], f"dependency cycle: {path} (each view "
                                 "lists the next one as upstream)", "remove one of these upstream entries: "
                                 + choices))
            del graph[steps[0][0]][steps[0][1]]


def _key(loc: Loc) -> str:
    """The key a value belongs to: ``mode`` for ("views", 2, "mode"), ``grain`` for (..., "grain", 0)."""
    return next((part for part in reversed(loc) if isinstance(part, str)), "")


def _try(parse: Callable[[str], Any], text: Any) -> Any:
    try:
        return parse(text) if isinstance(text, str) else None
    except CatalogError:
        return None  # refused with its view


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Validate the catalog in ``text`` (YAML); ``source`` names it in errors and in ``Catalog.source``.

    Every problem of the text is reported, in one :class:`CatalogError` (see its ``problems``).
    """
    if len(text) > MAX_CATALOG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CATALOG_BYTES:
        raise _too_big(len(text.encode("utf-8", "surrogatepass")), source)
    doc = _Document(text, source)
    if doc.data is None and not doc.problems:
        raise CatalogError("the catalog is empty", source=source, line=1, entry="catalog",
                           fix="write `version: 1` and a `views:` list (see include/mv_refresh.yaml)")
    if not isinstance(doc.data, dict):
        top = Problem(doc.line_of(()) or 1, (), f"expected a mapping of keys "
                      f"({', '.join(CatalogFile.model_fields)}), got {describe(doc.data)}",
                      "write it as `key: value` lines, starting with `version: 1`")
        raise CatalogError.of([doc.error(found) for found in doc.problems or [top]])
    model = None
    try:
        model = CatalogFile.model_validate(doc.data, context={})
    except ValidationError as exc:
        doc.problems += [found for error in exc.errors(include_url=False) if (found := doc.explain(error))]
    found = sorted(doc.problems, key=lambda f: f.line or 0) + doc.check_views()
    if found or model is None:
        raise CatalogError.of([doc.error(f) for f in found])
    defaults = model.defaults or Defaults()
    views = []
    for position, entry in enumerate(model.views):
        settings = {k: getattr(entry if k in entry.model_fields_set else defaults, k) for k in VIEW_DEFAULTS}
        views.append(ViewSpec(*parse_qualified_name(entry.name), **settings,
                              description=(entry.description or "").strip() or None, critical=entry.critical,
                              grain=tuple(map(parse_identifier, entry.grain)),
                              upstream=tuple(map(parse_qualified_name, entry.upstream)),
                              position=position, line=doc.lines[("views", position)]))
    return Catalog(source=source, connection_id=model.connection_id, views=tuple(views))


def _too_big(size: int, source: str) -> CatalogError:
    return CatalogError(f"the catalog is {size:,} bytes, more than the limit of {MAX_CATALOG_BYTES:,} bytes "
                        "(1 MiB)", source=source, entry="catalog", fix="list only the materialized views to "
                        "refresh (500 views take about 80 KB), and keep long notes out of the file")


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the catalog: ``path``, else ``MV_REFRESH_CONFIG``, else ``include/mv_refresh.yaml``."""
    chosen = catalog_path(path)
    origin = "given explicitly" if path else "from MV_REFRESH_CONFIG" if os.environ.get("MV_REFRESH_CONFIG") \
        else "the default; MV_REFRESH_CONFIG is not set"
    fix = ("create it, or point MV_REFRESH_CONFIG (the CLI's --config) at an existing catalog such as "
           "include/mv_refresh.yaml")
    try:
        with open(chosen, "rb") as file:
            data = file.read(MAX_CATALOG_BYTES + 1)  # never more: the size is checked before parsing
            if len(data) > MAX_CATALOG_BYTES:
                raise _too_big(os.fstat(file.fileno()).st_size, str(chosen))
    except FileNotFoundError:
        raise CatalogError(f"catalog file not found ({origin})", source=str(chosen), entry="catalog",
                           fix=fix) from None
    except OSError as exc:
        raise CatalogError(f"cannot read the catalog file ({origin}): {exc.strerror or exc}",
                           source=str(chosen), entry="catalog", fix=fix) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"the catalog is not valid UTF-8 (byte {exc.start})", source=str(chosen),
                           line=data[: exc.start].count(b"\n") + 1, entry="catalog",
                           fix="save the file as UTF-8") from None
    return parse_catalog(text, source=str(chosen))
