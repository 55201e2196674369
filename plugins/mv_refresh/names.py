"""PostgreSQL's rules for names, offline: read ``schema.name`` as the server would, write a name as
``quote_ident()`` would. No database, no Airflow.

Reading (:func:`parse_qualified_name`, :func:`parse_identifier`): each part is a lowercase unquoted
identifier (``[a-z_][a-z0-9_$]*``), a double-quoted one (``"Weird MV"``, ``""`` for a quote inside) or
a Unicode-escaped one (``U&"d\\0061t\\+000061"``: ``\\XXXX`` and ``\\+XXXXXX`` are code points, ``\\\\`` is
a backslash), at most 63 bytes of UTF-8 (NAMEDATALEN - 1; the server would silently truncate a longer
one). Unquoted uppercase is refused rather than folded: ``Orders`` would name ``orders``, which is
rarely what the writer meant. The parts come back unquoted, as ``pg_class.relname`` stores them; build
SQL from them with ``psycopg.sql.Identifier``, never by formatting text.

Writing (:func:`quote_identifier`, :func:`format_qualified_name`): for messages, logs and the CLI. A
name is bare only when ``quote_ident()`` would leave it bare; a name holding a control character
(newline, tab, anything ``str.isprintable()`` refuses) is written ``U&"..."`` with escapes, so that one
name never spans two lines of output and still reads back to itself.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "NAME_MAX_BYTES",
    "RESERVED_KEYWORDS",
    "CatalogError",
    "format_qualified_name",
    "parse_identifier",
    "parse_qualified_name",
    "quote_identifier",
]

#: PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated by the server.
NAME_MAX_BYTES = 63

#: Keywords ``quote_ident()`` quotes: ``SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'``,
#: the union of PostgreSQL 15 and 18 (tests/db/test_names_on_server.py checks it against the server).
RESERVED_KEYWORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between bigint binary bit boolean
    both case cast char character check coalesce collate collation column concurrently constraint create
    cross current_catalog current_date current_role current_schema current_time current_timestamp
    current_user dec decimal default deferrable desc distinct do else end except exists extract false
    fetch float for foreign freeze from full grant greatest group grouping having ilike in initially
    inner inout int integer intersect interval into is isnull join json json_array json_arrayagg
    json_exists json_object json_objectagg json_query json_scalar json_serialize json_table json_value
    lateral leading least left like limit localtime localtimestamp merge_action national natural nchar
    none normalize not notnull null nullif numeric offset on only or order out outer overlaps overlay
    placing position precision primary real references returning right row select session_user setof
    similar smallint some substring symmetric system_user table tablesample then time timestamp to
    trailing treat trim true union unique user using values varchar variadic verbose when where window
    with xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot
    xmlserialize xmltable
    """.split()
)


class CatalogError(ValueError):
    """A catalog (or a view name) that cannot be used, with where it is and how to fix it.

    ``source`` is the catalog file (or ``None`` for a name given elsewhere, e.g. on the command line),
    ``line`` the 1-based line in it (``None`` when no line applies, e.g. a missing file), ``entry`` the
    thing at fault (``views[2].mode (ops.mv_x)``, a view name, a top-level key), ``problem`` what is wrong
    and ``fix`` what to do about it. ``problems`` lists every problem found (this one first); ``str()``
    gives one line per problem: ``file, line N: entry: problem. Fix: fix``.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        entry: str | None = None,
        fix: str | None = None,
        more: list[CatalogError] | tuple[CatalogError, ...] = (),
    ) -> None:
        self.problem, self.source, self.line, self.entry, self.fix = problem, source, line, entry, fix
        # Each problem on its own (str() of each is one line), this one first.
        self.problems: list[CatalogError] = [self] if not more else [
            CatalogError(problem, source=source, line=line, entry=entry, fix=fix), *more]
        super().__init__("\n".join(error._render() for error in self.problems))

    @classmethod
    def of(cls, problems: list[CatalogError]) -> CatalogError:
        """One error carrying ``problems`` (at least one), with the first one's attributes."""
        first, *more = problems
        return cls(first.problem, source=first.source, line=first.line, entry=first.entry, fix=first.fix,
                   more=more)

    def _render(self) -> str:
        where = ", ".join(p for p in (self.source, None if self.line is None else f"line {self.line}") if p)
        text = f"{self.entry}: {self.problem}" if self.entry else self.problem
        text = f"{where}: {text}" if where else text
        return f"{text.rstrip('.')}. Fix: {self.fix}" if self.fix else text

    def __reduce__(self) -> tuple[Any, ...]:
        # Airflow carries exceptions between processes: keep every part, not only the message.
        parts = (self.problem, self.source, self.line, self.entry, self.fix, self.problems[1:])
        return (_rebuild_error, (type(self), *parts))


