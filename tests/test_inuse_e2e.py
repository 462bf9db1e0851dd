"""In-use protection end to end (issue 13): workloads read from the suite's Kubernetes
emulator over TLS through real kubeconfigs and lightkube, images on a real registry,
decisions made by `retention run`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from retention import kube
from retention.metrics import Metrics
from retention.setup import load_setup
from retention.state import State
from tests.kube_emulator import KubeEmulator, pod, workload
from tests.pusher import Pusher
from tests.test_run_e2e import cli, deleted_digests

POLICY = """
name: everything
repositories: {include: ["**"]}
delete:
  - tags: ["*"]
  - untagged: true
"""
OLD = "2024-01-01T00:00:00Z"


@pytest.fixture
def cluster(tmp_path) -> KubeEmulator:
    emu = KubeEmulator(tmp_path / "kube-prod")
    emu.start()
    # An image from elsewhere, so the cluster never reports fewer than min_images.
    emu.add(pod("kube-system", "coredns", ["registry.k8s.io/coredns/coredns:v1.11.1"]))
    yield emu
    emu.stop()


def write_config(tmp_path: Path, registry_url: str, clusters: list[tuple[str, Path]], *,
                 keep_for: str = "30d", mode: str = "enforce") -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    lines = "\n".join(f"    - name: {name}\n      kubeconfig: {path}" for name, path in clusters)
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  main:
    url: {registry_url}
policies: policies
mode: {mode}
untagged_grace: 0s
state_dir: state
in_use:
  keep_for: {keep_for}
  clusters:
{lines}
""")
    return config


def ref(registry, repo: str, what: str) -> str:
    sep = "@" if what.startswith("sha256:") else ":"
    return f"{registry.host}/{repo}{sep}{what}"


def protected(doc: dict) -> dict[str, str]:
    return {p["digest"]: p["reason"] for p in doc["protected"]}


def test_deployment_scaled_to_zero_keeps_its_image(tmp_path, registry, pusher: Pusher,
                                                   cluster):
    used = pusher.image("payments/api", "v1", created=OLD, layers=(b"api-v1",))
    other = pusher.image("payments/api", "v0", created=OLD, layers=(b"api-v0",))
    cluster.add(workload("deployments", "payments", "api", [ref(registry, "payments/api", "v1")],
                         replicas=0))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    assert deleted_digests(doc) == {other.digest}
    assert protected(doc) == {used.digest: "in-use"}
    assert pusher.exists("payments/api", used.digest)
    code, table, _ = cli("plan", "--config", str(config))
    assert "in use by prod/payments/deployment/api, last seen now" in table


def test_cronjob_image_survives_between_runs(tmp_path, registry, pusher: Pusher, cluster):
    nightly = pusher.image("batch/report", "2024-01", created=OLD, layers=(b"report",))
    cluster.add(workload("cronjobs", "batch", "report",
                         [ref(registry, "batch/report", nightly.digest)]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    for _ in range(2):  # no pod of it runs between the schedules
        code, doc, err = cli("run", "--config", str(config), "--output", "json")
        assert code == 0, err
        assert protected(doc) == {nightly.digest: "in-use"} and deleted_digests(doc) == set()
    assert pusher.exists("batch/report", nightly.digest)


def test_pod_by_tag_protects_the_digest_the_tag_points_to(tmp_path, registry, pusher: Pusher,
                                                          cluster):
    first = pusher.image("web", "stable", created=OLD, layers=(b"w1",))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))],
                          mode="dry-run")
    cli("run", "--config", str(config))  # records web:stable -> first
    current = pusher.image("web", "stable", created=OLD, layers=(b"w2",))  # re-pushed
    cluster.add(pod("shop", "web-1", [ref(registry, "web", "stable")]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    # The tag names the digest it points to now; the orphan it left behind goes.
    assert protected(doc) == {current.digest: "in-use"}
    assert deleted_digests(doc) == {first.digest}


def test_kubelet_child_digest_keeps_the_whole_index(tmp_path, registry, pusher: Pusher,
                                                    cluster):
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd",))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm",), arch="arm64")
    index = pusher.index("multi", "v1", [amd, arm])
    sig = pusher.cosign_signature("multi", index)
    # The spec names a mirror no registry has; the kubelet reports the platform manifest.
    cluster.add(pod("apps", "multi-1", ["mirror.example.com/multi:v1"],
                    image_ids=[f"docker-pullable://{ref(registry, 'multi', amd.digest)}"]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    assert deleted_digests(doc) == set()
    assert protected(doc)[index.digest] == "in-use"
    for m in (amd, arm, index, sig):
        assert pusher.exists("multi", m.digest)
    code, table, _ = cli("plan", "--config", str(config))
    assert f"index of {amd.digest[:19]}, in use by prod/apps/pod/multi-1" in table


def test_gone_workload_is_deleted_only_after_keep_for(tmp_path, registry, pusher: Pusher,
                                                      cluster):
    old = pusher.image("api", "v1", created=OLD, layers=(b"gone",))
    cluster.add(workload("statefulsets", "db", "api", [ref(registry, "api", "v1")]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))], keep_for="3s")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert protected(doc) == {old.digest: "in-use"}
    started = time.monotonic()
    cluster.remove("statefulsets", "api")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and protected(doc) == {old.digest: "in-use"}, doc
    assert time.monotonic() - started < 3
    time.sleep(3.2)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {old.digest}
    assert not pusher.exists("api", old.digest)


