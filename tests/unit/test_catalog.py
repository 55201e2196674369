"""The catalog (include/mv_refresh.yaml) and its strict loader. No database needed."""

from __future__ import annotations

import pickle
import random
import re
import textwrap
from pathlib import Path

import pytest

from mv_refresh.catalog import (
    DEFAULT_CONNECTION_ID,
    MODES,
    Catalog,
    CatalogError,
    ViewSpec,
    format_qualified_name,
    load_catalog,
    parse_catalog,
    parse_identifier,
    parse_qualified_name,
)
from mv_refresh.paths import DEFAULT_CATALOG

YANGO_CHAIN = [
    "ops.mv_yango_payments_raw_current",
    "ops.mv_yango_payments_ledger_latest",
    "ops.mv_yango_payments_ledger_latest_enriched",
    "ops.mv_yango_receivable_payable_detail",
    "ops.mv_claims_payment_status_cabinet",
    "ops.mv_yango_cabinet_claims_for_collection",
]
SOURCE = "test-catalog.yaml"
TASK_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,250}")


def yaml_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [number for number, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not found {occurrence} time(s) in the test YAML"
    return hits[occurrence - 1]


def catalog_error(text: str, *, line: int | None, entry: str, fix: str, problem: str = "") -> CatalogError:
    """Parse ``text``, expect a CatalogError, and check it names the source, line, entry, problem and fix."""
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, SOURCE)
    error = info.value
    message = str(error)
    assert error.source == SOURCE
    assert message.startswith(SOURCE)
    assert error.line == line, message
    if line is not None:
        assert f"line {line}" in message
    assert entry in (error.entry or ""), message
    assert entry in message
    assert fix in message, message
    assert fix in (error.fix or ""), message
    assert problem in message, message
    return error


CHAIN = yaml_text(
    """
    version: 1
    views:
      - name: ops.a
        grain: [id]
      - name: ops.b
        upstream: [ops.a]
      - name: ops.c
        upstream: [ops.b]
    """
)


# --------------------------------------------------------------------------------------------------
# The shipped catalog


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.delenv("MV_REFRESH_CONFIG", raising=False)
    return load_catalog()


def test_shipped_catalog_lists_the_yango_chain_in_canonical_order(shipped: Catalog) -> None:
    assert Path(shipped.source) == DEFAULT_CATALOG
    assert shipped.connection_id == "postgres_default"
    assert len(shipped) == 6
    assert [view.display_name for view in shipped] == YANGO_CHAIN
    assert [view.position for view in shipped] == list(range(6))
    lines = [view.line for view in shipped]
    assert lines == sorted(lines) and len(set(lines)) == 6


def test_shipped_catalog_chain_critical_view_and_grains(shipped: Catalog) -> None:
    views = list(shipped)
    assert views[0].upstream == ()
    for previous, view in zip(views, views[1:], strict=False):
        assert view.upstream == (previous.key,)
    assert [view.grain for view in views] == [
        ("payment_id",),
        ("payment_id",),
        ("payment_id",),
        ("payment_id",),
        ("claim_id",),
        ("driver_id", "milestone_value"),
    ]
    critical = shipped.critical_views
    assert [view.display_name for view in critical] == ["ops.mv_yango_cabinet_claims_for_collection"]
    assert [view.critical for view in views] == [False] * 5 + [True]


def test_shipped_catalog_settings_and_task_ids(shipped: Catalog) -> None:
    for view in shipped:
        assert view.mode == "auto"
        assert (view.warn_after_hours, view.crit_after_hours) == (24.0, 48.0)
        assert (view.lock_timeout_seconds, view.statement_timeout_seconds) == (60.0, 3600.0)
        assert view.description
        assert view.task_id == f"refresh_{view.name}"
        assert view.schema == "ops"
    assert shipped.get("ops.mv_yango_cabinet_claims_for_collection").task_id == (
        "refresh_mv_yango_cabinet_claims_for_collection"
    )


def test_shipped_catalog_yaml_has_comments_and_documents_every_key() -> None:
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    assert text.count("\n#") >= 10
    for key in ("warn_after_hours", "crit_after_hours", "lock_timeout_seconds", "statement_timeout_seconds"):
        assert f"#   {key}" in text or f"# {key}" in text or f"{key} " in text


# --------------------------------------------------------------------------------------------------
# Which file is loaded


MINIMAL = yaml_text(
    """
    version: 1
    connection_id: warehouse
    views:
      - name: stage.only_view
    """
)


def test_mv_refresh_config_points_to_another_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(MINIMAL, encoding="utf-8")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(other))
    catalog = load_catalog()
    assert catalog.source == str(other)
    assert catalog.connection_id == "warehouse"
    assert [view.key for view in catalog] == [("stage", "only_view")]


def test_explicit_path_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(MINIMAL, encoding="utf-8")
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(tmp_path / "does-not-exist.yaml"))
    assert load_catalog(other).source == str(other)
    assert load_catalog(str(other)).views[0].name == "only_view"


def test_missing_catalog_names_the_path_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope" / "catalog.yaml"
    monkeypatch.setenv("MV_REFRESH_CONFIG", str(missing))
    with pytest.raises(CatalogError) as info:
        load_catalog()
    message = str(info.value)
    assert str(missing) in message
    assert "MV_REFRESH_CONFIG" in message
    assert "not found" in message
    assert info.value.source == str(missing)


def test_a_directory_is_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "MV_REFRESH_CONFIG" in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nviews:\n  - name: ops.caf\xe9\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(bad)
    assert info.value.line == 3
    assert "UTF-8" in str(info.value) and str(bad) in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    with_bom = tmp_path / "bom.yaml"
    with_bom.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert len(load_catalog(with_bom)) == 1


