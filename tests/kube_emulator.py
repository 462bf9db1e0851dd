"""A small emulator of the Kubernetes API's list endpoints, owned by this suite (no API server
can run here): discovery, the list endpoints of Pods, Deployments, ReplicaSets,
StatefulSets, DaemonSets, Jobs and CronJobs (cluster-wide and per namespace) with
``limit``/``continue`` and ``resourceVersion``, 410 Gone for an expired continue token,
401 without a valid bearer token, 403 per kind, and slow answers. Served over TLS on
loopback and reached through a real kubeconfig by the real client library."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.servers import self_signed

# plural -> (group path, apiVersion, Kind)
KINDS = {
    "pods": ("/api/v1", "v1", "Pod"),
    "deployments": ("/apis/apps/v1", "apps/v1", "Deployment"),
    "replicasets": ("/apis/apps/v1", "apps/v1", "ReplicaSet"),
    "statefulsets": ("/apis/apps/v1", "apps/v1", "StatefulSet"),
    "daemonsets": ("/apis/apps/v1", "apps/v1", "DaemonSet"),
    "jobs": ("/apis/batch/v1", "batch/v1", "Job"),
    "cronjobs": ("/apis/batch/v1", "batch/v1", "CronJob"),
}


def _containers(images: list[str]) -> list[dict]:
    return [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]


def pod_spec(images: list[str], *, init: list[str] = (), ephemeral: list[str] = ()) -> dict:
    spec: dict = {"containers": _containers(images)}
    if init:
        spec["initContainers"] = _containers(list(init))
    if ephemeral:
        spec["ephemeralContainers"] = _containers(list(ephemeral))
    return spec


def pod(namespace: str, name: str, images: list[str], *, image_ids: list[str] = (),
        init: list[str] = (), ephemeral: list[str] = ()) -> tuple[str, dict]:
    body = {"metadata": {"namespace": namespace, "name": name},
            "spec": pod_spec(images, init=init, ephemeral=ephemeral)}
    if image_ids:
        body["status"] = {"containerStatuses": [
            {"name": f"c{i}", "image": images[min(i, len(images) - 1)], "imageID": image_id,
             "ready": True, "restartCount": 0}
            for i, image_id in enumerate(image_ids)]}
    return "pods", body


def workload(kind: str, namespace: str, name: str, images: list[str], *,
             replicas: int = 1) -> tuple[str, dict]:
    """A Deployment, ReplicaSet, StatefulSet, DaemonSet, Job or CronJob with a pod template."""
    template = {"metadata": {}, "spec": pod_spec(images)}
    spec: dict
    if kind == "cronjobs":
        spec = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "jobs":
        spec = {"template": template}
    else:
        spec = {"selector": {"matchLabels": {"app": name}}, "template": template}
        if kind != "daemonsets":
            spec["replicas"] = replicas
        if kind == "statefulsets":
            spec["serviceName"] = name
    return kind, {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


@dataclass
class KubeEmulator:
    workdir: Path
    token: str = "emulator-token-1"
    objects: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    forbidden: set[str] = field(default_factory=set)  # kinds answered 403
    expire_continue: set[str] = field(default_factory=set)  # kinds whose continue gets 410
    delay: dict[str, float] = field(default_factory=dict)  # kind -> seconds per answer
    requests: Counter = field(default_factory=Counter)  # (kind, "first"|"continue") -> n
    unauthorized: int = 0
    resource_version: int = 1000
    url: str = ""
    ca_file: Path | None = None
    # Rotate the accepted token after this many authorized requests (credential expiry).
    rotate_after: int | None = None
    on_rotate: object = None  # called with the new token
    served: int = 0

    def add(self, *items: tuple[str, dict]) -> None:
        for kind, body in items:
            self.objects[kind].append(body)
            self.resource_version += 1

    def remove(self, kind: str, name: str) -> None:
        self.objects[kind] = [o for o in self.objects[kind] if o["metadata"]["name"] != name]
        self.resource_version += 1

    def kubeconfig(self, path: Path, *, context: str = "emu", user: dict | None = None,
                   token: str | None = None) -> Path:
        """A real kubeconfig for this emulator: CA file, server, a bearer token or ``user``
        (an exec plugin, say)."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "emu", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "emu-user", "user": user or {"token": token or self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "emu", "user": "emu-user"}}],
        }
        path.write_text(json.dumps(doc))
        return path

    # -- serving ---------------------------------------------------------------------------

    def _list(self, kind: str, namespace: str | None, query: dict[str, list[str]]
              ) -> tuple[int, dict]:
        items = [o for o in self.objects[kind]
                 if namespace is None or o["metadata"]["namespace"] == namespace]
        limit = int(query.get("limit", ["0"])[0] or 0)
        start = 0
        rv = str(self.resource_version)
        if cont := query.get("continue", [""])[0]:
            self.requests[(kind, "continue")] += 1
            if kind in self.expire_continue:
                return 410, _status(410, "Expired", "The provided continue parameter is too "
                                    "old to display a consistent list result.")
            token = json.loads(base64.b64decode(cont))
            start, rv = token["offset"], token["rv"]
        else:
            self.requests[(kind, "first")] += 1
        end = start + limit if limit else len(items)
        _, api_version, kind_name = KINDS[kind]
        meta: dict = {"resourceVersion": rv}
        if end < len(items):
            meta["continue"] = base64.b64encode(
                json.dumps({"offset": end, "rv": rv}).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        page = [{"apiVersion": api_version, "kind": kind_name, **o} for o in items[start:end]]
        return 200, {"apiVersion": api_version, "kind": f"{kind_name}List", "metadata": meta,
                     "items": page}

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                for g in ("apps", "batch")]}
        for group in ("/api/v1", "/apis/apps/v1", "/apis/batch/v1"):
            if path == group:
                return 200, {"kind": "APIResourceList", "groupVersion": group.split("/", 2)[2],
                             "resources": [{"name": k, "namespaced": True, "kind": v[2],
                                            "verbs": ["list"]}
                                           for k, v in KINDS.items() if v[0] == group]}
        for kind, (group, _, _) in KINDS.items():
            namespace = None
            if path == f"{group}/{kind}":
                pass
            elif path.startswith(f"{group}/namespaces/") and path.endswith(f"/{kind}"):
                namespace = path[len(f"{group}/namespaces/"):-len(f"/{kind}")]
            else:
                continue
            if seconds := self.delay.get(kind):
                time.sleep(seconds)
            if kind in self.forbidden:
                return 403, _status(403, "Forbidden", f'{kind} is forbidden: User '
                                    f'"system:serviceaccount:retention:retention" cannot list '
                                    f'resource "{kind}" at the cluster scope')
            return self._list(kind, namespace, query)
        return 404, _status(404, "NotFound", f"the server could not find {path}")

    def start(self) -> str:
        emulator = self
        cert, key = self_signed(self.workdir)
        self.ca_file = cert

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {emulator.token}":
                    emulator.unauthorized += 1
                    code, doc = 401, _status(401, "Unauthorized", "Unauthorized")
                else:
                    parts = urlsplit(self.path)
                    code, doc = emulator._route(parts.path, parse_qs(parts.query))
                    emulator.served += 1
                    if emulator.rotate_after and emulator.served == emulator.rotate_after:
                        emulator.token += "-rotated"
                        emulator.on_rotate(emulator.token)
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
