"""Kubernetes exec credential plugins (``users[].user.exec`` in a kubeconfig), as client-go
runs them: EKS's ``aws eks get-token``, GKE's ``gke-gcloud-auth-plugin``, AKS's
``kubelogin``.

lightkube runs only plugins that declare ``client.authentication.k8s.io/v1alpha1`` or
``v1beta1``, and refuses ``v1`` (the version kubectl has written since Kubernetes 1.22, and
the only one left once v1beta1 goes). This module runs all three, the same way: the
plugin's ``env`` beside the environment, ``KUBERNETES_EXEC_INFO`` describing the call (and
the cluster, with ``provideClusterInfo``), no terminal (``interactiveMode: Always`` is
refused, as kubectl refuses it without one), a bounded wait. Its answer must be an
ExecCredential of the version asked for, with a bearer token; the token is used until its
``expirationTimestamp``, or until the cluster answers 401, and the plugin is run again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2

API_VERSIONS = frozenset({"client.authentication.k8s.io/v1",
                          "client.authentication.k8s.io/v1beta1",
                          "client.authentication.k8s.io/v1alpha1"})
_V1 = "client.authentication.k8s.io/v1"
_EXEC_EXTENSION = "client.authentication.k8s.io/exec"
# Renew a token this long before the plugin said it expires.
_MARGIN = 10.0
# An ExecCredential is a few KiB (a token; a client certificate and key at most): a plugin
# that writes more has gone wrong, and is not read into memory whole. Of its stderr, the
# head is kept for the error message and the rest read and dropped.
MAX_ANSWER_BYTES = 1024 * 1024
_STDERR_KEPT = 4096


class ExecCredentialError(Exception):
    """The plugin cannot give a token: its configuration, its run, or its answer."""


@dataclass(frozen=True, slots=True)
class ExecPlugin:
    """One kubeconfig user's ``exec``, as written (with the fields lightkube drops)."""

    api_version: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # ExecCredential.spec.cluster when the user sets provideClusterInfo, else None.
    cluster: Mapping[str, Any] | None = None


def exec_plugin(doc: Mapping[str, Any], user: str, cluster: str, *, base: Path
                ) -> ExecPlugin | None:
    """The exec plugin of kubeconfig user ``user`` (None when it has none), for ``cluster``.
    ``base``: the kubeconfig's directory (a relative command or CA file is relative to it,
    as client-go reads them). Raises ExecCredentialError for what kubectl refuses too."""
    users = {u.get("name"): u.get("user") or {} for u in doc.get("users") or ()
             if isinstance(u, dict)}
    spec = (users.get(user) or {}).get("exec")
    if not isinstance(spec, dict):
        return None
    version = spec.get("apiVersion")
    if version not in API_VERSIONS:
        raise ExecCredentialError(f"exec plugin apiVersion {version!r} is not one of "
                                  f"{', '.join(sorted(API_VERSIONS))}")
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise ExecCredentialError("exec plugin without a command")
    mode = spec.get("interactiveMode")
    if version == _V1 and mode is None:
        # client-go refuses it: v1 makes the plugin say whether it needs a terminal.
        raise ExecCredentialError("exec plugin of client.authentication.k8s.io/v1 without "
                                  "interactiveMode (set Never or IfAvailable)")
    if mode == "Always":
        raise ExecCredentialError("exec plugin needs a terminal (interactiveMode: Always); "
                                  "retention runs without one")
    if os.sep in command and not os.path.isabs(command):
        command = str(base / command)
    env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or ()
           if isinstance(e, dict) and "name" in e and "value" in e}
    info = None
    if spec.get("provideClusterInfo"):
        clusters = {c.get("name"): c.get("cluster") or {} for c in doc.get("clusters") or ()
                    if isinstance(c, dict)}
        info = _cluster_info(clusters.get(cluster) or {}, base)
    return ExecPlugin(version, command, tuple(str(a) for a in spec.get("args") or ()), env,
                      info)