def test_errors_in_a_loaded_file_name_that_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CHAIN.replace("grain: [id]", "grain: [id]\n    lock_timout: 5"), encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(broken)
    assert str(info.value).startswith(f"{broken}, line 5:")
    assert info.value.source == str(broken)


# --------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ops.mv_x", ("ops", "mv_x")),
        ("_s.v_2", ("_s", "v_2")),
        ("s$1.v$", ("s$1", "v$")),
        ('ops."Weird MV"', ("ops", "Weird MV")),
        ('"Ops"."X"', ("Ops", "X")),
        ('ops."a""b"', ("ops", 'a"b')),
        ('ops."x; drop table y"', ("ops", "x; drop table y")),
        ('"a.b".c', ("a.b", "c")),
        ('ops."' + "é" * 31 + '"', ("ops", "é" * 31)),  # 62 bytes
        ("ops." + "a" * 63, ("ops", "a" * 63)),
    ],
)
def test_parse_qualified_name_accepts(text: str, expected: tuple[str, str]) -> None:
    assert parse_qualified_name(text) == expected
    assert parse_qualified_name(format_qualified_name(*expected)) == expected


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("ops.x; drop table y", "nothing else"),
        ("ops.x--", "nothing else"),
        ("ops.x/*", "nothing else"),
        ('"a"."b"."c"', "write it as schema.name"),
        ("db.ops.x", "write it as schema.name"),
        ("ops.", "write it as schema.name"),
        (".x", "write it as schema.name"),
        ("mv_x", "write it as schema.name, e.g. ops.mv_x"),
        ("", "write it as schema.name"),
        ("Ops.x", "write it in lowercase, or double-quote it to keep the case"),
        ("ops.MV_X", "write it in lowercase, or double-quote it to keep the case"),
        (" ops.x", "remove the whitespace"),
        ("ops.x ", "remove the whitespace"),
        ("ops.x\n", "remove the whitespace"),
        ("ops .x", "write it as schema.name"),
        ("ops. x", "double-quote"),
        ('ops.""', "write the real name"),
        ('ops."x', 'close the quoted identifier with "'),
        ('ops."a\x00b"', "cannot hold NUL"),
        ("ops.x\x00", "nothing else"),
        ("ops." + "a" * 64, "63 bytes or fewer"),
        ('ops."' + "é" * 32 + '"', "63 bytes or fewer"),  # 32 characters but 64 bytes
        ("a" * 64 + ".x", "63 bytes or fewer"),
        ("1ops.x", "double-quote"),
        ("ops.café", "double-quote"),
        ("ops.\ud800", "double-quote"),
        ('ops."\ud800"', "valid UTF-8"),
        ("ops.x.", "write it as schema.name"),
        ('ops."x"y', "nothing else"),
    ],
)
def test_parse_qualified_name_refuses(text: str, fix: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse_qualified_name(text)
    assert fix in str(info.value)
    assert fix in info.value.fix
    assert "invalid view name" in str(info.value)


def test_parse_qualified_name_labels_its_error_when_told_where_the_name_came_from() -> None:
    with pytest.raises(CatalogError) as info:
        parse_qualified_name("ops.x;", source="the command line", line=3, entry="argument 2")
    assert (info.value.source, info.value.line, info.value.entry) == ("the command line", 3, "argument 2")
    assert str(info.value).startswith("the command line, line 3: argument 2: invalid view name")


@pytest.mark.parametrize("value", [None, 42, b"ops.x", ("ops", "x")])
def test_parse_qualified_name_refuses_non_text(value: object) -> None:
    with pytest.raises(CatalogError, match="must be text"):
        parse_qualified_name(value)  # type: ignore[arg-type]


def test_name_parsers_raise_only_catalog_error_and_round_trip() -> None:
    """A poor man's fuzz (hypothesis is not a dependency): nasty fragments in every combination."""
    fragments = [
        '"',
        '""',
        ".",
        "a",
        "Z",
        "_",
        "$",
        "1",
        " ",
        "\x00",
        "\ud800",
        "é",
        ";",
        "-",
        "\n",
        "ops",
        '"a b"',
    ]
    rnd = random.Random(20240601)

    def junk() -> str:
        return "".join(rnd.choice(fragments) for _ in range(rnd.randint(0, 9)))

    def part() -> str:  # often well-formed, sometimes not
        if rnd.random() < 0.5:
            return rnd.choice("abz_") + "".join(rnd.choice("az09_$") for _ in range(rnd.randint(0, 8)))
        return '"' + junk().replace('"', '""') + '"'

    accepted = 0
    for _ in range(20000):
        text = junk() if rnd.random() < 0.3 else part() + rnd.choice([".", ".", ". ", ""]) + part()
        try:
            key = parse_qualified_name(text)
        except CatalogError as exc:
            assert str(exc)
        else:
            accepted += 1
            assert parse_qualified_name(format_qualified_name(*key)) == key
            spec = ViewSpec(*key)
            assert parse_qualified_name(spec.display_name) == key
            assert TASK_ID_RE.fullmatch(spec.task_id)
        try:
            column = parse_identifier(text)
        except CatalogError as exc:
            assert str(exc)
        else:
            assert isinstance(column, str) and column
    assert accepted > 100  # the sample really exercised the accepting paths too


@pytest.mark.parametrize(
    ("text", "expected"),
    [("driver_id", "driver_id"), ('"Driver ID"', "Driver ID"), ('"a""b"', 'a"b'), ("x$", "x$")],
)
def test_parse_identifier_accepts(text: str, expected: str) -> None:
    assert parse_identifier(text) == expected


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("t.driver_id", "bare column name"),
        ("Driver", "write it in lowercase, or double-quote it to keep the case"),
        ("", "write the column name"),
        ("a b", "double-quote"),
        ("id;", "double-quote"),
        (" id", "remove the whitespace"),
        ('""', "write the real name"),
        ("c" * 64, "63 bytes or fewer"),
    ],
)
def test_parse_identifier_refuses(text: str, fix: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse_identifier(text)
    assert fix in str(info.value)
    assert "invalid column name" in str(info.value)


# --------------------------------------------------------------------------------------------------
# ViewSpec


@pytest.mark.parametrize(
    ("schema", "name", "display"),
    [
        ("ops", "mv_x", "ops.mv_x"),
        ("ops", "Weird MV", 'ops."Weird MV"'),
        ("Ops", "x", '"Ops".x'),
        ("ops", 'a"b', 'ops."a""b"'),
        ("ops", "1st", 'ops."1st"'),
        ("ops", "x.y", 'ops."x.y"'),
    ],
)
def test_display_name_quotes_only_when_needed_and_round_trips(schema: str, name: str, display: str) -> None:
    spec = ViewSpec(schema, name)
    assert spec.display_name == display
    assert str(spec) == display
    assert spec.key == (schema, name)
    assert parse_qualified_name(spec.display_name) == spec.key


def test_task_id_of_a_plain_name_is_refresh_name() -> None:
    assert ViewSpec("ops", "mv_x").task_id == "refresh_mv_x"
    assert ViewSpec("other_schema", "mv_x").task_id == "refresh_mv_x"
    assert ViewSpec("Ops", "mv_x").task_id == "refresh_mv_x"


def test_task_id_of_an_odd_name_is_sanitized_with_a_stable_hash() -> None:
    weird = ViewSpec("ops", "Weird MV").task_id
    assert re.fullmatch(r"refresh_ops_Weird_MV_[0-9a-f]{8}", weird)
    assert ViewSpec("ops", "Weird MV").task_id == weird  # stable
    # Names that sanitize alike still get different ids.
    assert ViewSpec("ops", "Weird-MV").task_id != weird
    assert ViewSpec("ops", "Weird-MV").task_id.startswith("refresh_ops_Weird_MV_")
    # Sanitizing changed nothing: no hash.
    assert ViewSpec("ops", "MixedCase").task_id == "refresh_ops_MixedCase"
    # $ is fine in PostgreSQL names but not in task ids.
    assert re.fullmatch(r"refresh_ops_v__[0-9a-f]{8}", ViewSpec("ops", "v$").task_id)


def test_task_ids_are_always_valid_airflow_ids() -> None:
    long_multibyte = "é" * 31
    for schema, name in [("ops", long_multibyte), ("s" * 63, '"' * 63), ("ops", "x" * 63), ("a b", "c d")]:
        task_id = ViewSpec(schema, name).task_id
        assert TASK_ID_RE.fullmatch(task_id), task_id
        assert task_id.startswith("refresh_")


def test_view_spec_is_frozen_and_hashable() -> None:
    spec = ViewSpec("ops", "x")
    with pytest.raises(AttributeError):
        spec.name = "y"  # type: ignore[misc]
    assert {spec: 1}[ViewSpec("ops", "x")] == 1


# --------------------------------------------------------------------------------------------------
# Catalog API


DIAMOND = yaml_text(
    """
    version: 1
    views:
      - name: ops.a
      - name: ops.e
      - name: ops.b
        upstream: [ops.a]
      - name: ops.c
        upstream: [ops.a]
        critical: true
      - name: ops.d
        upstream: [ops.c, ops.b]
        critical: true
      - name: ops.f
        upstream: [ops.e]
    """
)


@pytest.fixture
def diamond() -> Catalog:
    return parse_catalog(DIAMOND, SOURCE)


def names(views: list[ViewSpec]) -> list[str]:
    return [view.display_name for view in views]


def test_get_accepts_text_keys_and_specs(diamond: Catalog) -> None:
    view = diamond.get("ops.c")
    assert view.key == ("ops", "c")
    assert diamond.get(("ops", "c")) is view
    assert diamond.get(view) is view
    assert diamond.get('"ops"."c"') is view  # quoting a plain name is allowed and means the same


def test_get_refuses_a_view_outside_the_catalog(diamond: Catalog) -> None:
    with pytest.raises(CatalogError) as info:
        diamond.get("ops.zz")
    message = str(info.value)
    assert "ops.zz is not in the catalog" in message
    assert f"the catalog is the allow-list: add it to {SOURCE} or pick one of: " in message
    assert "ops.a, ops.e, ops.b, ops.c, ops.d, ops.f" in message
    assert info.value.source == SOURCE


def test_get_suggests_a_close_name(diamond: Catalog) -> None:
    catalog = parse_catalog(CHAIN.replace("ops.a", "ops.mv_orders"), SOURCE)
    with pytest.raises(CatalogError, match=r"did you mean ops\.mv_orders"):
        catalog.get("ops.mv_order")


def test_get_refuses_malformed_names(diamond: Catalog) -> None:
    with pytest.raises(CatalogError, match="invalid view name"):
        diamond.get("ops.a; drop table ops.a")
    with pytest.raises(CatalogError, match=r"\(schema, name\) pair"):
        diamond.get(("ops", "a", "x"))  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="not int"):
        diamond.get(3)  # type: ignore[arg-type]


