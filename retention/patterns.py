"""Name patterns: globs (``*``, ``?``, ``**``, ``{a,b}``, ``[a-z]``) and ``re:`` expressions.

Everything compiles to RE2, which matches in linear time: a hostile expression in a policy
cannot hang the planner, and neither can a glob with many stars, which would backtrack
exponentially in Python's own ``re``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would otherwise print to stderr on every bad pattern


class PatternError(ValueError):
    """A pattern that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    _compiled: object

    def matches(self, name: str) -> bool:
        return self._compiled.fullmatch(name) is not None  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return self.text


def compile_pattern(text: str) -> Pattern:
    if text in ("", "re:"):
        raise PatternError("empty pattern")
    expression = _expression(text)
    try:
        compiled = re2.compile(expression, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PatternError(f"invalid regular expression {expression!r}: {detail}") from None
    return Pattern(text, compiled)


def glob_to_regex(glob: str) -> str:
    """Translate a glob to an anchored-by-fullmatch expression."""
    out: list[str] = []
    depth = 0  # nesting of {..} groups
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                i += 2
                # "a/**/b" also matches "a/b": the slash after ** is optional.
                if glob.startswith("/", i) and (not out or out[-1] == "/"):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        elif c == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                raise PatternError(f"unclosed '[' in {glob!r}")
            body = glob[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^/' if negate else ''}{body}]")
            i = end
        elif c == "}":
            raise PatternError(f"unmatched '}}' in {glob!r}")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise PatternError(f"unclosed '{{' in {glob!r}")
    return "".join(out)


_PLAIN = re.compile(r"[^*?{}\[\]]*")


@dataclass(frozen=True, slots=True)
class PatternSet:
    """Several patterns; a name matches the set when it matches any of them.

    Matching is the planner's hot path (a million manifests, several rules each), so the
    common shapes skip the regex engine: literal names compare as strings and ``prefix*``
    globs as a prefix without ``/``; the rest are joined into one RE2 alternation. Results
    are memoized per name, bounded, since the same tags recur across repositories.
    """

    patterns: tuple[Pattern, ...]
    _literals: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _prefixes: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _combined: object = field(default=None, compare=False, repr=False)
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, patterns: tuple[Pattern, ...]) -> PatternSet:
        literals, prefixes, rest = set(), [], []
        for p in patterns:
            if not p.text.startswith("re:") and _PLAIN.fullmatch(p.text):
                literals.add(p.text)
            elif (not p.text.startswith("re:") and p.text.endswith("*")
                  and not p.text.endswith("**") and _PLAIN.fullmatch(p.text[:-1])):
                prefixes.append(p.text[:-1])
            else:
                rest.append(p)
        combined = None
        if rest:
            expression = "|".join(f"(?:{_expression(p.text)})" for p in rest)
            combined = re2.compile(expression, _OPTIONS)
        return cls(tuple(patterns), frozenset(literals), tuple(prefixes), combined)

    def matches(self, name: str) -> bool:
        memo = self._memo
        found = memo.get(name)
        if found is None:
            found = self._match(name)
            if len(memo) >= 65536:
                memo.clear()  # bounded: a daemon sees an unbounded stream of tags
            memo[name] = found
        return found

    def _match(self, name: str) -> bool:
        if name in self._literals:
            return True
        for prefix in self._prefixes:
            # `prefix*`: the star never crosses "/", so nothing after the prefix may.
            if name.startswith(prefix) and "/" not in name[len(prefix):]:
                return True
        return self._combined is not None and \
            self._combined.fullmatch(name) is not None  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return ", ".join(p.text for p in self.patterns)

    def __hash__(self) -> int:
        return hash(self.patterns)


def _expression(text: str) -> str:
    return text[3:] if text.startswith("re:") else glob_to_regex(text)