def test_one_cluster_forbidden_on_one_kind_stops_all_deletions(tmp_path, registry,
                                                               pusher: Pusher, cluster):
    doomed = pusher.image("app", "old", created=OLD, layers=(b"old",))
    staging = KubeEmulator(tmp_path / "kube-staging")
    staging.start()
    try:
        staging.add(pod("default", "p", ["nginx:1.25"]))
        staging.forbidden.add("replicasets")
        config = write_config(tmp_path, registry.url, [
            ("prod", cluster.kubeconfig(tmp_path / "prod.yaml")),
            ("staging", staging.kubeconfig(tmp_path / "staging.yaml"))])
        code, doc, _ = cli("run", "--config", str(config), "--output", "json")
        assert code == 1
        assert deleted_digests(doc) == set() and pusher.exists("app", doomed.digest)
        [aborted] = doc["aborted"]
        assert "cluster staging: cannot list replicasets: 403" in aborted["message"]
        assert {a["status"] for a in doc["actions"]} == {"skipped"}

        # The daemon's path counts the failure per cluster.
        metrics = Metrics(CollectorRegistry())
        setup = load_setup(config)
        from retention.runs import run_pass
        state = State.memory()
        result = asyncio.run(run_pass(setup, setup.policies, dry_run=False, state=state,
                                      metrics=metrics))
        assert result.failed and not result.report.outcomes
        value = metrics.registry.get_sample_value
        assert value("retention_in_use_read_failures_total", {"cluster": "staging"}) == 1
        assert value("retention_in_use_digests", {"cluster": "prod"}) == 0
        assert value("retention_runs_total", {"policy": "everything",
                                              "outcome": "aborted"}) == 1
    finally:
        staging.stop()


