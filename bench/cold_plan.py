"""How fast a cold and a warm `retention plan` read a registry, against what the registry
itself can answer.

Starts its own Debian docker-registry (CNCF distribution 2.8, with its Prometheus metrics on a
debug port), seeds N repositories x T tags (one single-platform image per tag, a shared base
layer mounted into every repository, a config of its own per image), then, side by side:

1. the limit: `wrk` at concurrency 8 cycling through the minimal request set of a cold plan
   (catalog pages, one tags/list per repository, one manifest GET per tag, one config GET
   per image), shuffled; the limit is that set's size divided by the throughput wrk
   measured;
2. the floor of a client built on httpx2: the same set sent by httpx2 alone (on uvloop, as
   retention runs) at the same concurrency, each answer read and nothing else (no parsing,
   hashing, state or planning); with --against a checkout whose venv has pyreqwest, the
   floor of that stack too;
3. `retention plan` cold (empty state) and warm (state kept), each a fresh process: wall
   time, CPU (seconds and per 1,000 requests), peak RSS, and the requests the registry
   itself counted (by method and handler). With --against, each checkout's cold and warm
   plans too, in turn first and last.

Each step also prints the 1-minute load average before it and the CPU seconds the rest of
the machine (neither the registry, nor the client measured) used during it: the machine is
shared. Prints figures and ratios; it asserts nothing.

    .venv/bin/python bench/cold_plan.py [--repositories 200] [--tags 20] [--rounds 2]
                                        [--peer] [--pin] [--delay-ms 10]
                                        [--against CHECKOUT ...] [--quiet-load 0.7]
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retention.registry.mediatypes import ACCEPT  # noqa: E402
from tests.servers import Fault, FaultProxy, free_port, start_registry  # noqa: E402

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
        text = httpx2.get(self.metrics_url, timeout=10).text
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
    with httpx2.Client(base_url=url, timeout=60) as c:
        r = c.post(f"/v2/{names[0]}/blobs/uploads/")
        r.raise_for_status()
        r = c.put(_with_digest(r.headers["location"], layer_digest), content=layer)
        r.raise_for_status()

    def one(name: str) -> list[tuple[str, str, str]]:
        out = []
        with httpx2.Client(base_url=url, timeout=60) as c:
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
    with httpx2.Client(base_url=url, timeout=60) as c:
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


@dataclass(frozen=True)
class Timed:
    """One process of a step: its wall time, CPU (user + system), peak RSS and exit code,
    and what else happened on the machine meanwhile."""

    wall: float
    cpu: float
    rss_mib: float
    code: int
    out: str
    registry_cpu: float  # the registry's CPU seconds during it
    load: float  # the 1-minute load average just before it
    others: float  # CPU seconds of every other process during it (colleagues' work)
    proxy: float  # CPU seconds of this process (the fault proxy's threads) during it

    def note(self) -> str:
        proxy = f"; the proxy {self.proxy:.2f} CPU s" if self.proxy >= 0.01 else ""
        return (f"load {self.load:.2f} before; the rest of the machine {self.others:.2f} CPU s "
                f"during it{proxy}")


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core) since it started."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process, every thread (the fault proxy's) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(below: float, *, poll: float = 30, longest: float = 20 * 60) -> str:
    """Wait until the 1-minute load average is below ``below`` (colleagues share the
    machine), polling every ``poll`` s for at most ``longest``; say how it went."""
    started = time.monotonic()
    load = load_average()
    while below > 0 and load >= below and time.monotonic() - started < longest:
        time.sleep(poll)
        load = load_average()
    waited = time.monotonic() - started
    if below > 0 and load >= below:
        return (f"load {load:.2f}: never below {below} in {waited / 60:.0f} min, measured "
                "anyway")
    return f"load {load:.2f}" + (f" after waiting {waited:.0f} s" if waited >= 1 else "")


def timed(command: list[str], registry: BenchRegistry, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, check: bool = True) -> Timed:
    """Run ``command`` to its end, measured. ``check``: a failure is an error (with its
    stderr); else its exit code is reported.

    Its peak RSS is GNU time's: the ru_maxrss of a process this one starts counts this
    process's own RSS at the start (Linux carries the high-water mark of the memory an
    exec replaces, and a vfork'd child's is this process's), so that every plan measured
    here used to weigh at least as much as the benchmark, seeded images and all. time
    forks the command from its own small process."""
    load = load_average()
    busy, registry_cpu, own = machine_busy(), registry.cpu(), own_cpu()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        started = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *command],
                                stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        cpu = usage.ru_utime + usage.ru_stime
        registry_cpu = registry.cpu() - registry_cpu
        own = own_cpu() - own
        others = max(machine_busy() - busy - registry_cpu - cpu - own, 0.0)
        code = os.waitstatus_to_exitcode(status)
        if check and code != 0:
            err.seek(0)
            raise RuntimeError(f"{command}: exit {code}\n{err.read().decode()[-2000:]}")
        out.seek(0)
        return Timed(wall, cpu, int(rss.read().split()[-1]) / 1024, code, out.read().decode(),
                     registry_cpu, load, others, own)


def limit(url: str, paths: list[str], workdir: Path, seconds: int, registry: BenchRegistry
          ) -> tuple[float, float, Timed]:
    """(seconds the registry needs to answer ``paths`` at concurrency 8, requests/s, wrk).

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
    run = timed([*CLIENT_CPU, "wrk", "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "-s",
                 str(workdir / "cycle.lua"), url], registry, env=env)
    m = re.search(r"Requests/sec:\s+([\d.]+)", run.out)
    if m is None or "Non-2xx" in run.out:
        raise RuntimeError(f"wrk: unexpected output\n{run.out}")
    rps = float(m.group(1))
    return len(paths) / rps, rps, run


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


