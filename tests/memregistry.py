"""An in-memory registry speaking the part of the OCI Distribution API that retention uses,
served over loopback HTTP by tests/loopback.py (``handle``), with faults injected on DELETE.

It is for property tests that need hundreds of registries a second; behaviour against a real
registry is the business of the tests that start distribution. It behaves like distribution
2.8 where retention can tell: paged ``_catalog`` and ``tags/list`` with ``Link`` headers, a
404 for the referrers API, deleting a manifest by digest removes every tag on it, and
``gc()`` frees what distribution's mark-and-sweep garbage collector would (blobs that no
remaining manifest in any repository references: manifest bodies, configs, layers, and the
child manifests an index lists). All of it is computed here, independently of retention.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httpx2

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
COSIGN_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"

FAIL, BUSY, RETAG, OUT_OF_BAND, STOP = "fail", "busy", "retag", "out-of-band", "stop"
FAULT_KINDS = (FAIL, BUSY, RETAG, OUT_OF_BAND, STOP)
ROLLBACK_TAG = "rollback"

Key = tuple[str, str]  # (repository, digest)

_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>tags/list|manifests|blobs|referrers)"
                   r"(?:/(?P<ref>[^/]+))?$")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Pushed:
    digest: str
    size: int
    media_type: str

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                **extra}


@dataclass(frozen=True, slots=True)
class Stored:
    """A manifest in one repository: its body and what it references."""

    body: bytes
    media_type: str
    blobs: tuple[str, ...]  # config and layers
    children: tuple[str, ...]  # manifests an index lists
    subject: str | None  # the OCI subject field


@dataclass(frozen=True, slots=True)
class Fault:
    """What happens on the ``at``-th DELETE request (counted from 0, modulo the number of
    deletions planned) the registry receives.

    ``pick`` chooses, deterministically, the manifest (and the tag) a retag or an
    out-of-band deletion acts on, among those the plan deletes later when there are any.
    """

    at: int
    kind: str  # one of FAULT_KINDS
    pick: int = 0
    # For examples written by hand: fire on the DELETE of this digest instead (``at`` is
    # then ignored; several faults may fire on one DELETE, in order), and act on that
    # manifest (a retag, an out-of-band deletion), in ``target_repo`` when given (else the
    # DELETE's repository for a retag, any for an out-of-band deletion). Repositories are
    # deleted from in parallel, so only faults within one repository fire in a known order.
    on: str | None = None
    target: str | None = None
    target_repo: str | None = None


@dataclass(slots=True)
class _Repo:
    manifests: dict[str, Stored] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest


@dataclass(frozen=True, slots=True)
class Deletion:
    """A DELETE from the client that deleted a manifest (202)."""

    repository: str
    digest: str
    tags: frozenset[str]  # the tags it removed


class MemRegistry:
    def __init__(self, *, page_size: int = 2):
        self.page_size = page_size  # the most a listing page holds, whatever n asks for
        self.blobs: dict[str, bytes] = {}  # one blob store for every repository
        self.repos: dict[str, _Repo] = {}
        # What happened during a run, for the assertions.
        self.deleted: list[Deletion] = []  # 202 answers to the client's DELETEs
        # 404 answers to the client's DELETEs, and to its reads by digest of a manifest
        # someone else deleted (retention reads each body, for its journal, before deleting)
        self.not_found: list[Key] = []
        self.out_of_band: list[Key] = []  # deleted by a fault, not by the client
        self.fault_tags: dict[tuple[str, str], str] = {}  # tags moved by faults -> digest
        self.retagged: list[Key] = []  # every manifest a fault moved a tag onto
        self.fired: list[Fault] = []
        self.unexpected: list[str] = []  # requests retention has no business sending
        self.delete_requests: list[Key] = []  # every DELETE the client sent, in order
        self.deletes_after_stop: list[str] = []
        self.stopped_in: str | None = None  # the repository whose DELETE saw the stop
        self.faults: dict[int, Fault] = {}
        self.faults_on: dict[str, list[Fault]] = {}
        self.stop: asyncio.Event | None = None
        self.planned: list[Key] = []  # what the plan deletes, for faults to aim at
        self.history: dict[Key, Stored] = {}  # every manifest pushed, deleted or not
        self._delete_count = 0
        self._stopped = False

    # -- building -------------------------------------------------------------------------

    def add_repository(self, name: str) -> None:
        self._repo(name)

    def _repo(self, name: str) -> _Repo:
        return self.repos.setdefault(name, _Repo())

    def blob(self, data: bytes) -> Pushed:
        self.blobs[sha(data)] = data
        return Pushed(sha(data), len(data), "application/octet-stream")

    def manifest(self, repo: str, doc: dict, *, tag: str | None = None) -> Pushed:
        body = json.dumps(doc, indent=1, sort_keys=True).encode()
        digest = sha(body)
        self.blobs[digest] = body
        media_type = doc["mediaType"]
        children = tuple(m["digest"] for m in doc.get("manifests", ()))
        blobs = tuple(b["digest"] for b in (doc.get("config"), *doc.get("layers", ())) if b)
        subject = doc["subject"]["digest"] if "subject" in doc else None
        stored = Stored(body, media_type, blobs, children, subject)
        self._repo(repo).manifests[digest] = stored
        self.history[(repo, digest)] = stored
        if tag is not None:
            self.tag(repo, tag, digest)
        return Pushed(digest, len(body), media_type)

    def image(self, repo: str, *, config: dict, layers: Iterable[bytes],
              tag: str | None = None, subject: Pushed | None = None,
              layer_type: str = OCI_LAYER, config_type: str = OCI_CONFIG,
              artifact_type: str | None = None) -> Pushed:
        config_blob = self.blob(json.dumps(config, sort_keys=True).encode())
        doc: dict = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": config_blob.digest,
                       "size": config_blob.size},
            "layers": [{"mediaType": layer_type, "digest": b.digest, "size": b.size}
                       for b in map(self.blob, layers)],
        }
        if artifact_type is not None:
            doc["artifactType"] = artifact_type
        if subject is not None:
            doc["subject"] = subject.descriptor()
        return self.manifest(repo, doc, tag=tag)

    def index(self, repo: str, children: Iterable[Pushed], *, tag: str | None = None,
              extra: dict | None = None) -> Pushed:
        archs = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, **(extra or {}),
               "manifests": [c.descriptor(platform={"architecture": archs[i % 5],
                                                    "os": "linux"})
                             for i, c in enumerate(children)]}
        return self.manifest(repo, doc, tag=tag)

    def cosign_signature(self, repo: str, subject: Pushed) -> Pushed:
        """A cosign signature: an image tagged ``sha256-<hex>.sig``."""
        payload = json.dumps({"critical": {"image": {"docker-manifest-digest":
                                                     subject.digest}}}).encode()
        return self.image(repo, config={"architecture": "", "os": "", "cosign": True},
                          layers=[payload], layer_type=COSIGN_LAYER,
                          tag=f"sha256-{subject.digest.split(':')[1]}.sig")

    def oci_referrers(self, repo: str, subject: Pushed, payloads: Iterable[bytes]) -> list[Pushed]:
        """OCI 1.1 referrers with ``subject``, listed in the ``sha256-<hex>`` fallback index
        (pushed once, with all of them: a re-pushed fallback index would leave the old one
        behind as an orphan no listing shows)."""
        referrers = [self.image(repo, config={}, layers=[p], config_type=OCI_EMPTY,
                                layer_type="application/spdx+json", subject=subject,
                                artifact_type="application/spdx+json") for p in payloads]
        self.index(repo, referrers, tag=f"sha256-{subject.digest.split(':')[1]}")
        return referrers

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self._repo(repo).tags[tag] = digest

    def untag(self, repo: str, tag: str) -> None:
        """What re-pushing the tag elsewhere does to the manifest it was on."""
        self._repo(repo).tags.pop(tag, None)

    # -- looking -------------------------------------------------------------------------

    def present(self) -> set[Key]:
        return {(r, d) for r, repo in self.repos.items() for d in repo.manifests}

    def stored(self, repo: str, digest: str) -> Stored | None:
        r = self.repos.get(repo)
        return r.manifests.get(digest) if r else None

    def tags_of(self, repo: str, digest: str) -> set[str]:
        return {t for t, d in self._repo(repo).tags.items() if d == digest}

    def all_tags(self) -> dict[tuple[str, str], str]:
        return {(r, t): d for r, repo in self.repos.items() for t, d in repo.tags.items()}

    def gc(self, present: Collection[Key] | None = None) -> int:
        """Bytes distribution's garbage collector frees when ``present`` (default: what is
        there now) are the manifests left: every stored blob that none of them references."""
        marked = self.marked(self.present() if present is None else present)
        return sum(len(data) for digest, data in self.blobs.items() if digest not in marked)

    def marked(self, present: Collection[Key]) -> set[str]:
        """The blobs the garbage collector's mark phase keeps when ``present`` are left."""
        marked: set[str] = set()
        for key in present:
            marked |= self.own_blobs(key)
            # distribution 2.8 marks an index's references: the body of each child it lists,
            # there or not, and not the child's config and layers (the child, if present,
            # marks those itself).
            marked.update(self.history[key].children)
        return marked

    def own_blobs(self, key: Key) -> set[str]:
        """A manifest's body, config and layers (not the children an index lists)."""
        return {key[1], *self.history[key].blobs}

    def size(self, blob: str) -> int:
        return len(self.blobs[blob])

    # -- the run ---------------------------------------------------------------------------

    def arm(self, *, faults: Iterable[Fault], planned: Iterable[Key],
            stop: asyncio.Event | None) -> None:
        """Faults to inject from now on; ``planned`` in the order the plan lists them."""
        self.planned = list(planned)
        self.faults = {}
        self.faults_on = {}
        for f in faults:  # so that most faults fire, whatever the size of the plan
            if f.on is not None:
                self.faults_on.setdefault(f.on, []).append(f)
            else:
                self.faults.setdefault(f.at % max(1, len(self.planned)), f)
        self.stop = stop

    def _remove(self, repo: str, digest: str) -> frozenset[str]:
        r = self._repo(repo)
        del r.manifests[digest]
        removed = frozenset(t for t, d in r.tags.items() if d == digest)
        for t in removed:
            del r.tags[t]
        return removed

    def _aim(self, fault: Fault, exclude: Key, *, repo: str | None) -> Key | None:
        """A manifest for a fault to act on: one the plan deletes later when there is one
        (that is where a fault hurts), else any other."""
        if fault.target is not None:
            return next((k for k in sorted(self.present()) if k[1] == fault.target
                         and (repo is None or k[0] == repo)), None)
        pick = fault.pick
        requested = {(d.repository, d.digest) for d in self.deleted} | set(self.not_found)
        present = self.present()

        def usable(key: Key) -> bool:
            return key != exclude and key in present and (repo is None or key[0] == repo)

        later = [k for k in self.planned if usable(k) and k not in requested]
        pool = later or sorted(k for k in present if usable(k))
        return pool[pick % len(pool)] if pool else None

    def _fire(self, fault: Fault, repo: str, digest: str) -> httpx2.Response | None:
        self.fired.append(fault)
        if fault.kind == FAIL:
            return _error(500, "UNKNOWN", "injected failure")
        if fault.kind == BUSY:
            return _error(503, "UNAVAILABLE", "injected: try again")
        if fault.kind == STOP:
            assert self.stop is not None
            self.stop.set()
            self._stopped = True
            self.stopped_in = repo
            return None
        if fault.kind == OUT_OF_BAND:
            target = self._aim(fault, (repo, digest), repo=fault.target_repo)
            if target is not None:
                for tag in self._remove(*target):  # not the run's doing
                    self.fault_tags.pop((target[0], tag), None)
                self.out_of_band.append(target)
            return None
        # RETAG: a rollback points a tag at a manifest the run is about to delete: a tag
        # taken from another manifest (never the one being deleted: that race is the one
        # the confirmation window bounds) or a new one.
        target = self._aim(fault, (repo, digest), repo=fault.target_repo or repo)
        if target is not None:
            repo, r = target[0], self._repo(target[0])
            movable = sorted(t for t, d in r.tags.items()
                             if d not in (digest, target[1]) and not t.startswith("sha256-"))
            choices = [ROLLBACK_TAG, *movable]
            tag = choices[(fault.pick // 7) % len(choices)]
            r.tags[tag] = target[1]
            self.fault_tags[(repo, tag)] = target[1]
            self.retagged.append(target)
        return None

    # -- HTTP ------------------------------------------------------------------------------

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        method = request.method
        if path == "/v2/" and method == "GET":
            return httpx2.Response(200, json={})
        if path == "/v2/_catalog" and method == "GET":
            return self._page(request, sorted(self.repos), "repositories", {})
        m = _PATH.match(path)
        if m is None or m["name"] not in self.repos:
            self._unexpected(request, known=m is not None)
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        name, kind, ref = m["name"], m["kind"], m["ref"]
        repo = self.repos[name]
        if kind == "tags/list" and method == "GET" and ref is None:
            return self._page(request, sorted(repo.tags), "tags", {"name": name})
        if kind == "referrers":
            return _error(404, "NOT_FOUND", "no route")  # distribution 2.8 has no such API
        if kind == "blobs" and method == "GET" and ref is not None:
            data = self.blobs.get(ref)
            if data is None:
                return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return httpx2.Response(200, content=data,
                                   headers={"Docker-Content-Digest": ref,
                                            "Content-Type": "application/octet-stream"})
        if kind == "manifests" and ref is not None:
            if method in ("GET", "HEAD"):
                answer = self._get_manifest(repo, ref, head=method == "HEAD")
                if answer.status_code == 404 and (name, ref) in self.out_of_band:
                    self.not_found.append((name, ref))
                return answer
            if method == "DELETE":
                return await self._delete(name, ref)
        self._unexpected(request, known=True)
        return _error(405, "UNSUPPORTED", "not supported")

    def _unexpected(self, request: httpx2.Request, *, known: bool) -> None:
        # A 404 for an unknown repository is an ordinary answer; anything else is not
        # something retention should ask.
        if known and request.method != "GET":
            self.unexpected.append(f"{request.method} {request.url.path}")

    def _get_manifest(self, repo: _Repo, ref: str, *, head: bool) -> httpx2.Response:
        digest = ref if ref.startswith("sha256:") else repo.tags.get(ref)
        stored = repo.manifests.get(digest) if digest else None
        if stored is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        headers = {"Docker-Content-Digest": digest, "Content-Type": stored.media_type}
        if head:
            headers["Content-Length"] = str(len(stored.body))
            return httpx2.Response(200, headers=headers)
        return httpx2.Response(200, content=stored.body, headers=headers)

    async def _delete(self, repo: str, ref: str) -> httpx2.Response:
        if self._stopped:
            self.deletes_after_stop.append(f"{repo}@{ref}")
        if not ref.startswith("sha256:"):
            self.unexpected.append(f"DELETE {repo} by tag {ref}")
            return _error(400, "UNSUPPORTED", "delete by tag")
        self.delete_requests.append((repo, ref))
        at = self._delete_count
        self._delete_count += 1
        faults = self.faults_on.pop(ref, None) or \
            ([self.faults[at]] if at in self.faults else [])
        answers = [a for f in faults if (a := self._fire(f, repo, ref)) is not None]
        if answers:
            return answers[0]
        await asyncio.sleep(0)  # let anything else in flight interleave, as a network would
        if ref not in self._repo(repo).manifests:
            self.not_found.append((repo, ref))
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        self.deleted.append(Deletion(repo, ref, self._remove(repo, ref)))
        return httpx2.Response(202)

    def _page(self, request: httpx2.Request, items: list[str], key: str,
              extra: dict[str, object]) -> httpx2.Response:
        params = request.url.params
        n = min(int(params.get("n") or self.page_size), self.page_size)
        last = params.get("last")
        rest = [i for i in items if last is None or i > last]
        page = rest[:n]
        headers = {}
        if len(rest) > n:
            path = urlsplit(str(request.url)).path
            headers["Link"] = f'<{path}?last={quote(page[-1], safe="")}&n={n}>; rel="next"'
        return httpx2.Response(200, json={**extra, key: page}, headers=headers)


def _error(status: int, code: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"errors": [{"code": code, "message": message}]})
