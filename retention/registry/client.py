"""An asynchronous client for the OCI Distribution API. It only talks HTTP.

Every request goes through one path: a per-registry limit on requests in flight, the
authorization the registry asked for, and retries with exponential backoff and full jitter for
connection errors, 429 and 502/503/504, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
import structlog
from httpx2 import URL

from retention import __version__
from retention.config import RegistrySettings
from retention.errors import (
    AnswerTooLargeError,
    AuthenticationError,
    DeleteRefusedError,
    DeletionDisabledError,
    ManifestLockedError,
    NotSentError,
    RegistryError,
)
from retention.names import is_digest, is_reference, is_repository, is_tag, not_canonical
from retention.registry.auth import Authenticator
from retention.registry.entra import EntraExchange
from retention.registry.http import (
    MAX_ANSWER_BYTES,
    AnswerHeaders,
    AnswerTooLarge,
    HttpSession,
    Response,
    TransportError,
    same_origin,
)
from retention.registry.mediatypes import (
    ACCEPT,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
)

log = structlog.get_logger("retention.registry")

RETRYABLE = frozenset({429, 502, 503, 504})
SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
# Error codes of a DELETE refused for one manifest because it is locked (ACR's answer for
# deleteEnabled: false is 405 REGISTRY_DISALLOWED_OPERATION).
LOCKED_CODES = frozenset({"REGISTRY_DISALLOWED_OPERATION", "DISALLOWED_OPERATION"})
# distribution answers 400 PAGINATION_NUMBER_INVALID above 1000; some registries allow less.
PAGE_SIZES = (1000, 100, None)
# The caps on what is read of an answer (docs/operations.md, "Limits"): a manifest as large
# as distribution accepts (its own limit on a push), an image config, and any other
# document (MAX_ANSWER_BYTES: a page of tags, a token). A longer answer is not read past
# the cap: a hostile or broken registry cannot fill the daemon's memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# The error codes with which a registry says a repository does not exist (OCI distribution
# spec; ACR answers the same on its own API).
MISSING_CODES = frozenset({"NAME_UNKNOWN"})
# A listing longer than this is taken for an endless one (a registry bug, or a Link chain
# that never ends): 10,000 pages of 1,000 tags is ten million, far beyond any repository.
MAX_PAGES = 10_000
# Nor may a listing hold more names than this, whatever its pages: each page is read up to
# MAX_ANSWER_BYTES, but a 16 MiB page of short tags parses into ~140 MiB, and MAX_PAGES such
# pages would be held at once. A million tags (or repositories, or ACR manifests) is beyond
# what distribution 2.8 can answer at all (it sends the whole list in one answer, 16 MiB
# being ~300,000 tags).
MAX_LISTED = 1_000_000

Observer = Callable[[str, str, float], None]  # (method, code, seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 0.5  # seconds before the first retry, doubled each time, with full jitter
    cap: float = 30.0
    max_retry_after: float = 120.0  # ignore absurd Retry-After values beyond this

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    digest: str
    media_type: str
    body: bytes


def _pull(name: str) -> str:
    return f"repository:{name}:pull"


def _raw_path(url: URL) -> bytes:
    """A URL's path as it is sent, without its query."""
    return url.raw_path.split(b"?", 1)[0]