def test_select_returns_canonical_order_without_duplicates(diamond: Catalog) -> None:
    picked = diamond.select(["ops.d", "ops.a", ("ops", "d"), "ops.b", "ops.a"])
    assert names(picked) == ["ops.a", "ops.b", "ops.d"]
    assert diamond.select([]) == []
    assert names(diamond.select("ops.c")) == ["ops.c"]  # a single name is not iterated per character
    assert names(diamond.select(view.display_name for view in reversed(diamond.views))) == names(
        list(diamond)
    )


def test_select_lists_every_unknown_name(diamond: Catalog) -> None:
    with pytest.raises(CatalogError) as info:
        diamond.select(["ops.a", "ops.nope", "ops.zilch", "ops.nope", "bad name"])
    message = str(info.value)
    assert "ops.nope, ops.zilch are not in the catalog" in message
    assert "invalid view name 'bad name'" in message
    assert "the catalog is the allow-list" in message


def test_downstream_of_is_transitive_and_canonical(diamond: Catalog) -> None:
    assert names(diamond.downstream_of("ops.a")) == ["ops.b", "ops.c", "ops.d"]
    assert names(diamond.downstream_of("ops.b")) == ["ops.d"]
    assert names(diamond.downstream_of(("ops", "e"))) == ["ops.f"]
    assert diamond.downstream_of("ops.d") == []
    with pytest.raises(CatalogError, match="not in the catalog"):
        diamond.downstream_of("ops.zz")


