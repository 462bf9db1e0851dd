"""Real clients pushing to the test registry: buildah, skopeo, oras-py, Helm (helm-sdkpy),
and BuildKit's exact attestation layout, written as an OCI layout and copied with skopeo.

BuildKit itself (docker buildx) cannot run here: it needs a daemon and containers. Its
layout is written as its attestation storage documentation describes it: an index holding
the platform image(s) and, after them, an attestation manifest per platform whose descriptor
carries ``vnd.docker.reference.type: attestation-manifest``,
``vnd.docker.reference.digest: <platform image>`` and platform ``unknown/unknown``; the
attestation's config has no ``created`` and its layers are in-toto statements.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"


def _run(args: list[str], **kw) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _gzip_tar(name: str, content: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass(frozen=True)
class BuildxImage:
    index: str
    platform: str
    attestation: str


class OciLayout:
    """An OCI image layout directory, the way `docker buildx build --output type=oci` or
    BuildKit's exporter writes one."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self._refs: list[dict] = []

    def blob(self, data: bytes) -> dict:
        digest = _sha(data)
        (self.path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def json_blob(self, doc: dict, media_type: str) -> dict:
        return {"mediaType": media_type, **self.blob(json.dumps(doc, indent=2).encode())}

    def buildx_image(self, tag: str, *, created: datetime, content: bytes) -> BuildxImage:
        """What `docker buildx build --push` writes by default (provenance on, mode=min)."""
        layer_gz = _gzip_tar("app", content)
        layer = {"mediaType": OCI_LAYER, **self.blob(layer_gz)}
        diff_id = _sha(gzip.decompress(layer_gz))
        config = self.json_blob({
            "architecture": "amd64", "os": "linux",
            "created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "config": {"Cmd": ["/app"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                         "created_by": "COPY app /app # buildkit",
                         "comment": "buildkit.dockerfile.v0"}],
        }, OCI_CONFIG)
        platform = self.json_blob({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": config, "layers": [layer]}, OCI_MANIFEST)
        statement = json.dumps({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": f"pkg:docker/app@{tag}?platform=linux%2Famd64",
                         "digest": {"sha256": platform["digest"].split(":")[1]}}],
            "predicate": {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1",
                          "metadata": {"buildStartedOn": created.isoformat()}},
        }).encode()
        att_layer = {"mediaType": IN_TOTO, **self.blob(statement),
                     "annotations": {"in-toto.io/predicate-type":
                                     "https://slsa.dev/provenance/v0.2"}}
        att_config = self.json_blob({"architecture": "unknown", "os": "unknown", "config": {},
                                     "rootfs": {"type": "layers",
                                                "diff_ids": [att_layer["digest"]]}}, OCI_CONFIG)
        attestation = self.json_blob({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                      "config": att_config, "layers": [att_layer]}, OCI_MANIFEST)
        index = self.json_blob({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**platform, "platform": {"architecture": "amd64", "os": "linux"}},
            {**attestation,
             "annotations": {"vnd.docker.reference.digest": platform["digest"],
                             "vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ]}, OCI_INDEX)
        self._refs.append({**index, "annotations": {"org.opencontainers.image.ref.name": tag}})
        (self.path / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._refs}))
        return BuildxImage(index["digest"], platform["digest"], attestation["digest"])


def skopeo_copy(layout: Path, tag: str, host: str, repo: str, *,
                creds: str | None = None) -> None:
    """Copy a tagged index with all its manifests, byte for byte. ``creds``: user:password
    for the destination (the token exchange as docker login does it)."""
    _run(["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
          *([f"--dest-creds={creds}"] if creds else []),
          f"oci:{layout}:{tag}", f"docker://{host}/{repo}:{tag}"])


class Buildah:
    """buildah, rootful with the vfs driver (no overlay, no user namespaces needed)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._base = ["buildah", "--storage-driver", "vfs", "--root", str(workdir / "root"),
                      "--runroot", str(workdir / "run")]
        self._env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}

    def push(self, host: str, repo: str, tag: str, *, content: bytes,
             timestamp: int | None = 0) -> str:
        """Build FROM scratch with one file, commit (``--timestamp 0``: 1970, as
        reproducible builds do), push; the pushed digest."""
        container = _run([*self._base, "from", "scratch"], env=self._env).strip()
        payload = self.workdir / "payload"
        payload.write_bytes(content)
        _run([*self._base, "copy", container, str(payload), "/payload"], env=self._env)
        image = f"localhost/{repo}:{tag}"
        stamp = [] if timestamp is None else ["--timestamp", str(timestamp)]
        _run([*self._base, "commit", *stamp, container, image], env=self._env)
        _run([*self._base, "rm", container], env=self._env)
        digest_file = self.workdir / "digest"
        _run([*self._base, "push", "--tls-verify=false", "--digestfile", str(digest_file),
              image, f"docker://{host}/{repo}:{tag}"], env=self._env)
        return digest_file.read_text().strip()
