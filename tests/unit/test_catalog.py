"""The catalog (include/mv_refresh.yaml), its strict loader and its JSON Schema. No database needed."""

from __future__ import annotations

import json
import pickle
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from mv_refresh import catalog, yamldoc
from mv_refresh import names as names_module
from mv_refresh.catalog import (
    DEFAULT_CONNECTION_ID,
    MODES,
    ON_UNCHANGED,
    VIEW_DEFAULTS,
    VIEW_KEYS,
    Catalog,
    CatalogError,
    ViewSpec,
    load_catalog,
    parse_catalog,
    parse_qualified_name,
)
from mv_refresh.cli import main
from mv_refresh.demo import DEMO_VIEWS
from mv_refresh.paths import DEFAULT_CATALOG

YANGO_CHAIN = list(DEMO_VIEWS)  # the shipped catalog's views, in the runbook's canonical order
SOURCE = "test-catalog.yaml"
TASK_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,250}")


def yaml_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


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
        ("ops", "user", 'ops."user"'),  # a keyword, quoted as quote_ident() quotes it
        ("adv", 'we"ird; DROP\nx', 'adv.U&"we""ird; DROP\\000Ax"'),  # one line, even with a newline
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


QUOTED = yaml_text(
    """
    version: 1
    views:
      - name: 'ops."Weird MV"'
        grain: ['"Driver ID"', milestone_value]
      - name: ops.plain
        upstream: ['ops."Weird MV"']
    """
)


def test_quoted_names_load_and_round_trip() -> None:
    catalog = parse_catalog(QUOTED, SOURCE)
    weird, plain = catalog
    assert weird.key == ("ops", "Weird MV")
    assert weird.display_name == 'ops."Weird MV"'
    assert catalog.get(weird.display_name) is weird
    assert weird.grain == ("Driver ID", "milestone_value")
    assert plain.upstream == (("ops", "Weird MV"),)
    assert names(catalog.downstream_of('ops."Weird MV"')) == ["ops.plain"]
    assert re.fullmatch(r"refresh_ops_Weird_MV_[0-9a-f]{8}", weird.task_id)


def test_on_unchanged_defaults_to_skip_and_is_inherited_from_defaults() -> None:
    text = yaml_text(
        """
        version: 1
        defaults:
          on_unchanged: refresh
        views:
          - name: ops.a
          - name: ops.b
            on_unchanged: skip
        """
    )
    a, b = parse_catalog(text)
    assert (a.on_unchanged, b.on_unchanged) == ("refresh", "skip")
    (view,) = parse_catalog("version: 1\nviews:\n  - name: ops.a\n")
    assert view.on_unchanged == "skip" and ViewSpec("ops", "a").on_unchanged == "skip"
    assert ON_UNCHANGED == ("skip", "refresh")


def test_view_defaults_and_keys() -> None:
    assert VIEW_DEFAULTS == {"mode": "auto", "warn_after_hours": 24.0, "crit_after_hours": 48.0,
                             "lock_timeout_seconds": 60.0, "statement_timeout_seconds": 3600.0,
                             "on_unchanged": "skip"}
    assert VIEW_KEYS == ("name", "description", "critical", "grain", "upstream", *VIEW_DEFAULTS)


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
# Every problem: one table of (bad catalog, line at fault, words the error must say)

HUGE_HEX = "0x" + "f" * 4000
ALIAS_BOMB = "version: 1\nviews:\n  - &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - &{chr(98 + n)} [" + ", ".join([f"*{chr(97 + n)}"] * 10) + "]\n" for n in range(6))


def _chain(old: str, new: str) -> str:
    text = CHAIN.replace(old, new)
    assert text != CHAIN, old
    return text


