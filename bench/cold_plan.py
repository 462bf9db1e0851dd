"""How fast a cold and a warm `retention plan` read a registry, against what the registry
itself can answer.

Starts its own Debian docker-registry (CNCF distribution 2.8, with its Prometheus metrics on a
debug port), seeds N repositories x T tags (one single-platform image per tag, a shared base
layer mounted into every repository, a config of its own per image), then, side by side:

1. the limit: `wrk` at concurrency 8 cycling through the minimal request set of a cold plan
   (catalog pages, one tags/list per repository, one manifest GET per tag, one config GET
   per image), shuffled; the limit is that set's size divided by the throughput wrk
   measured;
2. the floor of a client built on pyreqwest: the same set sent by pyreqwest alone at the
   same concurrency, each answer read and nothing else (no parsing, hashing, state or
   planning);
3. `retention plan` cold (empty state) and warm (state kept), each a fresh process: wall
   time, peak RSS, and the requests the registry itself counted (by method and handler).

Prints figures and ratios; it asserts nothing.

    .venv/bin/python bench/cold_plan.py [--repositories 200] [--tags 20] [--rounds 2]
                                        [--peer] [--pin]
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retention.registry.mediatypes import ACCEPT  # noqa: E402
from tests.servers import free_port, start_registry  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONCURRENCY = 8
# With --pin: the registry on CPU 0, and each client (wrk, retention, the peer) on CPU 1, so
# that a client's own CPU does not come out of the registry's.
CLIENT_CPU: list[str] = []

WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("COLD_PLAN_PATHS")) do paths[#paths + 1] = line end
local counter = 0
function setup(thread)
  thread:set("offset", counter * math.floor(#paths / 2))
  counter = counter + 1
end
local i = 0
function request()
  i = i + 1
  local path = paths[((i + offset) % #paths) + 1]
  return wrk.format("GET", path, {["Accept"] = os.getenv("COLD_PLAN_ACCEPT")})
end
"""


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BenchRegistry:
    """docker-registry with its request counters exported (http.debug.prometheus)."""

    def __init__(self, workdir: Path):
        debug = free_port()
        self._registry = start_registry(workdir, metrics_port=debug)
        self.url = self._registry.url
        self.metrics_url = f"http://127.0.0.1:{debug}/metrics"

    def counts(self) -> Counter[str]:
        """Requests the registry served so far, by 'METHOD handler'."""
        text = httpx.get(self.metrics_url, timeout=10).text
        counts: Counter[str] = Counter()
        for m in re.finditer(r'^registry_http_requests_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[f"{labels.get('method', '?')} {labels.get('handler', '?')}"] += \
                int(float(m.group(2)))
        return counts

    @property
    def pid(self) -> int:
        return self._registry.process.pid

    def cpu(self) -> float:
        """CPU seconds (user + system) the registry process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text() \
            .rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._registry.stop()


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def seed(url: str, repositories: int, tags: int) -> list[tuple[str, str, str]]:
    """Push the images; return (repository, tag, config digest) for each."""
    names = [f"team/app-{r:04d}" for r in range(repositories)]
    layer = b"shared base layer " * 4096
    layer_digest = sha(layer)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post(f"/v2/{names[0]}/blobs/uploads/")
        r.raise_for_status()
        r = c.put(_with_digest(r.headers["location"], layer_digest), content=layer)
        r.raise_for_status()

    def one(name: str) -> list[tuple[str, str, str]]:
        out = []
        with httpx.Client(base_url=url, timeout=60) as c:
            if name != names[0]:  # a mount: the layer is stored once, as in real registries
                r = c.post(f"/v2/{name}/blobs/uploads/",
                           params={"mount": layer_digest, "from": names[0]})
                if r.status_code != 201:
                    raise RuntimeError(f"mount failed for {name}: {r.status_code}")
            for t in range(tags):
                config = json.dumps({
                    "architecture": "amd64", "os": "linux",
                    "created": f"2025-{1 + t % 12:02d}-{1 + t % 28:02d}T00:00:00Z",
                    "config": {"Labels": {"build": f"{name}-{t}"}},
                    "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
                r = c.post(f"/v2/{name}/blobs/uploads/")
                r.raise_for_status()
                r = c.put(_with_digest(r.headers["location"], sha(config)), content=config)
                r.raise_for_status()
                manifest = json.dumps({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": sha(config),
                               "size": len(config)},
                    "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest,
                                "size": len(layer)}]}, indent=1).encode()
                tag = f"pr-{t}" if t % 2 else f"sha-{t:04x}"
                r = c.put(f"/v2/{name}/manifests/{tag}", content=manifest,
                          headers={"Content-Type": OCI_MANIFEST})
                if r.status_code != 201:
                    raise RuntimeError(f"push failed for {name}: {r.status_code}")
                out.append((name, tag, sha(config)))
        return out

    with ThreadPoolExecutor(16) as pool:
        return [x for part in pool.map(one, names) for x in part]


def request_set(url: str, images: list[tuple[str, str, str]]) -> list[str]:
    """The minimal request set of a cold plan, as paths, in the order a plan needs them."""
    paths: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as c:
        page: str | None = "/v2/_catalog?n=1000"
        while page:  # the catalog's real pages, as its Link headers give them
            paths.append(page)
            link = c.get(page).headers.get("link")
            page = re.match(r"<([^>]*)>", link).group(1) if link else None
    repos = sorted({name for name, _, _ in images})
    paths += [f"/v2/{name}/tags/list?n=1000" for name in repos]
    paths += [f"/v2/{name}/manifests/{tag}" for name, tag, _ in images]
    paths += [f"/v2/{name}/blobs/{config}" for name, _, config in images]
    return paths


def limit(url: str, paths: list[str], workdir: Path, seconds: int) -> tuple[float, float]:
    """(seconds the registry needs to answer ``paths`` at concurrency 8, requests/s).

    The paths are shuffled: the set is ordered by kind (tag lists, then manifests, then
    configs), and kinds cost the registry differently (a config GET ~2.4x a manifest GET at
    1,000 x 20), so a window of the set in order would measure a mix that is not the set's.
    wrk runs for a fixed time, which covers only part of a large set (a quarter of
    1,000 x 20 in 10 s); shuffled, every part has the set's mix."""
    shuffled = list(paths)
    random.Random(0).shuffle(shuffled)
    (workdir / "paths.txt").write_text("\n".join(shuffled) + "\n")
    (workdir / "cycle.lua").write_text(WRK_SCRIPT)
    env = {**os.environ, "COLD_PLAN_PATHS": str(workdir / "paths.txt"),
           "COLD_PLAN_ACCEPT": ACCEPT}
    out = subprocess.run([*CLIENT_CPU, "wrk", "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "-s",
                          str(workdir / "cycle.lua"), url], capture_output=True, text=True,
                         env=env, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk: unexpected output\n{out}")
    rps = float(m.group(1))
    return len(paths) / rps, rps


PEER_SCRIPT = r"""
set -euo pipefail
host=$1
tags='import json, sys; [print(sys.argv[1] + ":" + t) for t in json.load(sys.stdin)["Tags"]]'
for repo in $(cat "$2"); do
  skopeo list-tags --tls-verify=false "docker://$host/$repo" | python3 -c "$tags" "$repo"
done | xargs -P8 -I{} skopeo inspect --tls-verify=false "docker://$host/{}" \
  | grep -c '"Digest"'
"""


def peer(host: str, images: list[tuple[str, str, str]], workdir: Path) -> tuple[float, int]:
    """(seconds, images inspected) of the shell loop this tool replaces: `skopeo list-tags`
    per repository, then `skopeo inspect` (manifest and config) per tag, 8 at a time."""
    (workdir / "repos.txt").write_text("\n".join(sorted({n for n, _, _ in images})) + "\n")
    (workdir / "peer.sh").write_text(PEER_SCRIPT)
    started = time.monotonic()
    out = subprocess.run([*CLIENT_CPU, "bash", str(workdir / "peer.sh"), host,
                          str(workdir / "repos.txt")],
                         capture_output=True, text=True, check=True).stdout
    return time.monotonic() - started, int(out.strip())


FLOOR_SCRIPT = r"""
import asyncio, resource, sys, time
from datetime import timedelta
import uvloop
from pyreqwest.client import ClientBuilder

async def main(url, paths, accept, concurrency):
    client = (ClientBuilder().max_connections(concurrency).follow_redirects(False).no_proxy()
              .read_timeout(timedelta(seconds=30)).build())
    async with client:
        slots = asyncio.Semaphore(concurrency)

        async def one(path):
            async with slots:
                answer = await client.get(url + path).header("Accept", accept).build().send()
                (await answer.bytes()).to_bytes()
                if answer.status != 200:
                    raise SystemExit(f"{path}: HTTP {answer.status}")

        await asyncio.gather(*(one(p) for p in paths))

url, paths_file, accept, concurrency = sys.argv[1:5]
started = time.monotonic()
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as retention runs
    runner.run(main(url, open(paths_file).read().split(), accept, int(concurrency)))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.monotonic() - started, usage.ru_utime + usage.ru_stime)
"""


def floor(url: str, paths: list[str], workdir: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of pyreqwest alone (on uvloop, as retention) sending the
    same request set at the same concurrency, reading each answer and nothing else: no
    retries, parsing, hashing, state or planning. What any client built on them costs at
    least (imports included)."""
    (workdir / "floor.py").write_text(FLOOR_SCRIPT)
    (workdir / "floor-paths.txt").write_text("\n".join(paths) + "\n")
    started = time.monotonic()
    out = subprocess.run([*CLIENT_CPU, sys.executable, str(workdir / "floor.py"), url,
                          str(workdir / "floor-paths.txt"), ACCEPT, str(CONCURRENCY)],
                         capture_output=True, text=True, check=True).stdout
    return time.monotonic() - started, float(out.split()[1])


def plan(config: Path, *, root: Path = ROOT) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS MiB, exit code) of one `retention plan`
    process, run from the source tree ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.monotonic()
    proc = subprocess.Popen([*CLIENT_CPU, sys.executable, "-c",
                             "from retention.cli import run; run()", "plan", "--config",
                             str(config), "--output", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            # `python -c` puts the working directory first on sys.path.
                            cwd=root)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})


def byte_compile(root: Path = ROOT) -> None:
    """Compile retention's modules as an install does (pip writes their .pyc files). Run
    from a source tree where PYTHONDONTWRITEBYTECODE is set, every `retention plan` would
    compile them all anew: 65 ms before its first request that no user's plan spends."""
    compileall.compile_dir(root / "retention", quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--tags", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="limit/cold/warm measured "
                        "this many times (the machine is shared: expect noise)")
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--peer", action="store_true", help="also time the skopeo shell "
                        "loop (list-tags + inspect per tag, xargs -P8) in each round")
    parser.add_argument("--pin", action="store_true", help="the registry on CPU 0, wrk, "
                        "retention and the peer on CPU 1 (each side its own core)")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT", help="also time a cold "
                        "plan of another source tree (a git worktree of another commit) in "
                        "each round, before or after this tree's in turn: a comparison in "
                        "the same minutes, which this machine's drift does not skew")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    byte_compile()
    if args.against is not None:
        byte_compile(args.against.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "registry").mkdir()
        registry = BenchRegistry(work / "registry")
        try:
            started = time.monotonic()
            images = seed(registry.url, args.repositories, args.tags)
            print(f"seeded {args.repositories} repositories x {args.tags} tags "
                  f"({len(images):,} images) in {time.monotonic() - started:.1f} s")
            paths = request_set(registry.url, images)
            if args.pin:
                subprocess.run(["taskset", "-a", "-p", "-c", "0",
                                str(registry.pid)], check=True, stdout=subprocess.DEVNULL)
                CLIENT_CPU[:] = ["taskset", "-c", "1"]
                print("pinned: the registry on CPU 0; wrk, retention and the peer on CPU 1")
            (work / "p.yaml").write_text(
                'name: ci\nrepositories: {include: ["**"]}\nkeep: [{newest: 10}]\n'
                'delete: [{tags: ["pr-*", "sha-*"], older_than: 14d}]\n')
            for rnd in range(1, args.rounds + 1):
                cpu = registry.cpu()
                seconds, rps = limit(registry.url, paths, work, args.wrk_seconds)
                per_request = (registry.cpu() - cpu) / (rps * args.wrk_seconds)
                print(f"\nround {rnd}\n  limit (wrk -c{CONCURRENCY}, {len(paths):,} requests "
                      f"at {rps:,.0f}/s): {seconds:.2f} s; the registry's CPU "
                      f"{per_request * 1e3:.2f} ms a request")
                state = work / f"state-{rnd}"
                config = work / f"retention-{rnd}.yaml"
                config.write_text(f"registries:\n  main: {{url: '{registry.url}', "
                                  f"concurrency: {CONCURRENCY}}}\npolicies: p.yaml\n"
                                  f"state_dir: {state}\nmax_deletions: 1000000\n")
                cpu = registry.cpu()
                wall, own_cpu = floor(registry.url, paths, work)
                print(f"  pyreqwest alone, the same set at concurrency {CONCURRENCY}: "
                      f"{wall:.2f} s = {wall / seconds:.2f}x the limit\n    CPU: pyreqwest "
                      f"{own_cpu:.2f} s "
                      f"({own_cpu / len(paths) * 1e3:.2f} ms a request), registry "
                      f"{registry.cpu() - cpu:.2f} s")
                walls = {}
                for label in ("cold", "warm"):
                    before, cpu = registry.counts(), registry.cpu()
                    wall, own_cpu, rss, code = plan(config)
                    walls[label] = wall
                    registry_cpu = registry.cpu() - cpu
                    counts = delta(registry.counts(), before)
                    total = sum(counts.values())
                    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
                    print(f"  {label}: {wall:.2f} s = {wall / seconds:.2f}x the limit, "
                          f"{total:,} requests ({total / len(paths):.2f}x the set), "
                          f"peak RSS {rss:.0f} MiB, exit {code}\n"
                          f"    CPU: retention {own_cpu:.2f} s "
                          f"({own_cpu / total * 1e3:.2f} ms a request), registry "
                          f"{registry_cpu:.2f} s\n    {detail}")
                if args.against is not None:
                    other = work / f"retention-{rnd}-against.yaml"
                    other.write_text(config.read_text().replace(
                        f"state_dir: {state}", f"state_dir: {state}-against"))
                    order = [ROOT, args.against.resolve()]
                    if rnd % 2 == 0:
                        order.reverse()
                    for root in order:
                        # Again this tree too, cold, next to the other (its first run above
                        # came after the floor, not beside the other tree).
                        shutil.rmtree(state if root == ROOT else f"{state}-against",
                                      ignore_errors=True)
                        cpu = registry.cpu()
                        wall, own_cpu, _, code = plan(config if root == ROOT else other,
                                                      root=root)
                        print(f"  cold, {'this tree' if root == ROOT else root}: {wall:.2f} s "
                              f"= {wall / seconds:.2f}x the limit, CPU {own_cpu:.2f} s, "
                              f"registry {registry.cpu() - cpu:.2f} s, exit {code}")
                if args.peer:
                    seconds_peer, inspected = peer(registry.url.split("//", 1)[1], images,
                                                   work)
                    print(f"  peer (skopeo list-tags + inspect, xargs -P8): "
                          f"{seconds_peer:.2f} s for {inspected:,} images; the cold plan is "
                          f"{seconds_peer / walls['cold']:.1f}x faster")
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
