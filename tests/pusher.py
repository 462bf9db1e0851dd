"""Pushes real images, indexes and artifacts to a registry over the Distribution API."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

import httpx2

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int
    media_type: str
    blobs: tuple[tuple[str, int], ...] = ()  # config and layers

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                **extra}


class Pusher:
    def __init__(self, url: str, *, auth: tuple[str, str] | None = None):
        self.client = httpx2.Client(base_url=url, auth=auth, timeout=30)
        self._known_blobs: set[tuple[str, str]] = set()

    def close(self) -> None:
        self.client.close()

    def blob(self, repo: str, data: bytes) -> tuple[str, int]:
        digest = sha(data)
        if (repo, digest) in self._known_blobs:
            return digest, len(data)
        r = self.client.post(f"/v2/{repo}/blobs/uploads/")
        r.raise_for_status()
        location = r.headers["location"]
        sep = "&" if "?" in location else "?"
        r = self.client.put(f"{location}{sep}digest={digest}", content=data,
                            headers={"Content-Type": "application/octet-stream"})
        if r.status_code != 201:
            raise RuntimeError(f"blob upload failed: {r.status_code} {r.text}")
        self._known_blobs.add((repo, digest))
        return digest, len(data)

    def manifest(self, repo: str, reference: str | None, doc: dict | bytes,
                 media_type: str) -> Pushed:
        body = doc if isinstance(doc, bytes) else json.dumps(doc, indent=1).encode()
        digest = sha(body)
        r = self.client.put(f"/v2/{repo}/manifests/{reference or digest}", content=body,
                            headers={"Content-Type": media_type})
        if r.status_code != 201:
            raise RuntimeError(f"manifest push failed: {r.status_code} {r.text}")
        return Pushed(digest, len(body), media_type)

    def image(
        self,
        repo: str,
        tag: str | None = None,
        *,
        created: datetime | str | None = None,
        layers: tuple[bytes, ...] = (b"base layer",),
        docker: bool = False,
        arch: str = "amd64",
        annotations: dict[str, str] | None = None,
        subject: Pushed | None = None,
        extra: str = "",
    ) -> Pushed:
        config: dict = {"architecture": arch, "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": []}}
        if created is not None:
            config["created"] = created if isinstance(created, str) else \
                created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if extra:
            config["config"] = {"Labels": {"extra": extra}}
        config_blob = self.blob(repo, json.dumps(config).encode())
        layer_blobs = [self.blob(repo, data) for data in layers]
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        doc: dict = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                       "digest": config_blob[0], "size": config_blob[1]},
            "layers": [{"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": d,
                        "size": s} for d, s in layer_blobs],
        }
        if annotations:
            doc["annotations"] = annotations
        if subject is not None:
            doc["subject"] = subject.descriptor()
        pushed = self.manifest(repo, tag, doc, media_type)
        return Pushed(pushed.digest, pushed.size, media_type, (config_blob, *layer_blobs))

    def index(self, repo: str, tag: str | None, children: list[Pushed], *,
              docker: bool = False, annotations: dict[str, str] | None = None) -> Pushed:
        media_type = DOCKER_LIST if docker else OCI_INDEX
        archs = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
        doc: dict = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [c.descriptor(platform={"architecture": archs[i % 5], "os": "linux"})
                          for i, c in enumerate(children)],
        }
        if annotations:
            doc["annotations"] = annotations
        return self.manifest(repo, tag, doc, media_type)

    def cosign_signature(self, repo: str, subject: Pushed, suffix: str = "sig") -> Pushed:
        """A cosign-style signature: a manifest tagged sha256-<hex>.sig."""
        tag = f"sha256-{subject.digest.split(':')[1]}.{suffix}"
        payload = json.dumps({"critical": {"image": {"docker-manifest-digest":
                                                     subject.digest}}, "type": suffix}).encode()
        return self.image(repo, tag, layers=(payload,), created=None)

    def oci_referrer(self, repo: str, subject: Pushed, artifact_type: str,
                     payload: bytes = b"sbom") -> Pushed:
        """An OCI 1.1 referrer pushed by digest, listed in the sha256-<hex> fallback index
        as a client does for a registry without the referrers API."""
        empty = self.blob(repo, b"{}")
        layer = self.blob(repo, payload)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": OCI_EMPTY, "digest": empty[0], "size": empty[1]},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer[0],
                        "size": layer[1]}],
            "subject": subject.descriptor(),
        }
        referrer = self.manifest(repo, None, doc, OCI_MANIFEST)
        referrer = Pushed(referrer.digest, referrer.size, OCI_MANIFEST, (empty, layer))
        fallback_tag = f"sha256-{subject.digest.split(':')[1]}"
        existing = self.client.get(f"/v2/{repo}/manifests/{fallback_tag}",
                                   headers={"Accept": OCI_INDEX})
        entries = existing.json()["manifests"] if existing.status_code == 200 else []
        entries.append(referrer.descriptor(artifactType=artifact_type))
        self.manifest(repo, fallback_tag, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": entries}, OCI_INDEX)
        return referrer

    def tag(self, repo: str, tag: str, target: Pushed) -> None:
        r = self.client.get(f"/v2/{repo}/manifests/{target.digest}",
                            headers={"Accept": target.media_type})
        r.raise_for_status()
        self.manifest(repo, tag, r.content, target.media_type)

    def exists(self, repo: str, reference: str) -> bool:
        accept = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
        r = self.client.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
        return r.status_code == 200

    def tags(self, repo: str) -> list[str]:
        r = self.client.get(f"/v2/{repo}/tags/list")
        return sorted(r.json().get("tags") or []) if r.status_code == 200 else []


def seed_many(url: str, names: list[str], *, workers: int = 16) -> Pushed:
    """One small image in each repository, blobs mounted from the first: fast enough for
    thousands of repositories."""
    from concurrent.futures import ThreadPoolExecutor

    first = Pusher(url)
    image = first.image(names[0], "v1", created="2024-01-01T00:00:00Z")
    first.close()
    body_doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": image.blobs[0][0],
                   "size": image.blobs[0][1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in image.blobs[1:]],
    }

    def one(name: str) -> None:
        with httpx2.Client(base_url=url, timeout=30) as c:
            for digest, _ in image.blobs:
                r = c.post(f"/v2/{name}/blobs/uploads/",
                           params={"mount": digest, "from": names[0]})
                if r.status_code != 201:
                    raise RuntimeError(f"mount failed for {name}: {r.status_code} {r.text}")
            r = c.put(f"/v2/{name}/manifests/v1", content=json.dumps(body_doc, indent=1).encode(),
                      headers={"Content-Type": OCI_MANIFEST})
            if r.status_code != 201:
                raise RuntimeError(f"push failed for {name}: {r.status_code} {r.text}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names[1:]))
    return image
