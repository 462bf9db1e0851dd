"""An in-process emulator of GitHub Container Registry, owned by this suite (GitHub itself
cannot run here), layered over the suite's real registry (Debian's docker-registry):

- the **REST API** (another origin, like api.github.com): list an owner's container packages
  and a package's versions (``per_page`` up to 100, ``page``, ``Link``), get, delete and
  restore a version, ``GET /rate_limit``; the ``x-ratelimit-*`` headers on every answer, the
  primary limit (5,000 requests an hour: 403 with ``x-ratelimit-remaining: 0``), the
  documented secondary limit on content-creating requests (80 a minute, 500 an hour: 403 or
  429 with ``retry-after``, or without it), and GitHub's messages, among them the refusal to
  delete a package's last tagged version and a public version downloaded more than 5,000
  times;
- **ghcr.io's OCI API** in front of the real registry: the bearer challenge and token
  exchange with the token as password, every push recorded as a package version (the tag
  moves from version to version as on GHCR), no ``_catalog``, no referrers API, and an OCI
  DELETE answered 405.

Time is the emulator's ``clock`` (epoch seconds), which a test may share with the client's
sleep, so limits of minutes are waited out without waiting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

PRIMARY_MESSAGE = ("API rate limit exceeded for user ID 1. If you reach out to GitHub Support "
                   "for help, please include the request ID 0400:3A2B:1C0FFEE.")
SECONDARY_MESSAGE = ("You have exceeded a secondary rate limit. Please wait a few minutes "
                     "before you try again. If you reach out to GitHub Support for help, "
                     "please include the request ID 0400:3A2B:C0FFEE1.")
LAST_TAGGED_MESSAGE = ("You cannot delete the last tagged version of a package. You must "
                       "delete the package instead.")
DOWNLOADS_MESSAGE = ("Publicly visible package versions with more than 5000 downloads cannot "
                     "be deleted. Contact GitHub support for further assistance.")
ADMIN_MESSAGE = "Must have admin rights to Repository."
DOCS = "https://docs.github.com/rest/packages/packages"
DAY = 86400.0


class FakeClock:
    """Epoch seconds that move only when something sleeps on them."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # Moved at once, before anything else runs: a sleeper that computed its wait from
        # the time now sleeps exactly that long.
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Version:
    id: int
    package: str  # GitHub's package name (without the owner)
    digest: str
    media_type: str
    body: bytes
    tags: list[str]
    created_at: float
    deleted_at: float | None = None
    downloads: int = 0
    public: bool = False


@dataclass
class ApiFault:
    """On an API request whose method matches and whose path and query ``path`` (a regular
    expression) is found in, after ``skip`` such requests: answer ``status`` with GitHub's
    ``message`` and ``headers``; or with ``hook``, run it first (it may change the registry)
    and then answer normally."""

    method: str
    path: str
    status: int = 500
    message: str = "Server Error"
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    skip: int = 0
    hook: Callable[[str, str], None] | None = None


def _b64decode(text: str) -> str:
    return base64.b64decode(text).decode()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, with Content-Length or chunked (skopeo streams blob uploads)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization"}


