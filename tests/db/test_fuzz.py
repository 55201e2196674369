"""Fuzzing the allow-list: the catalog loader, the name parsers, and the engine behind them.

Every input is either accepted as a valid PostgreSQL name (and then round-trips, fits in 63 bytes,
holds no NUL, and PostgreSQL's own ``parse_ident`` reads it the same way), or refused with
``CatalogError`` - never another exception. Names that reach the engine either refresh a real view or
are refused before anything is written: no log row, the canary table intact, no advisory lock left.

Deterministic (``derandomize=True``, no example database): CI sees the same examples every run.
"""

from __future__ import annotations

import pickle
import re

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql

from mv_refresh.catalog import (
    DEFAULT_CONNECTION_ID,
    MODES,
    NAME_MAX_BYTES,
    ON_UNCHANGED,
    VIEW_KEYS,
    Catalog,
    CatalogError,
    ViewSpec,
    format_qualified_name,
    load_catalog,
    parse_catalog,
    parse_identifier,
    parse_qualified_name,
)
from mv_refresh.db import connect
from mv_refresh.engine import RefreshFailed, RefreshRefused, refresh_view

PURE = settings(derandomize=True, database=None, deadline=None, max_examples=300)
WITH_DB = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=80,
    # One database per test function, shared by its examples (each example restores what it changes).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------------
# Strategies: names

PLAIN_FIRST = "abcdefghijklmnopqrstuvwxyz_"
PLAIN_REST = PLAIN_FIRST + "0123456789$"
# Pieces that break naive parsers (and naive SQL building): quotes, separators, SQL, control characters,
# case folding, multi-byte and combining characters, a lone surrogate, zero-width and BOM characters.
TRICKY = [
    '"', '""', ".", ";", "'", " ", "\t", "\n", "\r", "\x00", "\\", "-", "--", "/*", "*/", "$", "$$", "%",
    "%s", "{}", "A", "Z", "é", "ß", "İ", "ﬀ", "Ω", "中", "😀", "\u0301", "\u200b", "\ufeff", "\u2028",
    "\x7f", "\ud800", "drop table lab.src", "ops", "lab", "mv_conc", "x", "_", "1",
]

plain_idents = st.builds(lambda a, b: a + b, st.sampled_from(PLAIN_FIRST), st.text(PLAIN_REST, max_size=70))


def quote(part: str) -> str:
    """How PostgreSQL (and the catalog) writes an identifier that must be quoted."""
    return '"' + part.replace('"', '""') + '"'


def _valid_ident(text: str) -> bool:
    return bool(text) and "\x00" not in text and len(text.encode("utf-8", "surrogatepass")) <= NAME_MAX_BYTES \
        and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


# Identifiers PostgreSQL accepts (quoted): anything but NUL, 1..63 bytes of UTF-8. Multi-byte characters
# around the 63-byte boundary are the interesting part.
valid_idents = st.one_of(
    plain_idents.filter(lambda s: len(s) <= NAME_MAX_BYTES),
    st.text(min_size=1, max_size=63).filter(_valid_ident),
    st.lists(st.sampled_from(TRICKY), min_size=1, max_size=8).map("".join).filter(_valid_ident),
    st.text("éß中😀a", min_size=14, max_size=63).filter(_valid_ident),
)
# The same, but often just over the limit.
long_idents = st.text("aé中😀", min_size=15, max_size=70)

quoted_parts = st.one_of(
    valid_idents.map(quote),
    long_idents.map(quote),
    st.text(max_size=20).map(lambda s: '"' + s + '"'),  # quotes inside not doubled
    st.text(max_size=20).map(lambda s: '"' + s),  # never closed
    st.just('""'),
)
any_parts = st.one_of(
    plain_idents,
    quoted_parts,
    st.lists(st.sampled_from(TRICKY), max_size=6).map("".join),
    st.text(max_size=12),
)
qualified_texts = st.one_of(
    st.builds(lambda s, sep, n, tail: s + sep + n + tail,
              any_parts, st.sampled_from([".", ".", ".", "", "..", " .", ". ", "。"]), any_parts,
              st.sampled_from(["", "", "", ";", "; drop table lab.src", " ", "--", ".x", "\x00", '"'])),
    st.builds(lambda s, n: f"{s}.{n}", valid_idents.map(quote), valid_idents.map(quote)),
    st.lists(st.sampled_from(TRICKY), max_size=14).map("".join),
    st.text(max_size=40),
    st.text(max_size=3000),
)


