"""Policy files: the SPEC example loads; every mistake is reported with its location."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from retention.errors import ConfigError
from retention.policy import load_policies, policies_from_text

DATA = Path(__file__).parent / "data"


def problems_of(text: str, registries=("main",)) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policies_from_text(text, path="p.yaml", registries=registries)
    return [str(p) for p in info.value.problems]


def test_spec_example_loads():
    (policy,) = load_policies([DATA / "spec-example.yaml"], registries={"main"})
    assert policy.name == "ci-builds"
    assert policy.registry == "main"
    assert policy.schedule == "0 */6 * * *"
    assert policy.applies_to("ci/web") and policy.applies_to("ci/a/b")
    assert not policy.applies_to("ci/base") and not policy.applies_to("app")
    assert [r.newest for r in policy.keep] == [None, 10, 3, None]
    assert policy.keep[3].younger_than == timedelta(days=7)
    assert policy.delete[0].older_than == timedelta(days=14)
    assert policy.delete[1].untagged
    assert policy.max_deletions == 200
    assert policy.delete[0].describe() == "delete rule 1: tags pr-*, sha-*, older than 14d"


def test_several_documents_and_default_registry():
    text = """
name: one
repositories: {include: ["a/*"]}
delete: [{untagged: true}]
---
name: two
repositories: {include: ["b/**"]}
delete: [{tags: ["x"]}]
"""
    one, two = policies_from_text(text, registries=["only"])
    assert (one.name, two.name) == ("one", "two")
    assert one.registry == two.registry == "only"


BASE = 'name: p\nrepositories: {include: ["a"]}\n'


@pytest.mark.parametrize(("text", "expected"), [
    (BASE + "delete: [{tags: [1.10]}]\n",
     "p.yaml:3:18: policy 'p': delete rule 1: tags[0]: the unquoted value 1.10 is read by YAML "
     "as a number (1.1); quote it: \"1.10\""),
    (BASE + "delete: [{tags: [on]}]\n", "read by YAML as a boolean (True); quote it: \"on\""),
    (BASE + "delete: [{untagged: yes}]\n", "p.yaml:3:21: policy 'p': delete rule 1: "
     "untagged must be true or false"),
    (BASE + "delete: [{tags: [a]}]\nkeep: [{newest: 010}]\n", "newest must be a whole number"),
    (BASE + "delete: [{tags: [a]}]\nkeeps: []\n", "p.yaml:4:1: policy: unknown key 'keeps'; "
     "did you mean 'keep'?"),
    (BASE + "delete: [{tags: [a]}]\ndelete: [{tags: [b]}]\n",
     "p.yaml:4:1: policy: duplicate key 'delete' (first given on line 3)"),
    (BASE + "delete: [{tags: ['{a,b']}]\n", "unclosed '{'"),
    (BASE + "delete: [{tags: ['re:(?=x)']}]\n", "invalid regular expression"),
    (BASE + "delete: [{tags: ['re:a']}]\nkeep: [{younger_than: 3x}]\n", "invalid duration '3x'"),
    (BASE + "delete: [{tags: [a], older_than: -1d}]\n", "invalid duration '-1d'"),
    (BASE + "delete: [{tags: [a], older_than: 101y}]\n", "invalid duration"),
    (BASE + "delete: [{tags: [a], older_than: 5300w}]\n", "longer than 100 years"),
    (BASE + "delete: [{older_than: 1d}]\n", "a delete rule needs tags or untagged: true"),
    (BASE + "delete: [{tags: [a], untagged: true}]\n", "give tags or untagged: true, not both"),
    (BASE + "delete: [{untagged: false}]\n", "untagged: false selects nothing"),
    (BASE + "delete: []\n", "delete needs at least one rule"),
    (BASE + "delete: [{tags: []}]\n", "tags needs at least one pattern"),
    (BASE + "delete: [{tags: [a]}]\nkeep: [{}]\n", "keep rule 1 is empty"),
    (BASE + "delete: [{tags: [a]}]\nregistry: other\n", "registry 'other' is not configured"),
    (BASE + "delete: [{tags: [a]}]\nschedule: '61 * * * *'\n", "invalid cron expression"),
    ('name: Bad_Name\nrepositories: {include: ["a"]}\ndelete: [{untagged: true}]\n',
     "p.yaml:1:7: name 'Bad_Name' must be lowercase"),
    ('name: p\ndelete: [{untagged: true}]\n', "p.yaml:1:1: policy: missing required key "
     "'repositories'"),
    ('name: p\nrepositories: {include: []}\ndelete: [{untagged: true}]\n',
     "repositories.include needs at least one pattern"),
    ("name: p\n  bad: indent\n", "p.yaml:2:6: invalid YAML"),
    ("- just\n- a list\n", "policy must be a mapping"),
    (BASE + "delete: [{tags: [a]}]\nmax_deletions: 1.5\n", "max_deletions must be a whole"),
    (BASE + "delete: [{tags: [a]}]\n---\n" + BASE + "delete: [{tags: [b]}]\n",
     "p.yaml:5:1: policy name 'p' is already used at p.yaml:1"),
])
def test_bad_policies_are_located(text: str, expected: str):
    found = problems_of(text)
    assert any(expected in p for p in found), found


def test_every_problem_reported_at_once():
    text = BASE + "delete: [{tags: [1.10], older_than: 2q}]\nkeep: [{newest: -1}]\nfoo: 1\n"
    found = problems_of(text)
    assert len(found) == 4, found
    assert all(p.startswith("p.yaml:") for p in found)


def test_several_registries_need_explicit_registry():
    found = problems_of(BASE + "delete: [{tags: [a]}]\n", registries=("a", "b"))
    assert any("registry is required" in p for p in found)


def test_duplicate_names_across_files(tmp_path: Path):
    for n in ("a.yaml", "b.yml"):
        (tmp_path / n).write_text(BASE + "delete: [{tags: [a]}]\n")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(ConfigError) as info:
        load_policies([tmp_path])
    (problem,) = info.value.problems
    assert problem.path.endswith("b.yml") and "already used at" in problem.message


def test_empty_directory_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="no policy files found"):
        load_policies([tmp_path])


def test_the_documented_bad_policy():
    """The example in docs/policies.md, message for message."""
    with pytest.raises(ConfigError) as info:
        load_policies([DATA / "bad-policy.yaml"])
    found = [f"{p.line}:{p.column}: {p.message}" for p in info.value.problems]
    assert found == [
        "6:5: policy 'ci-builds': keep rule 2: unknown key 'newst'; did you mean 'newest'?",
        "8:18: policy 'ci-builds': delete rule 1: tags[1]: the unquoted value 1.10 is read "
        "by YAML as a number (1.1); quote it: \"1.10\"",
        "9:17: policy 'ci-builds': delete rule 1: older_than: invalid duration '2 weeks': "
        "write a number and a unit (s, m, h, d, w), combinable as in 1d12h",
        "10:15: policy 'ci-builds': delete rule 2: untagged must be true or false",
        "11:16: policy 'ci-builds': max_deletions must be a whole number written in decimal, "
        "like 10",
        "12:1: policy: duplicate key 'delete' (first given on line 7)",
    ]


def test_untagged_for_on_untagged_rules():
    (policy,) = policies_from_text("""
name: p
repositories: {include: ["**"]}
delete:
  - untagged: true
    untagged_for: 7d
    older_than: 30d
""", registries=["main"])
    rule = policy.delete[0]
    assert rule.untagged_for == timedelta(days=7)
    assert rule.describe() == "delete rule 1: untagged, untagged for at least 7d, older than 30d"


@pytest.mark.parametrize(("rule", "message"), [
    ('{tags: ["pr-*"], untagged_for: 7d}',
     "p.yaml:4:36: policy 'p': delete rule 1: untagged_for needs untagged: true"),
    ("{untagged: true, untagged_for: 7 days}",
     "p.yaml:4:36: policy 'p': delete rule 1: untagged_for: "),
    ("{untagged: true, untagged_for: -1d}",
     "p.yaml:4:36: policy 'p': delete rule 1: untagged_for: "),
])
def test_untagged_for_mistakes_name_their_place(rule, message):
    text = f'name: p\nrepositories: {{include: ["**"]}}\ndelete:\n  - {rule}\n'
    (problem,) = problems_of(text)
    assert problem.startswith(message), problem
