"""Strict reading of YAML documents with the location of every value.

PyYAML's constructors lose positions and silently accept YAML 1.1 surprises: an unquoted
``1.10`` becomes the float 1.1, ``on`` becomes True, ``010`` becomes 8, and a duplicate key
overwrites the first. We compose the node graph instead and read it field by field, so every
problem is reported as ``path:line:col`` and collected rather than raised one at a time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import yaml

from retention.durations import parse_duration
from retention.errors import Problem

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"

_KIND = {INT: "an integer", FLOAT: "a number", BOOL: "a boolean", NULL: "null (no value)"}
DURATION_EXPECTED = "a duration with its unit, such as 14d or 1d12h (s, m, h, d, w)"
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def compose_documents(text: str, path: str, problems: list[Problem]) -> list[yaml.Node]:
    """Every document of a YAML stream as nodes; a syntax error becomes a located problem."""
    try:
        # An empty document (a trailing `---`, as many writers end a stream) holds nothing.
        return [doc for doc in yaml.compose_all(text, Loader=yaml.SafeLoader)
                if doc is not None and not _empty(doc)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(Problem(path, line, col, _syntax_message(exc)))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control one)
        before = text[:exc.position]
        line, col = before.count("\n") + 1, exc.position - before.rfind("\n")
        problems.append(Problem(path, line, col, f"invalid YAML: {exc.reason} "
                                f"(character U+{exc.character:04X})"))
    except yaml.YAMLError as exc:
        problems.append(Problem(path, 1, 1, f"invalid YAML: {exc}"))
    except RecursionError:  # PyYAML composes nested collections recursively
        line, col = _too_deep(text)
        problems.append(Problem(path, line, col, "invalid YAML: collections nested more "
                                f"than {MAX_DEPTH} deep"))
    return []


def _empty(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL and node.value == ""


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """The parser's words, with what to do where they do not say it."""
    problem = str(exc.problem or exc)
    if "'\\t'" in problem or "\t" in problem:
        return ("invalid YAML: a tab character; YAML indents with spaces only: replace the "
                "tab with spaces")
    if "expected <block end>" in problem and ("'-'" in problem
                                              or "block sequence start" in problem):
        return ("invalid YAML: a list item ('- ') not in line with the items or keys above "
                "it; indent it as they are")
    if "mapping values are not allowed here" in problem:
        return ("invalid YAML: a 'key: value' where none can start (a key indented "
                "differently from the ones above it, or an unquoted ': ' inside a value)")
    return f"invalid YAML: {problem}"


MAX_DEPTH = 100  # what _too_deep reports; no configuration or policy comes near it


def _too_deep(text: str) -> tuple[int, int]:
    """Where nesting first exceeds MAX_DEPTH (else its deepest point), read by PyYAML's
    parser, which keeps its own stack instead of recursing."""
    depth, deepest, where = 0, 0, (1, 1)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > deepest:
                    deepest = depth
                    where = (event.start_mark.line + 1, event.start_mark.column + 1)
                if depth > MAX_DEPTH:
                    break
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return where