# The floor of each HTTP stack: the request set at the same concurrency, each answer read
# whole and its status checked, nothing else; on uvloop, as retention runs.
FLOOR_SCRIPTS = {
    "httpx2": r"""
import asyncio, sys
import httpx2, uvloop

async def main(url, paths, accept, concurrency):
    limits = httpx2.Limits(max_connections=concurrency,
                           max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, trust_env=False, timeout=30,
                                  follow_redirects=False) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one(path):
            async with slots:
                answer = await client.get(url + path, headers={"Accept": accept})
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {answer.status_code}")

        await asyncio.gather(*(one(p) for p in paths))

url, paths_file, accept, concurrency = sys.argv[1:5]
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as retention runs
    runner.run(main(url, open(paths_file).read().split(), accept, int(concurrency)))
""",
    # The stack of retention before httpx2 (2026-11-30 to 2026-12-07).
    "pyreqwest": r"""
import asyncio, sys
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
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as retention runs
    runner.run(main(url, open(paths_file).read().split(), accept, int(concurrency)))
""",
}


def floor(stack: str, python: str, url: str, paths: list[str], workdir: Path,
          registry: BenchRegistry) -> Timed:
    """``stack`` alone (on uvloop, as retention) sending the same request set at the same
    concurrency, reading each answer and nothing else: no retries, parsing, hashing, state
    or planning. What any client built on it costs at least (imports included)."""
    (workdir / f"floor-{stack}.py").write_text(FLOOR_SCRIPTS[stack])
    (workdir / "floor-paths.txt").write_text("\n".join(paths) + "\n")
    return timed([*CLIENT_CPU, python, str(workdir / f"floor-{stack}.py"), url,
                  str(workdir / "floor-paths.txt"), ACCEPT, str(CONCURRENCY)], registry)


@dataclass(frozen=True)
class Tree:
    """A source tree whose `retention plan` is timed, and the Python that runs it: the
    tree's own .venv when it has one (an older commit's dependencies), else this one's."""

    root: Path
    python: str

    @classmethod
    def of(cls, root: Path) -> Tree:
        root = root.resolve()
        own = root / ".venv" / "bin" / "python"
        return cls(root, str(own) if own.exists() else sys.executable)

    @property
    def label(self) -> str:
        return "this tree" if self.root == ROOT else str(self.root)

    def has(self, module: str) -> bool:
        return subprocess.run([self.python, "-c", f"import {module}"], cwd=self.root,
                              capture_output=True).returncode == 0