def check_accepted_key(key: tuple[str, str]) -> None:
    """What every accepted name must be: two non-empty parts of <= 63 bytes, no NUL, and round-tripping."""
    assert isinstance(key, tuple) and len(key) == 2
    for part in key:
        assert isinstance(part, str) and part
        assert "\x00" not in part
        assert len(part.encode("utf-8")) <= NAME_MAX_BYTES
    shown = format_qualified_name(*key)
    assert parse_qualified_name(shown) == key
    spec = ViewSpec(schema=key[0], name=key[1])
    assert parse_qualified_name(spec.display_name) == key
    assert parse_qualified_name(f"{quote(key[0])}.{quote(key[1])}") == key
    assert re.fullmatch(r"[A-Za-z0-9_]{1,250}", spec.task_id), spec.task_id


def check_refusal(exc: CatalogError) -> None:
    assert type(exc) is CatalogError
    assert str(exc) and exc.problem and exc.fix
    again = pickle.loads(pickle.dumps(exc))  # travels between Airflow processes intact
    assert type(again) is CatalogError and str(again) == str(exc)


# --------------------------------------------------------------------------------------------------
# Name parsers: pure


@PURE
@given(qualified_texts)
def test_qualified_names_are_accepted_and_round_trip_or_refused(text):
    try:
        key = parse_qualified_name(text)
    except CatalogError as exc:
        check_refusal(exc)
        return
    check_accepted_key(key)
    assert parse_qualified_name(text) == key  # deterministic


@PURE
@given(valid_idents, valid_idents)
def test_every_valid_pair_is_accepted_in_display_and_quoted_form(schema, name):
    assert parse_qualified_name(format_qualified_name(schema, name)) == (schema, name)
    assert parse_qualified_name(f"{quote(schema)}.{quote(name)}") == (schema, name)
    check_accepted_key((schema, name))


@PURE
@given(st.one_of(plain_idents, long_idents.map(quote)), st.sampled_from(["schema", "name"]))
def test_parts_over_63_bytes_are_refused(part, where):
    inner = part[1:-1].replace('""', '"') if part.startswith('"') else part
    text = f"ops.{part}" if where == "name" else f"{part}.mv"
    if len(inner.encode("utf-8")) <= NAME_MAX_BYTES:
        assert parse_qualified_name(text)[1 if where == "name" else 0] == inner
    else:
        with pytest.raises(CatalogError, match="bytes"):
            parse_qualified_name(text)


@PURE
@given(st.one_of(any_parts, st.text(max_size=80), valid_idents, valid_idents.map(quote)))
def test_identifiers_are_accepted_and_round_trip_or_refused(text):
    try:
        value = parse_identifier(text)
    except CatalogError as exc:
        check_refusal(exc)
        return
    assert isinstance(value, str) and value and "\x00" not in value
    assert len(value.encode("utf-8")) <= NAME_MAX_BYTES
    assert parse_identifier(quote(value)) == value


@PURE
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=10), st.lists(st.text(max_size=3)),
                 st.tuples(st.text(max_size=3), st.text(max_size=3))))
def test_non_text_names_are_refused_with_catalog_error(value):
    for parse in (parse_qualified_name, parse_identifier):
        with pytest.raises(CatalogError) as info:
            parse(value)
        check_refusal(info.value)


def test_name_parsers_agree_with_postgresql(pg_server):
    """Whatever the parser accepts, PostgreSQL's parse_ident reads as the same parts, untruncated."""

    @settings(PURE, max_examples=300)
    @given(st.one_of(qualified_texts, st.builds(lambda s, n: f"{s}.{n}", valid_idents.map(quote), valid_idents)))
    def check(text):
        try:
            key = parse_qualified_name(text)
        except CatalogError:
            return
        parts, fits = conn.execute("SELECT parse_ident(%s), %s::name::text = %s AND %s::name::text = %s",
                                   (text, key[0], key[0], key[1], key[1])).fetchone()
        assert tuple(parts) == key
        assert fits

    with connect(pg_server.admin_dsn, autocommit=True) as conn:
        check()


