"""Policy files: one or more YAML documents, one policy each, validated strictly."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml

from retention.config import check_cron
from retention.durations import format_duration
from retention.errors import ConfigError, Problem
from retention.patterns import PatternError, PatternSet, compile_pattern
from retention.textfiles import read_text
from retention.yamlnodes import Reader, compose_documents, location

NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True, slots=True)
class KeepRule:
    number: int  # 1-based position in the keep list, for explanations
    tags: PatternSet | None = None
    newest: int | None = None
    younger_than: timedelta | None = None

    def describe(self) -> str:
        parts = []
        if self.newest is not None:
            scope = f"carrying {self.tags}" if self.tags else "tagged"
            parts.append(f"among the {self.newest} newest {scope}")
        elif self.tags is not None:
            parts.append(f"tag matches {self.tags}")
        if self.younger_than is not None:
            parts.append(f"younger than {format_duration(self.younger_than)}")
        return f"keep rule {self.number}: " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class DeleteRule:
    number: int
    tags: PatternSet | None = None
    untagged: bool = False
    older_than: timedelta | None = None
    # Untagged rules only: seen without an ordinary tag for at least this long (state).
    untagged_for: timedelta | None = None

    def describe(self) -> str:
        parts = [f"tags {self.tags}" if self.tags else "untagged"]
        if self.untagged_for is not None:
            parts.append(f"untagged for at least {format_duration(self.untagged_for)}")
        if self.older_than is not None:
            parts.append(f"older than {format_duration(self.older_than)}")
        return f"delete rule {self.number}: " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    include: PatternSet
    exclude: PatternSet
    keep: tuple[KeepRule, ...]
    delete: tuple[DeleteRule, ...]
    registry: str | None = None
    schedule: str | None = None
    max_deletions: int | None = None
    delete_empty_repositories: bool = False
    source: str = ""  # path:line of the document, for messages

    def applies_to(self, repository: str) -> bool:
        return self.include.matches(repository) and not self.exclude.matches(repository)


_POLICY_KEYS = {
    "name": True,
    "registry": False,
    "schedule": False,
    "repositories": True,
    "keep": False,
    "delete": True,
    "max_deletions": False,
    "delete_empty_repositories": False,
}
_KEEP_KEYS = {"tags": False, "newest": False, "younger_than": False}
_DELETE_KEYS = {"tags": False, "untagged": False, "older_than": False, "untagged_for": False}


def policy_warnings(policies: Iterable[Policy]) -> list[Problem]:
    """What is valid but surely not meant: a keep rule `newest: 0` keeps nothing (a rule
    that looks like a protection and is none)."""
    found = []
    for policy in policies:
        for rule in policy.keep:
            if rule.newest == 0:
                found.append(policy_problem(policy, f"keep rule {rule.number}: newest: 0 "
                                            "keeps nothing; remove the rule or keep at "
                                            "least 1"))
    return found


def source_location(source: str) -> tuple[str, int]:
    """``path:line`` as written into policies and pins for messages, as (path, line)."""
    path, _, line = source.rpartition(":")
    return (path, int(line)) if path and line.isdigit() else (source, 1)


def policy_problem(policy: Policy, message: str) -> Problem:
    """A problem located at the policy's document (a warning of validate's, say)."""
    path, line = source_location(policy.source)
    return Problem(path, line, 1, f"policy {policy.name}: {message}")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def policy_files(paths: Iterable[Path]) -> list[Path]:
    """The files to read: each file given, and the *.yaml / *.yml files of each directory
    and of its subdirectories (policies/team-a/ci.yaml is a team's own folder, not a file
    to skip). Hidden files and folders (.git, an editor's .swp) are not read."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(
                p for p in path.rglob("*")
                if p.suffix in (".yaml", ".yml") and not _hidden(p, path) and p.is_file()))
        else:
            out.append(path)
    return out


def policy_dirs(path: Path) -> list[Path]:
    """A policy directory and its subdirectories: a file added to any of them changes that
    directory (the daemon watches them to see new files)."""
    if not path.is_dir():
        return []
    return [path, *sorted(p for p in path.rglob("*") if p.is_dir() and not _hidden(p, path))]


