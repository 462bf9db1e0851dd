"""`retention diff`: what a policy change would delete or keep differently.

Two plans of one inventory at one instant, the base policies' and the head's, compared
manifest by manifest and policy by policy. Pure: the plans come in, the differences go out
(SPEC "Reviewed deletions").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retention.manifest_times import ManifestTime
from retention.planner import Plan
from retention.report import _created, _source, columns, human_age, human_bytes, tags_text

NEWLY_DELETED = "newly-deleted"
NO_LONGER_DELETED = "no-longer-deleted"
PROTECTED_DIFFERENTLY = "protected-differently"
_ORDER = {NEWLY_DELETED: 0, NO_LONGER_DELETED: 1, PROTECTED_DIFFERENTLY: 2}

# Decisions of one policy about one manifest
DELETE, KEEP, PROTECTED, HELD_BACK, NONE = "delete", "keep", "protected", "held-back", "none"

# A pull-request comment lists at most this many manifests (GitHub refuses comments over
# 65,536 characters); the rest is counted, and `-o json` lists them all.
MARKDOWN_ROWS = 100


@dataclass(frozen=True, slots=True)
class Side:
    decision: str  # delete, keep, protected, held-back or none
    reason: str  # what a person reads
    protection: str | None = None  # for protected: the protection's name (grace, pinned...)
    bytes: int = 0  # for delete: what this side's plan frees by it


_ABSENT = Side(NONE, "the policy does not exist on this side")
_UNMATCHED = Side(NONE, "no delete rule matches it")


@dataclass(frozen=True, slots=True)
class Change:
    policy: str
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...]
    time: ManifestTime | None
    change: str
    base: Side
    head: Side

    @property
    def bytes(self) -> int:
        """As the head plan frees them for an added deletion, as the base plan would for
        a removed one; nothing for a change of protection."""
        if self.change == NEWLY_DELETED:
            return self.head.bytes
        if self.change == NO_LONGER_DELETED:
            return self.base.bytes
        return 0


@dataclass(frozen=True, slots=True)
class Totals:
    deletions: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Diff:
    plan_base: Plan
    plan_head: Plan
    changes: tuple[Change, ...]

    def added(self, policy: str | None = None) -> Totals:
        return self._sum(NEWLY_DELETED, policy)

    def removed(self, policy: str | None = None) -> Totals:
        return self._sum(NO_LONGER_DELETED, policy)

    def protected_differently(self, policy: str | None = None) -> int:
        return self._sum(PROTECTED_DIFFERENTLY, policy).deletions

    def _sum(self, change: str, policy: str | None) -> Totals:
        chosen = [c for c in self.changes
                  if c.change == change and (policy is None or c.policy == policy)]
        return Totals(len(chosen), sum(c.bytes for c in chosen))

    @property
    def policies(self) -> list[str]:
        return sorted({c.policy for c in self.changes})


def totals(plan: Plan) -> Totals:
    """What a plan deletes: its deletions (not those of a policy held back by
    max_deletions, which deletes nothing) and the bytes they free; as `plan` reports them."""
    return Totals(sum(len(p.actions) for p in plan.policies if not p.aborted),
                  plan.reclaimable_bytes)


Key = tuple[str, str, str, str]  # policy, registry, repository, digest


def _sides(plan: Plan) -> dict[Key, tuple[Side, tuple[str, ...], ManifestTime | None]]:
    """Every decision a plan holds, by policy and manifest."""
    out: dict[Key, tuple[Side, tuple[str, ...], ManifestTime | None]] = {}
    for p in plan.policies:
        for a in p.actions:
            side = (Side(HELD_BACK, p.aborted) if p.aborted else
                    Side(DELETE, a.reason, bytes=a.bytes))
            out[(p.policy, a.registry, a.repository, a.digest)] = (side, a.tags, a.time)
        for d in p.kept:
            out[(p.policy, d.registry, d.repository, d.digest)] = (
                Side(KEEP, d.detail), d.tags, d.time)
        for d in p.protected:
            out[(p.policy, d.registry, d.repository, d.digest)] = (
                Side(PROTECTED, f"{d.reason}: {d.detail}", protection=d.reason), d.tags,
                d.time)
    return out


def diff(base: Plan, head: Plan) -> Diff:
    """The manifests whose decision differs, per policy: deleted on one side only, or
    protected on one side and not for the same reason on the other. A policy that exists
    on one side only counts wholly."""
    before, after = _sides(base), _sides(head)
    base_names = {p.policy for p in base.policies}
    head_names = {p.policy for p in head.policies}
    changes = []
    for key in set(before) | set(after):
        policy = key[0]
        b = before.get(key)
        h = after.get(key)
        b_side = b[0] if b else (_UNMATCHED if policy in base_names else _ABSENT)
        h_side = h[0] if h else (_UNMATCHED if policy in head_names else _ABSENT)
        if h_side.decision == DELETE and b_side.decision != DELETE:
            change = NEWLY_DELETED
        elif b_side.decision == DELETE and h_side.decision != DELETE:
            change = NO_LONGER_DELETED
        elif PROTECTED in (b_side.decision, h_side.decision) and (
                (b_side.decision, b_side.protection) != (h_side.decision, h_side.protection)):
            change = PROTECTED_DIFFERENTLY
        else:
            continue
        tags, time = (h or b)[1], (h or b)[2]  # type: ignore[index]
        changes.append(Change(policy, key[1], key[2], key[3], tags, time, change, b_side,
                              h_side))
    changes.sort(key=lambda c: (c.policy, _ORDER[c.change], c.registry, c.repository,
                                c.digest))
    return Diff(base, head, tuple(changes))


# -- output --------------------------------------------------------------------------------


def to_json(d: Diff) -> dict[str, Any]:
    added, removed = d.added(), d.removed()
    base, head = totals(d.plan_base), totals(d.plan_head)
    return {
        "changes": [{
            "policy": c.policy, "registry": c.registry, "repository": c.repository,
            "digest": c.digest, "tags": list(c.tags), "bytes": c.bytes, "change": c.change,
            "created": _created(c.time), "time_source": _source(c.time),
            "base": {"decision": c.base.decision, "reason": c.base.reason},
            "head": {"decision": c.head.decision, "reason": c.head.reason},
        } for c in d.changes],
        "summary": {
            "added_deletions": added.deletions, "added_bytes": added.bytes,
            "removed_deletions": removed.deletions, "removed_bytes": removed.bytes,
            # Beyond SPEC's keys: what each side deletes in all, as `plan` reports it.
            "protected_differently": d.protected_differently(),
            "base": {"deletions": base.deletions, "bytes": base.bytes},
            "head": {"deletions": head.deletions, "bytes": head.bytes},
        },
        "errors": _errors_json(d),
        "aborted": [{"side": side, "policy": p.policy, "registry": p.registry,
                     "message": p.aborted}
                    for side, plan in (("base", d.plan_base), ("head", d.plan_head))
                    for p in plan.policies if p.aborted],
    }


def _errors_json(d: Diff) -> list[dict[str, Any]]:
    """Repositories that could not be read (a live inventory): nothing compared there."""
    seen = {}
    for plan in (d.plan_base, d.plan_head):
        for p in plan.policies:
            for e in p.errors:
                seen.setdefault((e.registry, e.repository), e.message)
    return [{"registry": r, "repository": repo, "message": m}
            for (r, repo), m in sorted(seen.items())]


def _signed(t: Totals, sign: str) -> str:
    return f"{sign}{t.deletions} deletions, {sign}{human_bytes(t.bytes)}"


def headline(d: Diff, policy: str | None = None) -> str:
    """``+3 deletions, +1.2 GiB; -1 deletions, -10.0 MiB`` (and protections changed)."""
    text = f"{_signed(d.added(policy), '+')}; {_signed(d.removed(policy), '-')}"
    if n := d.protected_differently(policy):
        text += f"; {n} protected differently"
    return text


def _side_text(s: Side) -> str:
    if s.decision == DELETE:
        return f"delete ({s.reason})"
    if s.decision == NONE:
        return s.reason
    return f"{s.decision} ({s.reason})"


def to_table(d: Diff) -> str:
    header = ("CHANGE", "POLICY", "REPOSITORY", "DIGEST", "TAGS", "AGE", "SIZE", "BASE",
              "HEAD")
    rows = [(c.change, c.policy, c.repository, _short(c.digest), tags_text(c.tags),
             human_age(c.time, d.plan_head.now), human_bytes(c.bytes),
             _side_text(c.base), _side_text(c.head)) for c in d.changes]
    out = columns(header, rows) or ["no manifest's decision changes"]
    out.append("")
    out.extend(f"{p}: {headline(d, p)}" for p in d.policies)
    base, head = totals(d.plan_base), totals(d.plan_head)
    out.append(f"total: {headline(d)}")
    out.append(f"head deletes {head.deletions} ({human_bytes(head.bytes)}), base "
               f"{base.deletions} ({human_bytes(base.bytes)})")
    out.extend(f"error: {e['registry']}/{e['repository']}: {e['message']} (not compared)"
               for e in _errors_json(d))
    out.extend(f"aborted ({a['side']}): {a['policy']}: {a['message']}"
               for a in to_json(d)["aborted"])
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """A table cell: no line breaks, no cell separators, no HTML (the reasons quote
    patterns and tags written by whoever opened the pull request)."""
    return (" ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\\", "\\\\").replace("|", "\\|")
            .replace("`", "\\`").replace("*", "\\*").replace("_", "\\_"))


def _code(text: str) -> str:
    """A code span: inside one, markdown reads backslashes as they are, so nothing is
    escaped; names (canonical repository names) hold no backtick, and none is let in."""
    return f"`{text.replace('`', '')}`"


_MD_CHANGE = {NEWLY_DELETED: "**+** newly deleted", NO_LONGER_DELETED: "**-** no longer deleted",
              PROTECTED_DIFFERENTLY: "protected differently"}


def to_markdown(d: Diff, *, rows: int | None = None) -> str:
    """A pull-request comment: a short summary, then the manifests in a collapsible
    section, at most ``rows`` (MARKDOWN_ROWS) of them and a count of the rest."""
    rows = MARKDOWN_ROWS if rows is None else rows
    base, head = totals(d.plan_base), totals(d.plan_head)
    out = ["<!-- retention diff -->"]
    if not d.changes:
        out.append("### retention: no manifest's decision changes")
    else:
        out.append(f"### retention: {_md(headline(d))}")
    out.append("")
    out.append(f"With this change the policies delete **{head.deletions}** manifests "
               f"({human_bytes(head.bytes)}); before it, {base.deletions} "
               f"({human_bytes(base.bytes)}).")
    for e in _errors_json(d):
        out.append(f"\nwarning: {_code(e['registry'] + '/' + e['repository'])} could not be read: "
                   f"{_md(e['message'])} (not compared)")
    for a in to_json(d)["aborted"]:
        out.append(f"\nwarning: {a['side']}: policy `{a['policy']}` deletes nothing: "
                   f"{_md(a['message'])}")
    if not d.changes:
        return "\n".join(out) + "\n"
    out += ["", "| policy | newly deleted | no longer deleted | protected differently |",
            "|---|---|---|---|"]
    for p in d.policies:
        added, removed = d.added(p), d.removed(p)
        out.append(f"| `{p}` | +{added.deletions} ({human_bytes(added.bytes)}) | "
                   f"-{removed.deletions} ({human_bytes(removed.bytes)}) | "
                   f"{d.protected_differently(p)} |")
    shown = d.changes[:rows]
    out += ["", f"<details><summary>{len(d.changes)} manifest(s) whose decision changes"
                "</summary>", "",
            "| change | policy | repository | digest | tags | age | size | base | head |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in shown:
        out.append(" | ".join((
            f"| {_MD_CHANGE[c.change]}", f"`{c.policy}`", _code(c.repository),
            f"`{_short(c.digest)}`", _md(tags_text(c.tags)), human_age(c.time, d.plan_head.now),
            human_bytes(c.bytes), _md(_side_text(c.base)), _md(_side_text(c.head)))) + " |")
    if len(d.changes) > len(shown):
        out += ["", f"… and {len(d.changes) - len(shown)} more (`retention diff -o json` "
                    "lists them all)"]
    out += ["", "</details>"]
    return "\n".join(out) + "\n"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]
