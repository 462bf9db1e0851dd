"""Reading Kubernetes clusters for the ``in-use`` protection, with lightkube.

lightkube (asyncio, on httpx2) brings what a cluster client must get right and we must not
re-implement: kubeconfig contexts, TLS with the cluster's CA, the in-cluster service account
token re-read from its file (it is rotated), and paged lists (``limit``/``continue``). Exec
credential plugins (EKS, GKE, AKS) are run by retention/kubeexec.py, which lightkube's
transport calls: lightkube refuses ``client.authentication.k8s.io/v1``. Objects are decoded by
msgspec into typed models, page by page, so memory stays bounded by the page size.

A cluster is read completely or it is unreadable: any error on any kind (unreachable, 401,
403, a page cut short, an expired continue token twice in a row) or fewer image references
than ``min_images`` fails it, and then the run deletes nothing on any registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from retention.config import ClusterSettings, Config
from retention.errors import RetentionError
from retention.inuse import (
    KINDS,
    TAG_PREFIX,
    Use,
    protections,
    resolve,
    resolve_remembered,
    uses_of,
)
from retention.inventory import Inventory
from retention.references import parse_reference

log = structlog.get_logger("retention.kube")
# lightkube's HTTP client logs every request at INFO: one line per page is noise in the
# audit trail (failures are logged here, with the cluster and the kind).
logging.getLogger("httpx2").setLevel(logging.WARNING)

PAGE_SIZE = 500  # objects per list request: bounded memory, few round trips
TIMEOUT = 30.0  # seconds for one request; a slower cluster is unreadable


class ClusterUnreadable(RetentionError):
    def __init__(self, cluster: str, kind: str | None, message: str):
        where = f"cluster {cluster}" + (f": cannot list {kind}" if kind else "")
        super().__init__(f"{where}: {message}")
        self.cluster = cluster
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ClusterReading:
    cluster: str
    uses: tuple[Use, ...] = ()
    error: ClusterUnreadable | None = None


def _resources():
    # Imported here: the models are large, and only configs with in_use need them.
    from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet, StatefulSet
    from lightkube.resources.batch_v1 import CronJob, Job
    from lightkube.resources.core_v1 import Pod
    return dict(zip(KINDS, (Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob),
                    strict=True))


def _client(cluster: ClusterSettings, timeout: float):
    import httpx2
    import yaml
    from lightkube import AsyncClient, KubeConfig

    from retention.kubeexec import ExecCredentialTransport, exec_plugin

    if cluster.kubeconfig is None:
        single = KubeConfig.from_service_account().get()
        return AsyncClient(single, timeout=httpx2.Timeout(timeout), trust_env=False)
    doc = yaml.safe_load(cluster.kubeconfig.read_text())
    single = KubeConfig.from_dict(doc, fname=cluster.kubeconfig).get(
        context_name=cluster.context)
    plugin = None
    if single.user is not None and single.user.exec is not None:
        plugin = exec_plugin(doc, single.context.user, single.context.cluster,
                             base=cluster.kubeconfig.parent)
    if plugin is None:
        return AsyncClient(single, timeout=httpx2.Timeout(timeout), trust_env=False)
    # An exec plugin is run here, not by lightkube (which refuses client.authentication
    # .k8s.io/v1): its token is added by the transport, which verifies the cluster as
    # lightkube would (its CA, a client certificate if the user has one as well).
    from lightkube.config.client_adapter import verify_cluster

    verify = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=False)
    transport = ExecCredentialTransport(
        httpx2.AsyncHTTPTransport(verify=verify, trust_env=False), plugin, timeout=timeout)
    users = [{**u, "user": {k: v for k, v in (u.get("user") or {}).items() if k != "exec"}}
             if isinstance(u, dict) and u.get("name") == single.context.user else u
             for u in doc.get("users") or ()]
    single = KubeConfig.from_dict({**doc, "users": users}, fname=cluster.kubeconfig).get(
        context_name=cluster.context)
    return AsyncClient(single, timeout=httpx2.Timeout(timeout), trust_env=False,
                       transport=transport)


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    code = getattr(status, "code", None)
    if code is not None:
        return f"{code} {getattr(status, 'reason', '') or ''}: {getattr(status, 'message', '')}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _list_kind(client, resource, cluster: ClusterSettings, kind: str) -> list[Use]:
    """Every use one kind makes, in all configured namespaces. An expired continue token
    (410: the cluster compacted the snapshot mid-list) restarts the kind once."""
    from lightkube import ApiError

    namespaces = cluster.namespaces or ("*",)
    for attempt in (1, 2):
        uses: list[Use] = []
        try:
            for namespace in namespaces:
                async for obj in client.list(resource, namespace=namespace,
                                             chunk_size=PAGE_SIZE):
                    uses.extend(uses_of(cluster.name, kind, obj))
            return uses
        except ApiError as exc:
            if exc.status.code == 410 and attempt == 1:
                log.warning("continue token expired, listing again", cluster=cluster.name,
                            kind=kind)
                continue
            raise
    raise AssertionError("unreachable")


async def read_cluster(cluster: ClusterSettings, *, timeout: float = TIMEOUT
                       ) -> ClusterReading:
    """Read every kind of one cluster; any failure makes the whole cluster unreadable."""
    kind = None
    try:
        client = _client(cluster, timeout)
    except Exception as exc:
        return ClusterReading(cluster.name, error=ClusterUnreadable(
            cluster.name, None, f"cannot load credentials: {_describe(exc)}"))
    resources = _resources()
    uses: list[Use] = []
    error: ClusterUnreadable | None = None
    try:
        # The first kind alone: it obtains the credentials (an exec plugin runs once, not
        # once per kind) and an unreachable cluster fails fast. Then the others at once.
        try:
            uses.extend(await _list_kind(client, resources[KINDS[0]], cluster, KINDS[0]))
        except Exception as exc:
            error = ClusterUnreadable(cluster.name, KINDS[0], _describe(exc))
        tasks = {} if error else {
            k: asyncio.create_task(_list_kind(client, resources[k], cluster, k))
            for k in KINDS[1:]}
        for kind, task in tasks.items():  # in KINDS order: the first failing kind is named
            try:
                uses.extend(await task)
            except Exception as exc:
                if error is None:
                    error = ClusterUnreadable(cluster.name, kind, _describe(exc))
        for task in tasks.values():
            task.cancel()
    finally:
        await client.close()
    if error is not None:
        return ClusterReading(cluster.name, error=error)
    if len(uses) < cluster.min_images:
        return ClusterReading(cluster.name, error=ClusterUnreadable(
            cluster.name, None, f"read {len(uses)} image references, fewer than min_images "
            f"{cluster.min_images}: an empty answer is not trusted"))
    return ClusterReading(cluster.name, tuple(uses))


async def read_clusters(clusters: tuple[ClusterSettings, ...], *, timeout: float = TIMEOUT
                        ) -> list[ClusterReading]:
    return list(await asyncio.gather(*(read_cluster(c, timeout=timeout) for c in clusters)))


@dataclass(frozen=True, slots=True)
class InUse:
    """What this run knows is in use: the planner's input, or why nothing may be deleted."""

    protected: Mapping[tuple[str, str], Mapping[str, str]]
    failures: tuple[ClusterUnreadable, ...] = ()

    @property
    def failure(self) -> str | None:
        if not self.failures:
            return None
        return ("in-use unknown, nothing is deleted on any registry: "
                + "; ".join(str(f) for f in self.failures))