# (id, catalog text, the line at fault: a number, or text found on that line (the first such line),
#  words the message must hold, or must not hold after NOT)
BAD_CATALOGS = [
    # unknown, misplaced and repeated keys
    ("unknown key, by spelling", _chain("grain: [id]", "grain: [id]\n    lock_timout: 5"), "lock_timout",
     ["views[0] (ops.a): unknown key 'lock_timout'", "Fix: did you mean 'lock_timeout_seconds'? Allowed "
      "keys: name, description, critical, grain, upstream, mode", "statement_timeout_seconds", "on_unchanged"]),
    ("unknown key, by meaning", _chain("upstream: [ops.a]", "depends_on: [ops.a]"), "depends_on",
     ["views[1] (ops.b): unknown key 'depends_on'", "Fix: did you mean 'upstream'?"]),
    ("unknown key, no likeness", _chain("grain: [id]", "grain: [id]\n    zzzzzz: 1"), "zzzzzz",
     ["views[0] (ops.a)", "Fix: remove it, or use one of the allowed keys"]),
    ("unknown top-level key", _chain("version: 1", "version: 1\nview: []"), 2,
     ["top level: unknown key 'view'", "did you mean 'views'?"]),
    ("unknown key in defaults", _chain("views:", "defaults:\n  mod: plain\nviews:"), 3,
     ["defaults: unknown key 'mod'", "did you mean 'mode'?"]),
    ("a view's key in defaults", _chain("views:", "defaults:\n  grain: [id]\nviews:"), "  grain: [id]",
     ["defaults: key 'grain' is not allowed here", "Fix: set grain on each view, not under defaults"]),
    ("key twice in a view", _chain("    grain: [id]", "    grain: [id]\n    mode: auto\n    grain: [x]"), 6,
     ["views[0] (ops.a): key 'grain' appears twice in the same mapping (first at line 4, again at line 6); "
      "YAML would silently keep only the last", "Fix: keep one of the two 'grain' lines (line 4 or line 6)"]),
    ("key twice at the top", CHAIN + "version: 1\n", 9, ["top level", "keep one of the two 'version' lines"]),
    ("a key that is not text", "version: 1\nviews:\n  - name: ops.a\n    1: x\n", 4,
     ["views[0] (ops.a): a key must be text, got the number 1", "Fix: use one of the allowed keys: name,"]),
    ("merge key", "version: 1\nviews:\n  - &a {name: ops.a}\n  - <<: *a\n    name: ops.b\n", 4,
     ["views[1] (ops.b): YAML merge keys (<<) are not supported", "defaults:"]),
    # missing and empty
    ("view without a name", CHAIN + "  - grain: [x]\n", "grain: [x]",
     ["views[3]: the view has no name", "Fix: add `name: schema.view` to this entry"]),
    ("no views", "version: 1\n", 1, ["views: the catalog has no views", "`- name: schema.view`"]),
    ("no version", _chain("version: 1\n", ""), 1, ["version: the catalog has no version", "`version: 1`"]),
    ("empty views list", "version: 1\nviews: []\n", 2, ["views: the views list is empty", "- name: schema.view"]),
    ("views not a list", "version: 1\nviews:\n  name: ops.a\n", 3, ["views: expected a list", "- name:"]),
    ("a view not a mapping", "version: 1\nviews:\n  - ops.a\n", 3,
     ["views[0]: expected a view (a mapping with at least `name:`), got the text 'ops.a'", "- name: schema.view"]),
    ("empty file", "", 1, ["catalog: the catalog is empty", "version: 1"]),
    ("only a comment", "# only a comment\n", 1, ["the catalog is empty"]),
    ("only a document marker", "---\n", 1, ["the catalog is empty"]),
    ("top level a list", "- ops.a\n", 1, ["top level: expected a mapping of keys", "key: value"]),
    # views across the catalog
    ("duplicate view", CHAIN + "  - name: ops.a\n", 9,
     ["views[3] (ops.a): duplicate view ops.a: it is already listed as views[0] at line 3",
      "Fix: remove one of the two entries (line 3 or line 9)"]),
    ("duplicate view, spelled differently", CHAIN + "  - name: '\"ops\".\"a\"'\n", 9,
     ["views[3] (ops.a): duplicate view ops.a", "remove one of the two"]),
    ("upstream not in the catalog", _chain("upstream: [ops.a]", "upstream: [ops.aa]"), "ops.aa",
     ["views[1].upstream[0] (ops.b): upstream ops.aa is not in the catalog",
      "Fix: did you mean ops.a? add ops.aa to the catalog above ops.b, or remove it from upstream"]),
    ("upstream of itself", _chain("upstream: [ops.a]", "upstream: [ops.a, ops.b]"), "ops.a, ops.b",
     ["views[1].upstream[1] (ops.b): ops.b lists itself as upstream", "Fix: remove this upstream entry"]),
    ("cycle of two", _chain("    grain: [id]", "    upstream: [ops.b]"), 4,
     ["views[0].upstream (ops.a): dependency cycle: ops.a -> ops.b -> ops.a",
      "Fix: remove one of these upstream entries: ops.b from the upstream of ops.a (line 4); "
      "ops.a from the upstream of ops.b (line 6)"]),
    ("cycle of three, not an order problem", _chain("    grain: [id]", "    upstream: [ops.c]"), 4,
     ["dependency cycle: ops.a -> ops.c -> ops.b -> ops.a", "line 4", "line 6", "line 8", "NOT listed below"]),
    ("cycle among later views", CHAIN + "  - name: ops.d\n    upstream: [ops.e]\n  - name: ops.e\n"
     "    upstream: [ops.d]\n", "upstream: [ops.e]",
     ["views[3].upstream (ops.d): dependency cycle: ops.d -> ops.e -> ops.d"]),
    ("upstream listed below", "version: 1\nviews:\n  - name: ops.a\n    upstream: [ops.c]\n  - name: ops.b\n"
     "  - name: ops.c\n", 4, ["views[0].upstream[0] (ops.a): upstream ops.c is listed below ops.a "
                              "(views[2], line 6)", "Fix: move ops.c above ops.a"]),
    ("upstream listed twice", _chain("upstream: [ops.a]", "upstream:\n      - ops.a\n      - '\"ops\".a'"),
     '"ops".a', ["views[1].upstream[1] (ops.b): upstream ops.a is listed twice (as items 0 and 1)",
                 "Fix: remove the repeated entry"]),
    ("shared task id", CHAIN + "  - name: stage.a\n", 9,
     ["views[3] (stage.a): stage.a and ops.a (views[0], line 3) would both get the Airflow task id refresh_a",
      "Fix: keep only one of them"]),
    # names
    ("name with SQL after it", _chain("name: ops.c", "name: ops.x; drop table y"), 7,
     ["views[2].name: invalid view name 'ops.x; drop table y'", "unexpected '; drop table y'", "nothing else"]),
    ("name with a comment", _chain("name: ops.c", "name: ops.x--"), 7, ["unexpected '--'", "nothing else"]),
    ("name of three parts", _chain("name: ops.c", "name: '\"a\".\"b\".\"c\"'"), 7,
     ["too many dotted parts", "Fix: write it as schema.name"]),
    ("name without a name", _chain("name: ops.c", "name: ops."), 7, ["empty", "write it as schema.name"]),
    ("name without a schema", _chain("name: ops.c", "name: mv_x"), 7, ["schema is missing", "e.g. ops.mv_x"]),
    ("name in capitals", _chain("name: ops.c", "name: Ops.mv_x"), 7,
     ["uppercase", "Fix: write it in lowercase, or double-quote it to keep the case"]),
    ("name too long", _chain("name: ops.c", "name: ops." + "n" * 64), 7, ["64 bytes", "63 bytes or fewer"]),
    ("name not text", _chain("name: ops.c", "name: [ops, c]"), 7,
     ["views[2].name: expected a view name, got a list", "Fix: write it as `name: schema.view`"]),
    ("bad upstream name", _chain("upstream: [ops.b]", "upstream: ['ops.b; drop table ops.a']"), "drop table",
     ["views[2].upstream[0] (ops.c): invalid view name", "nothing else"]),
    ("upstream not a list", _chain("upstream: [ops.a]", "upstream: ops.a"), "upstream: ops.a",
     ["views[1].upstream (ops.b): expected a list, got the text 'ops.a'", "upstream: [ops.mv_orders]"]),
    # grain
    ("empty grain", _chain("grain: [id]", "grain: []"), 4,
     ["views[0].grain (ops.a): the grain list is empty", "or remove grain if the view has none"]),
    ("grain not a list", _chain("grain: [id]", "grain: id"), 4,
     ["expected a list, got the text 'id'", "grain: [driver_id, milestone_value]"]),
    ("grain of null", _chain("grain: [id]", "grain: ~"), 4, ["expected a list, got null"]),
    ("column twice", _chain("grain: [id]", "grain: [id, x, '\"id\"']"), 4,
     ["views[0].grain[2] (ops.a): column id is listed twice (as items 0 and 2)", "remove the repeated entry"]),
    ("column in capitals", _chain("grain: [id]", "grain: [Driver_ID]"), 4,
     ["views[0].grain[0] (ops.a): invalid column name 'Driver_ID'", "write it in lowercase"]),
    ("column of a table", _chain("grain: [id]", "grain: [t.id]"), 4, ["exactly one part", "bare column name"]),
    ("column a number", _chain("grain: [id]", "grain: [1]"), 4,
     ["expected a column name, got the number 1", "grain: [driver_id, milestone_value]"]),
    ("column a list", _chain("grain: [id]", "grain: [[id]]"), 4, ["expected a column name, got a list"]),
    # modes
    ("mode misspelt", _chain("grain: [id]", "mode: concurent"), 4,
     ["views[0].mode (ops.a): unknown refresh mode 'concurent'",
      "Fix: did you mean 'concurrently'? Use one of: auto, concurrently, plain"]),
    ("mode in capitals", _chain("grain: [id]", "mode: AUTO"), 4, ["unknown refresh mode 'AUTO'", "'auto'?"]),
    ("mode unknown", _chain("grain: [id]", "mode: fast"), 4, ["'fast'", "Fix: use one of: auto, concurrently"]),
    ("mode a number", _chain("grain: [id]", "mode: 1"), 4, ["unknown refresh mode 1", "use one of"]),
    ("mode a list", _chain("grain: [id]", "mode: [auto]"), 4, ["expected a refresh mode, got a list"]),
    ("on_unchanged misspelt", _chain("grain: [id]", "on_unchanged: skipp"), 4,
     ["views[0].on_unchanged (ops.a): unknown on_unchanged value 'skipp'", "did you mean 'skip'? Use one of: "
      "skip, refresh"]),
    # numbers
    *[(f"timeout {value}", _chain("grain: [id]", f"lock_timeout_seconds: {value}"), 4,
       ["views[0].lock_timeout_seconds (ops.a): ", words, fix])
      for value, words, fix in [
          ("0", "must be between 0.001 and 2147483.647 seconds (PostgreSQL counts it in whole milliseconds, "
           "and 0 would mean no timeout), got 0", "e.g. lock_timeout_seconds: 60"),
          ("-1", "between 0.001 and", "lock_timeout_seconds: 60"),
          ("0.0001", "between 0.001 and", "lock_timeout_seconds: 60"),
          ("3000000", "got 3000000", "lock_timeout_seconds: 60"),
          ("'60'", "expected a number, got the text '60'", "Fix: remove the quotes: lock_timeout_seconds: 60"),
          ("1e3", "expected a number, got the text '1e3'", "without quotes or exponent"),
          ("'2E+1'", "expected a number, got the text '2E+1'", "without quotes or exponent"),
          ("sixty", "expected a number, got the text 'sixty'", "lock_timeout_seconds: 60"),
          ("true", "expected a number, got the boolean true", "lock_timeout_seconds: 60"),
          ("~", "expected a number, got null", "lock_timeout_seconds: 60"),
          (".inf", "must be a finite number", "lock_timeout_seconds: 60"),
          (".nan", "must be a finite number", "lock_timeout_seconds: 60"),
          ("[60]", "expected a number, got a list", "lock_timeout_seconds: 60"),
          (HUGE_HEX, "must be a finite number, got an integer of 16,000 bits", "lock_timeout_seconds: 60"),
      ]],
    *[(f"{key} 0", _chain("grain: [id]", f"{key}: 0"), 4, [f"views[0].{key} (ops.a)", "got 0", f"e.g. {key}:"])
      for key in ("warn_after_hours", "crit_after_hours", "statement_timeout_seconds")],
    ("hours too many", _chain("grain: [id]", "warn_after_hours: 1000000"), 4,
     ["views[0].warn_after_hours (ops.a): warn_after_hours must be greater than 0 and at most 876000 hours "
      "(100 years), got 1000000"]),
    # warn below crit, wherever each comes from
    ("warn not below crit", _chain("grain: [id]", "warn_after_hours: 10\n    crit_after_hours: 10"), 5,
     ["views[0].crit_after_hours (ops.a): warn_after_hours (10, from line 4) must be less than "
      "crit_after_hours (10, from line 5)", "Fix: raise crit_after_hours above warn_after_hours, or lower "
      "warn_after_hours"]),
    ("warn above the built-in crit", _chain("grain: [id]", "warn_after_hours: 50"), 4,
     ["views[0].warn_after_hours (ops.a): warn_after_hours (50, from line 4) must be less than "
      "crit_after_hours (48, from built-in default)"]),
    ("warn from defaults, crit from the view",
     _chain("views:", "defaults:\n  warn_after_hours: 30\nviews:").replace("grain: [id]", "crit_after_hours: 20"),
     "crit_after_hours: 20", ["views[0].crit_after_hours (ops.a): warn_after_hours (30, from defaults (line 3)) "
                              "must be less than crit_after_hours (20, from line 6)"]),
    ("warn not below crit in defaults",
     _chain("views:", "defaults:\n  warn_after_hours: 5\n  crit_after_hours: 4.5\nviews:"), 4,
     ["defaults.crit_after_hours: warn_after_hours (5, from defaults (line 3)) must be less than "
      "crit_after_hours (4.5, from defaults (line 4))", "raise crit_after_hours"]),
    # true or false, text
    *[(f"critical {value}", _chain("grain: [id]", f"critical: {value}"), 4,
       ["views[0].critical (ops.a): expected true or false", "Fix: write true or false (without quotes)"])
      for value in ("'true'", "1", "~", "[true]", "'yes'")],
    ("description a number", _chain("grain: [id]", "description: 2024"), 4,
     ["views[0].description (ops.a): expected text, got the number 2024", "Fix: put the description in quotes"]),
    ("description of bytes", _chain("grain: [id]", "description: !!binary aGVsbG8="), 4,
     ["expected text, got bytes b'hello'"]),
    ("mode in defaults unknown", _chain("views:", "defaults:\n  mode: sometimes\nviews:"), 3,
     ["defaults.mode: unknown refresh mode 'sometimes'", "use one of: auto, concurrently, plain"]),
    ("defaults a list", _chain("views:", "defaults: [mode]\nviews:"), 2,
     ["defaults: expected a mapping of keys, got a list", "key: value"]),
    # version and connection
    *[(f"version {value}", _chain("version: 1", f"version: {value}"), 1,
       [f"version: unsupported catalog version {shown}", "Fix: write `version: 1`"])
      for value, shown in [("2", "2"), ("'1'", "'1'"), ("true", "True"), ("1.0", "1.0"),
                           (HUGE_HEX, "an integer of 16,000 bits")]],
    *[(f"connection id {value}", _chain("version: 1", f"version: 1\nconnection_id: {value}"), 2,
       ["connection_id: ", words, "Fix: write the Airflow connection id, e.g. `connection_id: postgres_default`"])
      for value, words in [("''", "invalid Airflow connection id ''"), ("'my conn'", "without spaces"),
                           ("[a]", "got a list"), ("42", "got the number 42"), ("~", "got null")]],
    # YAML itself
    ("unclosed bracket", _chain("upstream: [ops.b]", "upstream: [ops.b"), 9,
     ["YAML syntax: invalid YAML", "Fix: correct the YAML at that line"]),
    ("bad indentation", _chain("  - name: ops.b", "  - name: ops.b\n   bad_indent: x"), "bad_indent",
     ["YAML syntax: invalid YAML", "indentation"]),
    ("two documents", "version: 1\n---\nviews: []\n", 2, ["expected a single document"]),
    ("control character", "version: 1\nviews: \x01\n", 2,
     ["YAML syntax: invalid character in the file", "#x0001", "Fix: remove the control character"]),
    ("control character after multibyte text", "version: 1\n# é中😀\nviews: \x7f\n", 3, ["#x007f"]),
    ("python tag on a list", "version: 1\nviews:\n  - name: !!python/object/apply:os.system [echo hi]\n", 3,
     ["views[0].name: the YAML tag !!python/object/apply:os.system is not supported here", "remove the tag"]),
    ("python tag on a value", "version: 1\nviews:\n  - name: !!python/name:os.system ops.a\n", 3,
     ["views[0].name: cannot read the value 'ops.a'", "Fix: write it as `name: schema.view`"]),
    ("a set", "version: 1\nviews:\n  - name: ops.a\n    grain: !!set {a, b}\n", 4, ["!!set is not supported"]),
    ("nested too deeply", "version: 1\nviews: " + "[" * 3000 + "]" * 3000, 2, ["exceeded maximum nesting depth"]),
    ("nested deeply", "version: 1\nviews: " + "[" * 990 + "]" * 990, 1, ["nested too deeply"]),
    ("alias bomb", ALIAS_BOMB, 1, ["aliases (*name) expand to far more values than the file holds"]),
    ("too big", "version: 1\n" + "#" * catalog.MAX_CATALOG_BYTES, None,
     ["catalog: the catalog is 1,048,587 bytes, more than the limit of 1,048,576 bytes (1 MiB)",
      "Fix: list only the materialized views"]),
]