# --------------------------------------------------------------------------------------------------
# The catalog loader

HINT_KEYS = ["depends_on", "unique_key", "method", "conn_id", "mvs", "view", "timeout", "Name", "name ", ""]
any_keys = st.one_of(
    st.sampled_from(("version", "connection_id", "defaults", "views", *VIEW_KEYS, *HINT_KEYS)),
    st.text(max_size=12),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**30),
    st.floats(),
    st.sampled_from(MODES + ("AUTO", "Concurrently", "", "1", "1e3", "24", "-1", "0", ".inf", "yes", "off")),
    qualified_texts,
    st.text(max_size=20),
)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_keys, inner,
                                                                                             max_size=4),
                        max_leaves=12)
plausible = {
    "description": st.one_of(st.text(max_size=30), st.none()),
    "critical": st.booleans(),
    "mode": st.sampled_from(MODES),
    "on_unchanged": st.sampled_from(ON_UNCHANGED),
    "warn_after_hours": st.one_of(st.integers(1, 100), st.floats(0.01, 100)),
    "crit_after_hours": st.one_of(st.integers(2, 1000), st.floats(0.02, 1000)),
    "lock_timeout_seconds": st.one_of(st.integers(1, 600), st.floats(0.001, 2_000_000)),
    "statement_timeout_seconds": st.one_of(st.integers(1, 86400), st.floats(0.001, 2_000_000)),
    "grain": st.lists(st.one_of(plain_idents, valid_idents), max_size=3),
}

# Text inserted at random places of a dumped catalog: YAML features (anchors, aliases, merge keys,
# tags, explicit keys, directives, several documents, block scalars), and characters YAML refuses.
YAML_SNIPPETS = [
    "&a ", "*a", "<<: *a\n", "<<: ", "!!binary ", "!!python/object:os.system ", "!!python/name:os.system ",
    "!!timestamp ", "!!set ", "!!omap ", "!!int ", "!!float ", "!!str ", "!!bool ", "!!null ", "!foo ",
    "? ", "- ", ": ", "{", "}", "[", "]", ",", "'", '"', "\t", "\n", "\n  ", "\n    - ", "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n", "---\n", "...\n", "#", "|\n  ", ">\n  ", "\x00", "\ufeff", "\x07", "\ud800",
    "0x1f", "0o17", "0b101", "1:30:00", "1e400", "1.5e400", "~", ".nan", "-.inf", "2001-12-14", "yes",
    "views:\n  - name: ops.a\n", "version: 1\n", "upstream: [ops.a]\n", "name: ops.a\n",
]