def load_policies(
    paths: Iterable[Path],
    *,
    registries: Collection[str] | None = None,
) -> tuple[Policy, ...]:
    """Read every policy; raise ConfigError with every problem in every file.

    ``registries`` are the configured registry names; None skips the reference check (for
    ``retention validate`` of policy files without a config).
    """
    problems: list[Problem] = []
    policies: list[Policy] = []
    first_seen: dict[str, str] = {}
    try:
        files = policy_files(paths)
    except OSError as exc:  # a directory that cannot be listed
        raise ConfigError([Problem(str(exc.filename), 1, 1, "cannot read policy directory: "
                                   f"{exc.strerror}")]) from None
    for path in files:
        shown = str(path)
        try:
            text = read_text(path)
        except OSError as exc:
            problems.append(Problem(shown, 1, 1, f"cannot read policy file: {exc.strerror}"))
            continue
        except ConfigError as exc:  # not UTF-8
            problems.extend(exc.problems)
            continue
        _read(text, shown, registries, problems, policies, first_seen)
    if not files:
        shown = ", ".join(str(p) for p in paths) or "."
        problems.append(Problem(shown, 1, 1, "no policy files found (*.yaml or *.yml)"))
    if problems:
        raise ConfigError(problems)
    return tuple(policies)


def policies_from_text(
    text: str, *, path: str = "<policy>", registries: Collection[str] | None = None
) -> tuple[Policy, ...]:
    """Policies from YAML text: for tests and for tools that hold the text already."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    _read(text, path, registries, problems, policies, {})
    if problems:
        raise ConfigError(problems)
    return tuple(policies)


def _read(
    text: str,
    shown: str,
    registries: Collection[str] | None,
    problems: list[Problem],
    policies: list[Policy],
    first_seen: dict[str, str],
) -> None:
    reader = Reader(shown, problems)
    for doc in compose_documents(text, shown, problems):
        policy = _policy(reader, doc, registries)
        if policy is None:
            continue
        if policy.name in first_seen:
            line, col = location(doc)
            problems.append(Problem(shown, line, col, f"policy name {policy.name!r} is "
                                    f"already used at {first_seen[policy.name]}"))
            continue
        first_seen[policy.name] = policy.source
        policies.append(policy)


def _patterns(reader: Reader, node: yaml.Node, *, what: str, required: bool) -> PatternSet | None:
    compiled = []
    items = list(reader.strings(node, what=what))
    for text, item in items:
        try:
            compiled.append(compile_pattern(text))
        except PatternError as exc:
            reader.error(item, f"{what}: {exc}")
    if required and isinstance(node, yaml.SequenceNode) and not node.value:
        reader.error(node, f"{what} needs at least one pattern")
    return PatternSet.of(tuple(compiled))


def _duration(reader: Reader, node: yaml.Node, *, what: str) -> timedelta | None:
    return reader.duration(node, what=what)


def _policy(
    reader: Reader, node: yaml.Node, registries: Collection[str] | None
) -> Policy | None:
    before = len(reader.problems)
    fields = reader.mapping(node, what="policy", allowed=_POLICY_KEYS)
    if fields is None:
        return None
    name = None
    if "name" in fields and (name := reader.string(fields["name"], what="name")) is not None \
            and not NAME.fullmatch(name):
        reader.error(fields["name"], f"name {name!r} must be lowercase letters, digits and "
                         "dashes, starting with a letter or digit")
    what = f"policy {name!r}" if name else "policy"

    registry = None
    if "registry" in fields:
        registry = reader.string(fields["registry"], what=f"{what}: registry")
        if registry is not None and registries is not None and registry not in registries:
            known = ", ".join(sorted(registries)) or "none"
            reader.error(fields["registry"], f"{what}: registry {registry!r} is not configured "
                         f"(configured: {known})")
    elif registries is not None:
        if len(registries) == 1:
            registry = next(iter(registries))
        else:
            reader.error(node, f"{what}: registry is required when several registries are "
                         "configured")

    schedule = check_cron(reader, fields["schedule"], what=f"{what}: schedule") \
        if "schedule" in fields else None

    include = exclude = PatternSet.of(())
    if "repositories" in fields:
        repos = reader.mapping(fields["repositories"], what=f"{what}: repositories",
                               allowed={"include": True, "exclude": False})
        if repos is not None:
            if "include" in repos:
                include = _patterns(reader, repos["include"],
                                    what=f"{what}: repositories.include", required=True)
            if "exclude" in repos:
                exclude = _patterns(reader, repos["exclude"],
                                    what=f"{what}: repositories.exclude", required=False)

    keep: list[KeepRule] = []
    if "keep" in fields:
        for i, rule_node in enumerate(reader.sequence(fields["keep"], what=f"{what}: keep") or ()):
            rule = _keep_rule(reader, rule_node, i + 1, what=f"{what}: keep rule {i + 1}")
            if rule is not None:
                keep.append(rule)

    delete: list[DeleteRule] = []
    if "delete" in fields:
        rules = reader.sequence(fields["delete"], what=f"{what}: delete") or ()
        if isinstance(fields["delete"], yaml.SequenceNode) and not rules:
            reader.error(fields["delete"], f"{what}: delete needs at least one rule")
        for i, rule_node in enumerate(rules):
            rule = _delete_rule(reader, rule_node, i + 1, what=f"{what}: delete rule {i + 1}")
            if rule is not None:
                delete.append(rule)

    max_deletions = reader.integer(fields["max_deletions"], what=f"{what}: max_deletions") \
        if "max_deletions" in fields else None
    delete_empty = False
    if "delete_empty_repositories" in fields:
        delete_empty = bool(reader.boolean(fields["delete_empty_repositories"],
                                           what=f"{what}: delete_empty_repositories"))

    if len(reader.problems) > before or name is None:
        return None
    line, _ = location(node)
    return Policy(
        name=name, registry=registry, schedule=schedule, include=include, exclude=exclude,
        keep=tuple(keep), delete=tuple(delete), max_deletions=max_deletions,
        delete_empty_repositories=delete_empty, source=f"{reader.path}:{line}",
    )


def _keep_rule(reader: Reader, node: yaml.Node, number: int, *, what: str) -> KeepRule | None:
    fields = reader.mapping(node, what=what, allowed=_KEEP_KEYS)
    if fields is None:
        return None
    if not fields:
        if not node.value:  # not when it only held unknown keys: that was said already
            reader.error(node, f"{what} is empty; give tags, newest or younger_than")
        return None
    tags = _patterns(reader, fields["tags"], what=f"{what}: tags", required=True) \
        if "tags" in fields else None
    newest = reader.integer(fields["newest"], what=f"{what}: newest") \
        if "newest" in fields else None
    younger = _duration(reader, fields["younger_than"], what=f"{what}: younger_than") \
        if "younger_than" in fields else None
    return KeepRule(number=number, tags=tags, newest=newest, younger_than=younger)


def _delete_rule(reader: Reader, node: yaml.Node, number: int, *, what: str) -> DeleteRule | None:
    fields = reader.mapping(node, what=what, allowed=_DELETE_KEYS)
    if fields is None:
        return None
    tags = _patterns(reader, fields["tags"], what=f"{what}: tags", required=True) \
        if "tags" in fields else None
    untagged = False
    if "untagged" in fields:
        value = reader.boolean(fields["untagged"], what=f"{what}: untagged")
        if value is False:
            reader.error(fields["untagged"], f"{what}: untagged: false selects nothing; "
                         "write untagged: true or remove the key")
        untagged = bool(value)
    if "tags" in fields and "untagged" in fields:
        reader.error(node, f"{what}: give tags or untagged: true, not both")
        return None
    if "tags" not in fields and "untagged" not in fields:
        reader.error(node, f"{what}: a delete rule needs tags or untagged: true")
        return None
    older = _duration(reader, fields["older_than"], what=f"{what}: older_than") \
        if "older_than" in fields else None
    untagged_for = None
    if "untagged_for" in fields:
        if "untagged" not in fields:
            # On a tags rule it would silently mean nothing: tagged manifests are not
            # untagged for any time.
            reader.error(fields["untagged_for"], f"{what}: untagged_for needs untagged: true "
                         "(it measures how long an orphan has been without a tag)")
            return None
        untagged_for = _duration(reader, fields["untagged_for"], what=f"{what}: untagged_for")
    return DeleteRule(number=number, tags=tags, untagged=untagged, older_than=older,
                      untagged_for=untagged_for)
