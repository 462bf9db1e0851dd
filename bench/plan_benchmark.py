"""Benchmark: plan a synthetic inventory (default 1,000,000 manifests in 10,000
repositories) with the SPEC's example policy plus an orphan policy. Prints figures; it is
not a test and asserts nothing.

    .venv/bin/python bench/plan_benchmark.py [--repositories N] [--per-repository M]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retention.allowlist import Allowlist, Pin
from retention.inventory import Blob, Inventory, Manifest, Repository
from retention.planner import Options, plan
from retention.policy import policies_from_text

NOW = datetime(2026, 11, 28, tzinfo=UTC)
POLICIES = (Path(__file__).resolve().parent.parent / "tests/data/spec-example.yaml"
            ).read_text().replace('include: ["ci/**"]', 'include: ["**"]').replace(
    "max_deletions: 200", "max_deletions: 100000000") + """
---
name: orphans
registry: main
repositories: {include: ["team-*/**"]}
keep: [{tags: ["v*"]}]
delete:
  - untagged: true
    older_than: 3d
"""


def digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(n.to_bytes(8, "little")).hexdigest()


def build(repositories: int, per_repository: int) -> Inventory:
    """Repositories of CI builds: tagged images, re-pushed orphans, multi-arch indexes with
    their children, and cosign signatures, with layers shared inside each repository."""
    repos = []
    counter = 0
    base_layers = [Blob(digest(10**12 + i), 30_000_000 + i) for i in range(50)]
    for r in range(repositories):
        name = f"team-{r % 100:02d}/service-{r:05d}"
        manifests = []
        own_layers = [Blob(digest(2 * 10**12 + r * 10 + i), 1_000_000 + i) for i in range(10)]
        i = 0
        while i < per_repository:
            counter += 1
            kind = i % 10
            age = timedelta(days=(i * 7) % 120, hours=i % 24)
            blobs = (Blob(digest(3 * 10**12 + counter), 1500), base_layers[r % 50],
                     own_layers[i % 10], Blob(digest(4 * 10**12 + counter), 50_000 + i))
            if kind == 9 and i + 3 <= per_repository:
                # An index with two children, then a signature of the index.
                children = []
                for _ in range(2):
                    counter += 1
                    child = Manifest(digest(counter), "application/vnd.oci.image.manifest.v1+json",
                                     900, created=NOW - age, blobs=blobs,
                                     untagged_since=NOW - timedelta(days=5))
                    manifests.append(child)
                    children.append(child.digest)
                counter += 1
                index = Manifest(digest(counter), "application/vnd.oci.image.index.v1+json", 700,
                                 tags=(f"pr-{i}",), children=tuple(children))
                manifests.append(index)
                i += 3
                continue
            tags: tuple[str, ...]
            if kind < 5:
                tags = (f"pr-{i}",)
            elif kind < 7:
                tags = (f"sha-{i:07x}",)
            elif kind == 7:
                tags = (f"v1.{i}.0",)
            else:
                tags = ()
            manifests.append(Manifest(
                digest(counter), "application/vnd.oci.image.manifest.v1+json", 1200,
                tags=tags, created=NOW - age, blobs=blobs,
                untagged_since=NOW - timedelta(days=5) if not tags else None))
            i += 1
        repos.append(Repository(name, tuple(manifests)))
    return Inventory("main", "registry.example.com", tuple(repos), NOW)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--per-repository", type=int, default=100)
    args = parser.parse_args()
    started = time.perf_counter()
    inventory = build(args.repositories, args.per_repository)
    built = time.perf_counter() - started
    total = sum(len(r.manifests) for r in inventory.repositories)
    policies = policies_from_text(POLICIES, registries=["main"])
    allowlist = Allowlist.of(Pin(digest(n)) for n in range(1, 100_000, 97))
    started = time.perf_counter()
    result = plan(inventory, policies, now=NOW,
                  options=Options(max_deletions=10**9, allowlist=allowlist))
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    protected = sum(len(p.protected) for p in result.policies)
    kept = sum(len(p.kept) for p in result.policies)
    print(f"manifests: {total:,} in {len(inventory.repositories):,} repositories "
          f"(built in {built:.1f} s)")
    print(f"plan: {len(result.actions):,} deletions, {protected:,} protected, {kept:,} kept, "
          f"{result.reclaimable_bytes / 2**30:.1f} GiB reclaimable")
    print(f"planning wall time: {elapsed:.2f} s")
    print(f"peak memory (max RSS, whole process): {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
