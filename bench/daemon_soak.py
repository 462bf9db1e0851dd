"""Soak: the daemon runs its policies every second against a real registry for a while;
prints the process's resident memory as it goes. Growth that keeps climbing is a leak.

    .venv/bin/python bench/daemon_soak.py [--seconds 600] [--repositories 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apscheduler.triggers.interval import IntervalTrigger

from retention.daemon import Daemon, DaemonOptions
from tests.pusher import Pusher
from tests.servers import start_registry


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(config: Path, seconds: float, sink) -> None:
    daemon = Daemon(config, err=sink, options=DaemonOptions(
        poll_interval=0.5, ping_interval=1, trigger=lambda _c: IntervalTrigger(seconds=1)))
    task = asyncio.create_task(daemon.run())
    started = time.monotonic()
    next_report = 0.0
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        elapsed = time.monotonic() - started
        if elapsed >= next_report:
            runs = sum(s.value for m in daemon.metrics.runs.collect() for s in m.samples
                       if s.name == "retention_runs_total")
            print(f"t={elapsed:6.0f}s runs={runs:5.0f} rss={rss_mib():6.1f} MiB", flush=True)
            next_report += max(10.0, seconds / 20)
    daemon.stopping.set()
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--repositories", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        try:
            pusher = Pusher(registry.url)
            for r in range(args.repositories):
                for i in range(5):
                    pusher.image(f"team/app-{r}", f"v{i}", created="2026-01-01T00:00:00Z",
                                 extra=f"{r}-{i}")
            (work / "p.yaml").write_text(
                'name: keep-all\nrepositories: {include: ["**"]}\nkeep: [{tags: ["v*"]}]\n'
                'delete: [{tags: ["*"]}, {untagged: true}]\n---\n'
                'name: second\nrepositories: {include: ["team/**"]}\n'
                'delete: [{tags: ["pr-*"]}]\n')
            config = work / "retention.yaml"
            config.write_text(f"registries:\n  main: {{url: '{registry.url}'}}\n"
                              "policies: p.yaml\nstate_dir: state\nlisten: 127.0.0.1:0\n"
                              "log_format: json\n")
            # Logs to /dev/null: this measures the daemon, not a terminal.
            with open("/dev/null", "w") as sink:
                asyncio.run(soak(config, args.seconds, sink))
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
