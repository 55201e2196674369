"""The catalog's YAML as plain data, with the line of every value and key.

``yaml.safe_load`` forgets where each value was written, silently keeps the last of two equal keys,
and happily expands a few lines of aliases into millions of values. :class:`YamlDocument` composes the
node tree instead (with libyaml's C parser when PyYAML has it), builds plain Python data from it, and
records the line of every value and key by where it is (``("views", 2, "mode")``, as pydantic names a
place in its errors). What a schema cannot see is noted as a problem at its line: a key repeated in a
mapping, a merge key (``<<``), a key that is not text, a tag other than the standard ones, a value
that cannot be read. Syntax errors, control characters and alias bombs end the reading with a
:class:`~mv_refresh.names.CatalogError`. Nothing here imports Airflow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import Node, ScalarNode, SequenceNode

from mv_refresh.names import CatalogError, show

Loc = tuple[Any, ...]  # where a value is, as pydantic names it: ("views", 2, "mode")
_MAP, _SEQ, _STR, _NULL, _MERGE = (f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "null", "merge"))
_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class Problem(NamedTuple):
    line: int
    loc: Loc  # the mapping holding a bad key, or the value that cannot be used
    problem: str
    fix: str | None  # None: the caller knows the fix (the allowed keys, the expected value)


def describe(value: object) -> str:
    """A YAML value for a message: ``the text 'x'``, ``the number 3``, ``a list``, ``null (...)``."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, (bool, list, dict)):
        return {list: "a list", dict: "a mapping"}.get(type(value), f"the boolean {str(value).lower()}")
    if isinstance(value, (str, int, float)):
        return f"the {'text' if isinstance(value, str) else 'number'} {show(value, 40)}"
    return f"{type(value).__name__} {show(value, 40)}"


class YamlDocument:
    """``data`` (None for an empty document), ``lines`` and ``key_lines`` by loc, and ``problems``."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {}
        self.key_lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self.refused: set[Loc] = set()  # values left as None because they could not be read
        self.budget = len(text) + 1000  # values to build: aliases (*a) may not blow a small file up
        self.constructor = SafeConstructor()
        fix = "correct the YAML at that line (indentation, quotes, colons; quote values holding ': ' or " \
              "starting with a special character)"
        try:
            root = yaml.compose(text, Loader=_LOADER)
            self.data = None if root is None or root.tag == _NULL else self._build(root, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            detail = f"{exc.context}, {exc.problem}" if exc.context else exc.problem or "malformed YAML"
            raise self._fatal(f"invalid YAML: {detail}", mark and mark.line + 1, fix) from None
        except yaml.reader.ReaderError as exc:  # the C reader counts bytes, the Python one characters
            before = text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") \
                if _LOADER is yaml.CSafeLoader else text.count("\n", 0, exc.position)
            what = f"{exc.reason} (#x{exc.character:04x})" if isinstance(exc.character, int) else exc.reason
            raise self._fatal(f"invalid character in the file: {what}", before + 1,
                              "remove the control character (save the file as plain UTF-8 text)") from None
        except UnicodeEncodeError as exc:
            raise self._fatal("the text holds a lone surrogate, which is not Unicode",
                              text.count("\n", 0, exc.start) + 1, "save the file as UTF-8") from None
        except RecursionError:
            raise self._fatal("the YAML is nested too deeply to read", 1,
                              "write flatter YAML: the catalog needs only a list of flat mappings") from None
        except yaml.YAMLError as exc:
            raise self._fatal(f"invalid YAML: {str(exc).splitlines()[0]}", 1, fix) from None

    def _fatal(self, problem: str, line: int | None, fix: str) -> CatalogError:
        return CatalogError(problem, source=self.source, line=line, entry="YAML syntax", fix=fix)

    def _refuse(self, loc: Loc, line: int, problem: str, fix: str | None, *, value: bool = True) -> None:
        self.problems.append(Problem(line, loc, problem, fix))
        if value:
            self.refused.add(loc)

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        if node.tag == _STR:
            return node.value  # what the constructor would return, at a fraction of the cost
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - a bad explicit tag, a malformed timestamp or base64...
            reason = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            self._refuse(loc, node.start_mark.line + 1, f"cannot read the value {show(node.value, 40)}: "
                         f"{reason}", None)
            return None

    def _build(self, node: Node, loc: Loc) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise self._fatal("the YAML aliases (*name) expand to far more values than the file holds", 1,
                              "write the values out; settings shared by many views belong under defaults:")
        line = self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if node.tag not in (_MAP, _SEQ):
            self._refuse(loc, line, f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not "
                         "supported here", "remove the tag")
            return None
        if isinstance(node, SequenceNode):
            return [self._build(item, (*loc, index)) for index, item in enumerate(node.value)]
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                self._refuse(loc, key_line, "YAML merge keys (<<) are not supported", "write the keys out; "
                             "settings shared by many views belong in the top-level defaults:", value=False)
                continue
            key = self._scalar(key_node, (*loc, "<key>")) if isinstance(key_node, ScalarNode) else []
            if (*loc, "<key>") in self.refused:
                self.refused.discard((*loc, "<key>"))  # said: it cannot be read
            elif not isinstance(key, str):
                self._refuse(loc, key_line, f"a key must be text, got {describe(key)}", None, value=False)
            elif key in result:
                first = self.key_lines[(*loc, key)]
                self._refuse(loc, key_line, f"key {key!r} appears twice in the same mapping (first at line "
                             f"{first}, again at line {key_line}); YAML would silently keep only the last",
                             f"keep one of the two {key!r} lines (line {first} or line {key_line})",
                             value=False)
            else:
                self.key_lines[(*loc, key)] = key_line
                result[key] = self._build(value_node, (*loc, key))
        return result

    def line_of(self, loc: Loc, *, key: bool = False) -> int | None:
        """The line of the value at ``loc`` (of its key, with ``key``), else of the nearest value above it."""
        if key and loc in self.key_lines:
            return self.key_lines[loc]
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc)