def _line(text: str, at: int | str | None) -> int | None:
    if not isinstance(at, str):
        return at
    hits = [number for number, line in enumerate(text.splitlines(), start=1) if at in line]
    assert hits, f"{at!r} is on no line of the test catalog"
    return hits[0]


@pytest.mark.parametrize(("text", "at", "words"), [case[1:] for case in BAD_CATALOGS],
                         ids=[case[0] for case in BAD_CATALOGS])
def test_a_bad_catalog_is_one_error_naming_the_line_the_entry_and_the_fix(text: str, at, words) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, SOURCE)
    error, message = info.value, str(info.value)
    line = _line(text, at)
    assert len(error.problems) == 1, message  # one mistake, one problem: never an echo of it
    assert (error.source, error.line) == (SOURCE, line), message
    assert message.startswith(f"{SOURCE}, line {line}: " if line else f"{SOURCE}: ")
    assert error.entry and error.problem and error.fix and f". Fix: {error.fix}" in message
    for word in words:
        if word.startswith("NOT "):
            assert word[4:] not in message, message
        else:
            assert word in message, message
    assert "\n" not in message
    assert pickle.loads(pickle.dumps(error)).problems[0].line == line


def test_the_table_covers_every_key() -> None:
    covered = " ".join(text for _, text, _, _ in BAD_CATALOGS)
    for key in (*VIEW_KEYS, "version", "connection_id", "defaults", "views"):
        assert f"{key}:" in covered, key


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = yaml_text(
        """
        version: 2
        views:
          - name: ops.a
            mode: fast
            grain: [Id]
          - name: ops.b
            depends_on: [ops.a]
            upstream: [ops.zz]
          - name: ops.a
            critical: 'yes'
        """
    )
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, SOURCE)
    error = info.value
    found = [(p.line, p.entry, p.problem.split(":")[0]) for p in error.problems]
    assert found == [
        (1, "version", "unsupported catalog version 2"),
        (4, "views[0].mode (ops.a)", "unknown refresh mode 'fast'"),
        (5, "views[0].grain[0] (ops.a)", "invalid column name 'Id'"),
        (7, "views[1] (ops.b)", "unknown key 'depends_on'"),
        (10, "views[2].critical (ops.a)", "expected true or false, got the text 'yes'"),
        (9, "views[2] (ops.a)", "duplicate view ops.a"),
        (8, "views[1].upstream[0] (ops.b)", "upstream ops.zz is not in the catalog"),
    ]
    assert (error.line, error.entry) == (1, "version")  # the first problem's
    lines = str(error).splitlines()
    assert lines == [str(problem) for problem in error.problems]
    assert all(line.startswith(f"{SOURCE}, line ") and ". Fix: " in line for line in lines)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and len(copy.problems) == 7