class RegistryClient:
    """One registry. Use as an async context manager."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        observe: Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        entra: EntraExchange | None = None,
    ):
        self.settings = settings
        self._retry = retry or RetryPolicy()
        self._observe = observe
        self._sleep = sleep
        self._slots = asyncio.Semaphore(settings.concurrency)
        verify = not settings.insecure_skip_verify
        if not verify:
            log.warning("tls verification disabled", registry=settings.name,
                        hint="use ca_file to trust a private CA instead")
        # Every request holds one of `concurrency` slots while it is sent and its body
        # read, so that many connections serve them all.
        self._http = HttpSession(settings.url, verify=verify, timeout=timeout,
                                 ca_file=settings.ca_file if verify else None,
                                 connections=settings.concurrency,
                                 user_agent=f"retention/{__version__}")
        self._auth = Authenticator(settings, entra=entra, send=self.send)
        self._referrers_api: bool | None = None  # None: not known yet
        self._referrers_probe = asyncio.Lock()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the one request path -------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        follow_redirects: bool = False,
        retry: bool = True,
        content: bytes | None = None,
        not_after: float | None = None,
        unless: Callable[[], bool] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> Response:
        """A registry request with the authorization ``scope`` needs (answering a 401 once).

        ``retry=False``: one attempt; a retryable answer is returned, a connection error
        raised, for a caller that must check something again before it tries again.
        ``not_after``: see ``send``; it holds for the request sent again after a 401 too."""
        name = self.settings.name
        auth_retried = False
        while True:
            response = await self.send(
                method, url, headers={**(headers or {}), **self._auth.headers(scope, url)},
                params=params, follow_redirects=follow_redirects, retry=retry, content=content,
                not_after=not_after, unless=unless, max_bytes=max_bytes)
            if response.status_code == 401:
                if auth_retried:
                    if self._auth.headers(scope).get("Authorization", "").startswith("Bearer"):
                        raise AuthenticationError(
                            f"the registry refused a fresh token for {scope!r}: the account "
                            "lacks permission for it", registry=name, status=401)
                    raise AuthenticationError(
                        "credentials rejected (HTTP 401): check the username and password",
                        registry=name, status=401)
                await self._auth.answer(response, scope)
                auth_retried = True
                continue
            return response

    async def send(
        self,
        method: str,
        url: str | URL,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        content: bytes | None = None,
        follow_redirects: bool = False,
        retry: bool = True,
        not_after: float | None = None,
        unless: Callable[[], bool] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> Response:
        """One request under the retry policy, with the headers given and no others.
        ``max_bytes``: the cap on the answer's body (AnswerTooLargeError beyond it).

        ``not_after`` (a ``time.monotonic()`` value): the request is not sent later than
        that, checked at the last moment, once it holds its slot (NotSentError); nor when
        ``unless()`` says so then. The
        executor bounds so the time from confirming a manifest's tags to its DELETE, whatever
        delays the request on its way (a slot freed late, a token fetched first).

        Token requests (a realm's ``/token``, ACR's ``/oauth2/token`` and ``/oauth2/exchange``)
        come through here too: they are throttled like every other endpoint, and a 429 there
        must not fail a run that a retry would let finish.
        """
        name = self.settings.name
        attempts = self._retry.attempts if retry else 1
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                async with self._slots:
                    if not_after is not None and time.monotonic() > not_after:
                        raise NotSentError(
                            f"{method} {_path(url)} not sent: it was allowed until "
                            f"{time.monotonic() - not_after:.3f} s ago", registry=name)
                    if unless is not None and unless():
                        # The caller's own last word (the daemon stopping): nothing starts.
                        raise NotSentError(f"{method} {_path(url)} not sent: stopping",
                                           registry=name)
                    response = await self._http.request(
                        method, url, headers=headers, params=params, data=data,
                        follow_redirects=follow_redirects, content=content,
                        max_bytes=max_bytes)
            except AnswerTooLarge as exc:
                self._record(method, "error", started)
                # The same answer again would be as long: not retried.
                raise AnswerTooLargeError(f"{method} {_path(url)}: {exc}",
                                          registry=name) from None
            except TransportError as exc:
                self._record(method, "error", started)
                if exc.untrusted_certificate:
                    # Retrying cannot fix trust: say what to do instead.
                    raise RegistryError(self._untrusted(exc), registry=name) from None
                if exc.plain_http:
                    raise RegistryError(f"{method} {_path(url)}: {exc}", registry=name
                                        ) from None
                attempt += 1
                if attempt >= attempts:
                    raise RegistryError(f"{method} {_path(url)} failed after {attempt} attempts: "
                                        f"{exc}", registry=name) from None
                delay = self._retry.backoff(attempt - 1)
                log.info("registry request retried", registry=name, method=method,
                         path=_path(url), error=str(exc), delay=round(delay, 3))
                await self._sleep(delay)
                continue
            self._record(method, str(response.status_code), started)
            if method in ("GET", "HEAD"):
                # The slot is free: let the request waiting for it go out before this answer
                # is worked on (hashed, parsed), or the registry's connection idles meanwhile.
                # A cold plan of 4,000 images had fewer than 8 requests in flight 11% of its
                # time without this, 8% with it (measured on aiohttp). Reads only: a DELETE's
                # answer is never left where a shutdown's cancellation could drop it.
                await asyncio.sleep(0)
            status = response.status_code
            if status in RETRYABLE and attempt + 1 < attempts:
                attempt += 1
                delay = _retry_after(response) or self._retry.backoff(attempt - 1)
                delay = min(delay, self._retry.max_retry_after)
                log.info("registry request retried", registry=name, method=method,
                         path=_path(url), status=status, delay=round(delay, 3))
                await self._sleep(delay)
                continue
            return response

    def _untrusted(self, exc: TransportError) -> str:
        if exc.host is None:
            return (f"the TLS certificate of {self.settings.host} is not trusted ({exc}); set "
                    "ca_file to the CA that signed it")
        # ca_file and insecure_skip_verify are the registry's own origin's: a token service
        # or storage elsewhere is verified against the system's store.
        return (f"the TLS certificate of {exc.host} (not the registry's own scheme, host and "
                f"port: ca_file and insecure_skip_verify do not apply there) is not trusted "
                f"({exc}); add its CA to the system's store (SSL_CERT_FILE)")

    def _record(self, method: str, code: str, started: float) -> None:
        if self._observe is not None:
            self._observe(method, code, time.monotonic() - started)

    def _next_link(self, response: Response, path: str) -> str | None:
        try:
            return next_link(response.headers)
        except LinkError as exc:
            raise RegistryError(f"GET {path}: {str(exc)[:300]}; the rest of the listing is "
                                "not known", registry=self.settings.name) from None

    def next_page(self, response: Response, link: str) -> URL:
        """The URL of the next page. It must stay on the registry: the request carries
        credentials, which a Link header must not be able to send elsewhere."""
        try:
            url = response.url.join(link)
            base = URL(self.settings.url)
            # Scheme, host and port as they are meant, not as written: a host is
            # case-insensitive and :443 is https's own port. Reading the host may raise too.
            elsewhere = not same_origin(url, base)
        except (httpx2.InvalidURL, ValueError):
            # The registry's answer, not ours to crash on: this listing is unreadable.
            raise RegistryError(f"a Link header whose target cannot be read ({link[:200]!r}); "
                                "the rest of the listing is not known",
                                registry=self.settings.name) from None
        if elsewhere:
            raise RegistryError(f"a Link header points away from the registry, to "
                                f"{url.scheme}://{url.netloc.decode()}; refusing to follow it",
                                registry=self.settings.name)
        if url.userinfo:
            # Not ours to send (and the HTTP session refuses a URL with a user:password of
            # its own beside our Authorization header).
            raise RegistryError("a Link header carries credentials of its own; refusing to "
                                "follow it", registry=self.settings.name)
        here, there = _raw_path(response.url), _raw_path(url)
        # As written, too: the URL library resolves dot segments (``a/../a`` is ``a``), and a
        # percent-escape reads as another name on some registry or proxy.
        written = urlsplit(link).path
        if there != here or "%" in written or any(
                segment in (".", "..") for segment in written.split("/")):
            # The next page of the same listing: only its query (last, n) differs. A Link to
            # another path (another repository's tags/list, ``/v2/app/../other/...``) would
            # lose this listing's later pages and put that one's items in their place.
            raise RegistryError(f"a Link header leads from {here.decode(errors='replace')} to "
                                f"another listing, {link[:200]!r}; refusing to follow it",
                                registry=self.settings.name)
        return url

    def failure(self, response: Response, what: str) -> RegistryError:
        detail = _error_detail(response)
        if response.status_code == 403:
            return AuthenticationError(f"{what}: access denied (HTTP 403){detail}",
                                       registry=self.settings.name, status=403)
        return RegistryError(f"{what}: HTTP {response.status_code}{detail}",
                             registry=self.settings.name, status=response.status_code,
                             retry_after=_retry_after(response))

    def path(self, repository: str, kind: str = "", reference: str = "", *,
             tag_ok: bool = False, api: str = "/v2") -> str:
        """``{api}/{repository}/{kind}/{reference}``, made only of names in their grammars:
        a name the URL normalises (``ci/./app``, ``ci/%61pp``, a tag ``../../x/manifests/y``)
        reaches another repository than the one the plan, excludes and pins name. Raises
        RegistryError, and nothing is sent. ``reference``: a digest, or with ``tag_ok`` a
        tag or a digest."""
        if not is_repository(repository):
            raise RegistryError(f"{not_canonical(repository)}: it is never requested",
                                registry=self.settings.name)
        if reference and not (is_reference(reference) if tag_ok else is_digest(reference)):
            raise RegistryError(f"{reference[:200]!r} is not a {'tag or ' * tag_ok}digest "
                                f"(OCI grammar): {api}/{repository}/{kind}/... by it is never "
                                "requested", registry=self.settings.name)
        return "/".join(p for p in (api, repository, kind, reference) if p)

    # -- API --------------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: checks reachability and credentials."""
        response = await self.request("GET", "/v2/", scope="")
        if response.status_code != 200:
            raise self.failure(response, "GET /v2/")

    async def pages(
        self,
        path: str,
        key: str,
        *,
        scope: str,
        sizes: tuple[int | None, ...] = PAGE_SIZES,
        missing_ok: bool = False,
    ) -> AsyncIterator[list[Any]]:
        """The ``key`` list of each page of a paged listing, following ``Link`` headers.

        A listing is complete or it is an error: a listing cut short would make what was on
        the lost pages look untagged, or not there at all, and so deletable. Any answer but
        200 after the first page (404 included), a ``Link`` back to a page already read, more
        than MAX_PAGES pages or MAX_LISTED items, or a page that is not the expected JSON
        raises RegistryError.

        ``sizes`` are the page sizes to ask for, largest first: a 400 to the first request
        means the registry allows less, so the next is tried. ``missing_ok``: a 404 to the
        first request means an empty listing (a repository that does not exist, or whose
        tags are all gone); only the first: a 404 later is a failed page.
        """
        url: str | URL = path
        remaining = list(sizes)
        params: dict[str, Any] | None = {"n": remaining[0]} if remaining[0] else None
        read: set[str] = set()  # every page URL requested, to catch a Link that loops
        page = 1
        listed = 0
        while True:
            response = await self.request("GET", url, scope=scope, params=params)
            if page == 1 and response.status_code == 400 and len(remaining) > 1:
                remaining.pop(0)  # page size above what this registry allows: ask for less
                params = {"n": remaining[0]} if remaining[0] else None
                continue
            read.add(str(response.url))
            if response.status_code == 404 and missing_ok and page == 1:
                if _error_code(response) in MISSING_CODES:
                    return
                # A 404 that is not the registry saying "no such repository" (a proxy, a
                # load balancer): nothing is known, and "no tags" would make every manifest
                # there look like an orphan.
                raise self.failure(response, f"GET {path}: a 404 that is not the registry's "
                                   "own answer (no NAME_UNKNOWN error)")
            if response.status_code != 200:
                raise self.failure(response, f"GET {path}" if page == 1 else
                                   f"GET {path} (page {page}: the listing is incomplete)")
            items = self._page_items(response, path, key, page)
            listed += len(items)
            self._within_bounds(path, page, listed)
            yield items
            following = self._onward(response, path, read, page)
            if following is None:
                return
            url, params = following, None
            page += 1

    def _onward(self, response: Response, path: str, read: set[str], page: int
                ) -> URL | None:
        """The URL of the page after ``page`` of the listing ``path`` (None after its last),
        as its Link names it. ``read``: every page URL requested, this one's included. A
        Link back to one of them, or past MAX_PAGES, raises: the listing would never end."""
        link = self._next_link(response, path)
        if link is None:
            return None
        # The Link target carries its own query (n, last): used as the registry wrote it.
        url = self.next_page(response, link)
        if str(url) in read:
            raise RegistryError(
                f"GET {path}: the Link header of page {page} leads back to a page already "
                f"read ({url.raw_path.decode()}); the listing would never end",
                registry=self.settings.name)
        self._within_bounds(path, page + 1, 0)
        return url

    def _within_bounds(self, path: str, page: int, listed: int) -> None:
        """Raise when a listing has more than MAX_PAGES pages or MAX_LISTED items."""
        if page > MAX_PAGES:
            raise RegistryError(
                f"GET {path}: more than {MAX_PAGES:,} pages; the listing looks endless, "
                "so it is not trusted", registry=self.settings.name)
        if listed > MAX_LISTED:
            raise RegistryError(
                f"GET {path}: more than {MAX_LISTED:,} names in {page:,} pages; the "
                "listing looks endless, so it is not trusted", registry=self.settings.name)

    def _page_items(self, response: Response, path: str, key: str,
                    page: int) -> list[Any]:
        """The list under ``key``; null is an empty page. Anything else raises, an absent key
        too: a page that says nothing about its items must not read as "there are none"."""
        try:
            doc = response.json()
        except ValueError:
            doc = None
        items = doc.get(key, False) if isinstance(doc, dict) else False
        if items is None:
            items = []  # distribution and ACR write "tags": null for none
        if not isinstance(items, list):
            raise RegistryError(f"GET {path}, page {page}: the answer is not the expected JSON "
                                f"(truncated or garbled: no {key!r} list)",
                                registry=self.settings.name)
        return items

    async def catalog(self) -> list[str]:
        if self.settings.repositories:
            return sorted(set(self.settings.repositories))
        names: list[str] = []
        async for page in self.pages("/v2/_catalog", "repositories",
                                     scope="registry:catalog:*"):
            names.extend(self._strings(page, "GET /v2/_catalog"))
        return sorted(set(names))

    async def tags(self, repository: str) -> list[str]:
        path = self.path(repository, "tags/list")
        tags: list[str] = []
        async for page in self.pages(path, "tags", scope=_pull(repository), missing_ok=True):
            tags.extend(self._strings(page, f"GET {path}"))
        # Each tag goes into a URL path next: one outside the OCI grammar makes the whole
        # listing untrusted (the repository unreadable), not just that tag unread.
        bad = next((t for t in tags if not is_tag(t)), None)
        if bad is not None:
            raise RegistryError(f"GET {path}: the listing names {bad[:200]!r}, which is not a "
                                "tag (OCI grammar); the listing is not trusted",
                                registry=self.settings.name)
        return sorted(set(tags))

    def _strings(self, items: list[Any], what: str) -> list[str]:
        if not all(isinstance(i, str) and i for i in items):
            raise RegistryError(f"{what}: the answer is not the expected JSON (a name that "
                                "is not a string)", registry=self.settings.name)
        return items

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """Resolve a tag (or digest) to a digest; None when it does not exist (any more)."""
        path = self.path(repository, "manifests", reference, tag_ok=True)
        response = await self.request("HEAD", path, scope=_pull(repository),
                                      headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.failure(response, f"HEAD {path}")
        digest = self._digest_header(response, f"HEAD {path}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        size = int(response.headers.get("content-length") or 0)
        if not digest:
            # Not every registry sends the digest on HEAD: read the body and hash it.
            fetched = await self.get_manifest(repository, reference)
            if fetched is None:
                return None
            return ManifestHead(fetched.digest, fetched.media_type, len(fetched.body))
        return ManifestHead(digest, media_type, size)

    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest | None:
        """The manifest body, verified: against the digest when fetched by digest; against
        the registry's Docker-Content-Digest when fetched by tag (a cold scan reads each tag
        once, body and digest in one answer). Schema 1 is the exception, its bytes never
        hash to its digest: it is returned under the registry's digest, never parsed.

        One longer than MAX_MANIFEST_BYTES raises AnswerTooLargeError, unread: what it
        refers to is unknown, so its repository is unreadable (kept whole)."""
        path = self.path(repository, "manifests", reference, tag_ok=True)
        response = await self.request("GET", path, scope=_pull(repository),
                                      headers={"Accept": ACCEPT}, max_bytes=MAX_MANIFEST_BYTES)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.failure(response, f"GET {path}")
        body = response.content
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if reference.startswith("sha256:") and computed != reference:
            if media_type in SCHEMA1:
                # distribution signs schema 1 anew on every GET, so its bytes never hash to
                # the digest (that is of the payload without signatures). Such a manifest is
                # never parsed, only protected as unknown-media-type: nothing trusts its body.
                return FetchedManifest(reference, media_type, body)
            raise RegistryError(f"GET {path}: the body's sha256 is {computed}, not the digest "
                                "asked for; refusing to trust this registry's answer",
                                registry=self.settings.name)
        if ":" in reference:
            return FetchedManifest(reference, media_type, body)
        # By tag: the digest the registry names must be that of the bytes it sent, or the
        # body would be cached (forever) as the facts of another digest.
        answered = self._digest_header(response, f"GET {path}")
        if answered and answered != computed:
            if media_type in SCHEMA1:
                return FetchedManifest(answered, media_type, body)
            raise RegistryError(f"GET {path}: the body's sha256 is {computed}, but the "
                                f"registry names it {answered}; refusing to trust this "
                                "registry's answer", registry=self.settings.name)
        return FetchedManifest(computed, media_type, body)

    async def get_blob(self, repository: str, digest: str, *,
                       max_bytes: int = MAX_CONFIG_BYTES) -> bytes | None:
        """A small blob (an image config). None when missing or larger than max_bytes (not
        read past it: its facts, such as its created time, are then unknown)."""
        path = self.path(repository, "blobs", digest)
        # Redirects lead to storage backends (S3, Azure blob); our Authorization header is
        # dropped when a redirect leaves the registry's origin.
        try:
            response = await self.request("GET", path, scope=_pull(repository),
                                          follow_redirects=True, max_bytes=max_bytes)
        except AnswerTooLargeError as exc:
            log.warning("blob too large to read", registry=self.settings.name,
                        repository=repository, digest=digest, error=str(exc))
            return None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.failure(response, f"GET {path}")
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
            raise RegistryError(f"GET {path}: the blob does not match its digest",
                                registry=self.settings.name)
        return response.content

    @property
    def has_referrers_api(self) -> bool | None:
        """Whether the registry answers the referrers API; None until it has been asked."""
        return self._referrers_api

    async def referrers(self, repository: str, digest: str) -> list[str] | None:
        """Digests of manifests whose subject is ``digest``, through the referrers API.

        None when the registry has no referrers API (then the ``sha256-<hex>`` fallback tag
        and cosign's tags are how referrers are found).
        """
        if self._referrers_api is None:
            # Probe once: concurrent callers wait for the first answer instead of each
            # asking a registry that has no such API.
            async with self._referrers_probe:
                if self._referrers_api is None:
                    return await self._referrers(repository, digest)
        if self._referrers_api is False:
            return None
        return await self._referrers(repository, digest)

    async def _referrers(self, repository: str, digest: str) -> list[str] | None:
        path = self.path(repository, "referrers", digest)
        found: list[str] = []
        url: str | URL = path
        read: set[str] = set()  # as in pages(): a Link that loops, or never ends, is caught
        page = 1
        while True:
            response = await self.request("GET", url, scope=_pull(repository),
                                          headers={"Accept": OCI_INDEX})
            read.add(str(response.url))
            content_type = response.headers.get("content-type", "")
            if response.status_code == 404 or (
                    response.status_code == 200 and OCI_INDEX not in content_type):
                # The spec forbids 404 from a registry that has the API; distribution 2.8
                # answers 404 for the unknown route.
                if self._referrers_api is None:
                    self._referrers_api = False
                return found or None
            if response.status_code != 200:
                raise self.failure(response, f"GET {path}")
            self._referrers_api = True
            try:
                entries = response.json().get("manifests") or []
                found.extend(str(e["digest"]) for e in entries)
            except (ValueError, AttributeError, KeyError, TypeError):
                raise RegistryError(f"GET {path}: the referrers answer is not an OCI index",
                                    registry=self.settings.name) from None
            self._within_bounds(path, page, len(found))
            following = self._onward(response, path, read, page)
            if following is None:
                return found
            url = following
            page += 1

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    async def delete_manifest(self, repository: str, digest: str, *, retry: bool = True,
                              not_after: float | None = None,
                              unless: Callable[[], bool] | None = None) -> bool:
        """Delete by digest. True when deleted now, False when it was already gone.

        ``retry=False``: one attempt (a 429 or 503 raises RegistryError with its status):
        the executor re-confirms the manifest's tags before it tries again. ``not_after``:
        not sent after that moment (``send``). On ACR a 405 raises DeleteRefusedError: the
        caller reads the attributes to know what refused it."""
        path = self.path(repository, "manifests", digest)
        response = await self.request("DELETE", path, scope=f"repository:{repository}:delete",
                                      retry=retry, not_after=not_after, unless=unless)
        if response.status_code in (200, 202):
            return True
        if response.status_code == 404:
            return False
        if response.status_code == 403:
            # A refusal of this one manifest (a lock, a repository-scoped permission): it
            # fails alone. An account without delete rights at all meets 401 on the token.
            raise RegistryError(f"DELETE {path}: refused for this manifest (HTTP 403)"
                                f"{_error_detail(response)}", registry=self.settings.name,
                                status=403)
        if self.settings.type == "acr" and response.status_code == 405:
            raise DeleteRefusedError(
                f"DELETE {path}: refused (HTTP 405){_error_detail(response)}",
                registry=self.settings.name, status=405)
        if self._locked(response):
            raise ManifestLockedError(
                f"DELETE {path}: the manifest is locked (HTTP {response.status_code})"
                f"{_error_detail(response)}; unlock it (ACR: az acr repository update "
                "--delete-enabled true) if it should go", registry=self.settings.name,
                status=response.status_code)
        if response.status_code == 405 or "UNSUPPORTED" in response.text:
            raise DeletionDisabledError(
                f"DELETE {path}: the registry has deletion disabled (HTTP "
                f"{response.status_code}). On CNCF distribution set storage.delete.enabled: "
                "true in its config (or REGISTRY_STORAGE_DELETE_ENABLED=true) and restart it; "
                "on other registries grant the account delete rights",
                registry=self.settings.name, status=response.status_code)
        raise self.failure(response, f"DELETE {path}")

    async def put_manifest(self, repository: str, reference: str, body: bytes,
                           media_type: str) -> str:
        """Push ``body`` as the manifest ``reference`` (a digest or a tag), byte for byte.
        Returns its digest, verified: the registry's Docker-Content-Digest must be the
        sha256 of the bytes sent (a registry that rewrote them would hand back another
        manifest than the one journaled)."""
        path = self.path(repository, "manifests", reference, tag_ok=True)
        response = await self.request("PUT", path, scope=f"repository:{repository}:pull,push",
                                      headers={"Content-Type": media_type}, content=body)
        if response.status_code not in (200, 201):
            raise self.failure(response, f"PUT {path}")
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        answered = response.headers.get("docker-content-digest") or computed
        if answered != computed:
            raise RegistryError(f"PUT {path}: the registry stored digest {answered}, but the "
                                f"bytes sent hash to {computed}", registry=self.settings.name)
        return computed

    async def blob_exists(self, repository: str, digest: str) -> bool:
        """HEAD the blob: False only on 404 (the garbage collector took it)."""
        path = self.path(repository, "blobs", digest)
        response = await self.request("HEAD", path, scope=_pull(repository),
                                      follow_redirects=True)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self.failure(response, f"HEAD {path}")

    def _digest_header(self, response: Response, what: str) -> str | None:
        """The answer's Docker-Content-Digest; RegistryError when it is there and not a
        digest: it would name the manifest in the plan, and go into a DELETE's URL."""
        digest = response.headers.get("docker-content-digest")
        if digest and not is_digest(digest):
            raise RegistryError(f"{what}: the registry names the manifest {digest[:200]!r}, "
                                "which is not a digest; its answers are not trusted",
                                registry=self.settings.name)
        return digest

    def _locked(self, response: Response) -> bool:
        """A refusal about this manifest, not about deletion on the whole registry, by its
        error code (ACR's 405 is told apart by the attributes instead: DeleteRefusedError).
        distribution answers 405 UNSUPPORTED when deletion is disabled.
        """
        return response.status_code in (405, 409, 412) and \
            _error_code(response) in LOCKED_CODES


def _error_code(response: Response) -> str:
    try:
        return str(response.json()["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _path(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.path
    if not url.startswith(("http://", "https://")):
        return url
    # urllib, not httpx2: this names a URL in an error, perhaps one httpx2 could not read.
    return urlsplit(url).path


# RFC 8288: `<target>; param; param=value; param="quoted, value", <target>; ...`
_LINK_TARGET = re.compile(r'\s*<([^>]*)>')
_LINK_PARAM = re.compile(r'\s*;\s*([^\s=;,]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,]*)))?')
_LINK_NEXT = re.compile(r'\s*,')


class LinkError(ValueError):
    """A Link header that cannot be read through: whether it names a next page is unknown."""


def next_link(headers: AnswerHeaders) -> str | None:
    """The target of rel="next" in the Link headers: all of them, since a registry (or a
    proxy) may send rel="prev" and rel="next" on lines of their own; rel is a list of
    relation types ("next prev"). Raises LinkError when a header cannot be read through:
    taking it for "no next page" would end a listing early, its later pages absent."""
    # Every header read through first: a header with a rel="next" and then text that
    # cannot be read is not known to say what it seems to.
    links = [link for value in headers.get_list("link") for link in _links(value)]
    for target, params in links:
        relations = params.get("rel")
        if relations is None and "rel*" in params:  # rel*=UTF-8''next
            relations = params["rel*"].rpartition("'")[2]
        if "next" in (relations or "").lower().split():
            return target
    return None


def _links(value: str) -> Iterator[tuple[str, dict[str, str]]]:
    position = 0
    while True:
        target = _LINK_TARGET.match(value, position)
        if target is None:
            if value[position:].strip():
                raise LinkError(f"a Link header that cannot be read: {value!r}")
            return
        params: dict[str, str] = {}
        position = target.end()
        while (param := _LINK_PARAM.match(value, position)) is not None:
            quoted, bare = param.group(2), param.group(3)
            text = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else (bare or "")
            params.setdefault(param.group(1).lower(), text.strip())
            position = param.end()
        yield target.group(1), params
        comma = _LINK_NEXT.match(value, position)
        if comma is None:
            if value[position:].strip():
                raise LinkError(f"a Link header that cannot be read: {value!r}")
            return
        position = comma.end()


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(response: Response) -> str:
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f" ({first.get('code')}: {first.get('message')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