@dataclass(slots=True)
class Reader:
    """Reads typed values out of nodes of one file, collecting problems as it goes."""

    path: str
    problems: list[Problem] = field(default_factory=list)

    def error(self, node: yaml.Node | None, message: str) -> None:
        if node is None:
            self.problems.append(Problem(self.path, 1, 1, message))
            return
        mark = node.start_mark
        self.problems.append(Problem(self.path, mark.line + 1, mark.column + 1, message))

    def mapping(
        self,
        node: yaml.Node,
        *,
        what: str,
        allowed: Mapping[str, bool],
    ) -> dict[str, yaml.Node] | None:
        """The keys of a mapping node; ``allowed`` maps each known key to whether it is required."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping of keys to values")
            return None
        out: dict[str, yaml.Node] = {}
        key_lines: dict[str, int] = {}
        merged = False
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                # PyYAML merges `<<: *common` itself; composing, we see the key. Its keys
                # would not be located or checked for duplicates: not supported, plainly.
                self.error(key_node, f"{what}: merge keys (<<) are not supported; write the "
                           "keys out (an anchor and alias of a whole value, &x and *x, work)")
                merged = True
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != STR:
                self.error(key_node, f"{what}: keys must be plain strings")
                continue
            if key in key_lines:
                first = key_lines[key]
                self.error(key_node, f"{what}: duplicate key {key!r} (first given on line {first})")
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, list(allowed), n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else (
                    f"; allowed keys: {', '.join(sorted(allowed))}")
                self.error(key_node, f"{what}: unknown key {key!r}{suggestion}")
                key_lines[key] = key_node.start_mark.line + 1
                continue
            key_lines[key] = key_node.start_mark.line + 1
            out[key] = value_node
        for key, required in allowed.items():
            if required and key not in out and not merged:
                self.error(node, f"{what}: missing required key {key!r}")
        return out

    def string(self, node: yaml.Node, *, what: str, expected: str | None = None
               ) -> str | None:
        """A string. ``expected`` says what a right value looks like ("a duration such as
        14d"): where quoting would not make the value right (``older_than: 14`` quoted is
        still no duration), the message says that instead of "quote it"."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be {expected or 'a string'}")
            return None
        if node.tag != STR:
            kind = _KIND.get(node.tag, "something other than a string")
            if node.tag == NULL and node.value in ("", "~"):
                self.error(node, f"{what} is empty; give a value")
            elif expected is not None:
                self.error(node, f"{what} must be {expected}, not {node.value}")
            else:
                shown = _as_read(node)
                self.error(
                    node,
                    f"{what}: the unquoted value {node.value} is read by YAML as {kind}"
                    f"{shown}; quote it: \"{node.value}\"",
                )
            return None
        if node.style is None and node.end_mark.line > node.start_mark.line:
            # A plain value over several lines is how YAML reads a list item indented one
            # space more than the one above (`- a` then ` - b` is the one value "a - b").
            self.error(node, f"{what}: an unquoted value that continues on line "
                       f"{node.end_mark.line + 1} (a list item indented differently from "
                       "the one above?); indent each item as the first one, or put the "
                       "value on one line")
            return None
        return node.value

    def integer(self, node: yaml.Node, *, what: str, minimum: int = 0) -> int | None:
        if (isinstance(node, yaml.ScalarNode) and node.tag == INT
                and node.value.startswith("-") and _DECIMAL.fullmatch(node.value[1:])):
            self.error(node, f"{what} must be at least {minimum}, not {node.value}")
            return None
        if (
            not isinstance(node, yaml.ScalarNode)
            or node.tag != INT
            or not _DECIMAL.fullmatch(node.value)
        ):
            self.error(node, f"{what} must be a whole number written in decimal, like 10")
            return None
        value = int(node.value)
        if value < minimum:
            self.error(node, f"{what} must be at least {minimum}")
            return None
        return value

    def duration(self, node: yaml.Node, *, what: str) -> timedelta | None:
        text = self.string(node, what=what, expected=DURATION_EXPECTED)
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None

    def boolean(self, node: yaml.Node, *, what: str) -> bool | None:
        # Only true/false: yes/no/on/off are YAML 1.1 booleans but YAML 1.2 strings, and a
        # reader of the file should not have to know which one we speak.
        if (
            not isinstance(node, yaml.ScalarNode)
            or node.tag != BOOL
            or node.value not in ("true", "false")
        ):
            self.error(node, f"{what} must be true or false")
            return None
        return node.value == "true"

    def sequence(self, node: yaml.Node, *, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list")
            return None
        return list(node.value)

    def strings(self, node: yaml.Node, *, what: str) -> Iterator[tuple[str, yaml.Node]]:
        items = self.sequence(node, what=what)
        for i, item in enumerate(items or ()):
            value = self.string(item, what=f"{what}[{i}]")
            if value is not None:
                yield value, item


def _as_read(node: yaml.ScalarNode) -> str:
    """How PyYAML would have read the scalar, when that differs from what was written."""
    try:
        value = yaml.safe_load(node.value)
    except yaml.YAMLError:
        return ""
    if str(value) == node.value:
        return ""
    return f" ({value!r})"


def location(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
