"""Render the Helm chart with Helm's own engine (helm-sdkpy), as `helm install` would.

helm-sdkpy has no `template` call and no client-only dry run, but its Install renders through
Helm's engine against any API server. `KubeStandIn` is a minimal loopback API server: it
answers discovery (the core, apps, RBAC and prometheus-operator groups), lists no previous
release and accepts every create, keeping the objects Helm posts. Those are the manifests a
real cluster would receive.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "retention"

# group/version -> (resource, kind, namespaced)
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
           ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True),
           ("persistentvolumeclaims", "PersistentVolumeClaim", True),
           ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}
KUBE_VERSION = ("1", "33")


class KubeStandIn:
    """Discovery plus accepting creates; `created` holds the JSON objects Helm posted."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, code: int, obj: object) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/version":
                    major, minor = KUBE_VERSION
                    return self._json(200, {"major": major, "minor": minor,
                                            "gitVersion": f"v{major}.{minor}.0",
                                            "platform": "linux/amd64"})
                if path == "/api":
                    return self._json(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = []
                    for gv in RESOURCES:
                        if "/" in gv:
                            group, version = gv.split("/")
                            ref = {"groupVersion": gv, "version": version}
                            groups.append({"name": group, "versions": [ref],
                                           "preferredVersion": ref})
                    return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                            "groups": groups})
                gv = path.removeprefix("/api/").removeprefix("/apis/")
                if gv in RESOURCES:
                    return self._json(200, {
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": [{"name": name, "singularName": kind.lower(),
                                       "namespaced": namespaced, "kind": kind,
                                       "verbs": ["create", "delete", "get", "list", "patch",
                                                 "update", "watch"]}
                                      for name, kind, namespaced in RESOURCES[gv]]})
                if re.fullmatch(r"/api/v1/namespaces/[^/]+/secrets", path):
                    # Helm's release storage: no previous release.
                    return self._json(200, {"kind": "SecretList", "apiVersion": "v1",
                                            "metadata": {}, "items": []})
                self._json(404, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                 "status": "Failure", "reason": "NotFound", "code": 404,
                                 "message": "not found"})

            def _accept(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ctype = self.headers.get("Content-Type", "application/json")
                # Helm's release records come as protobuf: echoed, not kept.
                if "json" in ctype and "/secrets/sh.helm.release" not in self.path:
                    obj = json.loads(body)
                    if not obj.get("metadata", {}).get("name", "").startswith("sh.helm."):
                        with stand_in._lock:
                            stand_in.created.append(obj)
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_PATCH = _accept

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def kubeconfig(self) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin",
                                                         "user": "standin",
                                                         "namespace": "default"}}]})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]  # what Helm posted to the API server
    manifest: str  # the release's manifest as Helm recorded it
    notes: str

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.objects
                 if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, (kind, suffix, [o["metadata"]["name"] for o in found])
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


class RenderError(Exception):
    """Helm refused to render or install (a `fail`, a `required`, the values schema)."""


def render(values: dict[str, Any] | None = None, *, chart: Path = CHART,
           release: str = "retention", timeout: int = 60) -> Rendered:
    """`helm install RELEASE CHART --values VALUES` against a stand-in API server."""
    import helm_sdkpy

    stand_in = KubeStandIn()
    try:
        config = helm_sdkpy.Configuration(namespace="default", kubeconfig=stand_in.kubeconfig())
        try:
            result = asyncio.run(helm_sdkpy.Install(config).run(
                release, str(chart), values=values or {}, wait=False, timeout=timeout))
        except helm_sdkpy.HelmError as exc:
            raise RenderError(str(exc)) from exc
        return Rendered(objects=list(stand_in.created), manifest=result.get("manifest", ""),
                        notes=(result.get("info") or {}).get("notes", ""))
    finally:
        stand_in.stop()


# -- the rendered retention.yaml, on a stand-in of the pod's file system -----------------