def _exec_plugin(tmp_path: Path, token_file: Path, *, answer_version: str | None = None
                 ) -> tuple[Path, Path]:
    """A plugin script as client-go's plugins behave: it reads KUBERNETES_EXEC_INFO (refusing
    to run without it) and answers an ExecCredential of the version asked for. Returns the
    script and the file where each call's KUBERNETES_EXEC_INFO is written."""
    calls = tmp_path / "calls"
    plugin = tmp_path / "get-token"
    plugin.write_text(f"""#!{sys.executable}
import json, os, pathlib, sys
info = os.environ.get("KUBERNETES_EXEC_INFO")
if not info:
    sys.exit("KUBERNETES_EXEC_INFO is not set")
with open({str(calls)!r}, "a") as f:
    f.write(info + "\\n")
print(json.dumps({{"apiVersion": {answer_version!r} or json.loads(info)["apiVersion"],
                  "kind": "ExecCredential",
                  "status": {{"token": pathlib.Path({str(token_file)!r}).read_text()}}}}))
""")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    return plugin, calls


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
def test_kubeconfig_with_exec_plugin(tmp_path, registry, pusher: Pusher, cluster, version):
    """client.authentication.k8s.io/v1 (what kubectl writes since Kubernetes 1.22; lightkube
    alone refuses it) and v1beta1."""
    used = pusher.image("svc", "v2", created=OLD, layers=(b"svc",))
    cluster.add(pod("default", "svc-1", [ref(registry, "svc", "v2")]))
    token_file = tmp_path / "issued-token"
    token_file.write_text(cluster.token)
    plugin, calls = _exec_plugin(tmp_path, token_file)
    kubeconfig = cluster.kubeconfig(tmp_path / "exec.yaml", user={"exec": {
        "apiVersion": f"client.authentication.k8s.io/{version}", "command": str(plugin),
        "interactiveMode": "Never", "env": [{"name": "AWS_PROFILE", "value": "prod"}]}})
    config = write_config(tmp_path, registry.url, [("prod", kubeconfig)])
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    assert protected(doc) == {used.digest: "in-use"}
    infos = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(infos) == 1  # one token for all the kinds' requests
    assert infos[0] == {"apiVersion": f"client.authentication.k8s.io/{version}",
                        "kind": "ExecCredential", "spec": {"interactive": False}}

    # The token expires in the middle of a read: the API answers 401 once, the plugin runs
    # again and the read carries on.
    cluster.rotate_after = cluster.served + 2
    cluster.on_rotate = token_file.write_text
    readings = asyncio.run(kube.read_clusters(load_setup(config).config.in_use.clusters))
    assert readings[0].error is None, readings[0].error
    assert cluster.unauthorized >= 1 and len(calls.read_text().splitlines()) >= 3


@pytest.mark.parametrize(("exec_fields", "answer_version", "expected"), [
    ({"interactiveMode": "Always"}, None, "needs a terminal (interactiveMode: Always)"),
    ({}, None, "v1 without interactiveMode"),
    ({"interactiveMode": "Never"}, "client.authentication.k8s.io/v1beta1",
     "answered ExecCredential client.authentication.k8s.io/v1beta1, not the ExecCredential "
     "client.authentication.k8s.io/v1"),
    ({"interactiveMode": "Never", "apiVersion": "client.authentication.k8s.io/v2"}, None,
     "apiVersion 'client.authentication.k8s.io/v2' is not one of"),
])
def test_exec_plugins_kubectl_would_refuse_make_the_cluster_unreadable(
        tmp_path, cluster, exec_fields, answer_version, expected):
    token_file = tmp_path / "issued-token"
    token_file.write_text(cluster.token)
    plugin, _ = _exec_plugin(tmp_path, token_file, answer_version=answer_version)
    kubeconfig = cluster.kubeconfig(tmp_path / "exec.yaml", user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
        **exec_fields}})
    [reading] = asyncio.run(kube.read_clusters((_cluster_settings(tmp_path, kubeconfig),)))
    assert reading.error is not None and expected in str(reading.error)
    assert reading.uses == ()


def test_exec_plugin_with_cluster_info_and_an_expiring_token(tmp_path, cluster):
    """provideClusterInfo: the plugin is told the cluster's server and CA (EKS's and
    Pinniped's plugins need them). A token past its expirationTimestamp is not used: the
    plugin runs again before the next request, instead of waiting for a 401."""
    token_file = tmp_path / "issued-token"
    token_file.write_text(cluster.token)
    calls = tmp_path / "calls"
    plugin = tmp_path / "get-token"
    plugin.write_text(f"""#!{sys.executable}
import json, os, pathlib
with open({str(calls)!r}, "a") as f:
    f.write(os.environ["KUBERNETES_EXEC_INFO"] + "\\n")
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": pathlib.Path({str(token_file)!r}).read_text(),
                             "expirationTimestamp": "2020-01-01T00:00:00Z"}}}}))
""")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    kubeconfig = cluster.kubeconfig(tmp_path / "exec.yaml", user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
        "interactiveMode": "IfAvailable", "provideClusterInfo": True}})
    [reading] = asyncio.run(kube.read_clusters((_cluster_settings(tmp_path, kubeconfig),)))
    assert reading.error is None, reading.error
    infos = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(infos) > 1 and cluster.unauthorized == 0  # renewed before each request
    info = infos[0]["spec"]["cluster"]
    assert info["server"] == cluster.url
    assert base64.b64decode(info["certificate-authority-data"]) == cluster.ca_file.read_bytes()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _exec_kubeconfig(tmp_path: Path, cluster: KubeEmulator, script: str) -> Path:
    plugin = tmp_path / "get-token"
    plugin.write_text(f"#!{sys.executable}\n{script}")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    return cluster.kubeconfig(tmp_path / "exec.yaml", user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
        "interactiveMode": "Never"}})


