"""The demo: a real local registry (Debian's docker-registry), seeded with CI builds, releases,
a multi-arch image with a signature and re-pushed tags; then retention plans against it with
the example policies in policies/, and an enforced run deletes what the plan showed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pusher import Pusher  # noqa: E402
from tests.servers import start_registry  # noqa: E402

WORK = ROOT / "demo-work"
NOW = datetime.now(UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def seed(p: Pusher) -> None:
    # CI builds: a build per pull request and per commit, over two months.
    for i in range(16):
        p.image("ci/web", f"pr-{100 + i}", created=ago(60 - 3 * i), layers=(f"web {i}".encode(),))
    for i in range(6):
        p.image("ci/web", f"sha-{i:07x}", created=ago(40 - 2 * i), layers=(f"sha {i}".encode(),))
    p.image("ci/web", "latest", created=ago(1), layers=(b"web latest",))
    p.image("ci/web", "main", created=ago(30), layers=(b"web main, a month ago",))
    # A build tagged both pr-90 and v0.9.0: deleting it would remove the release tag.
    both = p.image("ci/web", "pr-90", created=ago(90), layers=(b"release build",))
    p.tag("ci/web", "v0.9.0", both)
    p.image("ci/base", "bookworm", created=ago(200), layers=(b"base",))

    # Releases with candidates and nightlies.
    for i, v in enumerate(["v1.0.0", "v1.1.0", "v1.2.0"]):
        p.image("apps/api", v, created=ago(120 - 30 * i), layers=(v.encode(),))
    for i in range(5):
        p.image("apps/api", f"v1.3.0-rc{i + 1}", created=ago(25 - 5 * i),
                layers=(f"rc{i}".encode(),))
    for i in range(8):
        p.image("apps/api", f"nightly-{i:02d}", created=ago(50 - 5 * i),
                layers=(f"nightly {i}".encode(),))

    # A multi-arch image with a cosign signature, re-pushed under "stable": the old index
    # and its children are orphans; the new one's children are protected.
    for generation, days in (("old", 20), ("new", 2)):
        children = [p.image("apps/web", None, created=ago(days), arch=arch,
                            layers=(f"{generation} {arch}".encode(),))
                    for arch in ("amd64", "arm64")]
        index = p.index("apps/web", "stable", children)
        p.cosign_signature("apps/web", index)


def retention(*args: str, log: Path | None = None) -> int:
    cmd = [str(ROOT / ".venv/bin/retention"), *args]
    shown = f" 2> {log.relative_to(ROOT)}" if log else ""
    print(f"\n$ retention {' '.join(args)}{shown}", flush=True)
    if log is None:
        return subprocess.run(cmd, check=False).returncode
    with log.open("w") as stream:
        return subprocess.run(cmd, check=False, stderr=stream).returncode


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    registry = start_registry(WORK / "registry")
    try:
        print(f"demo registry (CNCF distribution) at {registry.url}; seeding it...")
        pusher = Pusher(registry.url)
        seed(pusher)
        pusher.close()
        config = WORK / "retention.yaml"
        text = f"""\
registries:
  main:
    url: {registry.url}
policies: ../policies
mode: dry-run
# The demo's orphans were made a moment ago; a real deployment keeps the 24h default so an
# image being pushed is never mistaken for an orphan.
untagged_grace: 0s
state_dir: state
"""
        config.write_text(text)
        retention("validate", "--config", str(config))
        retention("inventory", "--config", str(config))
        retention("plan", "--config", str(config))
        print("\n# CI pushes a new build of ci/web:main: the month-old one loses its tag. A "
              "registry cannot list untagged manifests, but retention's state saw it tagged.")
        pusher = Pusher(registry.url)
        pusher.image("ci/web", "main", created=NOW, layers=(b"web main, today",))
        pusher.close()
        enforce = WORK / "retention-enforce.yaml"
        enforce.write_text(text.replace("mode: dry-run", "mode: enforce"))
        audit = WORK / "run-audit.log"
        rc = retention("run", "--config", str(enforce), log=audit)
        events = audit.read_text().splitlines()
        sample = next((e for e in events if '"manifest deleted"' in e), "")
        print(f"\n# the run's audit log: {len(events)} JSON events (one per deletion and per "
              f"kept or protected match) in {audit.relative_to(ROOT)}, e.g.\n{sample}")
        retention("plan", "--config", str(config), "--output", "table")
        print(f"\ndemo done (run exit code {rc}); files in {WORK}")
        return rc
    finally:
        registry.stop()


if __name__ == "__main__":
    sys.exit(main())
