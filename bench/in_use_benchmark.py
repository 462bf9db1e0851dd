"""Reads a large cluster from the suite's Kubernetes emulator (10,000 pods and 20,000
ReplicaSets by default) through a real kubeconfig with lightkube, as a run does, and prints
the time taken, the requests made and the peak memory of the reading process. The
emulator runs in a child process, so its work is not counted. It asserts nothing.

    .venv/bin/python bench/in_use_benchmark.py [--pods N] [--replicasets N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retention.config import ClusterSettings
from retention.kube import PAGE_SIZE, read_clusters
from tests.kube_emulator import KubeEmulator, pod, workload


def digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()


def serve(workdir: str, pods: int, replicasets: int, conn) -> None:
    emu = KubeEmulator(Path(workdir))
    for i in range(pods):
        image = f"registry.example.com/team-{i % 40:02d}/svc-{i % 800:03d}:v{i % 9}"
        emu.add(pod(f"ns-{i % 200}", f"svc-{i % 800:03d}-{i}", [image, "envoyproxy/envoy:v1"],
                    init=["busybox:1.36"],
                    image_ids=[f"docker-pullable://{image.rsplit(':', 1)[0]}@{digest(i % 900)}",
                               f"docker-pullable://envoyproxy/envoy@{digest(-1)}"]))
    for i in range(replicasets):
        emu.add(workload("replicasets", f"ns-{i % 200}", f"svc-{i % 800:03d}-{i:x}",
                         [f"registry.example.com/team-{i % 40:02d}/svc-{i % 800:03d}@"
                          f"{digest(i % 5000)}"], replicas=i % 2))
    emu.start()
    emu.kubeconfig(Path(workdir) / "kubeconfig.yaml")
    conn.send("ready")
    conn.recv()  # until the parent is done
    conn.send(dict(emu.requests))
    emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--replicasets", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=serve, args=(tmp, args.pods, args.replicasets,
                                                           child))
        proc.start()
        parent.recv()
        cluster = ClusterSettings(name="bench", kubeconfig=Path(tmp) / "kubeconfig.yaml")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        started = time.monotonic()
        [reading] = asyncio.run(read_clusters((cluster,), timeout=120))
        elapsed = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
        parent.send("done")
        requests = parent.recv()
        proc.join()
    if reading.error:
        raise SystemExit(f"read failed: {reading.error}")
    by_kind: dict[str, int] = {}
    for use in reading.uses:
        by_kind[use.kind] = by_kind.get(use.kind, 0) + 1
    print(f"{args.pods} pods, {args.replicasets} replicasets, page size {PAGE_SIZE}")
    print(f"image references: {len(reading.uses)} ({by_kind})")
    print(f"list requests: {sum(requests.values())} ({requests})")
    print(f"read time: {elapsed:.2f} s wall, {cpu:.2f} s CPU in the reading process")
    print(f"peak RSS: {peak / 1024:.0f} MiB (before reading: {before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