@st.composite
def catalog_documents(draw) -> tuple[str, bool]:
    """A catalog as YAML text, from entirely plausible (chaos 0) to mangled structure and text (chaos 3),
    and whether it must be accepted (chaos 0, unless two views would share an Airflow task id)."""
    chaos = draw(st.sampled_from([0, 0, 1, 2, 3]))

    def odd(rate: int = 12) -> bool:  # replace a plausible part by something else, more often with chaos
        return chaos > 0 and draw(st.integers(0, rate // chaos)) == 0

    good_names = st.one_of(plain_idents.filter(lambda n: len(n) <= 63).map(lambda n: f"ops.{n}"),
                           st.builds(format_qualified_name, valid_idents, valid_idents))
    pool = draw(st.lists(st.one_of(good_names, qualified_texts) if chaos else good_names, min_size=1,
                         max_size=5, unique_by=lambda n: n if chaos else parse_qualified_name(n)))
    views = []
    for i, name in enumerate(pool):
        view: dict = {} if odd(30) else {"name": name}
        for key in draw(st.lists(st.sampled_from(VIEW_KEYS[1:]), max_size=4, unique=True)):
            if key == "upstream":
                view[key] = draw(st.lists(st.sampled_from(pool if odd(4) else pool[:i] or pool), max_size=3,
                                          unique=not odd()))
                if not chaos and i == 0:
                    del view[key]
            elif key in ("warn_after_hours", "crit_after_hours") and not odd():
                view["warn_after_hours"] = draw(plausible["warn_after_hours"])
                view["crit_after_hours"] = view["warn_after_hours"] + draw(st.integers(1, 1000))
            elif key == "grain" and not odd():
                view[key] = draw(st.lists(valid_idents.map(quote), min_size=1, max_size=3, unique=True))
            else:
                view[key] = draw(anything) if odd(4) else draw(plausible[key])
        if odd():
            view[draw(any_keys)] = draw(anything)
        views.append(view)
    doc: dict = {"version": draw(anything) if odd() else 1}
    if draw(st.booleans()):
        doc["connection_id"] = draw(st.one_of(st.text(max_size=30), anything)) if odd() else DEFAULT_CONNECTION_ID
    if draw(st.booleans()):
        keys = ["mode", "lock_timeout_seconds", "statement_timeout_seconds"]
        doc["defaults"] = {k: draw(plausible[k]) for k in draw(st.lists(st.sampled_from(keys), unique=True))}
    doc["views"] = draw(anything) if odd(30) else views
    if odd():
        doc[draw(any_keys)] = draw(anything)
    if odd(30):
        doc = draw(anything)
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False,
                          default_flow_style=draw(st.sampled_from([False, None, True])))
    for _ in range(draw(st.integers(1, 3)) if chaos >= 2 else 0):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "dup_line"]))
        if action == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(YAML_SNIPPETS), st.text(max_size=4))) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
            text = "".join(lines)
    must_accept = chaos == 0 and len({ViewSpec(*parse_qualified_name(n)).task_id for n in pool}) == len(pool)
    return text, must_accept


def check_catalog(catalog: Catalog) -> None:
    """Invariants of every catalog the loader accepts."""
    assert catalog.views
    keys = [v.key for v in catalog.views]
    assert len(set(keys)) == len(keys)
    task_ids = [v.task_id for v in catalog.views]
    assert len(set(task_ids)) == len(task_ids)
    for position, view in enumerate(catalog.views):
        assert view.position == position
        check_accepted_key(view.key)
        assert catalog.get(view.display_name) is view
        assert view.mode in MODES
        assert view.on_unchanged in ON_UNCHANGED
        assert isinstance(view.critical, bool)
        assert 0 < view.warn_after_hours < view.crit_after_hours
        for timeout in (view.lock_timeout_seconds, view.statement_timeout_seconds):
            assert 0.001 <= timeout <= 2_147_483.647
        for column in view.grain:
            assert parse_identifier(quote(column)) == column
        assert len(set(view.grain)) == len(view.grain)
        for up in view.upstream:
            assert catalog.get(up).position < position  # listed above, hence no cycle
    conn_id = catalog.connection_id
    assert conn_id and not any(ch.isspace() for ch in conn_id)


@settings(PURE, max_examples=300)
@given(catalog_documents())
def test_catalog_loader_accepts_a_valid_catalog_or_refuses_with_catalog_error(case):
    text, must_accept = case
    try:
        catalog = parse_catalog(text, source="fuzz.yaml")
    except CatalogError as exc:
        assert not must_accept, str(exc)
        check_refusal(exc)
        assert exc.source == "fuzz.yaml"
        # Every refusal names the line (within the file) and the fix.
        # YAML counts \r, \r\n, NEL, LS and PS as line breaks too.
        breaks = len(re.findall("\r\n|[\n\r\x85\u2028\u2029]", text))
        assert exc.line is not None and 1 <= exc.line <= breaks + 2, (exc.line, str(exc))
        return
    check_catalog(catalog)


# Nesting as deep as the YAML parser's recursion allows, and deeper: a CatalogError, never RecursionError.
deeply_nested = st.builds(
    lambda depth, brackets, where: where.format(brackets[0] * depth + brackets[1] * depth),
    st.integers(1, 1500),
    st.sampled_from([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")]),
    st.sampled_from(["{}", "version: 1\nviews: {}", "version: 1\nviews:\n  - name: ops.a\n    grain: {}",
                     "version: 1\nviews:\n  - name: ops.a\n    description: {}"]),
)


@PURE
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(YAML_SNIPPETS), max_size=12).map("".join)))
def test_catalog_loader_survives_arbitrary_text(text):
    try:
        catalog = parse_catalog(text)
    except CatalogError as exc:
        check_refusal(exc)
        return
    check_catalog(catalog)