def test_catalog_re_exports_the_name_functions() -> None:
    for name in ("CatalogError", "format_qualified_name", "parse_identifier", "parse_qualified_name",
                 "quote_identifier", "NAME_MAX_BYTES"):
        assert getattr(catalog, name) is getattr(names_module, name)


def test_the_c_yaml_loader_is_used_where_pyyaml_has_it() -> None:
    assert yaml.__with_libyaml__  # the dev requirements' PyYAML wheel ships libyaml
    assert yamldoc._LOADER is yaml.CSafeLoader


def test_a_catalog_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"version: 1\nviews:\n  - name: ops.a\n" + b"#" * (2 * catalog.MAX_CATALOG_BYTES))
    with pytest.raises(CatalogError) as info:
        load_catalog(big)
    assert str(info.value).startswith(f"{big}: catalog: the catalog is 2,097,186 bytes, more than the limit")
    fits = tmp_path / "fits.yaml"
    fits.write_bytes(b"version: 1\nviews:\n  - name: ops.a\n" + b"#" * (catalog.MAX_CATALOG_BYTES - 40))
    assert len(load_catalog(fits)) == 1


# --------------------------------------------------------------------------------------------------
# The JSON Schema, for editors

SCHEMA_FILE = DEFAULT_CATALOG.with_name("mv_refresh.schema.json")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_what_mv_refresh_catalog_schema_prints(capsys: pytest.CaptureFixture) -> None:
    assert main(["catalog", "schema"]) == 0
    printed = capsys.readouterr().out
    assert SCHEMA_FILE.read_text(encoding="utf-8") == printed, "run: mv-refresh catalog schema > " + str(SCHEMA_FILE)
    schema = json.loads(printed)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["$id"]
    assert schema["additionalProperties"] is False


