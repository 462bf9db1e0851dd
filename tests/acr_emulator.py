"""An in-process emulator of Azure Container Registry's documented data-plane API, owned by
this suite (ACR itself cannot run here): the OCI endpoints retention uses, ``/acr/v1/``
listing with paging, the 401 challenge with basic-credential and Entra ID token exchange,
``changeableAttributes`` locks, repository deletion, and 429 throttling with Retry-After."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(claims: dict) -> str:
    return f"{_b64(b'{}')}.{_b64(json.dumps(claims).encode())}.{_b64(uuid.uuid4().bytes)}"


@dataclass
class Entry:
    body: bytes
    media_type: str
    created: datetime
    delete_enabled: bool = True


@dataclass
class TagEntry:
    digest: str
    delete_enabled: bool = True


@dataclass
class EmulatorFault:
    """A scripted fault: on a request whose method matches and whose path and query
    ``path`` (a regular expression) is found in, after ``skip`` such requests went through
    untouched, answer ``status`` with ``code``, or, with ``hook``, run it (it may change the
    registry while the request is in flight) and then answer normally."""

    method: str  # "*" for any
    path: str
    status: int = 404
    code: str = "NAME_UNKNOWN"
    times: int = 1
    skip: int = 0
    hook: Callable[[str, str], None] | None = None
    fail_after_hook: bool = False  # with hook: answer ``status`` after running it


@dataclass
class AccessToken:  # what azure-identity's get_token returns
    token: str
    expires_on: int


class FakeEntraCredential:
    """Stands in for DefaultAzureCredential: issues Entra tokens the emulator accepts."""

    def __init__(self, emulator: AcrEmulator, lifetime: int = 3600):
        self.emulator = emulator
        self.lifetime = lifetime
        self.calls = 0

    def get_token(self, *scopes: str) -> AccessToken:
        assert scopes == ("https://containerregistry.azure.net/.default",), scopes
        self.calls += 1
        expires = int(time.time()) + self.lifetime
        token = fake_jwt({"aud": "https://containerregistry.azure.net", "exp": expires})
        self.emulator.entra_tokens.add(token)
        return AccessToken(token, expires)


@dataclass
class AcrEmulator:
    admin: tuple[str, str] = ("admin", "admin-password-123")
    access_lifetime: int = 3600  # seconds an access token lives
    refresh_lifetime: int = 3 * 3600
    repos: dict[str, dict[str, Entry]] = field(default_factory=dict)
    tags: dict[str, dict[str, TagEntry]] = field(default_factory=dict)
    blobs: dict[str, set[str]] = field(default_factory=dict)  # repo -> blob digests it holds
    entra_tokens: set[str] = field(default_factory=set)
    refresh_tokens: dict[str, float] = field(default_factory=dict)
    access_tokens: dict[str, tuple[float, str]] = field(default_factory=dict)
    throttle: list[list] = field(default_factory=list)  # [method, regex, times, status]
    faults: list[EmulatorFault] = field(default_factory=list)
    locked_repos: set[str] = field(default_factory=set)  # deleteEnabled: false on the repo
    # Every write refused with 405 though nothing is locked: what ACR answers when the
    # registry's storage quota is reached.
    refuse_writes: bool = False
    # The error code of a 405 refusing a DELETE (ACR documents the status, not the code).
    refusal_code: str = "REGISTRY_DISALLOWED_OPERATION"
    requests: list[tuple[str, str]] = field(default_factory=list)
    answered: list[tuple[str, str, int]] = field(default_factory=list)
    issued: Counter = field(default_factory=Counter)
    lock: threading.RLock = field(default_factory=threading.RLock)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    # -- content ---------------------------------------------------------------------------

    def push(self, repo: str, doc: dict, *, tags: tuple[str, ...] = (),
             created: datetime | None = None, media_type: str = OCI_MANIFEST) -> str:
        body = json.dumps(doc, indent=1).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with self.lock:
            self.blobs.setdefault(repo, set()).update(
                d["digest"] for d in [doc.get("config") or {}, *doc.get("layers", [])]
                if "digest" in d)
            self.repos.setdefault(repo, {})[digest] = Entry(
                body, media_type, created or datetime.now(UTC))
            for tag in tags:
                self.tags.setdefault(repo, {})[tag] = TagEntry(digest)
        return digest

    def image(self, repo: str, *tags: str, created: datetime | None = None, seed: str = "",
              subject: str | None = None) -> str:
        def blob(text: str) -> dict:
            data = text.encode()
            return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": 1000}
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {**blob(f"config {repo} {seed}"),
                          "mediaType": "application/vnd.oci.image.config.v1+json"},
               "layers": [blob(f"layer {repo} {seed}")]}
        if subject is not None:
            doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        return self.push(repo, doc, tags=tags, created=created)

    def index(self, repo: str, *tags: str, children: list[str],
              created: datetime | None = None) -> str:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": c,
             "size": len(self.repos[repo][c].body)} for c in children]}
        return self.push(repo, doc, tags=tags, created=created, media_type=OCI_INDEX)

    def lock_manifest(self, repo: str, digest: str) -> None:
        self.repos[repo][digest].delete_enabled = False

    def lock_tag(self, repo: str, tag: str) -> None:
        self.tags[repo][tag].delete_enabled = False

    def lock_repository(self, repo: str) -> None:
        self.locked_repos.add(repo)

    def tags_of(self, repo: str, digest: str) -> list[str]:
        return sorted(t for t, e in self.tags.get(repo, {}).items() if e.digest == digest)

    def count(self, method: str, pattern: str, *, status: int | None = None) -> int:
        rx = re.compile(pattern)
        if status is not None:
            return sum(1 for m, p, s in self.answered
                       if m == method and s == status and rx.search(p))
        return sum(1 for m, p in self.requests if m == method and rx.search(p))

    def take_fault(self, method: str, path: str) -> EmulatorFault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method in ("*", method) and re.search(fault.path, path):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                return fault
        return None

    # -- server ----------------------------------------------------------------------------

    def start(self) -> str:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                      ctype: str = "application/json") -> None:
                with emulator.lock:
                    emulator.answered.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, doc: dict, headers: dict | None = None) -> None:
                self._send(status, json.dumps(doc).encode(), headers)

            def _error(self, status: int, code: str, message: str,
                       headers: dict | None = None) -> None:
                self._json(status, {"errors": [{"code": code, "message": message}]}, headers)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                self._body = raw
                parts = urlsplit(self.path)
                path, query = parts.path, parse_qs(parts.query)
                with emulator.lock:
                    emulator.requests.append((self.command, self.path))
                    fault = emulator.take_fault(self.command, self.path)
                if fault is not None and fault.hook is not None:
                    fault.hook(self.command, self.path)
                if fault is not None and (fault.hook is None or fault.fail_after_hook):
                    return self._error(fault.status, fault.code, "injected")
                with emulator.lock:
                    for rule in emulator.throttle:
                        method, rx, times, status = rule
                        if times > 0 and method in ("*", self.command) and re.search(rx, path):
                            rule[2] -= 1
                            self._error(status, "TOOMANYREQUESTS", "throttled",
                                        {"Retry-After": "1"})
                            return
                if path == "/oauth2/token":
                    return self._token(query, raw)
                if path == "/oauth2/exchange":
                    return self._exchange(raw)
                scope = self._scope(path)
                if scope is None:
                    return self._error(404, "NOT_FOUND", "no such route")
                if not self._authorized(scope):
                    challenge = (f'Bearer realm="{emulator.url}/oauth2/token",'
                                 f'service="{urlsplit(emulator.url).hostname}",scope="{scope}"')
                    return self._error(401, "UNAUTHORIZED", "authentication required",
                                       {"WWW-Authenticate": challenge})
                return self._route(path, query)

            do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = handle_any

            # auth -----------------------------------------------------------------------

            def _scope(self, path: str) -> str | None:
                if path in ("/v2/", "/v2"):
                    return ""
                if path == "/acr/v1/_catalog":
                    return "registry:catalog:*"
                m = re.fullmatch(r"/acr/v1/(.+)/_(manifests|tags)(/sha256:[0-9a-f]{64})?",
                                 path) or re.fullmatch(r"/acr/v1/(.+)/_tags/[^/]+", path)
                if m and self.command == "GET":
                    return f"repository:{m.group(1)}:metadata_read"
                m = re.fullmatch(r"/acr/v1/(.+)", path)
                if m and self.command == "DELETE":
                    return f"repository:{m.group(1)}:delete"
                if m and self.command == "GET":  # the repository's attributes
                    return f"repository:{m.group(1)}:metadata_read"
                m = re.fullmatch(r"/v2/(.+)/tags/list", path)
                if m:
                    return f"repository:{m.group(1)}:pull"
                m = re.fullmatch(r"/v2/(.+)/(manifests|referrers|blobs)/[^/]+", path)
                if m:
                    action = {"DELETE": "delete", "PUT": "pull,push"}.get(self.command, "pull")
                    return f"repository:{m.group(1)}:{action}"
                return None

            def _authorized(self, scope: str) -> bool:
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer "):
                    return False
                with emulator.lock:
                    found = emulator.access_tokens.get(auth[7:])
                if found is None or found[0] < time.time():
                    return False
                return scope == "" or found[1] == scope

            def _issue(self, scope: str) -> dict:
                token = fake_jwt({"exp": int(time.time()) + emulator.access_lifetime,
                                  "scope": scope})
                with emulator.lock:
                    emulator.access_tokens[token] = (time.time() + emulator.access_lifetime,
                                                     scope)
                    emulator.issued[("access", scope)] += 1
                return {"access_token": token}

            def _token(self, query: dict, raw: bytes) -> None:
                if self.command == "GET":  # basic credentials (admin user, token password)
                    auth = self.headers.get("Authorization", "")
                    if not auth.startswith("Basic "):
                        return self._error(401, "UNAUTHORIZED", "credentials required")
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if (user, password) != emulator.admin:
                        return self._error(401, "UNAUTHORIZED", "invalid credentials")
                    return self._json(200, self._issue(query.get("scope", [""])[0]))
                form = parse_qs(raw.decode())
                refresh = form.get("refresh_token", [""])[0]
                with emulator.lock:
                    expires = emulator.refresh_tokens.get(refresh)
                if form.get("grant_type") != ["refresh_token"] or expires is None \
                        or expires < time.time():
                    return self._error(401, "UNAUTHORIZED", "invalid refresh token")
                return self._json(200, self._issue(form.get("scope", [""])[0]))

            def _exchange(self, raw: bytes) -> None:
                form = parse_qs(raw.decode())
                entra = form.get("access_token", [""])[0]
                if form.get("grant_type") != ["access_token"] or \
                        entra not in emulator.entra_tokens:
                    return self._error(401, "UNAUTHORIZED", "invalid Entra token")
                expires = int(time.time()) + emulator.refresh_lifetime
                token = fake_jwt({"exp": expires, "kind": "refresh"})
                with emulator.lock:
                    emulator.refresh_tokens[token] = expires
                    emulator.issued[("refresh",)] += 1
                return self._json(200, {"refresh_token": token})

            # content ----------------------------------------------------------------------

            def _page(self, path: str, items: list, key: str, query: dict, head: dict) -> None:
                n = int(query.get("n", ["100"])[0])
                last = query.get("last", [None])[0]
                names = [i["name"] if isinstance(i, dict) and "name" in i else
                         (i["digest"] if isinstance(i, dict) else i) for i in items]
                start = 0 if last is None else sum(1 for x in names if x <= last)
                page = items[start:start + n]
                headers = {}
                if start + n < len(items):
                    after = quote(names[start + n - 1], safe="")
                    headers["Link"] = f'<{path}?last={after}&n={n}>; rel="next"'
                self._json(200, {**head, key: page}, headers)

            def _route(self, path: str, query: dict) -> None:
                em = emulator
                if path in ("/v2/", "/v2"):
                    return self._json(200, {})
                if path == "/acr/v1/_catalog":
                    return self._page(path, sorted(em.repos), "repositories", query, {})
                m = re.fullmatch(r"/acr/v1/(.+)/_(manifests|tags)", path)
                if m and m.group(1) not in em.repos:
                    return self._error(404, "NAME_UNKNOWN", "repository not found")
                m = re.fullmatch(r"/acr/v1/(.+)/_manifests", path)
                if m:
                    repo = m.group(1)
                    entries = [self._attributes(repo, d) for d in sorted(em.repos.get(repo, {}))]
                    return self._page(path, entries, "manifests", query,
                                      {"registry": urlsplit(em.url).netloc, "imageName": repo})
                m = re.fullmatch(r"/acr/v1/(.+)/_manifests/(sha256:[0-9a-f]{64})", path)
                if m:
                    repo, digest = m.groups()
                    if digest not in em.repos.get(repo, {}):
                        return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                    return self._json(200, {"registry": urlsplit(em.url).netloc,
                                            "imageName": repo,
                                            "manifest": self._attributes(repo, digest)})
                m = re.fullmatch(r"/acr/v1/(.+)/_tags/([^/]+)", path)
                if m:
                    repo, tag = m.groups()
                    entry = em.tags.get(repo, {}).get(tag)
                    if repo not in em.repos or entry is None:
                        return self._error(404, "TAG_UNKNOWN", "tag not found")
                    return self._json(200, {"registry": urlsplit(em.url).netloc,
                                            "imageName": repo, "tag": {
                                                "name": tag, "digest": entry.digest,
                                                "changeableAttributes": {
                                                    "deleteEnabled": entry.delete_enabled,
                                                    "writeEnabled": True, "readEnabled": True,
                                                    "listEnabled": True}}})
                m = re.fullmatch(r"/acr/v1/(.+)/_tags", path)
                if m:
                    repo = m.group(1)
                    entries = [{"name": t, "digest": e.digest, "changeableAttributes": {
                        "deleteEnabled": e.delete_enabled, "writeEnabled": True}}
                        for t, e in sorted(em.tags.get(repo, {}).items())]
                    return self._page(path, entries, "tags", query, {"imageName": repo})
                m = re.fullmatch(r"/acr/v1/(.+)", path)
                if m and self.command == "GET":
                    repo = m.group(1)
                    if repo not in em.repos:
                        return self._error(404, "NAME_UNKNOWN", "repository not found")
                    return self._json(200, {
                        "registry": urlsplit(em.url).netloc, "imageName": repo,
                        "manifestCount": len(em.repos[repo]),
                        "tagCount": len(em.tags.get(repo, {})),
                        "changeableAttributes": {
                            "deleteEnabled": repo not in em.locked_repos,
                            "writeEnabled": True, "readEnabled": True, "listEnabled": True}})
                if m and self.command == "DELETE":
                    repo = m.group(1)
                    with em.lock:
                        gone = em.repos.pop(repo, None)
                        tags = em.tags.pop(repo, {})
                    if gone is None:
                        return self._error(404, "NAME_UNKNOWN", "repository not found")
                    return self._json(202, {"manifestsDeleted": sorted(gone),
                                            "tagsDeleted": sorted(tags)})
                m = re.fullmatch(r"/v2/(.+)/tags/list", path)
                if m:
                    if m.group(1) not in em.repos:
                        return self._error(404, "NAME_UNKNOWN", "repository not found")
                    return self._json(200, {"name": m.group(1),
                                            "tags": sorted(em.tags.get(m.group(1), {}))})
                m = re.fullmatch(r"/v2/(.+)/referrers/([^/]+)", path)
                if m:
                    repo, subject = m.groups()
                    refs = [{"mediaType": e.media_type, "digest": d, "size": len(e.body)}
                            for d, e in sorted(em.repos.get(repo, {}).items())
                            if json.loads(e.body).get("subject", {}).get("digest") == subject]
                    return self._send(200, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                       "manifests": refs}).encode(),
                                      ctype=OCI_INDEX)
                m = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", path)
                if m and self.command == "HEAD":
                    held = m.group(2) in em.blobs.get(m.group(1), set())
                    return self._send(200 if held else 404, ctype="application/octet-stream")
                m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path)
                if m and self.command == "PUT":
                    return self._put_manifest(*m.groups(), self._body)
                if m:
                    return self._manifest(*m.groups())
                return self._error(404, "NOT_FOUND", "no such route")

            def _put_manifest(self, repo: str, reference: str, body: bytes) -> None:
                """A push through the OCI API: the blobs (or child manifests) it references
                must be in the repository, as on ACR."""
                em = emulator
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                doc = json.loads(body)
                with em.lock:
                    needed = [d["digest"] for d in [doc.get("config") or {},
                                                    *doc.get("layers", [])] if "digest" in d]
                    if any(b not in em.blobs.get(repo, set()) for b in needed):
                        return self._error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown")
                    if any(c["digest"] not in em.repos.get(repo, {})
                           for c in doc.get("manifests", [])):
                        return self._error(400, "MANIFEST_UNKNOWN", "child manifest unknown")
                    if reference.startswith("sha256:") and reference != digest:
                        return self._error(400, "DIGEST_INVALID", "digest mismatch")
                    media_type = self.headers.get("Content-Type", OCI_MANIFEST)
                    old = em.repos.setdefault(repo, {}).get(digest)
                    em.repos[repo][digest] = old or Entry(body, media_type, datetime.now(UTC))
                    if not reference.startswith("sha256:"):
                        em.tags.setdefault(repo, {})[reference] = TagEntry(digest)
                self._send(201, headers={"Docker-Content-Digest": digest})

            def _attributes(self, repo: str, digest: str) -> dict:
                e = emulator.repos[repo][digest]
                tags = emulator.tags_of(repo, digest)
                stamp = e.created.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
                return {"digest": digest, "imageSize": len(e.body) + 2000,
                        "createdTime": stamp, "lastUpdateTime": stamp,
                        "mediaType": e.media_type, "tags": tags or None,
                        "changeableAttributes": {"deleteEnabled": e.delete_enabled,
                                                 "writeEnabled": True, "readEnabled": True,
                                                 "listEnabled": True}}

            def _manifest(self, repo: str, reference: str) -> None:
                em = emulator
                with em.lock:
                    entries = em.repos.get(repo, {})
                    digest = reference if reference.startswith("sha256:") else \
                        getattr(em.tags.get(repo, {}).get(reference), "digest", None)
                    entry = entries.get(digest) if digest else None
                    if entry is None:
                        return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                    if self.command == "DELETE":
                        if not reference.startswith("sha256:"):
                            return self._error(400, "UNSUPPORTED", "delete by digest")
                        if em.refuse_writes or repo in em.locked_repos or \
                                not entry.delete_enabled or any(
                                t.digest == digest and not t.delete_enabled
                                for t in em.tags.get(repo, {}).values()):
                            # What ACR answers for deleteEnabled: false on the manifest,
                            # one of its tags or its repository, and for a registry over
                            # its storage quota.
                            return self._error(
                                405, em.refusal_code,
                                "The operation is disallowed on this registry, repository "
                                "or image.")
                        del entries[digest]
                        for tag in [t for t, e in em.tags.get(repo, {}).items()
                                    if e.digest == digest]:
                            del em.tags[repo][tag]
                        return self._send(202)
                self._send(200, entry.body, {"Docker-Content-Digest": digest},
                           ctype=entry.media_type)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