def _container(deployment: dict[str, Any], name: str = "retention") -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def mounted_volume(deployment: dict[str, Any], path: str) -> tuple[dict, dict]:
    """The retention container's mount holding `path`, and its volume; AssertionError if
    nothing the pod mounts holds it."""
    spec = deployment["spec"]["template"]["spec"]
    mounts = sorted(_container(deployment).get("volumeMounts", []),
                    key=lambda m: len(m["mountPath"]), reverse=True)
    for mount in mounts:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            return mount, volume
    raise AssertionError(f"{path} is not on any volume the retention container mounts")



def materialize(rendered: Rendered, root: Path) -> Path:
    """Write the rendered retention.yaml, and the files it names, under `root` as the pod
    would see them (paths re-rooted). Each file must be on a volume the retention container
    mounts: a ConfigMap the chart renders gives its data; a Secret, an existing ConfigMap or
    a git checkout (not knowable here) a stand-in. Returns the config's path."""
    deployment = rendered.one("Deployment")
    config_map = rendered.one("ConfigMap", "-config")
    config = yaml.safe_load(config_map["data"]["retention.yaml"])
    rendered_maps = {o["metadata"]["name"]: o for o in rendered.objects if o["kind"] == "ConfigMap"}

    def reroot(path: str) -> Path:
        assert path.startswith("/"), f"{path}: the chart writes absolute paths"
        return root / path.lstrip("/")

    def directory_from(path: str, stand_in: dict[str, str] | None = None) -> None:
        _, volume = mounted_volume(deployment, path)
        target = reroot(path)
        target.mkdir(parents=True, exist_ok=True)
        data = None
        if "configMap" in volume:
            data = (rendered_maps.get(volume["configMap"]["name"]) or {}).get("data")
        if data is None and stand_in is not None:
            data = stand_in
        if data is None:  # an existing ConfigMap or a git checkout: a stand-in policy
            registry = next(iter(config.get("registries") or {"main": None}))
            data = {"stand-in.yaml": f"name: stand-in\nregistry: {registry}\n"
                                     "repositories: {include: ['**']}\n"
                                     "delete: [{untagged: true}]\n"}
        for key, text in data.items():
            (target / key).write_text(text)

    directory_from(config["policies"])
    config["policies"] = str(reroot(config["policies"]))
    if "allowlist" in config:
        directory_from(config["allowlist"], {"pinned.txt": "# stand-in\n"})
        config["allowlist"] = str(reroot(config["allowlist"]))
    mount, _ = mounted_volume(deployment, config["state_dir"])
    assert not mount.get("readOnly"), "state_dir must be writable"
    config["state_dir"] = str(reroot(config["state_dir"]))
    for registry in config["registries"].values():
        netloc = urlsplit(registry["url"]).netloc
        for key in ("password_file", "docker_config", "ca_file", "token_file"):
            if key not in registry:
                continue
            _, volume = mounted_volume(deployment, registry[key])
            assert "secret" in volume, f"{key} {registry[key]} must come from a Secret"
            target = reroot(registry[key])
            target.parent.mkdir(parents=True, exist_ok=True)
            if key == "docker_config":
                target.write_text(json.dumps({"auths": {netloc: {
                    "username": "stand-in", "password": "stand-in"}}}))
            elif key == "ca_file":  # read as PEM certificates by `retention validate`
                from tests.servers import ca_signed

                ca, _, _ = ca_signed(root / "stand-in-ca")
                target.write_bytes(ca.read_bytes())
            else:
                target.write_text("stand-in\n")
            registry[key] = str(target)
    for cluster in (config.get("in_use") or {}).get("clusters") or ():
        if "kubeconfig" not in cluster:
            continue  # the in-cluster service account: its token must be mounted
        _, volume = mounted_volume(deployment, cluster["kubeconfig"])
        assert "secret" in volume, f"kubeconfig {cluster['kubeconfig']} must come from a Secret"
        target = reroot(cluster["kubeconfig"])
        target.parent.mkdir(parents=True, exist_ok=True)
        context = cluster.get("context") or "stand-in"
        target.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "stand-in"}}],
            "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}]}))
        cluster["kubeconfig"] = str(target)
    path = root / "etc/retention/config/retention.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def chart_copy(tmp: Path) -> Path:
    target = tmp / "retention"
    shutil.copytree(CHART, target)
    return target


def ci_values() -> Iterator[Path]:
    yield from sorted((CHART / "ci").glob("*.yaml"))
