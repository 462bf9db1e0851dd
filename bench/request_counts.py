"""Counts the HTTP requests of `retention run` against a real registry (Debian's
docker-registry) holding images, multi-arch indexes and signatures, through a counting
proxy: a first run, a second one against the unchanged registry, and a third that deletes
one orphan per repository (what confirming tags and journaling each DELETE cost); then the
journal's size per deleted manifest. Prints figures; it asserts nothing.

    .venv/bin/python bench/request_counts.py [--repositories N]
"""

from __future__ import annotations

import argparse
import io
import re
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retention.cli import main as retention
from tests.pusher import Pusher
from tests.servers import FaultProxy, start_registry


def kind(method: str, path: str) -> str:
    if "/tags/list" in path:
        return "GET tags/list"
    if "_catalog" in path:
        return "GET _catalog"
    if "/referrers/" in path:
        return "GET referrers"
    if "/blobs/" in path:
        return f"{method} blob (config)"
    if re.search(r"/manifests/sha256:", path):
        return f"{method} manifest by digest"
    if "/manifests/" in path:
        return f"{method} manifest by tag"
    return f"{method} {path}"


def journal_size(path: Path) -> None:
    """What the journal holds per deleted manifest: its body, and the row around it."""
    with sqlite3.connect(path) as db:
        n, body, row = db.execute(
            "SELECT count(*), sum(length(b.body) + length(b.media_type)), sum(length(j.at) + "
            "length(j.registry) + length(j.repository) + length(j.digest) + length(j.tags) + "
            "length(j.policy) + length(j.reason) + length(j.status) + 16) FROM journal j "
            "JOIN journal_bodies b ON b.journal_id = j.id").fetchone()
    if n:
        print(f"journal: {n} deleted manifests, {body / n:.0f} bytes of body and media type "
              f"+ {row / n:.0f} bytes of row each (before SQLite's page overhead)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repositories", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        try:
            pusher = Pusher(registry.url)
            for r in range(args.repositories):
                repo = f"team/app-{r}"
                for i in range(5):
                    pusher.image(repo, f"v{i}", created="2026-01-01T00:00:00Z", extra=f"{r}-{i}")
                children = [pusher.image(repo, None, created="2026-01-01T00:00:00Z", arch=a,
                                         extra=f"{r}-{a}") for a in ("amd64", "arm64")]
                index = pusher.index(repo, "multi", children)
                pusher.cosign_signature(repo, index)
            proxy = FaultProxy(registry.url)
            url = proxy.start()
            (work / "p.yaml").write_text('name: p\nrepositories: {include: ["**"]}\n'
                                         'delete: [{untagged: true}]\n')
            config = work / "retention.yaml"
            config.write_text(f"registries:\n  main: {{url: '{url}'}}\npolicies: p.yaml\n"
                              "state_dir: state\nmode: enforce\nuntagged_grace: 0s\n")
            runs = ("first run", "second run (unchanged registry)",
                    "third run (v0 re-pushed: one orphan deleted per repository)")
            for label in runs:
                if label.startswith("third"):
                    for r in range(args.repositories):
                        pusher.image(f"team/app-{r}", "v0", created="2026-01-01T00:00:00Z",
                                     extra=f"{r}-0-new")
                start = len(proxy.requests)
                code = retention(["run", "--config", str(config)], stdout=io.StringIO())
                counts = Counter(kind(m, p) for m, p in proxy.requests[start:])
                total = sum(counts.values())
                print(f"{label}: exit {code}, {total} requests")
                for name, n in sorted(counts.items()):
                    print(f"  {name:28s} {n}")
            journal_size(work / "state" / "retention.sqlite3")
            proxy.stop()
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