@settings(PURE, max_examples=8)  # a RecursionError costs ~0.3 s each
@given(deeply_nested)
def test_deeply_nested_catalogs_are_refused_with_catalog_error(text):
    with pytest.raises(CatalogError) as info:
        parse_catalog(text)
    check_refusal(info.value)


@settings(PURE, max_examples=100)
@given(st.binary(max_size=200), st.sampled_from([b"", b"\xef\xbb\xbf", b"version: 1\nviews:\n  - name: ops.a\n"]))
def test_catalog_files_of_arbitrary_bytes_load_or_fail_with_catalog_error(tmp_path_factory, data, prefix):
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_bytes(prefix + data)
    try:
        check_catalog(load_catalog(path))
    except CatalogError as exc:
        check_refusal(exc)


@st.composite
def valid_catalogs(draw) -> tuple[str, list[tuple[str, str]], dict[tuple[str, str], list[tuple[str, str]]]]:
    keys = draw(st.lists(st.tuples(st.one_of(st.just("ops"), valid_idents), valid_idents), min_size=1,
                         max_size=6, unique=True))
    task_ids = [ViewSpec(schema=s, name=n).task_id for s, n in keys]
    assume(len(set(task_ids)) == len(task_ids))
    views, upstream = [], {}
    for i, key in enumerate(keys):
        ups = draw(st.lists(st.sampled_from(keys[:i]), unique=True, max_size=3)) if i else []
        upstream[key] = ups
        view = {"name": format_qualified_name(*key) if draw(st.booleans()) else f"{quote(key[0])}.{quote(key[1])}"}
        if ups:
            view["upstream"] = [format_qualified_name(*u) for u in ups]
        if draw(st.booleans()):
            view["grain"] = draw(st.lists(valid_idents, min_size=1, max_size=3, unique=True).map(
                lambda cols: [quote(c) for c in cols]))
        if draw(st.booleans()):
            view["mode"] = draw(plausible["mode"])
        if draw(st.booleans()):
            view["warn_after_hours"] = 1
            view["crit_after_hours"] = draw(st.integers(2, 1000))
        views.append(view)
    doc = {"version": 1, "views": views}
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    # PyYAML's dumper folds some line breaks (NEL, LS) inside quoted scalars: such a text is not this catalog.
    assume(yaml.safe_load(text) == doc)
    return text, keys, upstream


@settings(PURE, max_examples=150)
@given(valid_catalogs())
def test_valid_catalogs_with_any_names_are_accepted_as_written(case):
    text, keys, upstream = case
    catalog = parse_catalog(text)
    check_catalog(catalog)
    assert [v.key for v in catalog.views] == keys
    for view in catalog.views:
        assert list(view.upstream) == upstream[view.key]


# The loader must turn every problem into a CatalogError. PyYAML builds integers of any size from hex
# (0x...), octal, binary and sexagesimal (1:2:3) literals without Python's 4300-digit limit, but the
# messages render them with repr(), which then raises ValueError. (The fuzzers above keep integers small
# so that they keep looking for other problems; this test covers the huge ones.)
HUGE_INT_LITERALS = {
    "hex": "0x" + "f" * 4000,
    "binary": "0b" + "1" * 15000,
    "sexagesimal": ":".join(["59"] * 2600),
}
HUGE_INT_PLACES = {
    "version": "version: {v}\nviews:\n  - name: ops.a\n",
    "connection_id": "version: 1\nconnection_id: {v}\nviews:\n  - name: ops.a\n",
    "name": "version: 1\nviews:\n  - name: {v}\n",
    "mode": "version: 1\nviews:\n  - name: ops.a\n    mode: {v}\n",
    "critical": "version: 1\nviews:\n  - name: ops.a\n    critical: {v}\n",
    "description": "version: 1\nviews:\n  - name: ops.a\n    description: {v}\n",
    "grain": "version: 1\nviews:\n  - name: ops.a\n    grain: [{v}]\n",
    "upstream": "version: 1\nviews:\n  - name: ops.a\n    upstream: [{v}]\n",
    "key": "version: 1\nviews:\n  - name: ops.a\n    ? {v}\n    : 1\n",
    "lock_timeout_seconds": "version: 1\nviews:\n  - name: ops.a\n    lock_timeout_seconds: {v}\n",
}


