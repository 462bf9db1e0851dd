"""Prometheus metrics, named exactly as SPEC lists them, on an injected CollectorRegistry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from retention.planner import PROTECTION_REASONS, Plan
from retention.registry.client import Observer
from retention.storage import OTHER, RegistryStorage, RepositoryStorage

OUTCOMES = ("success", "failure", "aborted")

# Buckets span what is measured (SPEC, Metrics). A registry request takes milliseconds (a
# cached HEAD on loopback) to a minute (a slow page of a huge catalog, a retried timeout).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   20, 30, 60, float("inf"))
# A policy run takes tens of milliseconds (a small registry, cached facts) to hours (a full
# scan of a large registry). Starting at 1 s made p90 of 0.2 s runs read 0.9 s (issue 15);
# since the client moved off httpx, such runs take 20-50 ms.
RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200,
               1800, 3600, 5400, 7200, 10800, 14400, 21600, 28800, float("inf"))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        # Only the series SPEC names: no `*_created` companions for counters and histograms.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reclaimed_bytes = Counter(
            "retention_reclaimed_bytes", "Bytes of blobs freed by deletions (at once on ACR, "
            "at the next garbage collection on distribution)", ["registry", "policy"],
            registry=r)
        self.manifests_deleted = Counter(
            "retention_manifests_deleted", "Manifests deleted", ["registry", "policy"],
            registry=r)
        self.delete_failures = Counter(
            "retention_delete_failures", "Deletions that failed", ["registry", "policy"],
            registry=r)
        self.reclaimable_bytes = Gauge(
            "retention_reclaimable_bytes", "Bytes the latest plan would free",
            ["registry", "policy"], registry=r)
        self.planned_deletions = Gauge(
            "retention_planned_deletions", "Deletions in the latest plan",
            ["registry", "policy"], registry=r)
        self.protected_manifests = Gauge(
            "retention_protected_manifests", "Manifests a delete rule matched but a protection "
            "saved, in the latest plan", ["registry", "policy", "reason"], registry=r)
        self.runs = Counter(
            "retention_runs", "Policy runs by outcome", ["policy", "outcome"], registry=r)
        self.run_duration = Histogram(
            "retention_run_duration_seconds", "Duration of policy runs", ["policy"],
            buckets=RUN_BUCKETS, registry=r)
        self.last_success = Gauge(
            "retention_last_success_timestamp_seconds", "When each policy last ran "
            "successfully", ["policy"], registry=r)
        self.policies_loaded = Gauge(
            "retention_policies_loaded", "Policies in the active configuration", registry=r)
        self.config_reload_failures = Counter(
            "retention_config_reload_failures", "Configuration reloads rejected as invalid",
            registry=r)
        self.registry_requests = Counter(
            "retention_registry_requests", "HTTP requests to registries",
            ["registry", "method", "code"], registry=r)
        self.registry_request_duration = Histogram(
            "retention_registry_request_duration_seconds", "Duration of registry requests",
            ["registry", "method"], buckets=REQUEST_BUCKETS, registry=r)
        self.in_use_digests = Gauge(
            "retention_in_use_digests", "Digests a cluster's workloads use, at its last "
            "complete read", ["cluster"], registry=r)
        self.in_use_read_failures = Counter(
            "retention_in_use_read_failures", "Reads of a cluster that failed (the run then "
            "deletes nothing)", ["cluster"], registry=r)
        self.registry_bytes = Gauge(
            "retention_registry_bytes", "Bytes the registry stores for what retention read "
            "(each blob once), at the latest inventory", ["registry"], registry=r)
        self.repository_bytes = Gauge(
            "retention_repository_bytes", "Bytes per repository at the latest inventory: "
            "unique (no other repository references the blob) and shared; the largest "
            "repositories by unique bytes, the rest summed as (other)",
            ["registry", "repository", "kind"], registry=r)
        self.untagged_bytes = Gauge(
            "retention_untagged_bytes", "What deleting every orphan would free, at the latest "
            "inventory", ["registry"], registry=r)
        self.inventory_timestamp = Gauge(
            "retention_inventory_timestamp_seconds", "When the latest inventory was read",
            ["registry"], registry=r)
        self._configured: dict[str, str | None] = {}  # policy -> registry, as exported
        # registry -> the repository label values exported for it (the top N changes).
        self._repositories: dict[str, set[str]] = {}

    def configure(self, policies: Iterable[tuple[str, str | None]]) -> None:
        """Export every series whose labels are known from the configuration, at 0, from now.

        A labelled counter that first appears at its post-increment value is invisible to
        increase(): the first failed run or deletion after a start would never alert
        (issue 15). So each configured (policy, registry) gets its counters at 0 and each
        policy its run counters (per outcome) and an empty duration histogram. Series of
        policies no longer configured are dropped, so no alert keeps firing for a policy that
        was removed. Call it with the active configuration, at start and after each reload.
        """
        wanted = dict(policies)
        for policy, registry in self._configured.items():
            if policy not in wanted:
                self._forget(policy=policy)
            elif wanted[policy] != registry and registry is not None:
                self._forget(policy=policy, registry=registry)
        for policy, registry in wanted.items():
            if registry is not None:
                for counter in (self.reclaimed_bytes, self.manifests_deleted,
                                self.delete_failures):
                    counter.labels(registry, policy)
            for outcome in OUTCOMES:
                self.runs.labels(policy, outcome)
            self.run_duration.labels(policy)
        self._configured = wanted

    def configure_registries(self, names: Iterable[str]) -> None:
        """Every registry's storage series at 0 until its first inventory (SPEC, Metrics);
        those of registries no longer configured are dropped."""
        wanted = set(names)
        for gauge in (self.registry_bytes, self.untagged_bytes, self.inventory_timestamp):
            for family in gauge.collect():
                for sample in family.samples:
                    if sample.labels["registry"] not in wanted:
                        gauge.remove(sample.labels["registry"])
            for name in wanted:
                gauge.labels(name)
        for name in set(self._repositories) - wanted:
            self._set_repositories(name, {})

    def record_storage(self, storage: RegistryStorage, *, at: float, top: int) -> None:
        """One inventory's storage figures. Cardinality stays bounded: ``top`` repositories
        by unique bytes have series of their own, the rest one (other) pair."""
        self.registry_bytes.labels(storage.registry).set(storage.bytes)
        self.untagged_bytes.labels(storage.registry).set(storage.untagged_bytes)
        self.inventory_timestamp.labels(storage.registry).set(at)
        head, rest = storage.top(top)
        shown = {r.repository: r for r in head}
        if rest is not None:
            shown[OTHER] = rest
        self._set_repositories(storage.registry, shown)

    def _set_repositories(self, registry: str,
                          shown: Mapping[str, RepositoryStorage]) -> None:
        for gone in self._repositories.get(registry, set()) - set(shown):
            for kind in ("unique", "shared"):
                self.repository_bytes.remove(registry, gone, kind)
        for name, r in shown.items():
            self.repository_bytes.labels(registry, name, "unique").set(r.unique_bytes)
            self.repository_bytes.labels(registry, name, "shared").set(r.shared_bytes)
        self._repositories[registry] = set(shown)

    def _forget(self, **match: str) -> None:
        """Drop the series whose labels include all of ``match``, whatever set them."""
        by_policy = {self.reclaimed_bytes: ("registry", "policy"),
                     self.manifests_deleted: ("registry", "policy"),
                     self.delete_failures: ("registry", "policy"),
                     self.reclaimable_bytes: ("registry", "policy"),
                     self.planned_deletions: ("registry", "policy"),
                     self.protected_manifests: ("registry", "policy", "reason"),
                     self.runs: ("policy", "outcome"),
                     self.run_duration: ("policy",),
                     self.last_success: ("policy",)}
        for metric, names in by_policy.items():
            if not set(match) <= set(names):
                continue
            children = {tuple(sample.labels[n] for n in names)
                        for family in metric.collect() for sample in family.samples
                        if all(sample.labels.get(k) == v for k, v in match.items())}
            for values in children:
                metric.remove(*values)

    def observer(self, registry: str) -> Observer:
        def observe(method: str, code: str, seconds: float) -> None:
            self.registry_requests.labels(registry, method, code).inc()
            self.registry_request_duration.labels(registry, method).observe(seconds)
        return observe

    def record_plan(self, plan: Plan) -> None:
        for p in plan.policies:
            labels = (p.registry, p.policy)
            self.reclaimable_bytes.labels(*labels).set(p.reclaimable_bytes)
            self.planned_deletions.labels(*labels).set(0 if p.aborted else len(p.actions))
            counts = dict.fromkeys(PROTECTION_REASONS, 0)
            for d in p.protected:
                counts[d.reason] = counts.get(d.reason, 0) + 1
            for reason, n in counts.items():
                self.protected_manifests.labels(*labels, reason).set(n)
