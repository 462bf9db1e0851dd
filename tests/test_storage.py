"""Where the storage is: bytes per registry and repository, checked against the registry's own
files (distribution's filesystem storage: blob data, and each repository's links)."""

from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from retention.cli import main
from retention.inventory import Blob, Inventory, Manifest, Repository
from retention.metrics import Metrics
from retention.storage import OTHER, storage
from tests.pusher import Pusher
from tests.test_daemon import metric

OLD = "2024-01-01T00:00:00Z"


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(args), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def on_disk(root: Path) -> tuple[dict[str, int], dict[str, set[str]]]:
    """The registry's own view: the size of every blob it stores, and the blobs each
    repository links (layers and configs under _layers, manifest bodies under
    _manifests/revisions), read from its storage directory."""
    v2 = root / "docker" / "registry" / "v2"
    sizes = {f"sha256:{data.parent.name}": data.stat().st_size
             for data in (v2 / "blobs" / "sha256").glob("*/*/data")}
    linked: dict[str, set[str]] = defaultdict(set)
    repositories = v2 / "repositories"
    for link in repositories.rglob("link"):
        parts = link.relative_to(repositories).parts
        for marker in ("_layers", "_manifests"):
            if marker in parts and (marker == "_layers" or "revisions" in parts):
                repo = "/".join(parts[:parts.index(marker)])
                linked[repo].add(link.read_text().strip())
    return sizes, linked


def kinds(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((m, "referrers" if "/referrers/" in p else p) for m, p in requests)


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    (tmp_path / "p.yaml").write_text('name: ci\nrepositories: {include: ["**"]}\n'
                                     'delete: [{tags: ["pr-*"], older_than: 1d}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{url}'}}\npolicies: p.yaml\n"
                      f"state_dir: state\nuntagged_grace: 0s\n{extra}")
    return config


def test_summary_matches_the_registrys_files(tmp_path: Path, registry, pusher: Pusher):
    shared_layer = b"a base layer both teams build on" * 50
    pusher.image("team-a/api", "v1", created=OLD, layers=(shared_layer, b"api" * 300))
    pusher.image("team-a/api", "pr-7", created=OLD, layers=(shared_layer, b"pr7" * 200))
    pusher.image("team-b/web", "v1", created=OLD, layers=(shared_layer, b"web" * 100))
    amd = pusher.image("team-b/multi", None, created=OLD, arch="amd64", layers=(b"m1" * 99,))
    arm = pusher.image("team-b/multi", None, created=OLD, arch="arm64", layers=(b"m2" * 77,))
    pusher.index("team-b/multi", "v2", [amd, arm])
    old = pusher.image("team-a/api", "latest", created="2024-01-02T00:00:00Z",
                       layers=(b"old build" * 40,))
    config = write_config(tmp_path, registry.url)
    assert cli("plan", "-c", str(config))[0] == 0  # the state remembers latest -> old
    pusher.image("team-a/api", "latest", created=OLD, layers=(b"new build" * 40,))

    code, out, err = cli("inventory", "-c", str(config), "--summary", "-o", "json")
    assert code == 0, err
    (doc,) = json.loads(out)["registries"]
    sizes, linked = on_disk(registry.root)
    # Every blob once: the registry's bytes are its blob store's (nothing unreferenced was
    # pushed), counted independently from the files.
    assert doc["bytes"] == sum(sizes.values())
    holders: dict[str, int] = defaultdict(int)
    for blobs in linked.values():
        for digest in blobs:
            holders[digest] += 1
    by_name = {r["repository"]: r for r in doc["repositories"]}
    assert set(by_name) == set(linked)
    for repo, blobs in linked.items():
        unique = sum(sizes[d] for d in blobs if holders[d] == 1)
        shared = sum(sizes[d] for d in blobs if holders[d] > 1)
        assert (by_name[repo]["unique_bytes"], by_name[repo]["shared_bytes"]) == \
            (unique, shared), repo
    # Largest unique bytes first.
    uniques = [r["unique_bytes"] for r in doc["repositories"]]
    assert uniques == sorted(uniques, reverse=True)
    # The orphan (the old latest) and what only it holds: its body, config and layer.
    api = by_name["team-a/api"]
    assert api["orphans"] == 1 and by_name["team-b/multi"]["orphans"] == 0
    assert doc["untagged_bytes"] == old.size + sum(size for _, size in old.blobs)
    # What the policy would reclaim: pr-7, as plan reports it.
    plan = json.loads(cli("plan", "-c", str(config), "-o", "json")[1])
    assert api["reclaimable_bytes"] == plan["summary"]["reclaimable_bytes"] > 0
    assert by_name["team-b/web"]["reclaimable_bytes"] == 0