@dataclass
class GhcrEmulator:
    registry_url: str  # the real registry holding the content
    owner: str = "my-org"
    owner_type: str = "org"  # org or user
    token: str = "ghp_" + "T0k3n" * 7 + "x"
    scopes: set[str] = field(default_factory=lambda: {"read:packages", "write:packages",
                                                      "delete:packages"})
    clock: Callable[[], float] = time.time
    primary_limit: int = 5000  # requests an hour
    per_minute: int = 80  # content-creating requests (DELETE, POST) a minute
    per_hour: int = 500  # and an hour
    secondary_status: int = 403
    secondary_retry_after: bool = True
    max_per_page: int = 100  # GitHub's cap on per_page
    packages_per_page: int = 100  # a lower cap for the packages listing (to page few)
    packages: dict[str, dict[int, Version]] = field(default_factory=dict)
    faults: list[ApiFault] = field(default_factory=list)
    api_requests: list[tuple[str, str]] = field(default_factory=list)
    api_answered: list[tuple[str, str, int]] = field(default_factory=list)
    oci_requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    # Requests sent while a limit held: raced (GitHub may ban an integration for them).
    races: list[tuple[str, str, float]] = field(default_factory=list)
    deletions: list[int] = field(default_factory=list)  # version ids deleted, in order
    lock: threading.RLock = field(default_factory=threading.RLock)
    api_url: str = ""
    oci_url: str = ""
    _next_id: int = 1000
    _window_start: float = 0.0
    _used: int = 0
    _content: list[float] = field(default_factory=list)  # times of content-creating requests
    _blocked_until: float = 0.0
    _oci_tokens: set[str] = field(default_factory=set)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    # -- content --------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.owner.lower() + "/"

    def package_of(self, repository: str) -> str | None:
        return repository[len(self.prefix):] if repository.startswith(self.prefix) else None

    def active(self, package: str) -> list[Version]:
        return sorted((v for v in self.packages.get(package, {}).values()
                       if v.deleted_at is None), key=lambda v: (-v.created_at, -v.id))

    def version(self, repository: str, digest: str) -> Version:
        package = self.package_of(repository) or repository
        return next(v for v in self.active(package) if v.digest == digest)

    def tags_of(self, repository: str, digest: str) -> list[str]:
        return sorted(self.version(repository, digest).tags)

    def digests(self, repository: str) -> set[str]:
        package = self.package_of(repository) or repository
        return {v.digest for v in self.active(package)}

    def backdate(self, repository: str, digest: str, when: datetime) -> None:
        """Set a version's created_at, as if it had been pushed ``when``."""
        with self.lock:
            self.version(repository, digest).created_at = when.timestamp()

    def _recorded_push(self, repository: str, reference: str, body: bytes,
                       media_type: str) -> None:
        """A manifest PUT the registry accepted: a new version unless the digest has one;
        a tag moves onto it from whichever version held it."""
        package = self.package_of(repository)
        if package is None:
            return
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with self.lock:
            versions = self.packages.setdefault(package, {})
            current = next((v for v in self.active(package) if v.digest == digest), None)
            if current is None:
                self._next_id += 1
                current = versions[self._next_id] = Version(
                    self._next_id, package, digest, media_type, body, [], self.clock())
            if not reference.startswith("sha256:"):
                for other in self.active(package):
                    if reference in other.tags and other is not current:
                        other.tags.remove(reference)
                if reference not in current.tags:
                    current.tags.append(reference)

    # -- the real registry underneath -----------------------------------------------------

    def _backend(self, method: str, path: str, body: bytes | None, headers: dict[str, str]
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(self.registry_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _backend_delete(self, version: Version) -> None:
        self._backend("DELETE", f"/v2/{self.prefix}{version.package}/manifests/"
                      f"{version.digest}", None, {})

    def _backend_put(self, version: Version, reference: str) -> int:
        status, _, _ = self._backend(
            "PUT", f"/v2/{self.prefix}{version.package}/manifests/{reference}", version.body,
            {"Content-Type": version.media_type})
        return status

    # -- rate limits ------------------------------------------------------------------------

    def _primary(self, now: float) -> tuple[int, float]:
        """(requests left, reset) of the hour window now."""
        if now >= self._window_start + 3600:
            self._window_start, self._used = now, 0
        return self.primary_limit - self._used, self._window_start + 3600

    def _rate_headers(self, now: float) -> dict[str, str]:
        remaining, reset = self._primary(now)
        return {"x-ratelimit-limit": str(self.primary_limit),
                "x-ratelimit-remaining": str(max(remaining, 0)),
                "x-ratelimit-used": str(self._used), "x-ratelimit-reset": str(int(reset)),
                "x-ratelimit-resource": "core"}

    def _secondary_wait(self, now: float) -> float | None:
        recent = [t for t in self._content if t > now - 3600]
        self._content = recent
        minute = [t for t in recent if t > now - 60]
        if len(minute) >= self.per_minute:
            return minute[-self.per_minute] + 60 - now
        if len(recent) >= self.per_hour:
            return recent[-self.per_hour] + 3600 - now
        return None

    # -- servers ----------------------------------------------------------------------------

    def start(self) -> GhcrEmulator:
        self.api_url = self._serve(self._api_handler())
        self.oci_url = self._serve(self._oci_handler())
        return self

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    # -- the REST API -----------------------------------------------------------------------

    def _api_handler(self) -> type[BaseHTTPRequestHandler]:
        em = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, doc: object = None, headers: dict | None = None
                      ) -> None:
                body = b"" if doc is None else json.dumps(doc).encode()
                with em.lock:
                    em.api_answered.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                self._send(status, {"message": message, "documentation_url": DOCS,
                                    "status": str(status)}, headers)

            def handle_any(self) -> None:
                _read_body(self)
                with em.lock:
                    em.api_requests.append((self.command, self.path))
                    fault = next((f for f in em.faults if f.times > 0
                                  and f.method in ("*", self.command)
                                  and re.search(f.path, self.path)), None)
                    if fault is not None and fault.skip > 0:
                        fault.skip -= 1
                        fault = None
                    elif fault is not None:
                        fault.times -= 1
                if fault is not None and fault.hook is not None:
                    fault.hook(self.command, self.path)
                elif fault is not None:
                    return self._error(fault.status, fault.message, fault.headers)
                auth = self.headers.get("Authorization", "")
                scheme, _, given = auth.partition(" ")
                if scheme.lower() not in ("bearer", "token") or given != em.token:
                    return self._error(401, "Bad credentials")
                parts = urlsplit(self.path)
                now = em.clock()
                with em.lock:
                    if parts.path == "/rate_limit":
                        remaining, reset = em._primary(now)
                        core = {"limit": em.primary_limit, "used": em._used,
                                "remaining": max(remaining, 0), "reset": int(reset)}
                        return self._send(200, {"resources": {"core": core}, "rate": core},
                                          em._rate_headers(now))
                    if now < em._blocked_until:
                        em.races.append((self.command, self.path, em._blocked_until - now))
                    remaining, reset = em._primary(now)
                    if remaining <= 0:
                        em._blocked_until = max(em._blocked_until, reset)
                        return self._error(403, PRIMARY_MESSAGE, em._rate_headers(now))
                    em._used += 1
                    headers = em._rate_headers(now)
                    if self.command in ("DELETE", "POST"):
                        wait = em._secondary_wait(now)
                        if wait is not None:
                            em._blocked_until = max(em._blocked_until, now + wait)
                            extra = {"retry-after": str(int(wait) + 1)} \
                                if em.secondary_retry_after else {}
                            return self._error(em.secondary_status, SECONDARY_MESSAGE,
                                               {**headers, **extra})
                        em._content.append(now)
                    return self._route(parts.path, parse_qs(parts.query), headers, now)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = handle_any

            def _route(self, path: str, query: dict, headers: dict, now: float) -> None:
                # On the path as sent: a package name is one segment, its / written %2F.
                segments = path.split("/")
                kind = "users" if em.owner_type == "user" else "orgs"
                if len(segments) < 4 or segments[1] != kind or \
                        unquote(segments[2]).lower() != em.owner.lower() or \
                        segments[3] != "packages":
                    return self._error(404, "Not Found", headers)
                rest = segments[4:]
                if not rest and self.command == "GET":
                    if query.get("package_type") != ["container"]:
                        return self._error(400, "package_type is required", headers)
                    entries = [self._package(name) for name in sorted(em.packages)
                               if em.active(name)]
                    return self._page(path, query, entries, headers,
                                      cap=em.packages_per_page)
                if len(rest) < 3 or rest[0] != "container" or rest[2] != "versions":
                    return self._error(404, "Not Found", headers)
                package = unquote(rest[1])
                if len(rest) == 3 and self.command == "GET":
                    state = query.get("state", ["active"])[0]
                    if state == "deleted":
                        found = sorted((v for v in em.packages.get(package, {}).values()
                                        if v.deleted_at is not None
                                        and v.deleted_at > now - 30 * DAY),
                                       key=lambda v: -v.id)
                    else:
                        found = em.active(package)
                    if not em.packages.get(package) or (state != "deleted" and not found):
                        return self._error(404, "Package not found.", headers)
                    return self._page(path, query, [self._version(v) for v in found], headers)
                if len(rest) < 4 or not rest[3].isdigit():
                    return self._error(404, "Not Found", headers)
                version = em.packages.get(package, {}).get(int(rest[3]))
                if len(rest) == 5 and rest[4] == "restore" and self.command == "POST":
                    return self._restore(version, headers, now)
                if len(rest) != 4 or version is None or version.deleted_at is not None:
                    return self._error(404, "Package version not found.", headers)
                if self.command == "GET":
                    return self._send(200, self._version(version), headers)
                if self.command == "DELETE":
                    return self._delete(version, headers, now)
                return self._error(404, "Not Found", headers)

            def _delete(self, version: Version, headers: dict, now: float) -> None:
                if "delete:packages" not in em.scopes:
                    return self._error(403, ADMIN_MESSAGE, headers)
                others = [v for v in em.active(version.package) if v is not version]
                if version.tags and not any(v.tags for v in others):
                    return self._error(400, LAST_TAGGED_MESSAGE, headers)
                if version.public and version.downloads > 5000:
                    return self._error(400, DOWNLOADS_MESSAGE, headers)
                version.deleted_at = now
                em.deletions.append(version.id)
                em._backend_delete(version)
                self._send(204, None, headers)

            def _restore(self, version: Version | None, headers: dict, now: float) -> None:
                if "write:packages" not in em.scopes:
                    return self._error(403, ADMIN_MESSAGE, headers)
                if version is None or version.deleted_at is None or \
                        version.deleted_at <= now - 30 * DAY:
                    return self._error(404, "Package version not found.", headers)
                if em._backend_put(version, version.digest) not in (200, 201):
                    return self._error(500, "Server Error", headers)
                held = {t for v in em.active(version.package) for t in v.tags}
                version.tags = [t for t in version.tags if t not in held]
                for tag in version.tags:
                    em._backend_put(version, tag)
                version.deleted_at = None
                self._send(204, None, headers)

            def _page(self, path: str, query: dict, entries: list, headers: dict, *,
                      cap: int = 100) -> None:
                per_page = min(int(query.get("per_page", ["30"])[0]), em.max_per_page, cap)
                page = int(query.get("page", ["1"])[0])
                chunk = entries[(page - 1) * per_page: page * per_page]
                links = []
                last = max(1, -(-len(entries) // per_page))
                keep = {k: v[0] for k, v in query.items() if k not in ("page", "per_page")}
                def at(n: int) -> str:
                    q = "&".join([f"per_page={per_page}", f"page={n}",
                                  *(f"{k}={quote(v)}" for k, v in sorted(keep.items()))])
                    return f"<{em.api_url}{path}?{q}>"
                if page < last:
                    links += [f'{at(page + 1)}; rel="next"', f'{at(last)}; rel="last"']
                if page > 1:
                    links += [f'{at(page - 1)}; rel="prev"', f'{at(1)}; rel="first"']
                self._send(200, chunk, {**headers, **({"Link": ", ".join(links)}
                                                       if links else {})})

            def _package(self, name: str) -> dict:
                return {"id": abs(hash(name)) % 10**7, "name": name, "package_type": "container",
                        "owner": {"login": em.owner}, "version_count": len(em.active(name)),
                        "visibility": "private",
                        "url": f"{em.api_url}/orgs/{em.owner}/packages/container/"
                               f"{quote(name, safe='')}",
                        "html_url": f"https://github.com/orgs/{em.owner}/packages/container/"
                                    f"package/{quote(name, safe='')}"}

            def _version(self, v: Version) -> dict:
                def stamp(t: float) -> str:
                    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                doc = {"id": v.id, "name": v.digest,
                       "url": f"{em.api_url}/orgs/{em.owner}/packages/container/"
                              f"{quote(v.package, safe='')}/versions/{v.id}",
                       "package_html_url": f"https://github.com/orgs/{em.owner}/packages/"
                                           f"container/package/{quote(v.package, safe='')}",
                       "created_at": stamp(v.created_at), "updated_at": stamp(v.created_at),
                       "html_url": f"https://github.com/orgs/{em.owner}/packages/container/"
                                   f"{quote(v.package, safe='')}/{v.id}",
                       "metadata": {"package_type": "container",
                                    "container": {"tags": list(v.tags)}}}
                if v.deleted_at is not None:
                    doc["deleted_at"] = stamp(v.deleted_at)
                return doc

        return Handler

    # -- ghcr.io's OCI API -------------------------------------------------------------------

    def _oci_handler(self) -> type[BaseHTTPRequestHandler]:
        em = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: list | None = None,
                      *, length: str | None = None) -> None:
                self.send_response(status)
                for k, v in headers or ():
                    self.send_header(k, v)
                self.send_header("Content-Length", length if length is not None
                                 else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str, headers: list | None = None
                       ) -> None:
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self._send(status, body, [("Content-Type", "application/json"),
                                          *(headers or [])])

            def _authorized(self) -> str | None:
                """How the request is authorized ("bearer" with a token from /token,
                "basic" with the token as password: the suite's own pushers), or None."""
                scheme, _, given = self.headers.get("Authorization", "").partition(" ")
                if scheme.lower() == "bearer" and given in em._oci_tokens:
                    return "bearer"
                if scheme.lower() == "basic":
                    try:
                        _, _, password = _b64decode(given).partition(":")
                    except ValueError:
                        return None
                    return "basic" if password == em.token else None
                return None

            def handle_any(self) -> None:
                body = _read_body(self)
                parts = urlsplit(self.path)
                path = parts.path
                if path == "/token":
                    return self._token(parse_qs(parts.query))
                how = self._authorized()
                with em.lock:
                    em.oci_requests.append((self.command, self.path, how or "none"))
                if how is None:
                    m = re.fullmatch(r"/v2/(.+?)/(manifests|blobs|tags|referrers)/.*", path)
                    scope = f"repository:{m.group(1)}:pull" if m else ""
                    challenge = (f'Bearer realm="{em.oci_url}/token",service="ghcr.io"'
                                 + (f',scope="{scope}"' if scope else ""))
                    return self._error(401, "UNAUTHORIZED", "authentication required",
                                       [("WWW-Authenticate", challenge)])
                if path in ("/v2/", "/v2"):
                    return self._send(200, b"{}", [("Content-Type", "application/json")])
                if path == "/v2/_catalog":
                    return self._error(404, "NOT_FOUND", "404 page not found")
                m = re.fullmatch(r"/v2/(.+)/referrers/[^/]+", path)
                if m:
                    return self._error(404, "NOT_FOUND", "404 page not found")
                m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path)
                if m and self.command == "DELETE":
                    return self._error(405, "UNSUPPORTED", "The operation is unsupported.")
                repo = re.fullmatch(r"/v2/(.+?)/(manifests|blobs|tags)/.*", path)
                if repo and em.package_of(repo.group(1)) is None:
                    return self._error(403, "DENIED", "permission_denied: The token provided "
                                       "does not match expected scopes.")
                self._forward(body, m.groups() if m and self.command == "PUT" else None)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

            def _token(self, query: dict) -> None:
                scheme, _, given = self.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "basic":
                    return self._error(401, "UNAUTHORIZED", "authentication required")
                _, _, password = _b64decode(given).partition(":")
                if password != em.token:
                    return self._error(401, "UNAUTHORIZED", "unauthorized")
                token = base64.b64encode(uuid.uuid4().bytes).decode()
                with em.lock:
                    em._oci_tokens.add(token)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self._send(200, body, [("Content-Type", "application/json")])

            def _forward(self, body: bytes, pushed: tuple[str, str] | None) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                # Locations the registry writes name this host: uploads come back here.
                headers["Host"] = urlsplit(em.oci_url).netloc
                status, answer, data = em._backend(self.command, self.path,
                                                   body if body or self.command in
                                                   ("PUT", "POST", "PATCH") else None,
                                                   headers)
                if pushed is not None and status == 201:
                    em._recorded_push(*pushed, body, self.headers.get(
                        "Content-Type", "application/vnd.oci.image.manifest.v1+json"))
                kept = [(k, v) for k, v in answer if k.lower() not in _HOP]
                length = dict((k.lower(), v) for k, v in answer).get("content-length") \
                    if self.command == "HEAD" else None
                self._send(status, data, kept, length=length)

        return Handler
