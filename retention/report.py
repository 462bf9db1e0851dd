"""Plans and run results as SPEC's JSON document, and as a table for people."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from retention.manifest_times import FIRST_SEEN, ManifestTime
from retention.outcomes import (
    DELETED,
    FAILED,
    PLANNED,
    SKIPPED,
    Outcome,
    OutcomeKey,
    RunError,
    outcome_key,
)
from retention.planner import Action, Decision, Plan, PolicyPlan


def _status(policy: PolicyPlan, action: Action, outcomes: Mapping[OutcomeKey, Outcome] | None
            ) -> tuple[str, str, int]:
    """(status, reason, bytes): planned bytes for a plan, bytes really freed for a run."""
    if policy.aborted:
        return SKIPPED, policy.aborted, 0
    if outcomes is None:
        return PLANNED, action.reason, action.bytes
    outcome = outcomes.get(outcome_key(action))
    if outcome is None:
        return PLANNED, action.reason, action.bytes
    if outcome.status == DELETED:
        return DELETED, action.reason, outcome.bytes
    return outcome.status, outcome.reason or action.reason, 0


def _decision_json(d: Decision) -> dict[str, Any]:
    return {"policy": d.policy, "registry": d.registry, "repository": d.repository,
            "digest": d.digest, "tags": list(d.tags), "reason": d.reason,
            "detail": d.detail, "matched": d.matched, "created": _created(d.time),
            "time_source": _source(d.time)}


def _created(time: ManifestTime | None) -> str | None:
    """The time the rules measured (RFC 3339, UTC); None when it is unknown."""
    if time is None or time.at is None:
        return None
    return time.at.isoformat().replace("+00:00", "Z")


def _source(time: ManifestTime | None) -> str | None:
    """Where the time that rules measured came from; None when it is unknown."""
    return time.source if time is not None else None


def to_json(plan: Plan, *, mode: str, outcomes: Mapping[OutcomeKey, Outcome] | None = None,
            run_errors: Iterable[RunError] = (), problems: Iterable[str] = ()
            ) -> dict[str, Any]:
    """``problems``: what failed the whole pass (an unusable state database)."""
    actions, protected, kept, errors, aborted = [], [], [], [], []
    counts = {PLANNED: 0, DELETED: 0, FAILED: 0, SKIPPED: 0}
    reclaimed = 0
    for p in plan.policies:
        if p.aborted:
            aborted.append({"policy": p.policy, "registry": p.registry, "message": p.aborted})
        for a in p.actions:
            status, reason, freed = _status(p, a, outcomes)
            counts[status] += 1
            if status == DELETED:
                reclaimed += freed
            actions.append({
                "policy": a.policy, "registry": a.registry, "repository": a.repository,
                "digest": a.digest, "tags": list(a.tags), "media_type": a.media_type,
                "reason": reason, "cascade_of": a.cascade_of, "bytes": freed,
                "status": status, "created": _created(a.time),
                "time_source": _source(a.time),
            })
        protected.extend(_decision_json(d) for d in p.protected)
        kept.extend(_decision_json(d) for d in p.kept)
        errors.extend({"policy": e.policy, "registry": e.registry, "repository": e.repository,
                       "message": e.message} for e in p.errors)
    # What failed while applying the plan (e.g. deleting an emptied repository): the exit
    # code is 1 for it, so the document says why.
    errors.extend({"policy": None, "registry": e.registry, "repository": e.repository,
                   "message": e.message} for e in run_errors)
    errors.extend({"policy": None, "registry": None, "repository": None, "message": m}
                  for m in problems)
    return {
        "mode": mode,
        "actions": actions,
        "protected": protected,
        "summary": {
            "planned": len(actions),
            "deleted": counts[DELETED],
            "failed": counts[FAILED],
            "skipped": counts[SKIPPED],
            "protected": len(protected),
            "reclaimable_bytes": plan.reclaimable_bytes,
            "reclaimed_bytes": reclaimed,
        },
        # Beyond SPEC's keys, for people and for CI checks of a policy change:
        "kept": kept,
        "errors": errors,
        "aborted": aborted,
    }


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(time: ManifestTime | datetime | None, now: datetime) -> str:
    """``12d``; ``seen 12d`` when the age runs from retention's first sight of the digest
    (the image carries no usable time); ``unknown`` when first seen in this very run."""
    if isinstance(time, ManifestTime):
        if time.at is None:
            return "unknown"
        age = _age_text(time.at, now)
        return f"seen {age}" if time.source == FIRST_SEEN else age
    return "unknown" if time is None else _age_text(time, now)


def _age_text(time: datetime, now: datetime) -> str:
    seconds = int((now - time).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _tag(tag: str) -> str:
    # Referrer tags hold a whole digest: shorten it as digests are shortened.
    return f"{tag[:19]}…{tag[71:]}" if tag.startswith("sha256-") and len(tag) >= 71 else tag


def tags_text(tags: tuple[str, ...]) -> str:
    shown = ",".join(_tag(t) for t in tags[:3]) + (f",+{len(tags) - 3}" if len(tags) > 3
                                                    else "")
    return shown or "<none>"


def columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Rows under a header, each column as wide as its widest cell (the last one free)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
            for r in (header, *rows)]


def _statuses(p: PolicyPlan, outcomes: Mapping[OutcomeKey, Outcome] | None
              ) -> dict[str, int]:
    counts = {PLANNED: 0, DELETED: 0, FAILED: 0, SKIPPED: 0}
    for a in p.actions:
        counts[_status(p, a, outcomes)[0]] += 1
    return counts


def _applied(outcomes: Mapping[OutcomeKey, Outcome] | None, mode: str) -> bool:
    """A run that sent DELETEs (or tried to) says what happened, not what was planned: "2
    to delete" after both DELETEs failed would read as a success. A dry run sends none,
    even when some actions were skipped before it (`retention apply`)."""
    return bool(outcomes) and mode != "dry-run"


def _counts_text(counts: Mapping[str, int], *, applied: bool, held_back: int = 0) -> str:
    parts = ([f"{counts[DELETED]} deleted", f"{counts[FAILED]} failed",
              f"{counts[SKIPPED] - held_back} skipped"] if applied
             else [f"{counts[PLANNED]} to delete"])
    if not applied and counts[SKIPPED] - held_back:
        parts.append(f"{counts[SKIPPED] - held_back} skipped")
    if applied and counts[PLANNED]:
        parts.append(f"{counts[PLANNED]} not attempted")
    if held_back:
        parts.append(f"{held_back} held back")
    return ", ".join(parts)


def _done(p: PolicyPlan, outcomes: Mapping[OutcomeKey, Outcome] | None, mode: str) -> str:
    held = len(p.actions) if p.aborted else 0
    return _counts_text(_statuses(p, outcomes), applied=_applied(outcomes, mode),
                        held_back=held)


def _freed(p: PolicyPlan, outcomes: Mapping[OutcomeKey, Outcome] | None) -> int:
    return sum(freed for a in p.actions
               for status, _, freed in (_status(p, a, outcomes),) if status == DELETED)


def _bytes_done(p: PolicyPlan, outcomes: Mapping[OutcomeKey, Outcome] | None,
                mode: str) -> str:
    if _applied(outcomes, mode):
        return f"{human_bytes(_freed(p, outcomes))} reclaimed"
    return f"{human_bytes(p.reclaimable_bytes)} reclaimable"


def _done_all(plan: Plan, outcomes: Mapping[OutcomeKey, Outcome] | None, mode: str) -> str:
    counts = {PLANNED: 0, DELETED: 0, FAILED: 0, SKIPPED: 0}
    held = 0
    for p in plan.policies:
        for status, n in _statuses(p, outcomes).items():
            counts[status] += n
        held += len(p.actions) if p.aborted else 0
    applied = _applied(outcomes, mode)
    text = _counts_text(counts, applied=applied, held_back=held)
    if applied:
        return text + f", {human_bytes(sum(_freed(p, outcomes) for p in plan.policies))} " \
            "reclaimed"
    return text + f", {human_bytes(plan.reclaimable_bytes)} reclaimable"


def to_table(plan: Plan, *, mode: str, outcomes: Mapping[OutcomeKey, Outcome] | None = None,
             run_errors: Iterable[RunError] = (), problems: Iterable[str] = ()) -> str:
    header = ("POLICY", "REPOSITORY", "DIGEST", "TAGS", "AGE", "SIZE", "DECISION", "REASON")
    rows: list[tuple[str, ...]] = []
    totals: list[str] = []
    for p in plan.policies:
        for a in p.actions:
            status, reason, freed = _status(p, a, outcomes)
            decision = "delete" if status == PLANNED else status
            rows.append((p.policy, a.repository, _short(a.digest), tags_text(a.tags),
                         human_age(a.time, plan.now), human_bytes(freed), decision, reason))
        for d in (*p.protected, *p.kept):
            decision = "keep" if d.reason == "keep" else f"protect:{d.reason}"
            rows.append((p.policy, d.repository, _short(d.digest), tags_text(d.tags),
                         human_age(d.time, plan.now), "-", decision,
                         f"{d.detail} ({d.matched} matched)"))
        for e in p.errors:
            rows.append((p.policy, e.repository, "-", "-", "-", "-", "error", e.message))
        line = (f"{p.policy}: {_done(p, outcomes, mode)}, {len(p.protected)} protected, "
                f"{len(p.kept)} kept, {_bytes_done(p, outcomes, mode)}")
        if p.errors:
            line += f", {len(p.errors)} repositories unreadable (nothing deleted there)"
        if p.aborted:
            line += f"\n  ABORTED: {p.aborted}"
        totals.append(line)
    out = [f"mode: {mode}", *(columns(header, rows) or ["nothing matched a delete rule"])]
    out.append("")
    out.extend(totals or ["no policies"])
    out.append(f"total: {_done_all(plan, outcomes, mode)}")
    out.extend(f"error: {e}" for e in run_errors)  # what went wrong applying the plan
    out.extend(f"error: {m}" for m in problems)
    return "\n".join(out) + "\n"