def test_huge_integer_literals_are_refused_with_catalog_error():
    """Deterministic, every place and every literal: no hypothesis search needed to find these."""
    escaped = []
    for place, template in HUGE_INT_PLACES.items():
        for kind, literal in HUGE_INT_LITERALS.items():
            try:
                parse_catalog(template.format(v=literal))
            except CatalogError as exc:
                check_refusal(exc)
            except Exception as exc:  # noqa: BLE001 - collected: the assertion below names them all
                escaped.append(f"{place} ({kind}): {type(exc).__name__}")
    assert escaped == []


# --------------------------------------------------------------------------------------------------
# The engine, against a real database

LAB_VIEWS = {
    ("lab", "mv_conc"), ("lab", "mv_noidx"), ("lab", "mv_partial"), ("lab", "mv_unpop"), ("lab", "mv_keyed"),
    ("lab", "mv_slow"), ("lab", "Weird MV"),
}
LAB_NOT_VIEWS = {("lab", "a_table"), ("lab", "a_view"), ("lab", "mv_missing")}
ANY = "either"


@st.composite
def lab_names(draw) -> tuple[str, object]:
    """A name for refresh_view and what must happen: a key (refreshed), None (refused), or ANY."""
    schema, name = draw(st.sampled_from(sorted(LAB_VIEWS | LAB_NOT_VIEWS)))
    form = draw(st.sampled_from(["display", "quoted", "quoted_schema", "suffix", "prefix", "upper",
                                 "three_parts", "random", "random"]))
    if form == "display":
        return format_qualified_name(schema, name), (schema, name)
    if form == "quoted":
        return f"{quote(schema)}.{quote(name)}", (schema, name)
    if form == "quoted_schema":
        return f"{quote(schema)}.{format_qualified_name(schema, name).split('.', 1)[1]}", (schema, name)
    if form == "suffix":
        tail = draw(st.sampled_from(["; drop table lab.src", ";", " ", "--", "\x00", "'", '"', "; DELETE FROM "
                                     "ops.mv_refresh_log", " CASCADE", ")", "\n"]))
        return format_qualified_name(schema, name) + tail, None
    if form == "prefix":
        return draw(st.sampled_from([" ", "public.", "x.", "\x00", ";"])) + format_qualified_name(schema, name), None
    if form == "upper":
        return f"LAB.{name}", None
    if form == "three_parts":
        return f"postgres.{format_qualified_name(schema, name)}", None
    return draw(qualified_texts), ANY


def _snapshot(conn: psycopg.Connection) -> tuple:
    return (
        conn.execute("SELECT count(*) FROM lab.src").fetchone()[0],
        conn.execute("SELECT array_agg(relname::text || ':' || relkind::text ORDER BY relname) FROM pg_class "
                     "WHERE relnamespace = 'lab'::regnamespace").fetchone()[0],
    )


def _log_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT schema_name, mv_name, status FROM ops.mv_refresh_log ORDER BY id").fetchall()


def _advisory_locks(conn: psycopg.Connection) -> int:
    # This database's only: other test sessions on a shared server take advisory locks of their own.
    return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0]


