"""Prometheus metrics, named exactly as SPEC lists them, on an injected CollectorRegistry."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from retention.planner import PROTECTION_REASONS, Plan
from retention.registry.client import Observer


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
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")),
            registry=r)
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
            ["registry", "method"], registry=r)
        self.in_use_digests = Gauge(
            "retention_in_use_digests", "Digests a cluster's workloads use, at its last "
            "complete read", ["cluster"], registry=r)
        self.in_use_read_failures = Counter(
            "retention_in_use_read_failures", "Reads of a cluster that failed (the run then "
            "deletes nothing)", ["cluster"], registry=r)

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
