"""What Kubernetes workloads use, as the planner's ``in-use`` protection. Pure: no I/O.

The cluster reader (``retention.kube``) turns each workload into :class:`Use` records; this
module maps their image references to registries and repositories (hosts as the allowlist
compares them), resolves tags against what the run read from the registry, and widens each
digest to what its deletion would break: a child digest (kubelet reports the platform
manifest) protects its index, an index its children, anything its referrers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from retention.durations import format_duration
from retention.inventory import Inventory
from retention.references import Hosts, parse_reference

# The kinds read, in the order they are listed, with the path to their pod spec.
KINDS = ("pods", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs")


@dataclass(frozen=True, slots=True)
class Use:
    """One image reference one workload makes."""

    cluster: str
    namespace: str
    kind: str  # singular, lowercase: pod, deployment, ...
    name: str
    image: str  # as written (spec) or reported (status imageID)

    @property
    def workload(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Sighting:
    """A digest seen in use: by whom (one workload, named in explanations), and when."""

    registry: str
    repository: str
    digest: str
    used_by: str
    last_seen: datetime


def images_of_pod_spec(spec: object) -> Iterable[str]:
    """Images of a pod spec's containers, init and ephemeral containers (lightkube models)."""
    if spec is None:
        return
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for container in getattr(spec, group, None) or ():
            if getattr(container, "image", None):
                yield container.image


def image_ids_of_pod_status(status: object) -> Iterable[str]:
    """What the kubelet reports it runs: ``imageID`` names the digest even for a tag."""
    if status is None:
        return
    for group in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in getattr(status, group, None) or ():
            if getattr(cs, "imageID", None):
                yield cs.imageID


def pod_spec_of(kind: str, obj: object) -> object | None:
    """The pod template's spec of a workload object (the pod's own spec for a pod)."""
    spec = getattr(obj, "spec", None)
    if spec is None:
        return None
    if kind == "pods":
        return spec
    if kind == "cronjobs":
        job = getattr(spec, "jobTemplate", None)
        spec = getattr(job, "spec", None)
    template = getattr(spec, "template", None)
    return getattr(template, "spec", None)


def uses_of(cluster: str, kind: str, obj: object) -> list[Use]:
    meta = getattr(obj, "metadata", None)
    namespace = getattr(meta, "namespace", None) or ""
    name = getattr(meta, "name", None) or ""
    singular = kind[:-1]
    images = list(images_of_pod_spec(pod_spec_of(kind, obj)))
    if kind == "pods":
        images.extend(image_ids_of_pod_status(getattr(obj, "status", None)))
    return [Use(cluster, namespace, singular, name, image) for image in dict.fromkeys(images)]


def resolve(uses: Iterable[Use], inventories: Mapping[str, Inventory], hosts: Hosts, *,
            now: datetime,
            last_tags: Callable[[str, str], Mapping[str, str]] = lambda _r, _n: {}
            ) -> list[Sighting]:
    """The digests the uses name, per registry and repository. A tag resolves to the digest
    it points to in this run's inventory; where this run did not read the repository (its
    registry is not scanned by the policies running now, or it could not be read), to the
    digest the last complete read saw (``last_tags``, from the state), so that the sighting
    is remembered for keep_for all the same. A tag neither holds names nothing there (it
    cannot be deleted as that tag either). References to hosts no registry has are not
    ours to protect."""
    tag_maps: dict[tuple[str, str], Mapping[str, str]] = {}
    found: dict[tuple[str, str, str], str] = {}
    for use in uses:
        ref = parse_reference(use.image)
        if ref is None or ref.host is None:
            continue
        for registry in hosts.registries_of(ref.host):
            digest = ref.digest
            if digest is None:
                key = (registry, ref.repository)
                if key not in tag_maps:
                    tag_maps[key] = _tag_map(inventories, last_tags, registry, ref.repository)
                # Not resolvable now (never read): remembered by tag, resolved when it can be.
                digest = tag_maps[key].get(ref.tag or "latest") or \
                    TAG_PREFIX + (ref.tag or "latest")
            where = (registry, ref.repository, digest)
            # One workload names the digest in explanations: the first in a stable order.
            if where not in found or use.workload < found[where]:
                found[where] = use.workload
    return [Sighting(r, repo, d, by, now) for (r, repo, d), by in sorted(found.items())]


