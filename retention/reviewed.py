"""Reviewed deletions: `plan --save` writes a plan for a person to approve; `apply` deletes
only what that plan **and** a fresh plan both delete (SPEC "Reviewed deletions").

The saved file is trusted for nothing but a list of approvals: every deletion still comes
from today's plan and goes through the executor's gate, so `apply` never does more than
either the reviewed file or today's policies allow. What changed in between is reported,
never deleted: a saved deletion today's policies no longer make is skipped
(`no-longer-planned`, or `changed` when its tags moved), one today's plan makes that the
file lacks is counted as `not_reviewed`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from retention.allowlist import allowlist_files
from retention.config import Config
from retention.durations import format_duration
from retention.errors import ConfigError, Problem, RetentionError, UsageError
from retention.inventory import Inventory
from retention.manifest_times import TIME_SOURCES, ManifestTime
from retention.planner import CHANGED, Action, Plan, PolicyPlan, only_actions
from retention.policy import policy_files
from retention.report import PLANNED, SKIPPED, Outcome, OutcomeKey, outcome_key
from retention.setup import Setup, load_setup

log = structlog.get_logger("retention.reviewed")

NO_LONGER_PLANNED = "no-longer-planned"
DEFAULT_MAX_AGE = timedelta(hours=24)
# A saved plan dated later than this past the clock was not made by this clock's machine
# (or its clock was wrong): its age cannot be trusted, so it is refused.
FUTURE_TOLERANCE = timedelta(minutes=5)
_DIGEST_DOMAIN = b"retention config_digest v1\n"


# -- config_digest -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigDigest:
    """What the configuration was when a plan was made: one digest over every file, and
    one per file (to name the files that changed)."""

    digest: str
    files: Mapping[str, str]  # path relative to the config's directory -> sha256 of bytes


def config_files(config: Config) -> list[tuple[str, Path]]:
    """(kind, path) of every file the configuration is read from: the config itself, then
    the policy files, then the allowlist files, each kind sorted by its path relative to
    the config's directory (the order does not depend on where the checkout is)."""
    base = config.path.parent

    def ordered(kind: str, paths: list[Path]) -> list[tuple[str, Path]]:
        return sorted(((kind, p) for p in paths), key=lambda kp: _relative(kp[1], base))

    files = [("config", config.path), *ordered("policy", policy_files([config.policies]))]
    if config.allowlist is not None:
        files.extend(ordered("allowlist", allowlist_files(config.allowlist)))
    return files


def config_digest(config: Config) -> ConfigDigest:
    """sha256 over each file in ``config_files`` order, as three length-prefixed fields
    (kind, path relative to the config's directory, the file's bytes as read): any edit,
    rename, added or removed file changes it; no two different sets of files give the same
    byte stream."""
    base = config.path.parent
    whole = hashlib.sha256(_DIGEST_DOMAIN)
    files: dict[str, str] = {}
    for kind, path in config_files(config):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError([Problem(str(path), 1, 1, f"cannot read {kind} file: "
                                       f"{exc.strerror}")]) from None
        relative = _relative(path, base)
        for part in (kind.encode(), relative.encode("utf-8", "surrogateescape"), data):
            whole.update(len(part).to_bytes(8, "big"))
            whole.update(part)
        files[relative] = "sha256:" + hashlib.sha256(data).hexdigest()
    return ConfigDigest("sha256:" + whole.hexdigest(), files)


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def setup_with_digest(config_path: Path, setup: Setup) -> tuple[Setup, ConfigDigest]:
    """The setup and the digest of exactly the files it was read from. The files are read
    twice (digested, loaded, digested again): equal digests mean the setup returned was
    loaded from the bytes digested, not from an edit made between two reads."""
    before = config_digest(setup.config)
    again = load_setup(config_path)
    after = config_digest(again.config)
    if after != before:
        raise RetentionError(f"the config, policy or allowlist files under "
                             f"{config_path.parent} changed while being read; run it again")
    return again, after