def test_the_shipped_catalog_points_editors_at_the_schema_and_passes_it(validator) -> None:
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./mv_refresh.schema.json"
    assert list(validator.iter_errors(yaml.safe_load(text))) == []


@pytest.mark.parametrize("text", [DIAMOND, CHAIN, MINIMAL, QUOTED])
def test_catalogs_the_loader_accepts_pass_the_schema(validator, text: str) -> None:
    parse_catalog(text)
    assert list(validator.iter_errors(yaml.safe_load(text))) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda doc: doc["views"][0].update(depends_on=[]), "'depends_on' was unexpected"),
        (lambda doc: doc.update(view=[]), "'view' was unexpected"),
        (lambda doc: doc["views"][0].update(mode="fast"), "'fast' is not one of ['auto', 'concurrently', 'plain']"),
        (lambda doc: doc["views"][0].update(on_unchanged="never"), "'never' is not one of ['skip', 'refresh']"),
        (lambda doc: doc["views"][0].update(warn_after_hours=0), "less than or equal to the minimum of 0"),
        (lambda doc: doc["views"][0].update(lock_timeout_seconds=0), "less than the minimum of 0.001"),
        (lambda doc: doc["views"][0].update(name="Ops.x"), "does not match"),
        (lambda doc: doc["views"][0].update(grain=[]), "should be non-empty"),
        (lambda doc: doc.update(version=2), "1 was expected"),
        (lambda doc: doc.pop("views"), "'views' is a required property"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(validator, change, words: str) -> None:
    doc = yaml.safe_load(DEFAULT_CATALOG.read_text(encoding="utf-8"))
    change(doc)
    errors = [error.message for error in validator.iter_errors(doc)]
    assert any(words in message for message in errors), errors
    with pytest.raises(CatalogError):
        parse_catalog(yaml.safe_dump(doc))