def test_downstream_of_the_shipped_chain(shipped: Catalog) -> None:
    assert names(shipped.downstream_of(YANGO_CHAIN[0])) == YANGO_CHAIN[1:]
    assert names(shipped.downstream_of(YANGO_CHAIN[3])) == YANGO_CHAIN[4:]
    assert shipped.downstream_of(YANGO_CHAIN[-1]) == []


def test_upstream_of_is_transitive_and_canonical(diamond: Catalog) -> None:
    assert names(diamond.upstream_of("ops.d")) == ["ops.a", "ops.b", "ops.c"]
    assert diamond.upstream_of("ops.a") == []


def test_critical_views_iteration_and_membership(diamond: Catalog) -> None:
    assert names(diamond.critical_views) == ["ops.c", "ops.d"]
    assert len(diamond) == 6
    assert names(list(diamond)) == ["ops.a", "ops.e", "ops.b", "ops.c", "ops.d", "ops.f"]
    assert diamond.names == names(list(diamond))
    assert "ops.a" in diamond and ("ops", "f") in diamond
    assert "ops.zz" not in diamond and "not a name;" not in diamond


def test_upstream_keys_are_schema_name_tuples(diamond: Catalog) -> None:
    assert diamond.get("ops.d").upstream == (("ops", "c"), ("ops", "b"))


def test_catalog_built_directly_supports_lookups() -> None:
    catalog = Catalog("built", "conn", (ViewSpec("s", "a"), ViewSpec("s", "b", upstream=(("s", "a"),))))
    assert names(catalog.downstream_of("s.a")) == ["s.b"]
    assert catalog.get("s.b").position == 0  # as given: direct construction does not renumber


# --------------------------------------------------------------------------------------------------
# Settings


def test_defaults_apply_and_views_override_them() -> None:
    text = yaml_text(
        """
        version: 1
        defaults:
          mode: plain
          warn_after_hours: 2
          crit_after_hours: 6.5
          lock_timeout_seconds: 0.5
          statement_timeout_seconds: 120
        views:
          - name: ops.a
          - name: ops.b
            description: "  two  "
            mode: concurrently
            crit_after_hours: 12
            lock_timeout_seconds: 5
        """
    )
    a, b = parse_catalog(text, SOURCE)
    assert (a.mode, a.warn_after_hours, a.crit_after_hours) == ("plain", 2.0, 6.5)
    assert (a.lock_timeout_seconds, a.statement_timeout_seconds) == (0.5, 120.0)
    assert (b.mode, b.warn_after_hours, b.crit_after_hours) == ("concurrently", 2.0, 12.0)
    assert (b.lock_timeout_seconds, b.statement_timeout_seconds) == (5.0, 120.0)
    assert isinstance(b.lock_timeout_seconds, float)
    assert (a.description, b.description) == (None, "two")
    assert a.critical is False and a.grain == () and a.upstream == ()


def test_built_in_defaults_and_connection_id() -> None:
    (view,) = parse_catalog("version: 1\nviews:\n  - name: ops.a\n", SOURCE)
    assert (view.mode, view.warn_after_hours, view.crit_after_hours) == ("auto", 24.0, 48.0)
    assert (view.lock_timeout_seconds, view.statement_timeout_seconds) == (60.0, 3600.0)
    assert parse_catalog("version: 1\nviews:\n  - name: ops.a\n").connection_id == DEFAULT_CONNECTION_ID
    assert parse_catalog("version: 1\nviews:\n  - name: ops.a\n").source == "<string>"


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_accepted(mode: str) -> None:
    (view,) = parse_catalog(f"version: 1\nviews:\n  - name: ops.a\n    mode: {mode}\n")
    assert view.mode == mode


def test_yaml_booleans_are_accepted_for_critical() -> None:
    text = "version: 1\nviews:\n  - {name: ops.a, critical: yes}\n  - {name: ops.b, critical: False}\n"
    a, b = parse_catalog(text)
    assert (a.critical, b.critical) == (True, False)


def test_quoted_names_load_and_round_trip() -> None:
    text = yaml_text(
        """
        version: 1
        views:
          - name: 'ops."Weird MV"'
            grain: ['"Driver ID"', milestone_value]
          - name: ops.plain
            upstream: ['ops."Weird MV"']
        """
    )
    catalog = parse_catalog(text, SOURCE)
    weird, plain = catalog
    assert weird.key == ("ops", "Weird MV")
    assert weird.display_name == 'ops."Weird MV"'
    assert catalog.get(weird.display_name) is weird
    assert weird.grain == ("Driver ID", "milestone_value")
    assert plain.upstream == (("ops", "Weird MV"),)
    assert names(catalog.downstream_of('ops."Weird MV"')) == ["ops.plain"]
    assert re.fullmatch(r"refresh_ops_Weird_MV_[0-9a-f]{8}", weird.task_id)