def plan(config: Path, registry: BenchRegistry, *, tree: Tree) -> Timed:
    """One `retention plan` process, run from the source tree ``tree``."""
    return timed([*CLIENT_CPU, tree.python, "-c", "from retention.cli import run; run()",
                  "plan", "--config", str(config), "--output", "json"], registry,
                 env={**os.environ, "PYTHONPATH": str(tree.root)},
                 # `python -c` puts the working directory first on sys.path.
                 cwd=tree.root, check=False)


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
    parser.add_argument("--delay-ms", type=float, default=0, help="add this many ms to "
                        "every answer (the suite's fault proxy, in front of the registry, "
                        "on the registry's CPU with --pin): the limit, the floors and the "
                        "plans all go through it")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT", action="append",
                        default=[], help="also time the cold and warm plans of another "
                        "source tree (a git worktree of another commit; its own .venv/ if "
                        "it has one) in each round, beside this tree's, in turn first and "
                        "last: a comparison in the same minutes, which this machine's drift "
                        "does not skew. May be given more than once")
    parser.add_argument("--quiet-load", type=float, default=0.7, metavar="LOAD",
                        help="before each round, wait (up to 20 min, polling every 30 s) "
                        "for the 1-minute load average to fall below this; 0: do not wait")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if not Path("/usr/bin/time").exists():
        sys.exit("GNU time is not installed (apt-get install time)")
    trees = [Tree.of(ROOT), *(Tree.of(path) for path in args.against)]
    for tree in trees:
        byte_compile(tree.root)
    floors = [("httpx2", sys.executable)]
    older = next((t for t in trees[1:] if t.has("pyreqwest")), None)
    if older is not None:
        floors.append(("pyreqwest", older.python))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "registry").mkdir()
        registry = BenchRegistry(work / "registry")
        proxy = None
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
            url = registry.url
            if args.delay_ms:
                if args.pin:  # the proxy's threads with the registry: the server's side
                    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(os.getpid())],
                                   check=True, stdout=subprocess.DEVNULL)
                proxy = FaultProxy(registry.url)
                proxy.inject(Fault("*", "", "delay", times=sys.maxsize,
                                   seconds=args.delay_ms / 1000))
                url = proxy.start()
                # wrk leaves with requests in flight: their broken pipes are not news.
                proxy._server.handle_error = lambda request, address: None
                print(f"every answer {args.delay_ms:g} ms late: the suite's fault proxy "
                      f"({url}) in front of the registry"
                      + (", on CPU 0 with it" if args.pin else ""))
            (work / "p.yaml").write_text(
                'name: ci\nrepositories: {include: ["**"]}\nkeep: [{newest: 10}]\n'
                'delete: [{tags: ["pr-*", "sha-*"], older_than: 14d}]\n')
            for rnd in range(1, args.rounds + 1):
                print(f"\nround {rnd} ({wait_for_quiet(args.quiet_load)})")
                seconds, rps, wrk = limit(url, paths, work, args.wrk_seconds, registry)
                per_request = wrk.registry_cpu / (rps * args.wrk_seconds)
                print(f"  limit (wrk -c{CONCURRENCY}, {len(paths):,} requests "
                      f"at {rps:,.0f}/s): {seconds:.2f} s; the registry's CPU "
                      f"{per_request * 1e3:.2f} ms a request; {wrk.note()}")
                for stack, python in floors:
                    run = floor(stack, python, url, paths, work, registry)
                    print(f"  {stack} alone, the same set at concurrency {CONCURRENCY}: "
                          f"{run.wall:.2f} s = {run.wall / seconds:.2f}x the limit, exit "
                          f"{run.code}\n    CPU: {stack} {run.cpu:.2f} s "
                          f"({run.cpu / len(paths) * 1e3:.2f} s per 1,000 requests), "
                          f"registry {run.registry_cpu:.2f} s; {run.note()}")
                # In turn: each tree first in one round, last in another.
                shift = (rnd - 1) % len(trees)
                counted: dict[tuple[str, Path], Counter[str]] = {}
                walls = {}
                for tree in trees[shift:] + trees[:shift]:
                    name = f"{rnd}-{trees.index(tree)}"
                    config = work / f"retention-{name}.yaml"
                    config.write_text(f"registries:\n  main: {{url: '{url}', "
                                      f"concurrency: {CONCURRENCY}}}\npolicies: p.yaml\n"
                                      f"state_dir: {work / ('state-' + name)}\n"
                                      "max_deletions: 1000000\n")
                    for label in ("cold", "warm"):
                        before = registry.counts()
                        run = plan(config, registry, tree=tree)
                        counts = delta(registry.counts(), before)
                        counted[(label, tree.root)] = counts
                        walls.setdefault(label, run.wall)
                        total = sum(counts.values())
                        detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
                        print(f"  {label}, {tree.label}: {run.wall:.2f} s = "
                              f"{run.wall / seconds:.2f}x the limit, {total:,} requests "
                              f"({total / len(paths):.2f}x the set), peak RSS "
                              f"{run.rss_mib:.0f} MiB, exit {run.code}\n"
                              f"    CPU: retention {run.cpu:.2f} s "
                              f"({run.cpu / max(total, 1) * 1e3:.2f} s per 1,000 requests), "
                              f"registry {run.registry_cpu:.2f} s; {run.note()}\n"
                              f"    {detail}")
                for label in ("cold", "warm"):
                    mine = counted[(label, ROOT)]
                    differ = [t.label for t in trees[1:] if counted[(label, t.root)] != mine]
                    if len(trees) > 1:
                        print(f"  {label} requests, by method and handler: "
                              + (f"differ from this tree's in {', '.join(differ)}" if differ
                                 else "the same in every tree"))
                if args.peer:
                    seconds_peer, inspected = peer(url.split("//", 1)[1], images, work)
                    print(f"  peer (skopeo list-tags + inspect, xargs -P8): "
                          f"{seconds_peer:.2f} s for {inspected:,} images; the cold plan is "
                          f"{seconds_peer / walls['cold']:.1f}x faster")
        finally:
            if proxy is not None:
                proxy.stop()
            registry.stop()


if __name__ == "__main__":
    main()