def _rebuild_error(cls: type[CatalogError], problem, source, line, entry, fix, more=()) -> CatalogError:
    if more:
        return cls.of([CatalogError(problem, source=source, line=line, entry=entry, fix=fix), *more])
    return cls(problem, source=source, line=line, entry=entry, fix=fix)  # subclasses need not take `more`


# --------------------------------------------------------------------------------------------------
# Reading


class _Bad(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"')
_UNICODE_ESCAPE = re.compile(r"\\(?:(\\)|([0-9A-Fa-f]{4})|\+([0-9A-Fa-f]{6}))|\\")
_UESCAPE = re.compile(r"\s*uescape\b", re.IGNORECASE)


def _quote_fix(parts: int) -> str:
    example = 'ops."my view"' if parts == 2 else '"my column"'
    return f"double-quote a part that really contains such characters, e.g. {example}"


def show(value: object, limit: int = 80) -> str:
    """A printable, bounded rendering of user input for messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # YAML reads hex/binary/sexagesimal literals of any length, and repr() refuses ints of more than
        # 4,300 digits.
        return f"an integer of {value.bit_length():,} bits"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    shown = repr(value)
    return shown if len(shown) <= limit + 2 else shown[:limit] + "..."


def _unescape(body: str, role: str) -> str:
    def one(match: re.Match[str]) -> str:
        backslash, short, long = match.groups()
        if backslash:
            return "\\"
        code = int(short or long or "-1", 16)
        if not (0 < code <= 0x10FFFF) or 0xD800 <= code <= 0xDFFF:
            raise _Bad(
                f"the {role} holds an invalid Unicode escape {match.group()!r}",
                r"write \XXXX or \+XXXXXX with a code point from 1 to 10FFFF (not a surrogate), and \\ "
                "for a backslash",
            )
        return chr(code)

    return _UNICODE_ESCAPE.sub(one, body)


def _scan(text: str, pos: int, role: str, parts: int) -> tuple[str, int]:
    """Read one identifier of ``text`` at ``pos``; return its value and where it ends."""
    if pos >= len(text):
        raise _Bad(f"the {role} is missing", "write it as schema.name")
    unicode = text.startswith(('U&"', 'u&"'), pos)
    if unicode or text[pos] == '"':
        start = pos + 2 if unicode else pos
        quoted = _QUOTED.match(text, start)
        if quoted is None:
            raise _Bad(f"the double quote opened at position {start} is never closed",
                       'close the quoted identifier with " (write a double quote inside it as "")')
        value = quoted.group(1).replace('""', '"')
        end = quoted.end()
        if unicode:
            value = _unescape(value, role)
            if _UESCAPE.match(text, end):
                raise _Bad(f"the {role} has a UESCAPE clause, which is not supported here",
                           r"write it with the default escape character \ and drop the UESCAPE clause")
        if not value:
            raise _Bad(f'the {role} is an empty quoted identifier ("")',
                       "PostgreSQL has no empty identifiers: write the real name")
        if "\x00" in value:
            raise _Bad(f"the {role} contains a NUL character", "remove it: PostgreSQL names cannot hold NUL")
    else:
        word = _WORD.match(text, pos)
        if word is None:
            raise _Bad(f"unexpected {text[pos]!r} at position {pos} where the {role} should start",
                       "an unquoted identifier starts with a lowercase letter or _ and holds only a-z, "
                       f"0-9, _ and $; {_quote_fix(parts)}")
        value, end = word.group(), word.end()
        if value != value.lower():
            raise _Bad(f"the unquoted {role} {value!r} has uppercase letters (PostgreSQL folds unquoted "
                       "names to lowercase, so it would name a different object)",
                       "write it in lowercase, or double-quote it to keep the case")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Bad(f"the {role} is not valid Unicode (it holds a lone surrogate)",
                   "write the name in valid UTF-8") from None
    if size > NAME_MAX_BYTES:
        raise _Bad(f"the {role} is {size} bytes long in UTF-8; PostgreSQL identifiers hold at most "
                   f"{NAME_MAX_BYTES} bytes (NAMEDATALEN) and longer ones are silently truncated",
                   f"shorten it to {NAME_MAX_BYTES} bytes or fewer")
    return value, end


_PLAIN_PART = r"([a-z_][a-z0-9_$]{0,62})"  # at most 63 bytes, all ASCII
_PLAIN = (re.compile(_PLAIN_PART), re.compile(rf"{_PLAIN_PART}\.{_PLAIN_PART}"))


def _parse(text: object, kind: str, parts: int) -> list[str]:
    if isinstance(text, str) and (plain := _PLAIN[parts - 1].fullmatch(text)):
        return list(plain.groups())  # the common case, without the scanner
    example = "it as schema.name, e.g. ops.mv_orders" if parts == 2 else "the column name"
    if not isinstance(text, str):
        raise _Bad(f"a {kind} must be text, not {type(text).__name__}", f"write {example}")
    if not text:
        raise _Bad(f"the {kind} is empty", f"write {example}")
    if text != text.strip():
        raise _Bad(f"the {kind} has whitespace around it", f"remove the whitespace: write {example}")
    roles = ("schema", "name") if parts == 2 else ("column name",)
    values, pos = [], 0
    for index, role in enumerate(roles):
        if index:
            if pos == len(text):
                raise _Bad("the schema is missing (only one part was given)",
                           f"write it as schema.name, e.g. ops.{text}")
            if text[pos] != ".":
                raise _Bad(f"unexpected {text[pos:pos + 20]!r} at position {pos} after the schema",
                           f"write it as schema.name; {_quote_fix(parts)}")
            pos += 1
            if pos == len(text):
                raise _Bad("the name after the '.' is empty", "write it as schema.name")
        elif text[pos] == "." and parts == 2:
            raise _Bad("the schema before the '.' is empty", "write it as schema.name")
        value, pos = _scan(text, pos, role, parts)
        values.append(value)
    if pos < len(text):
        if text[pos] == "." and parts == 2:
            raise _Bad("too many dotted parts: a view is named by exactly two (schema.name)",
                       "write it as schema.name, without a database or another qualifier")
        if text[pos] == ".":
            raise _Bad("a column name has exactly one part",
                       "write the bare column name, without a table or schema")
        raise _Bad(f"unexpected {text[pos:pos + 20]!r} at position {pos} after the {roles[-1]}",
                   f"remove it: a {kind} is {'schema.name' if parts == 2 else 'one name'} and nothing "
                   f"else; {_quote_fix(parts)}")
    return values


def parse_qualified_name(
    text: str, *, source: str | None = None, line: int | None = None, entry: str | None = None
) -> tuple[str, str]:
    """Parse ``schema.name`` into its unquoted parts: ``'ops."Weird MV"'`` gives ``("ops", "Weird MV")``.

    Anything else (one part, three parts, whitespace, trailing text such as ``; drop table x``,
    uppercase unquoted letters, a part over 63 bytes) raises :class:`CatalogError`; no other exception
    escapes for any input. ``source``, ``line`` and ``entry`` only label the error.
    """
    try:
        schema, name = _parse(text, "view name", 2)
    except _Bad as exc:
        raise CatalogError(f"invalid view name {show(text)}: {exc.problem}", source=source, line=line,
                           entry=entry, fix=exc.fix) from None
    return schema, name


def parse_identifier(
    text: str, *, source: str | None = None, line: int | None = None, entry: str | None = None
) -> str:
    """Parse one identifier (a column of a grain) with the rules of :func:`parse_qualified_name`."""
    try:
        return _parse(text, "column name", 1)[0]
    except _Bad as exc:
        raise CatalogError(f"invalid column name {show(text)}: {exc.problem}", source=source, line=line,
                           entry=entry, fix=exc.fix) from None


# --------------------------------------------------------------------------------------------------
# Writing

_BARE = re.compile(r"[a-z_][a-z0-9_]*")


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    return f"\\{ord(char):04X}" if ord(char) <= 0xFFFF else f"\\+{ord(char):06X}"


def quote_identifier(name: str) -> str:
    """``name`` as PostgreSQL's ``quote_ident()`` writes it; ``U&"..."`` when it holds a control character.

    Bare when it is ``[a-z_][a-z0-9_]*`` and not a keyword ``quote_ident()`` quotes; otherwise
    double-quoted with ``"`` doubled. A name with a character ``str.isprintable()`` refuses (newline,
    tab, ...) is written ``U&"..."`` with ``\\XXXX`` / ``\\+XXXXXX`` escapes, so it stays on one line.
    Whatever this returns reads back with :func:`parse_identifier`. For messages, not for SQL: build SQL
    with ``psycopg.sql.Identifier``.
    """
    if _BARE.fullmatch(name) and name not in RESERVED_KEYWORDS:
        return name
    if name.isprintable():
        return '"' + name.replace('"', '""') + '"'
    return 'U&"' + "".join(map(_escape, name)).replace('"', '""') + '"'


def format_qualified_name(schema: str, name: str) -> str:
    """``schema.name`` with each part written by :func:`quote_identifier`; parses back to the same key."""
    return f"{quote_identifier(schema)}.{quote_identifier(name)}"