def test_yaml_anchors_and_aliases_still_work_for_plain_values() -> None:
    text = yaml_text(
        """
        version: 1
        views:
          - name: ops.a
            grain: &g [id]
          - name: ops.b
            grain: *g
            upstream: [ops.a]
        """
    )
    a, b = parse_catalog(text)
    assert a.grain == b.grain == ("id",)


# --------------------------------------------------------------------------------------------------
# Every error names the line, the entry and the fix


def test_unknown_key_suggests_the_right_one() -> None:
    text = CHAIN.replace("    grain: [id]", "    grain: [id]\n    lock_timout: 5")
    error = catalog_error(
        text,
        line=line_of(text, "lock_timout"),
        entry="views[0] (ops.a)",
        problem="unknown key 'lock_timout'",
        fix="did you mean 'lock_timeout_seconds'? Allowed keys: name, description, critical, grain",
    )
    assert "statement_timeout_seconds" in error.fix


def test_unknown_key_with_a_familiar_synonym() -> None:
    text = CHAIN.replace("upstream: [ops.a]", "depends_on: [ops.a]")
    catalog_error(
        text,
        line=line_of(text, "depends_on"),
        entry="views[1] (ops.b)",
        fix="did you mean 'upstream'?",
    )


def test_unknown_key_without_a_close_match_lists_allowed_keys() -> None:
    text = CHAIN.replace("grain: [id]", "grain: [id]\n    zzzzzz: 1")
    catalog_error(text, line=line_of(text, "zzzzzz"), entry="views[0]", fix="remove it, or use one of")


def test_unknown_top_level_key() -> None:
    text = CHAIN.replace("version: 1", "version: 1\nview: []")
    catalog_error(text, line=2, entry="top level", problem="unknown key 'view'", fix="did you mean 'views'?")


def test_duplicate_key_in_a_view_names_both_lines() -> None:
    text = CHAIN.replace("    grain: [id]", "    grain: [id]\n    mode: auto\n    grain: [x]")
    first, second = line_of(text, "grain"), line_of(text, "grain", 2)
    error = catalog_error(
        text,
        line=second,
        entry="views[0] (ops.a)",
        problem=f"key 'grain' appears twice in the same mapping (first at line {first}, again at line {second})",
        fix=f"keep one of the two 'grain' lines (line {first} or line {second})",
    )
    assert "silently" in error.problem


def test_duplicate_top_level_key() -> None:
    text = CHAIN + "version: 1\n"
    catalog_error(
        text, line=len(text.splitlines()), entry="top level", fix="keep one of the two 'version' lines"
    )


def test_missing_name() -> None:
    text = CHAIN + "  - grain: [x]\n"
    catalog_error(
        text,
        line=line_of(text, "grain: [x]"),
        entry="views[3]",
        problem="no name",
        fix="add `name: schema.view`",
    )


def test_duplicate_view_names_both_lines() -> None:
    text = CHAIN + "  - name: ops.a\n"
    first, second = line_of(text, "name: ops.a"), line_of(text, "name: ops.a", 2)
    catalog_error(
        text,
        line=second,
        entry="views[3] (ops.a)",
        problem=f"duplicate view ops.a: it is already listed as views[0] at line {first}",
        fix=f"remove one of the two entries (line {first} or line {second})",
    )


def test_duplicate_view_spelled_differently_is_still_a_duplicate() -> None:
    text = CHAIN + '  - name: \'"ops"."a"\'\n'
    catalog_error(text, line=len(text.splitlines()), entry="views[3] (ops.a)", fix="remove one of the two")


def test_upstream_not_in_the_catalog() -> None:
    text = CHAIN.replace("upstream: [ops.a]", "upstream: [ops.aa]")
    catalog_error(
        text,
        line=line_of(text, "ops.aa"),
        entry="views[1].upstream[0] (ops.b)",
        problem="upstream ops.aa is not in the catalog",
        fix="did you mean ops.a? add ops.aa to the catalog above ops.b, or remove it from upstream",
    )


def test_upstream_to_itself() -> None:
    text = CHAIN.replace("upstream: [ops.a]", "upstream: [ops.a, ops.b]")
    catalog_error(
        text,
        line=line_of(text, "ops.a, ops.b"),
        entry="views[1].upstream[1] (ops.b)",
        problem="ops.b lists itself as upstream",
        fix="remove this upstream entry",
    )


def test_two_view_cycle_names_the_path() -> None:
    text = CHAIN.replace("    grain: [id]", "    upstream: [ops.b]")
    catalog_error(
        text,
        line=line_of(text, "upstream: [ops.b]"),
        entry="views[0].upstream (ops.a)",
        problem="dependency cycle: ops.a -> ops.b -> ops.a",
        fix="remove one of these upstream entries: ops.b from the upstream of ops.a (line 4); "
        "ops.a from the upstream of ops.b (line 6)",
    )


def test_three_view_cycle_is_reported_as_a_cycle_not_as_an_ordering_problem() -> None:
    text = CHAIN.replace("    grain: [id]", "    upstream: [ops.c]")
    error = catalog_error(
        text,
        line=line_of(text, "upstream: [ops.c]"),
        entry="views[0].upstream (ops.a)",
        problem="dependency cycle: ops.a -> ops.c -> ops.b -> ops.a",
        fix="remove one of these upstream entries",
    )
    assert "move ops." not in str(error) and "listed below" not in str(error)
    for needle in ("line 4", "line 6", "line 8"):
        assert needle in error.fix