def _cluster_info(cluster: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """ExecCredential.spec.cluster: what the plugin may need to know of the cluster."""
    info: dict[str, Any] = {"server": cluster.get("server", "")}
    for key in ("tls-server-name", "insecure-skip-tls-verify", "proxy-url",
                "disable-compression"):
        if key in cluster:
            info[key] = cluster[key]
    ca = cluster.get("certificate-authority-data")
    if ca is None and cluster.get("certificate-authority"):
        path = Path(cluster["certificate-authority"])
        try:
            ca = base64.b64encode((path if path.is_absolute() else base / path).read_bytes()
                                  ).decode()
        except OSError as exc:
            raise ExecCredentialError(f"the cluster's certificate-authority for the exec "
                                      f"plugin: {exc}") from None
    if ca is not None:
        info["certificate-authority-data"] = ca
    for extension in cluster.get("extensions") or ():
        if isinstance(extension, dict) and extension.get("name") == _EXEC_EXTENSION:
            info["config"] = extension.get("extension")
    return info


async def _answer(stream: asyncio.StreamReader, name: str) -> bytes:
    """The plugin's stdout, up to MAX_ANSWER_BYTES (ExecCredentialError beyond)."""
    out = bytearray()
    while chunk := await stream.read(65536):
        out += chunk
        if len(out) > MAX_ANSWER_BYTES:
            raise ExecCredentialError(f"exec plugin {name} wrote more than "
                                      f"{MAX_ANSWER_BYTES // 1024 // 1024} MiB; an "
                                      "ExecCredential is a few KiB")
    return bytes(out)


async def _head(stream: asyncio.StreamReader) -> bytes:
    """The first _STDERR_KEPT bytes of the plugin's stderr; the rest is read and dropped
    (a plugin blocked on a full pipe would never end)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[:_STDERR_KEPT - len(kept)]
    return bytes(kept)


def _expiry(status: Mapping[str, Any]) -> float | None:
    """When the token expires (time.time()), None when the plugin does not say."""
    stamp = status.get("expirationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ExecCredentialError(f"exec plugin answered an expirationTimestamp that is not "
                                  f"a time: {str(stamp)[:64]!r}") from None


async def run_plugin(plugin: ExecPlugin, *, timeout: float) -> tuple[str, float | None]:
    """Run the plugin once: its token, and when it expires."""
    info: dict[str, Any] = {"interactive": False}
    if plugin.cluster is not None:
        info["cluster"] = plugin.cluster
    env = {**os.environ, **plugin.env, "KUBERNETES_EXEC_INFO": json.dumps(
        {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": info})}
    name = os.path.basename(plugin.command)
    try:
        # A process group of its own: a plugin is often a script that runs the real one,
        # and what it started is stopped with it.
        process = await asyncio.create_subprocess_exec(
            plugin.command, *plugin.args, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
    except OSError as exc:
        raise ExecCredentialError(f"exec plugin {name} cannot be run: {exc}") from None
    reading = asyncio.gather(_answer(process.stdout, name), _head(process.stderr))
    try:
        async with asyncio.timeout(timeout):
            out, err = await reading
            await process.wait()
    except (TimeoutError, ExecCredentialError) as exc:
        reading.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, ExecCredentialError):
            raise
        raise ExecCredentialError(f"exec plugin {name} gave no answer in {timeout:g} s"
                                  ) from None
    if process.returncode != 0:
        # Its stderr says why (a login to renew, a missing profile); a token is not printed
        # there by a plugin that failed to make one.
        raise ExecCredentialError(f"exec plugin {name} exited with {process.returncode}: "
                                  f"{err.decode(errors='replace').strip()[:500]}")
    try:
        answer = json.loads(out)
        version, kind, status = answer["apiVersion"], answer["kind"], answer["status"]
    except (ValueError, KeyError, TypeError):
        raise ExecCredentialError(f"exec plugin {name} did not answer an ExecCredential "
                                  "(JSON with apiVersion, kind and status)") from None
    if kind != "ExecCredential" or version != plugin.api_version:
        raise ExecCredentialError(f"exec plugin {name} answered {kind} {version}, not the "
                                  f"ExecCredential {plugin.api_version} it is configured for")
    token = status.get("token") if isinstance(status, dict) else None
    if not isinstance(token, str) or not token:
        if isinstance(status, dict) and status.get("clientCertificateData"):
            raise ExecCredentialError(f"exec plugin {name} answered a client certificate; "
                                      "only a bearer token is supported")
        raise ExecCredentialError(f"exec plugin {name} answered no token")
    return token, _expiry(status)


class ExecCredentialTransport(httpx2.AsyncBaseTransport):
    """Requests to the cluster with the plugin's token: the plugin runs on the first
    request, when its token has expired, and once more when the cluster answers 401."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, plugin: ExecPlugin, *,
                 timeout: float):
        self._inner = inner
        self._plugin = plugin
        self._timeout = timeout
        self._token: str | None = None
        self._expires: float | None = None
        self._lock = asyncio.Lock()

    async def _current(self, *, refused: str | None = None) -> str:
        async with self._lock:  # one run of the plugin for all the requests waiting
            fresh = self._token is not None and self._token != refused and (
                self._expires is None or self._expires - _MARGIN > time.time())
            if not fresh:
                self._token, self._expires = await run_plugin(self._plugin,
                                                              timeout=self._timeout)
            assert self._token is not None
            return self._token

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        token = await self._current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = await self._inner.handle_async_request(request)
        if response.status_code != 401:
            return response
        await response.aclose()
        # Revoked or rotated before its time: a new one, once.
        request.headers["Authorization"] = f"Bearer {await self._current(refused=token)}"
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