TAG_PREFIX = "tag:"  # a sighting by a tag no read had resolved yet


def resolve_remembered(sightings: Iterable[Sighting], inventories: Mapping[str, Inventory],
                       last_tags: Callable[[str, str], Mapping[str, str]]) -> list[Sighting]:
    """Sightings remembered by tag, resolved to what the tag points to now: the workload
    that used it may be gone, but within keep_for its image stays."""
    out = []
    for s in sightings:
        if s.digest.startswith(TAG_PREFIX):
            tags = _tag_map(inventories, last_tags, s.registry, s.repository)
            digest = tags.get(s.digest[len(TAG_PREFIX):])
            if digest is None:
                continue
            s = Sighting(s.registry, s.repository, digest, s.used_by, s.last_seen)
        out.append(s)
    return out


def _tag_map(inventories: Mapping[str, Inventory],
             last_tags: Callable[[str, str], Mapping[str, str]], registry: str,
             repository: str) -> Mapping[str, str]:
    """tag -> digest: this run's read of the repository, else the last complete one."""
    inventory = inventories.get(registry)
    read = _tags_of(inventory, repository) if inventory is not None else None
    return read if read is not None else last_tags(registry, repository)


def _tags_of(inventory: Inventory, repository: str) -> dict[str, str] | None:
    """tag -> digest in this run's read of the repository; None when it was not read
    completely (an error) or is not in the inventory."""
    for repo in inventory.repositories:
        if repo.name == repository:
            return None if repo.error is not None else \
                {t: m.digest for m in repo.manifests for t in m.tags}
    return None


def protections(sightings: Iterable[Sighting], inventories: Mapping[str, Inventory], *,
                now: datetime, keep_for: timedelta
                ) -> dict[tuple[str, str], dict[str, str]]:
    """(registry, repository) -> {digest: the sentence a person reads}, for every digest in
    use (seen within ``keep_for``) and everything linked to it: its index when it is a
    child, the children of an index, the referrers of any of them."""
    by_repo: dict[tuple[str, str], dict[str, Sighting]] = {}
    for s in sightings:
        if now - s.last_seen > keep_for:
            continue
        current = by_repo.setdefault((s.registry, s.repository), {}).get(s.digest)
        if current is None or s.last_seen > current.last_seen:
            by_repo[(s.registry, s.repository)][s.digest] = s
    result: dict[tuple[str, str], dict[str, str]] = {}
    for (registry, repository), seen in by_repo.items():
        details = {d: explain(s, now=now) for d, s in seen.items()}
        inventory = inventories.get(registry)
        repo = next((r for r in inventory.repositories if r.name == repository), None) \
            if inventory is not None else None
        if repo is not None:
            details = _widen(details, repo.manifests)
        result[(registry, repository)] = details
    return result


def _widen(details: dict[str, str], manifests: Iterable[object]) -> dict[str, str]:
    children: dict[str, tuple[str, ...]] = {}
    parents: dict[str, list[str]] = {}
    referrers: dict[str, list[str]] = {}
    for m in manifests:
        children[m.digest] = m.children
        for c in m.children:
            parents.setdefault(c, []).append(m.digest)
        if m.subject is not None:
            referrers.setdefault(m.subject, []).append(m.digest)
    widened = dict(details)
    # Up first: a child in use keeps every index holding it (and so its siblings).
    stack = list(details)
    while stack:
        digest = stack.pop()
        for parent in parents.get(digest, ()):
            if parent not in widened:
                widened[parent] = f"index of {_short(digest)}, {widened[digest]}"
                stack.append(parent)
    stack = list(widened)
    while stack:
        digest = stack.pop()
        linked = [(c, "child") for c in children.get(digest, ())] + \
            [(r, "referrer") for r in referrers.get(digest, ())]
        for other, relation in linked:
            if other not in widened:
                widened[other] = f"{relation} of {_short(digest)}, {widened[digest]}"
                stack.append(other)
    return widened


def _short(digest: str) -> str:
    return digest[:19]


def explain(s: Sighting, *, now: datetime) -> str:
    """``in use by prod/payments/deployment/api, last seen 3h ago``."""
    age = now - s.last_seen
    when = "now" if age < timedelta(seconds=1) else \
        f"{format_duration(timedelta(seconds=int(age.total_seconds())))} ago"
    return f"in use by {s.used_by}, last seen {when}"