def test_cycle_among_later_views_starts_at_the_earliest_one() -> None:
    text = CHAIN + "  - name: ops.d\n    upstream: [ops.e]\n  - name: ops.e\n    upstream: [ops.d]\n"
    catalog_error(
        text,
        line=line_of(text, "upstream: [ops.e]"),
        entry="views[3].upstream (ops.d)",
        problem="dependency cycle: ops.d -> ops.e -> ops.d",
        fix="remove one of these upstream entries",
    )


def test_upstream_listed_later_must_move_above() -> None:
    text = yaml_text(
        """
        version: 1
        views:
          - name: ops.a
            upstream: [ops.c]
          - name: ops.b
          - name: ops.c
        """
    )
    catalog_error(
        text,
        line=line_of(text, "upstream: [ops.c]"),
        entry="views[0].upstream[0] (ops.a)",
        problem=f"upstream ops.c is listed below ops.a (views[2], line {line_of(text, 'name: ops.c')})",
        fix="move ops.c above ops.a",
    )


def test_upstream_listed_twice() -> None:
    text = CHAIN.replace("upstream: [ops.a]", "upstream:\n      - ops.a\n      - '\"ops\".a'")
    catalog_error(
        text,
        line=line_of(text, '"ops".a'),
        entry="views[1].upstream[1] (ops.b)",
        problem="listed twice",
        fix="remove the repeated entry",
    )


@pytest.mark.parametrize(
    ("bad", "problem", "fix"),
    [
        ("ops.x; drop table y", "unexpected '; drop table y'", "nothing else"),
        ("ops.x--", "unexpected '--'", "nothing else"),
        ('\'"a"."b"."c"\'', "too many dotted parts", "write it as schema.name"),
        ("ops.", "empty", "write it as schema.name"),
        ("mv_x", "schema is missing", "write it as schema.name"),
        ("Ops.mv_x", "uppercase", "write it in lowercase, or double-quote it to keep the case"),
        ("ops." + "n" * 64, "64 bytes", "63 bytes or fewer"),
    ],
)
def test_malformed_view_name_in_the_catalog(bad: str, problem: str, fix: str) -> None:
    text = CHAIN.replace("name: ops.c", f"name: {bad}")
    catalog_error(
        text, line=line_of(text, "upstream: [ops.b]") - 1, entry="views[2].name", problem=problem, fix=fix
    )


def test_malformed_upstream_name() -> None:
    text = CHAIN.replace("upstream: [ops.b]", "upstream: ['ops.b; drop table ops.a']")
    catalog_error(
        text,
        line=line_of(text, "drop table"),
        entry="views[2].upstream[0] (ops.c)",
        problem="invalid view name",
        fix="nothing else",
    )


def test_view_name_that_is_not_text() -> None:
    text = CHAIN.replace("name: ops.c", "name: [ops, c]")
    catalog_error(text, line=line_of(text, "[ops, c]"), entry="views[2].name", fix="name: schema.view")


def test_upstream_that_is_not_a_list() -> None:
    text = CHAIN.replace("upstream: [ops.a]", "upstream: ops.a")
    catalog_error(
        text,
        line=line_of(text, "upstream: ops.a"),
        entry="views[1].upstream (ops.b)",
        problem="expected a list",
        fix="upstream: [ops.mv_orders]",
    )


@pytest.mark.parametrize(
    ("grain", "problem", "fix"),
    [
        ("[]", "empty list", "remove grain if the view has none"),
        ("id", "expected a list", "grain: [driver_id, milestone_value]"),
        (
            "[id, x, '\"id\"']",
            "column id is listed twice in the grain (as views[0].grain[0] and views[0].grain[2])",
            "remove the repeated column",
        ),
        ("[Driver_ID]", "uppercase", "write it in lowercase, or double-quote it to keep the case"),
        ("[t.id]", "one part", "bare column name"),
        ("[1]", "expected a column name, got the number 1", "grain: [driver_id, milestone_value]"),
        ("[[id]]", "got a list", "grain: [driver_id, milestone_value]"),
        ("~", "expected a list", "grain: [driver_id"),
    ],
)
def test_bad_grain(grain: str, problem: str, fix: str) -> None:
    text = CHAIN.replace("grain: [id]", f"grain: {grain}")
    catalog_error(text, line=line_of(text, "grain:"), entry="views[0]", problem=problem, fix=fix)


@pytest.mark.parametrize(
    ("value", "problem", "fix"),
    [
        (
            "concurent",
            "unknown refresh mode 'concurent'",
            "did you mean 'concurrently'? Use one of: auto, concurrently, plain",
        ),
        ("AUTO", "unknown refresh mode 'AUTO'", "did you mean 'auto'?"),
        ("fast", "unknown refresh mode 'fast'", "use one of: auto, concurrently, plain"),
        ("1", "unknown refresh mode 1", "use one of: auto, concurrently, plain"),
        ("[auto]", "expected a refresh mode, got a list", "use one of"),
    ],
)
def test_bad_mode(value: str, problem: str, fix: str) -> None:
    text = CHAIN.replace("grain: [id]", f"mode: {value}")
    catalog_error(text, line=line_of(text, "mode:"), entry="views[0].mode (ops.a)", problem=problem, fix=fix)