NOTHING = InUse({})


async def in_use_pass(config: Config, inventories: Mapping[str, Inventory], state, *,
                      now: datetime, metrics=None, timeout: float = TIMEOUT) -> InUse:
    """Read the clusters, record what is in use in the state, and return the protections:
    what is in use now and what was within ``keep_for``."""
    settings = config.in_use
    if settings is None or not settings.clusters:
        return NOTHING
    readings = await read_clusters(settings.clusters, timeout=timeout)
    hosts = config.hosts()
    failures = []
    for reading in readings:
        if reading.error is not None:
            failures.append(reading.error)
            log.error("cluster unreadable", cluster=reading.cluster,
                      kind=reading.error.kind, error=str(reading.error))
            if metrics is not None:
                metrics.in_use_read_failures.labels(reading.cluster).inc()
            continue
        sightings = resolve(reading.uses, inventories, hosts, now=now,
                            last_tags=state.last_tags)
        state.record_in_use(sightings)
        if metrics is not None:
            # Digests only: a tag no read has resolved yet is remembered, not counted.
            metrics.in_use_digests.labels(reading.cluster).set(
                sum(1 for s in sightings if not s.digest.startswith(TAG_PREFIX)))
    remembered = resolve_remembered(state.in_use_since(now - settings.keep_for), inventories,
                                    state.last_tags)
    return InUse(protections(remembered, inventories, now=now, keep_for=settings.keep_for),
                 tuple(failures))


def _reference_row(use: Use, hosts) -> dict[str, str | None]:
    ref = parse_reference(use.image)
    registry = hosts.registry_of(ref.host) if ref is not None and ref.host else None
    return {"namespace": use.namespace, "kind": use.kind, "name": use.name,
            "image": use.image, "registry": registry,
            "repository": ref.repository if ref is not None else None,
            "digest": ref.digest if ref is not None else None}


async def print_in_use(config: Config, out, *, fmt: str, timeout: float = TIMEOUT) -> bool:
    """``retention in-use``: every image reference per cluster, namespace and workload.
    Returns True when a cluster could not be read (printed too)."""
    settings = config.in_use
    clusters = settings.clusters if settings is not None else ()
    readings = await read_clusters(clusters, timeout=timeout)
    hosts = config.hosts()
    doc = {"clusters": [
        {"name": r.cluster, "error": str(r.error) if r.error else None,
         "references": [_reference_row(u, hosts) for u in
                        sorted(r.uses, key=lambda u: (u.namespace, u.kind, u.name, u.image))]}
        for r in readings]}
    if fmt == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        if not clusters:
            out.write("no clusters configured (in_use.clusters)\n")
        for cluster in doc["clusters"]:
            refs = cluster["references"]
            out.write(f"cluster {cluster['name']}: "
                      + (f"UNREADABLE: {cluster['error']}\n" if cluster["error"] else
                         f"{len(refs)} image references\n"))
            for row in refs:
                where = f"{row['registry']}:{row['repository']}" if row["registry"] else \
                    "(no configured registry)"
                out.write(f"  {row['namespace']}/{row['kind']}/{row['name']}  {row['image']}  "
                          f"-> {where}\n")
    return any(r.error for r in readings)