def test_summary_reads_no_more_than_plan(tmp_path: Path, registry, pusher: Pusher, proxy):
    for i in range(5):
        pusher.image(f"app-{i}", "pr-1", created=OLD, layers=(f"{i}".encode() * 99,))
    config = write_config(tmp_path, proxy.url)
    assert cli("plan", "-c", str(config))[0] == 0
    state = tmp_path / "state"
    saved = tmp_path / "state-saved"
    shutil.copytree(state, saved)
    proxy.requests.clear()
    assert cli("plan", "-c", str(config))[0] == 0
    by_plan = sorted(proxy.requests)
    shutil.rmtree(state)
    shutil.copytree(saved, state)
    proxy.requests.clear()
    code, out, _ = cli("inventory", "-c", str(config), "--summary", "--top", "2")
    assert code == 0
    # The same requests (which repository's referrers call learns first that the registry
    # has no referrers API depends on timing: compare them by kind).
    assert kinds(proxy.requests) == kinds(by_plan) and by_plan
    assert "(other)" in out and out.count("\n  ") == 0


def _synthetic(n: int) -> Inventory:
    repos = tuple(Repository(f"r{i:04d}", (Manifest(
        f"sha256:{i:064x}", "application/vnd.oci.image.manifest.v1+json", 100 + i,
        tags=("v1",), blobs=(Blob(f"sha256:{i + 10**6:064x}", 1000 * (i + 1)),
                             Blob("sha256:" + "f" * 64, 7))),)) for i in range(n))
    return Inventory("main", "h", repos, datetime(2026, 1, 1, tzinfo=UTC))


def test_repository_series_stay_bounded_with_2000_repositories():
    inventory = _synthetic(2000)
    figures = storage(inventory)
    metrics = Metrics()
    metrics.configure_registries(["main"])
    metrics.record_storage(figures, at=1.0, top=50)
    series = [s for m in metrics.repository_bytes.collect() for s in m.samples]
    assert len(series) == 51 * 2
    names = {s.labels["repository"] for s in series}
    assert OTHER in names and "r1999" in names and "r0000" not in names
    other = {s.labels["kind"]: s.value for s in series if s.labels["repository"] == OTHER}
    assert other["unique"] == sum(100 + i + 1000 * (i + 1) for i in range(1950))
    assert other["shared"] == 7 * 1950  # the blob all share, as each repository sees it
    # Every blob once: 2,000 bodies and layers, and the shared blob once.
    assert figures.bytes == sum(100 + i + 1000 * (i + 1) for i in range(2000)) + 7
    # A smaller registry next time: the series of repositories no longer shown go.
    metrics.record_storage(storage(_synthetic(3)), at=2.0, top=50)
    names = {s.labels["repository"] for m in metrics.repository_bytes.collect()
             for s in m.samples}
    assert names == {"r0000", "r0001", "r0002"}


def test_storage_series_exported_at_zero_and_by_the_daemons_runs(tmp_path: Path, registry,
                                                                 pusher: Pusher):
    import asyncio

    import httpx2 as httpx

    from retention.daemon import Daemon
    from tests.test_daemon import every_second, wait_for

    pusher.image("app", "v1", created=OLD, layers=(b"x" * 1234,))
    config = write_config(tmp_path, registry.url, extra="listen: 127.0.0.1:0\n"
                          "repository_metrics_top: 1\n")

    async def scenario():
        daemon = Daemon(config, options=every_second())
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            first = (await http.get("/metrics")).text

            async def measured():
                text = (await http.get("/metrics")).text
                return text if metric(text, "retention_registry_bytes", registry="main") \
                    else None

            text = await wait_for(measured)
        daemon.stopping.set()
        await task
        return first, text

    first, text = asyncio.run(scenario())
    assert metric(first, "retention_untagged_bytes", registry="main") is not None
    sizes, _ = on_disk(registry.root)
    assert metric(text, "retention_registry_bytes", registry="main") == sum(sizes.values())
    assert metric(text, "retention_repository_bytes", registry="main", repository="app",
                  kind="unique") == sum(sizes.values())
    assert metric(text, "retention_inventory_timestamp_seconds", registry="main") > 1.7e9