def test_an_exec_plugin_out_of_time_is_stopped_with_its_children(tmp_path, cluster):
    """A plugin is often a script that runs the real one (``aws eks get-token`` under a
    wrapper): when it gives no answer in time, what it started goes too, or every run
    that meets a hanging plugin leaves processes behind for the daemon's lifetime."""
    pid_file = tmp_path / "child.pid"
    kubeconfig = _exec_kubeconfig(tmp_path, cluster, f"""
import pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
time.sleep(60)
""")
    child = None
    try:
        started = time.monotonic()
        [reading] = asyncio.run(kube.read_clusters((_cluster_settings(tmp_path, kubeconfig),),
                                                   timeout=1))
        assert time.monotonic() - started < 10
        assert "exec plugin get-token gave no answer in 1 s" in str(reading.error)
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the plugin's child still runs"
    finally:
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_an_exec_plugin_that_writes_without_end_is_not_held_in_memory(tmp_path, cluster,
                                                                      stream: str):
    """An ExecCredential is a few KiB: a plugin gone wrong that writes 64 MiB (a debug
    dump, a loop) is read up to a cap, not into memory whole."""
    import tracemalloc

    kubeconfig = _exec_kubeconfig(tmp_path, cluster, f"""
import sys
for _ in range(64):
    sys.{stream}.buffer.write(b"x" * (1 << 20))
sys.exit({1 if stream == "stderr" else 0})
""")
    tracemalloc.start()
    try:
        [reading] = asyncio.run(kube.read_clusters((_cluster_settings(tmp_path, kubeconfig),),
                                                   timeout=20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    expected = {"stdout": "exec plugin get-token wrote more than 1 MiB",
                "stderr": "exec plugin get-token exited with 1: xxxx"}[stream]
    assert expected in str(reading.error)


def test_paged_lists_and_expired_continue(tmp_path, cluster, monkeypatch):
    monkeypatch.setattr(kube, "PAGE_SIZE", 3)
    cluster.add(*(pod("ns", f"p{i}", [f"nginx:1.{i}"]) for i in range(10)))
    kubeconfig = cluster.kubeconfig(tmp_path / "k.yaml")
    settings = _cluster_settings(tmp_path, kubeconfig)
    [reading] = asyncio.run(kube.read_clusters((settings,)))
    assert reading.error is None
    assert len([u for u in reading.uses if u.kind == "pod"]) == 11
    assert cluster.requests[("pods", "first")] == 1
    assert cluster.requests[("pods", "continue")] == 3

    cluster.expire_continue.add("pods")
    [reading] = asyncio.run(kube.read_clusters((settings,)))
    assert "cluster prod: cannot list pods: 410" in str(reading.error)
    assert cluster.requests[("pods", "first")] == 3  # listed again once, then given up


@pytest.mark.parametrize("fault", ["unauthorized", "slow", "empty", "unreachable"])
def test_unreadable_clusters(tmp_path, cluster, fault):
    kubeconfig = cluster.kubeconfig(tmp_path / "k.yaml",
                                    token="wrong" if fault == "unauthorized" else None)
    if fault == "slow":
        cluster.delay["daemonsets"] = 1.5
    if fault == "empty":
        cluster.remove("pods", "coredns")
    if fault == "unreachable":
        cluster.stop()
    settings = _cluster_settings(tmp_path, kubeconfig)
    [reading] = asyncio.run(kube.read_clusters((settings,), timeout=0.5))
    expected = {"unauthorized": "cannot list pods: 401",
                "slow": "cannot list daemonsets: ReadTimeout",
                "empty": "read 0 image references, fewer than min_images 1",
                "unreachable": "cannot list pods: ConnectError"}[fault]
    assert expected in str(reading.error)
    if fault == "unreachable":
        cluster.start()  # the fixture stops it again


def test_slow_answers_within_the_timeout_are_waited_for(tmp_path, cluster):
    cluster.delay["replicasets"] = 0.3
    settings = _cluster_settings(tmp_path, cluster.kubeconfig(tmp_path / "k.yaml"))
    [reading] = asyncio.run(kube.read_clusters((settings,), timeout=5))
    assert reading.error is None


def test_in_use_command(tmp_path, registry, cluster):
    cluster.add(workload("jobs", "batch", "migrate", [f"{registry.host}/db/migrate:v3"]),
                pod("web", "front", ["nginx:1.25"], init=[f"{registry.host}/init:v1"],
                    image_ids=["docker-pullable://nginx@sha256:" + "c" * 64]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    code, doc, _ = cli("in-use", "--config", str(config), "--output", "json")
    assert code == 0
    [prod] = doc["clusters"]
    assert prod["error"] is None
    rows = {(r["namespace"], r["kind"], r["name"], r["image"]): (r["registry"], r["repository"],
                                                                 r["digest"])
            for r in prod["references"]}
    assert rows[("batch", "job", "migrate", f"{registry.host}/db/migrate:v3")] == \
        ("main", "db/migrate", None)
    assert rows[("web", "pod", "front", f"{registry.host}/init:v1")] == ("main", "init", None)
    assert rows[("web", "pod", "front", "docker-pullable://nginx@sha256:" + "c" * 64)] == \
        (None, "library/nginx", "sha256:" + "c" * 64)
    code, table, _ = cli("in-use", "--config", str(config))
    assert code == 0 and "cluster prod: 5 image references" in table
    assert f"batch/job/migrate  {registry.host}/db/migrate:v3  -> main:db/migrate" in table

    cluster.forbidden.add("jobs")
    code, table, _ = cli("in-use", "--config", str(config))
    assert code == 1 and "UNREADABLE: cluster prod: cannot list jobs: 403" in table


def _cluster_settings(tmp_path, kubeconfig):
    from retention.config import ClusterSettings
    return ClusterSettings(name="prod", kubeconfig=kubeconfig)


def test_daemon_protects_and_counts_per_cluster(tmp_path, registry, pusher: Pusher, cluster):
    import httpx2

    from retention.daemon import Daemon
    from tests.test_daemon import every_second, metric, wait_for

    used = pusher.image("api", "v1", created=OLD, layers=(b"daemon-used",))
    doomed = pusher.image("api", "v0", created=OLD, layers=(b"daemon-doomed",))
    cluster.add(workload("daemonsets", "infra", "agent", [ref(registry, "api", "v1")]))
    config = write_config(tmp_path, registry.url,
                          [("prod", cluster.kubeconfig(tmp_path / "prod.yaml"))])
    config.write_text(config.read_text() + "listen: 127.0.0.1:0\n")

    async def scenario():
        daemon = Daemon(config, options=every_second())
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            text = (await http.get("/metrics")).text
            assert metric(text, "retention_in_use_read_failures_total", cluster="prod") == 0

            async def ran():
                text = (await http.get("/metrics")).text
                done = metric(text, "retention_runs_total", policy="everything",
                              outcome="success")
                return text if done else None
            text = await wait_for(ran)
            assert metric(text, "retention_in_use_digests", cluster="prod") == 1
            cluster.forbidden.add("cronjobs")

            async def failed():
                text = (await http.get("/metrics")).text
                n = metric(text, "retention_in_use_read_failures_total", cluster="prod")
                return text if n else None
            await wait_for(failed)
        daemon.stopping.set()
        await task

    asyncio.run(scenario())
    assert pusher.exists("api", used.digest) and not pusher.exists("api", doomed.digest)