def changed_files(saved: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Which files differ between two ``ConfigDigest.files``, for the message."""
    out = []
    for name in sorted(set(saved) | set(now)):
        if name not in now:
            out.append(f"{name} (removed)")
        elif name not in saved:
            out.append(f"{name} (added)")
        elif saved[name] != now[name]:
            out.append(f"{name} (edited)")
    return out


# -- the saved file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approved:
    """One deletion the reviewed plan lists."""

    policy: str
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...]  # sorted
    media_type: str
    time: ManifestTime | None  # as the plan showed it, for the report


@dataclass(frozen=True, slots=True)
class SavedPlan:
    path: Path
    at: datetime
    config_digest: str
    files: Mapping[str, str]
    policies: tuple[str, ...] | None  # the policies it was made for; None: not said
    deletions: Mapping[OutcomeKey, Approved]


def save(path: Path, document: Mapping[str, Any], *, at: datetime, digest: ConfigDigest,
         policies: list[str]) -> None:
    """Write ``document`` (the plan's JSON document) with its ``saved`` block, atomically:
    a reader never sees half a plan."""
    doc = {**document, "saved": {
        "at": _instant(at), "config_digest": digest.digest, "policies": policies,
        "files": dict(digest.files)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write the plan to {path}: {exc.strerror}") from None


def load(path: Path) -> SavedPlan:
    """Read a file `plan --save` wrote; anything else is refused (ConfigError, exit 2)."""
    shown = str(path)

    def bad(message: str, line: int = 1, column: int = 1) -> ConfigError:
        return ConfigError([Problem(shown, line, column, message)])

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise bad(f"cannot read the saved plan: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise bad("not a saved plan: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"not a saved plan: not JSON ({exc.msg})", exc.lineno, exc.colno) from None
    hint = "; write one with `retention plan --save FILE`"
    if not isinstance(doc, dict) or not isinstance(doc.get("actions"), list):
        raise bad(f"not a saved plan: no plan document (mode, actions, summary){hint}")
    saved = doc.get("saved")
    if not isinstance(saved, dict):
        raise bad(f"not a saved plan: a plan without its `saved` block (printed, not saved)"
                  f"{hint}")
    at = _time(saved.get("at"))
    digest = saved.get("config_digest")
    if at is None:
        raise bad(f"not a saved plan: saved.at is not a time{hint}")
    if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71):
        raise bad(f"not a saved plan: saved.config_digest is not a sha256 digest{hint}")
    files = saved.get("files", {})
    policies = saved.get("policies")
    if not isinstance(files, dict) or not (policies is None or (
            isinstance(policies, list) and all(isinstance(p, str) for p in policies))):
        raise bad(f"not a saved plan: saved.files or saved.policies is malformed{hint}")
    deletions: dict[OutcomeKey, Approved] = {}
    for number, action in enumerate(doc["actions"], start=1):
        approved = _approved(action)
        if approved is None:
            raise bad(f"not a saved plan: action {number} lacks policy, registry, "
                      f"repository, digest, tags or status{hint}")
        # Only what the reviewer saw as to be deleted is approved: an action of a policy
        # held back by max_deletions (skipped) was never going to go.
        if action["status"] == PLANNED:
            deletions[(approved.registry, approved.repository, approved.digest)] = approved
    return SavedPlan(path, at, digest, {str(k): str(v) for k, v in files.items()},
                     tuple(policies) if policies is not None else None, deletions)


def _approved(action: Any) -> Approved | None:
    if not isinstance(action, dict):
        return None
    text = ("policy", "registry", "repository", "digest", "status")
    if not all(isinstance(action.get(k), str) for k in text):
        return None
    tags = action.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return None
    media_type = action.get("media_type")
    created, source = _time(action.get("created")), action.get("time_source")
    time = (ManifestTime(created, source) if created is not None and source in TIME_SOURCES
            else None)
    return Approved(action["policy"], action["registry"], action["repository"],
                    action["digest"], tuple(sorted(tags)),
                    media_type if isinstance(media_type, str) else "", time)


def check(saved: SavedPlan, *, now: datetime, max_age: timedelta,
          digest: ConfigDigest) -> None:
    """Refuse (UsageError, exit 2) a file older than ``max_age``, dated in the future, or
    made from other config, policy or allowlist files than those read now."""
    age = now - saved.at
    if age > max_age:
        raise UsageError(
            f"{saved.path} was saved {format_duration(_whole(age))} ago, more than --max-age "
            f"{format_duration(max_age)}: what it lists may no longer be what was reviewed; "
            "make a new plan (retention plan --save) and review it again")
    if -age > FUTURE_TOLERANCE:
        raise UsageError(f"{saved.path} says it was saved at {_instant(saved.at)}, in the "
                         "future: its age cannot be known; make a new plan")
    if saved.config_digest != digest.digest:
        which = changed_files(saved.files, digest.files)
        raise UsageError(
            f"{saved.path} was made with other config, policy or allowlist files than "
            f"those read now ({', '.join(which) if which else 'their digest differs'}): "
            "make a new plan with these files and review it again")


def _whole(age: timedelta) -> timedelta:
    return timedelta(seconds=int(age.total_seconds()))


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.astimezone(UTC) if at.tzinfo is not None else None


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- apply: what both plans delete ---------------------------------------------------------


def _tags_text(tags: tuple[str, ...] | list[str]) -> str:
    return str(sorted(tags)) if tags else "none"


@dataclass(slots=True)
class Review:
    """Narrows today's plan to what the saved plan approved (``run_pass(select=...)``),
    and remembers what it left out and why, for the report."""

    saved: SavedPlan
    # Not sent, with why: saved deletions whose tags moved, deletions whose parent is not
    # deleted by this apply, saved deletions today's policies no longer make.
    outcomes: dict[OutcomeKey, Outcome] = field(default_factory=dict)
    held: list[Action] = field(default_factory=list)  # today's actions not sent
    gone: list[Action] = field(default_factory=list)  # saved deletions today's plan lacks
    not_reviewed: list[Action] = field(default_factory=list)

    def __call__(self, plan: Plan, inventories: Mapping[str, Inventory]) -> Plan:
        approvals = self.saved.deletions
        planned: dict[OutcomeKey, Action] = {}
        approved: set[OutcomeKey] = set()
        for p in plan.policies:
            for a in p.actions:
                key = outcome_key(a)
                planned[key] = a
                mine = approvals.get(key)
                if mine is None:
                    if not p.aborted:  # an aborted policy deletes nothing anyway
                        self.not_reviewed.append(a)
                elif tuple(sorted(a.tags)) != mine.tags:
                    # The reviewer approved removing these tags, not the ones it has now.
                    self._hold(a, f"{CHANGED}: tags are now {_tags_text(a.tags)}, the "
                                  f"reviewed plan saw {_tags_text(mine.tags)}")
                else:
                    approved.add(key)
        # A child or referrer goes only with every manifest that references it: if one of
        # them is not deleted by this apply (not reviewed, changed), it stays with it. The
        # executor checks the same before each DELETE; deciding it here keeps a dry run
        # truthful too.
        not_sent = {outcome_key(a) for a in self.not_reviewed}
        settled = False
        while not settled:
            settled = True
            for key in sorted(approved):
                a = planned[key]
                staying = [q for q in a.parents if (a.registry, a.repository, q) not in approved]
                if staying:
                    parent = (a.registry, a.repository, staying[0])
                    why = ("not in the reviewed plan" if parent in not_sent else
                           self.outcomes[parent].reason if parent in self.outcomes else
                           "not deleted by this apply")
                    approved.discard(key)
                    self._hold(a, f"{_short(staying[0])}, which references it, stays ({why})")
                    settled = False
        for key, mine in sorted(approvals.items()):
            if key not in planned:
                self._no_longer(mine, inventories)
        for a in self.not_reviewed:
            log.info("deletion not reviewed", policy=a.policy, registry=a.registry,
                     repository=a.repository, digest=a.digest, tags=list(a.tags),
                     bytes=a.bytes, reason="today's plan deletes it, the reviewed plan "
                     "does not list it: not deleted")
        return only_actions(plan, lambda a: outcome_key(a) in approved, inventories)

    def _hold(self, a: Action, reason: str) -> None:
        self.outcomes[outcome_key(a)] = Outcome(SKIPPED, reason)
        self.held.append(replace(a, bytes=0))
        log.warning("deletion skipped", policy=a.policy, registry=a.registry,
                    repository=a.repository, digest=a.digest, tags=list(a.tags), bytes=0,
                    reason=reason)

    def _no_longer(self, mine: Approved, inventories: Mapping[str, Inventory]) -> None:
        """A saved deletion that today's policies do not make: why, as far as the fresh
        scan tells."""
        inventory = inventories.get(mine.registry)
        repo = next((r for r in inventory.repositories if r.name == mine.repository),
                    None) if inventory is not None else None
        m = next((m for m in repo.manifests if m.digest == mine.digest),
                 None) if repo is not None else None
        if m is not None and tuple(sorted(m.tags + m.referrer_tags)) != mine.tags:
            reason = (f"{CHANGED}: tags are now {_tags_text(m.tags + m.referrer_tags)}, the "
                      f"reviewed plan saw {_tags_text(mine.tags)}")
        elif m is not None:
            reason = f"{NO_LONGER_PLANNED}: today's policies do not delete it"
        elif repo is not None and repo.error is not None:
            reason = f"{NO_LONGER_PLANNED}: its repository could not be read ({repo.error})"
        elif inventory is None:
            reason = f"{NO_LONGER_PLANNED}: registry {mine.registry} was not read"
        else:
            reason = f"{NO_LONGER_PLANNED}: it is no longer in the registry"
        action = Action(mine.policy, mine.registry, mine.repository, mine.digest, mine.tags,
                        mine.media_type, reason, time=mine.time)
        self.outcomes[outcome_key(action)] = Outcome(SKIPPED, reason)
        self.gone.append(action)
        log.warning("deletion skipped", policy=mine.policy, registry=mine.registry,
                    repository=mine.repository, digest=mine.digest, tags=list(mine.tags),
                    bytes=0, reason=reason)

    def shown(self, sent: Plan) -> Plan:
        """The plan to report: what was sent, then what was not, each under its policy."""
        extra: dict[str, list[Action]] = {}
        for a in (*self.held, *self.gone):
            extra.setdefault(a.policy, []).append(a)
        policies = [replace(p, actions=(*p.actions, *extra.pop(p.policy, ())))
                    for p in sent.policies]
        for name, actions in sorted(extra.items()):  # a policy today's plan does not have
            policies.append(PolicyPlan(name, actions[0].registry, tuple(actions), (), ()))
        return replace(sent, policies=tuple(policies))

    def outcomes_with(self, executed: Mapping[OutcomeKey, Outcome]
                      ) -> dict[OutcomeKey, Outcome]:
        return {**self.outcomes, **executed}


def not_reviewed_json(review: Review) -> list[dict[str, Any]]:
    return [{"policy": a.policy, "registry": a.registry, "repository": a.repository,
             "digest": a.digest, "tags": list(a.tags), "reason": a.reason,
             "cascade_of": a.cascade_of, "bytes": a.bytes} for a in review.not_reviewed]


def not_reviewed_text(review: Review) -> str:
    n = len(review.not_reviewed)
    if not n:
        return ""
    return (f"not reviewed: {n} deletion(s) today's policies make that the reviewed plan "
            "does not list; not done (make a new plan and review it to delete them)\n")


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"