@pytest.mark.parametrize(
    ("value", "problem", "fix"),
    [
        ("0", "must be greater than 0", "write a plain number greater than 0, e.g. lock_timeout_seconds: 60"),
        ("-1", "must be greater than 0", "lock_timeout_seconds: 60"),
        ("'60'", "expected a number, got the text '60'", "remove the quotes: lock_timeout_seconds: 60"),
        ("1e3", "expected a number, got the text '1e3'", "without quotes or exponent"),
        ("'2E+1'", "expected a number, got the text '2E+1'", "without quotes or exponent"),
        ("sixty", "expected a number, got the text 'sixty'", "lock_timeout_seconds: 60"),
        ("true", "expected a number, got the boolean true", "lock_timeout_seconds: 60"),
        ("~", "expected a number, got null", "lock_timeout_seconds: 60"),
        (".inf", "must be a finite number", "lock_timeout_seconds: 60"),
        (".nan", "must be a finite number", "lock_timeout_seconds: 60"),
        ("0.0001", "between 0.001 and", "lock_timeout_seconds: 60"),
        ("3000000", "between 0.001 and", "lock_timeout_seconds: 60"),
        ("[60]", "expected a number, got a list", "lock_timeout_seconds: 60"),
    ],
)
def test_bad_timeout(value: str, problem: str, fix: str) -> None:
    text = CHAIN.replace("grain: [id]", f"lock_timeout_seconds: {value}")
    catalog_error(
        text,
        line=line_of(text, "lock_timeout_seconds:"),
        entry="views[0].lock_timeout_seconds (ops.a)",
        problem=problem,
        fix=fix,
    )


@pytest.mark.parametrize("key", ["warn_after_hours", "crit_after_hours", "statement_timeout_seconds"])
def test_every_number_must_be_positive(key: str) -> None:
    text = CHAIN.replace("grain: [id]", f"{key}: 0")
    catalog_error(
        text,
        line=line_of(text, key),
        entry=f"views[0].{key} (ops.a)",
        problem="greater than 0",
        fix=f"e.g. {key}:",
    )


def test_hours_have_an_upper_bound() -> None:
    text = CHAIN.replace("grain: [id]", "warn_after_hours: 1000000")
    catalog_error(
        text,
        line=line_of(text, "warn_after"),
        entry="views[0].warn_after_hours",
        fix="e.g.",
        problem="at most 876000 hours",
    )


def test_warn_must_be_below_crit_in_a_view() -> None:
    text = CHAIN.replace("grain: [id]", "warn_after_hours: 10\n    crit_after_hours: 10")
    catalog_error(
        text,
        line=line_of(text, "crit_after_hours"),
        entry="views[0].crit_after_hours (ops.a)",
        problem="warn_after_hours (10, from line 4) must be less than crit_after_hours (10, from line 5)",
        fix="raise crit_after_hours above warn_after_hours, or lower warn_after_hours",
    )


def test_warn_must_be_below_a_built_in_crit() -> None:
    text = CHAIN.replace("grain: [id]", "warn_after_hours: 50")
    catalog_error(
        text,
        line=line_of(text, "warn_after_hours"),
        entry="views[0].warn_after_hours (ops.a)",
        problem="crit_after_hours (48, from built-in default)",
        fix="raise crit_after_hours",
    )


def test_warn_from_defaults_and_crit_from_the_view() -> None:
    text = CHAIN.replace("views:", "defaults:\n  warn_after_hours: 30\nviews:").replace(
        "grain: [id]", "crit_after_hours: 20"
    )
    catalog_error(
        text,
        line=line_of(text, "crit_after_hours: 20"),
        entry="views[0].crit_after_hours (ops.a)",
        problem="warn_after_hours (30, from defaults (line 3))",
        fix="raise crit_after_hours",
    )


def test_warn_must_be_below_crit_in_defaults() -> None:
    text = CHAIN.replace("views:", "defaults:\n  warn_after_hours: 5\n  crit_after_hours: 4.5\nviews:")
    catalog_error(
        text,
        line=line_of(text, "crit_after_hours"),
        entry="defaults",
        problem="warn_after_hours (5) must be less than crit_after_hours (4.5)",
        fix="raise crit_after_hours above warn_after_hours",
    )


@pytest.mark.parametrize("value", ["'true'", "1", "~", "[true]", "'yes'"])
def test_critical_must_be_a_yaml_boolean(value: str) -> None:
    text = CHAIN.replace("grain: [id]", f"critical: {value}")
    catalog_error(
        text,
        line=line_of(text, "critical"),
        entry="views[0].critical (ops.a)",
        problem="expected true or false",
        fix="write true or false (without quotes)",
    )


def test_description_must_be_text() -> None:
    text = CHAIN.replace("grain: [id]", "description: 2024")
    catalog_error(
        text,
        line=line_of(text, "description"),
        entry="views[0].description (ops.a)",
        problem="got the number 2024",
        fix="put the description in quotes",
    )


def test_defaults_refuse_view_only_keys() -> None:
    text = CHAIN.replace("views:", "defaults:\n  grain: [id]\nviews:")
    catalog_error(
        text,
        line=line_of(text, "  grain: [id]"),
        entry="defaults",
        problem="key 'grain' is not allowed here",
        fix="set grain on each view, not under defaults",
    )


def test_defaults_refuse_unknown_keys_and_bad_values() -> None:
    text = CHAIN.replace("views:", "defaults:\n  mod: plain\nviews:")
    catalog_error(text, line=3, entry="defaults", fix="did you mean 'mode'?")
    text = CHAIN.replace("views:", "defaults:\n  mode: sometimes\nviews:")
    catalog_error(text, line=3, entry="defaults.mode", fix="use one of: auto, concurrently, plain")
    text = CHAIN.replace("views:", "defaults: [mode]\nviews:")
    catalog_error(text, line=2, entry="defaults", problem="expected a mapping", fix="key: value")


def test_empty_defaults_are_allowed() -> None:
    catalog = parse_catalog(CHAIN.replace("views:", "defaults:\nviews:"))
    assert catalog.get("ops.a").mode == "auto"


