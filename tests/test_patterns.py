"""Patterns: glob semantics, and the fast paths of PatternSet agree with plain RE2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.patterns import PatternError, PatternSet, compile_pattern


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("apps/*", "apps/api", True),
    ("apps/*", "apps/a/b", False),
    ("apps/*", "apps", False),
    ("*", "a", True),
    ("*", "a/b", False),
    ("pr-*", "pr-1", True),
    ("pr-*", "pr-1/x", False),
    ("ci/**", "ci/a/b/c", True),
    ("**", "anything/at/all", True),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("latest", "latest", True),
    ("latest", "latest2", False),
    ("v?.?", "v1.2", True),
    ("{a,b}/c", "b/c", True),
    ("re:.*", "a/b", True),
    ("re:[a-z]+", "abc1", False),
])
def test_glob_semantics(pattern: str, name: str, matches: bool):
    assert compile_pattern(pattern).matches(name) is matches
    assert PatternSet.of((compile_pattern(pattern),)).matches(name) is matches


@pytest.mark.parametrize("bad", ["", "re:", "{a,b", "a}", "[abc", "re:(", "re:(?=a)",
                                 "re:(a)\\1"])
def test_bad_patterns(bad: str):
    with pytest.raises(PatternError):
        compile_pattern(bad)


ALPHABET = st.sampled_from(["a", "b", "/", "-", "."])
GLOB = st.lists(st.sampled_from(["a", "b", "/", "-", "*", "**", "?", "{a,b}", "ab"]),
                min_size=1, max_size=5).map("".join)
NAME = st.lists(ALPHABET, max_size=8).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(GLOB, min_size=1, max_size=3), st.lists(NAME, min_size=1, max_size=10))
def test_pattern_set_agrees_with_each_pattern(globs: list[str], names: list[str]):
    patterns = tuple(compile_pattern(g) for g in globs)
    combined = PatternSet.of(patterns)
    for name in names * 2:  # the second pass answers from the memo
        assert combined.matches(name) == any(p.matches(name) for p in patterns), name
