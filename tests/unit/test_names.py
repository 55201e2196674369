"""PostgreSQL's name rules, offline (mv_refresh.names), and the error type they share with the catalog.

tests/db/test_names_on_server.py checks them against a live server (keywords, quote_ident, lexer).
"""

from __future__ import annotations

import pickle
import random

import pytest

from mv_refresh.names import (
    CatalogError,
    format_qualified_name,
    parse_identifier,
    parse_qualified_name,
    quote_identifier,
)


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
        ("ops.select", ("ops", "select")),  # a keyword reads as itself; it is only quoted on output
        ('U&"d\\0061t\\+000061".x', ("data", "x")),
        ('ops.u&"a\\\\b"', ("ops", "a\\b")),
        ('ops.U&"line\\000Abreak"', ("ops", "line\nbreak")),
        ('ops.U&"say ""hi"""', ("ops", 'say "hi"')),
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
        ('ops.U&"\\0000"', "code point from 1 to 10FFFF"),
        ('ops.U&"\\D800"', "not a surrogate"),
        ('ops.U&"\\+110000"', "code point from 1 to 10FFFF"),
        ('ops.U&"a\\b"', r"write \XXXX or \+XXXXXX"),
        ('ops.U&"a\\12"', r"write \XXXX or \+XXXXXX"),
        ("ops.U&\"d!0061t\" UESCAPE '!'", "drop the UESCAPE clause"),
        ('ops.U&"' + "\\00E9" * 32 + '"', "63 bytes or fewer"),  # counted after the escapes
        ('ops.U& "x"', "write it in lowercase"),
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [("driver_id", "driver_id"), ('"Driver ID"', "Driver ID"), ('"a""b"', 'a"b'), ("x$", "x$"),
     ('U&"\\0009tab"', "\ttab")],
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


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("mv_x", "mv_x"),
        ("abs", "abs"),  # an unreserved keyword stays bare, as quote_ident() leaves it
        ("select", '"select"'),
        ("json_table", '"json_table"'),  # a keyword since PostgreSQL 17: quoted for every server
        ("x$", '"x$"'),  # quote_ident() quotes $, although an unquoted $ reads back
        ("1st", '"1st"'),
        ("Weird MV", '"Weird MV"'),
        ('a"b', '"a""b"'),
        ("café", '"café"'),
        ("we\"ird; DROP\n", 'U&"we""ird; DROP\\000A"'),
        ("tab\there", 'U&"tab\\0009here"'),
        ("back\\slash\r", 'U&"back\\\\slash\\000D"'),
        ("\U000e0001tag", 'U&"\\+0E0001tag"'),  # a non-printable character above U+FFFF
        ("emoji 😀\x7f", 'U&"emoji 😀\\007F"'),
    ],
)
def test_quote_identifier_writes_names_as_postgresql_does(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted
    assert parse_identifier(quoted) == name
    assert parse_qualified_name(format_qualified_name("ops", name)) == ("ops", name)


def test_format_qualified_name_quotes_each_part() -> None:
    assert format_qualified_name("ops", "mv_x") == "ops.mv_x"
    assert format_qualified_name("Ops", "user") == '"Ops"."user"'
    assert format_qualified_name("adv", 'we"ird; DROP\nx') == 'adv.U&"we""ird; DROP\\000Ax"'


def test_name_parsers_raise_only_catalog_error_and_round_trip() -> None:
    """Nasty fragments in every combination (tests/db/test_fuzz.py does the same with hypothesis)."""
    fragments = ['"', '""', ".", "a", "Z", "_", "$", "1", " ", "\x00", "\ud800", "é", ";", "-", "\n", "ops",
                 '"a b"', "U&", "\\", "\\0041", "\\+01F600", "uescape"]
    rnd = random.Random(20240601)

    def junk() -> str:
        return "".join(rnd.choice(fragments) for _ in range(rnd.randint(0, 9)))

    def part() -> str:  # often well-formed, sometimes not
        if rnd.random() < 0.5:
            return rnd.choice("abz_") + "".join(rnd.choice("az09_$") for _ in range(rnd.randint(0, 8)))
        return rnd.choice(["", "U&"]) + '"' + junk().replace('"', '""') + '"'

    accepted = 0
    for _ in range(20000):
        text = junk() if rnd.random() < 0.3 else part() + rnd.choice([".", ".", ". ", ""]) + part()
        for parse in (parse_qualified_name, parse_identifier):
            try:
                value = parse(text)
            except CatalogError as exc:
                assert str(exc) and exc.fix
                continue
            accepted += 1
            shown = format_qualified_name(*value) if isinstance(value, tuple) else quote_identifier(value)
            assert parse(shown) == value and "\n" not in shown
    assert accepted > 100  # the sample really exercised the accepting paths too


# --------------------------------------------------------------------------------------------------
# The error type


def test_catalog_error_is_a_value_error_with_its_parts() -> None:
    error = CatalogError("bad thing", source="f.yaml", line=7, entry="views[1]", fix="do this")
    assert isinstance(error, ValueError)
    assert str(error) == "f.yaml, line 7: views[1]: bad thing. Fix: do this"
    assert (error.source, error.line, error.entry, error.problem, error.fix) == (
        "f.yaml", 7, "views[1]", "bad thing", "do this")
    assert error.problems == [error]
    assert str(CatalogError("bare")) == "bare"


def test_catalog_error_survives_pickling() -> None:
    error = CatalogError("bad thing", source="f.yaml", line=7, entry="views[1]", fix="do this")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CatalogError
    assert str(copy) == str(error)
    assert (copy.source, copy.line, copy.entry, copy.fix) == ("f.yaml", 7, "views[1]", "do this")


def test_a_catalog_error_with_several_problems_has_one_line_each_and_survives_pickling() -> None:
    first = CatalogError("bad thing", source="f.yaml", line=7, entry="views[1]", fix="do this")
    second = CatalogError("worse thing", source="f.yaml", line=9, entry="views[2].mode", fix="do that")
    error = CatalogError.of([first, second])
    assert (error.problem, error.line, error.entry, error.fix) == ("bad thing", 7, "views[1]", "do this")
    assert str(error).splitlines() == [str(first), str(second)]
    assert [str(p) for p in error.problems] == [str(first), str(second)]
    assert [p.line for p in error.problems] == [7, 9]
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and [str(p) for p in copy.problems] == [str(first), str(second)]