def test_empty_views_list() -> None:
    catalog_error(
        "version: 1\nviews: []\n",
        line=2,
        entry="views",
        problem="the views list is empty",
        fix="list at least one view",
    )


def test_missing_views() -> None:
    catalog_error("version: 1\n", line=1, entry="views", problem="no views", fix="add a `views:` list")


def test_views_must_be_a_list_of_mappings() -> None:
    catalog_error(
        "version: 1\nviews:\n  name: ops.a\n",
        line=3,
        entry="views",
        problem="expected a list",
        fix="- name: schema.view",
    )
    catalog_error(
        "version: 1\nviews:\n  - ops.a\n",
        line=3,
        entry="views[0]",
        problem="expected a view",
        fix="`- name: schema.view`",
    )


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("2", "unsupported catalog version 2"),
        ("'1'", "unsupported catalog version '1'"),
        ("true", "unsupported catalog version True"),
        ("1.0", "unsupported catalog version 1.0"),
    ],
)
def test_version_must_be_1(version: str, problem: str) -> None:
    text = CHAIN.replace("version: 1", f"version: {version}")
    catalog_error(text, line=1, entry="version", problem=problem, fix="write `version: 1`")


def test_missing_version() -> None:
    text = CHAIN.replace("version: 1\n", "")
    catalog_error(text, line=1, entry="version", problem="no version", fix="add `version: 1`")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("''", "invalid Airflow connection id ''"),
        ("'my conn'", "without spaces"),
        ("[a]", "got a list"),
        ("42", "got the number 42"),
        ("~", "got null"),
    ],
)
def test_connection_id_must_be_a_non_empty_string(value: str, problem: str) -> None:
    text = CHAIN.replace("version: 1", f"version: 1\nconnection_id: {value}")
    catalog_error(
        text, line=2, entry="connection_id", problem=problem, fix="e.g. `connection_id: postgres_default`"
    )


def test_yaml_syntax_error_names_the_line() -> None:
    text = CHAIN.replace("upstream: [ops.b]", "upstream: [ops.b")
    catalog_error(
        text,
        line=len(text.splitlines()) + 1,
        entry="YAML syntax",
        problem="invalid YAML",
        fix="correct the YAML",
    )
    text = CHAIN.replace("  - name: ops.b", "  - name: ops.b\n   bad_indent: x")
    error = catalog_error(
        text, line=line_of(text, "bad_indent"), entry="YAML syntax", problem="invalid YAML", fix="indentation"
    )
    assert error.line is not None


def test_several_yaml_documents_are_refused() -> None:
    text = "version: 1\n---\nviews: []\n"
    catalog_error(text, line=2, entry="YAML syntax", problem="single document", fix="correct the YAML")


def test_control_characters_are_refused() -> None:
    catalog_error(
        "version: 1\nviews: \x01\n",
        line=2,
        entry="YAML syntax",
        problem="#x0001",
        fix="remove the control character",
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_catalog(text: str) -> None:
    catalog_error(text, line=1, entry="catalog", problem="the catalog is empty", fix="version: 1")


def test_top_level_must_be_a_mapping() -> None:
    catalog_error("- ops.a\n", line=1, entry="top level", problem="expected a mapping", fix="key: value")


def test_merge_keys_are_refused() -> None:
    text = "version: 1\nviews:\n  - &a {name: ops.a}\n  - <<: *a\n    name: ops.b\n"
    catalog_error(text, line=4, entry="views[1]", problem="merge keys", fix="defaults:")


def test_python_tags_are_refused() -> None:
    text = "version: 1\nviews:\n  - name: !!python/object/apply:os.system [echo hi]\n"
    catalog_error(
        text,
        line=3,
        entry="views[0].name",
        problem="expected a view name, got a list",
        fix="name: schema.view",
    )
    text = "version: 1\nviews:\n  - name: !!python/name:os.system ops.a\n"
    catalog_error(
        text, line=3, entry="views[0].name", problem="cannot read the value", fix="name: schema.view"
    )


def test_keys_must_be_text() -> None:
    text = "version: 1\nviews:\n  - name: ops.a\n    1: x\n"
    catalog_error(
        text,
        line=4,
        entry="views[0] (ops.a)",
        problem="a key must be text, got the number 1",
        fix="use one of the allowed keys",
    )


def test_deep_nesting_is_refused_cleanly() -> None:
    with pytest.raises(CatalogError, match="nested too deeply"):
        parse_catalog("version: 1\nviews: " + "[" * 3000 + "]" * 3000, SOURCE)


def test_views_that_would_share_a_task_id() -> None:
    text = CHAIN + "  - name: stage.a\n"
    catalog_error(
        text,
        line=len(text.splitlines()),
        entry="views[3] (stage.a)",
        problem="stage.a and ops.a (views[0], line 3) would both get the Airflow task id refresh_a",
        fix="keep only one of them",
    )


# --------------------------------------------------------------------------------------------------
# The error type


def test_catalog_error_is_a_value_error_with_its_parts() -> None:
    error = CatalogError("bad thing", source="f.yaml", line=7, entry="views[1]", fix="do this")
    assert isinstance(error, ValueError)
    assert str(error) == "f.yaml, line 7: views[1]: bad thing. Fix: do this"
    assert (error.source, error.line, error.entry, error.problem, error.fix) == (
        "f.yaml",
        7,
        "views[1]",
        "bad thing",
        "do this",
    )


def test_catalog_error_survives_pickling() -> None:
    error = CatalogError("bad thing", source="f.yaml", line=7, entry="views[1]", fix="do this")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CatalogError
    assert str(copy) == str(error)
    assert (copy.source, copy.line, copy.entry, copy.fix) == ("f.yaml", 7, "views[1]", "do this")