def test_refresh_view_refreshes_a_lab_view_or_refuses_without_a_trace(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        before = _snapshot(conn)
        assert before[0] == 1000

        @WITH_DB
        @given(lab_names())
        def check(case):
            text, expected = case
            log_before = _log_rows(conn)
            try:
                result = refresh_view(lab_dsn, lab, text)
            except CatalogError as exc:  # RefreshRefused is one
                assert expected is None or expected is ANY, (text, str(exc))
                assert str(exc)
                # Refused: nothing written, nothing dropped, nothing left locked.
                assert _log_rows(conn) == log_before
            except RefreshFailed as exc:
                # A catalog entry that is not a refreshable view: one ERROR row, nothing else.
                key = (exc.result.schema_name, exc.result.mv_name)
                assert key in LAB_NOT_VIEWS and expected in (key, ANY), (text, key)
                assert _log_rows(conn) == [*log_before, (*key, "ERROR")]
            else:
                key = (result.schema_name, result.mv_name)
                assert result.status == "OK"
                assert key in LAB_VIEWS and expected in (key, ANY), (text, key)
                assert _log_rows(conn) == [*log_before, (*key, "OK")]
            assert _snapshot(conn) == before
            assert _advisory_locks(conn) == 0

        check()


def test_refresh_view_refuses_bad_modes_and_timeouts_without_a_trace(lab_dsn, lab):
    with connect(lab_dsn, autocommit=True) as conn:
        before = _snapshot(conn)

        @WITH_DB
        @given(st.sampled_from(sorted(format_qualified_name(*k) for k in LAB_VIEWS)),
               # An empty mode means "the catalog's mode" (as the operator's "" param does): not a bad mode.
               st.one_of(st.text(min_size=1, max_size=12).filter(lambda m: m not in MODES),
                         st.sampled_from(["AUTO", " plain"])),
               st.one_of(st.none(), st.floats(max_value=0, allow_nan=False)))
        def check(name, mode, timeout):
            with pytest.raises(RefreshRefused):
                refresh_view(lab_dsn, lab, name, mode=mode, lock_timeout=timeout)
            with pytest.raises(RefreshRefused):
                refresh_view(lab_dsn, lab, name, statement_timeout=timeout if timeout is not None else -1.0)
            assert _log_rows(conn) == []
            assert _snapshot(conn) == before

        check()


# Schemas PostgreSQL reserves (pg_*) cannot be created; everything else quoted is fair game.
creatable_schemas = st.one_of(st.just("lab"), valid_idents.filter(lambda s: not s.startswith("pg_")))


def test_views_with_any_valid_name_are_refreshed_under_their_exact_name(lab_dsn):
    """Quotes, semicolons, SQL, unicode, 63-byte names: created for real, listed, refreshed, logged."""
    with connect(lab_dsn, autocommit=True) as conn:
        src_rows = _snapshot(conn)[0]

        @settings(WITH_DB, max_examples=30)
        @given(creatable_schemas, valid_idents, st.booleans(), st.booleans())
        def check(schema, name, with_index, yaml_unicode):
            key = (schema, name)
            target = sql.Identifier(schema, name)
            existing = conn.execute(
                "SELECT c.relkind FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", key).fetchone()
            new_schema = conn.execute("SELECT NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)",
                                      (schema,)).fetchone()[0]
            if existing is None:
                if new_schema:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT id FROM lab.src WHERE id <= 7")
                             .format(target))
                if with_index:
                    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (id)").format(target))
            try:
                text = yaml.safe_dump({"version": 1, "views": [{"name": format_qualified_name(*key)}]},
                                      allow_unicode=yaml_unicode)
                assume(yaml.safe_load(text)["views"][0]["name"] == format_qualified_name(*key))
                catalog = parse_catalog(text)
                assert catalog.views[0].key == key
                log_before = _log_rows(conn)
                if existing is not None and existing[0] != "m":
                    with pytest.raises(RefreshRefused):
                        refresh_view(lab_dsn, catalog, catalog.views[0].display_name)
                    assert _log_rows(conn) == log_before
                    return
                result = refresh_view(lab_dsn, catalog, catalog.views[0].display_name)
                assert (result.schema_name, result.mv_name, result.status) == (schema, name, "OK")
                if existing is None:
                    assert result.rows_after_refresh == 7
                    assert result.method == ("CONCURRENTLY" if with_index else "PLAIN")
                assert _log_rows(conn) == [*log_before, (schema, name, "OK")]
                assert _advisory_locks(conn) == 0
            finally:
                if existing is None:
                    conn.execute(sql.SQL("DROP MATERIALIZED VIEW {}").format(target))
                    if new_schema:
                        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))
            assert _snapshot(conn)[0] == src_rows

        check()
