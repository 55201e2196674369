"""mv_refresh.names against the server itself: its keywords, its quote_ident(), and its own lexer.

quote_identifier() must write a name as PostgreSQL's quote_ident() does (and in the U&"..." form when
the name holds a control character), and whatever it writes must read back, both with
parse_identifier() and with the server's lexer. Deterministic (derandomize=True).
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from mv_refresh.db import connect
from mv_refresh.names import NAME_MAX_BYTES, RESERVED_KEYWORDS, parse_identifier, quote_identifier


@pytest.fixture
def server(empty_dsn: str):
    with connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"
        yield conn


def _keywords(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT word, catcode FROM pg_get_keywords()").fetchall())


def _newer_keywords(conn: psycopg.Connection) -> set[str]:
    """Embedded keywords this server does not quote (from a newer PostgreSQL: json_table, ...)."""
    return RESERVED_KEYWORDS - {word for word, code in _keywords(conn).items() if code != "U"}


def test_the_embedded_keywords_cover_the_server(server: psycopg.Connection) -> None:
    """A PostgreSQL that quotes a new keyword fails here: add it to names.RESERVED_KEYWORDS."""
    quoted_here = {word for word, code in _keywords(server).items() if code != "U"}
    assert quoted_here - RESERVED_KEYWORDS == set()
    assert len(quoted_here) > 140
    if server.info.server_version >= 180000:
        assert quoted_here == RESERVED_KEYWORDS  # the union of 15 and 18 is 18's own list
    else:  # words that became keywords later are still quoted: harmless, and it reads back
        assert _newer_keywords(server) <= {"json", "json_array", "json_arrayagg", "json_exists", "json_object",
                                           "json_objectagg", "json_query", "json_scalar", "json_serialize",
                                           "json_table", "json_value", "merge_action", "system_user"}


def test_every_keyword_is_quoted_as_quote_ident_does(server: psycopg.Connection) -> None:
    newer = _newer_keywords(server)
    words = sorted(_keywords(server))
    theirs = server.execute("SELECT array_agg(quote_ident(w) ORDER BY w) FROM unnest(%s::text[]) AS w",
                            (words,)).fetchone()[0]
    for word, quoted in zip(words, theirs, strict=True):
        assert quote_identifier(word) == (f'"{word}"' if word in newer else quoted), word


def _as_the_lexer_reads_it(conn: psycopg.Connection, quoted: str) -> str:
    # The point is to hand the server our own quoting, so it is composed as SQL on purpose: the column
    # alias is what the server's lexer made of it.
    cursor = conn.execute(sql.SQL("SELECT 1 AS {}").format(sql.SQL(quoted)))
    return cursor.description[0].name


def _fits(name: str) -> bool:
    return "\x00" not in name and 1 <= len(name.encode("utf-8")) <= NAME_MAX_BYTES


names = st.one_of(
    st.text(min_size=1, max_size=63),  # any Unicode (hypothesis leaves out surrogates)
    st.text(st.characters(codec="utf-8", categories=("Cc", "Cf", "Zl", "Zp", "Zs", "Ll", "Lu")), max_size=20),
    st.lists(st.sampled_from(['"', "\\", "\n", "\t", "\r", "$", "_", "a", "Z", "1", " ", "é", "😀", "\u2028",
                              "\x7f", "U&", "select", "uescape"]), min_size=1, max_size=10).map("".join),
    st.sampled_from(sorted(RESERVED_KEYWORDS) + ["abs", "x$", "_", "a1", "1a", "select1"]),
).filter(_fits)


def test_quoted_names_read_back_the_same_everywhere(server: psycopg.Connection) -> None:
    newer = _newer_keywords(server)

    @settings(derandomize=True, database=None, deadline=None, max_examples=400)
    @given(names)
    def check(name: str) -> None:
        quoted = quote_identifier(name)
        assert parse_identifier(quoted) == name
        assert len(quoted.splitlines()) == 1 and quoted.isprintable()
        assert _as_the_lexer_reads_it(server, quoted) == name
        if name.isprintable():
            theirs = server.execute("SELECT quote_ident(%s)", (name,)).fetchone()[0]
            assert quoted == (f'"{name}"' if name in newer else theirs)

    check()


def test_a_control_character_is_written_as_an_escape(server: psycopg.Connection) -> None:
    quoted = quote_identifier('we"ird; DROP\n\\x')
    assert quoted == 'U&"we""ird; DROP\\000A\\\\x"'
    assert _as_the_lexer_reads_it(server, quoted) == 'we"ird; DROP\n\\x'
    # quote_ident() itself keeps the newline: one name would span two lines of output
    assert server.execute("SELECT quote_ident(%s)", ('a\nb',)).fetchone()[0] == '"a\nb"'
