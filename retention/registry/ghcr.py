"""GitHub Container Registry: the owner's container packages through GitHub's REST API
(Packages), their manifests' bodies through ghcr.io's OCI API.

On GHCR every manifest is a package version: an image, each platform child of an index,
each BuildKit attestation, each cosign signature. GitHub lists every version of a package,
untagged ones included, with its digest (``name``), tags and ``created_at``, 100 a page;
and it deletes a version by its id through the API only (ghcr.io answers an OCI DELETE with
405). A version's deletion removes all its tags, as a DELETE by digest does elsewhere.

GitHub's rate limits are waited out as GitHub documents them, never raced: a primary limit
(``x-ratelimit-remaining: 0``) until ``x-ratelimit-reset``; a secondary one (403 or 429
saying so) for ``retry-after`` seconds, else a minute, doubled at each further limit. A wait
longer than an hour ends the run (RateLimitExhaustedError): nothing more is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import structlog
from httpx2 import URL

from retention.config import RegistrySettings
from retention.errors import (
    AuthenticationError,
    RateLimitedError,
    RateLimitExhaustedError,
    RegistryError,
)
from retention.names import is_digest, is_repository, is_tag, not_canonical
from retention.registry.auth import credential_refusal
from retention.registry.client import MAX_PAGES, LinkError, RegistryClient, next_link
from retention.registry.http import Response, same_origin
from retention.registry.mediatypes import parse_time

log = structlog.get_logger("retention.registry")

PAGE = 100  # GitHub's largest per_page
API_VERSION = "2022-11-28"
# No single rate-limit wait beyond this (SPEC): a longer one ends the run.
MAX_WAIT = 3600.0
# GitHub's advice for a secondary limit without retry-after: at least a minute, then
# exponentially longer while the limit lasts.
SECONDARY_WAIT = 60.0
# Limit answers to one request before it fails: with waits doubling from a minute, the
# seventh is beyond an hour and ends the run first; with retry-after, GitHub sets the pace.
MAX_LIMITED = 12
# GitHub's refusal to delete the last tagged version (HTTP 400).
LAST_TAGGED = "cannot delete the last tagged version"
RESTORE_DAYS = 30  # GitHub restores a deleted version within this many days


@dataclass(frozen=True, slots=True)
class GhcrVersion:
    """A package version: one manifest."""

    id: int
    digest: str
    tags: tuple[str, ...]
    created: datetime | None  # created_at: when it was pushed
    deleted: datetime | None = None  # deleted_at, for a deleted version


class _Garbled(ValueError):
    """An entry of an answer that is not what GitHub documents."""


def _version(entry: Any) -> GhcrVersion:
    if not isinstance(entry, dict):
        raise _Garbled("an entry that is not an object")
    vid, digest = entry.get("id"), entry.get("name")
    if not isinstance(vid, int) or isinstance(vid, bool) or vid <= 0:
        raise _Garbled(f"a version id that is not a positive number: {vid!r:.100}")
    # The digest names the manifest in the plan and goes into ghcr.io URLs.
    if not isinstance(digest, str) or not is_digest(digest):
        raise _Garbled(f"version {vid}'s name {digest!r:.200} is not a digest")
    metadata = entry.get("metadata") or {}
    container = (metadata.get("container") if isinstance(metadata, dict) else None) or {}
    tags = container.get("tags") if isinstance(container, dict) else False
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and is_tag(t) for t in tags):
        raise _Garbled(f"version {vid}'s tags are not a list of tags (OCI grammar)")
    return GhcrVersion(vid, digest, tuple(sorted(set(tags))),
                       parse_time(entry.get("created_at")), parse_time(entry.get("deleted_at")))


def _message(response: Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("message") or "")[:500] if isinstance(doc, dict) else ""
    except ValueError:
        return ""


def _seconds(value: str | None, now: float) -> float | None:
    """retry-after: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _epoch(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class GhcrApi:
    """GitHub's Packages API for one registry's owner. One per client: it remembers each
    version's id (by repository and digest) and the rate limit's state for every request
    made with the token."""

    def __init__(self, client: RegistryClient, *, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._client = client
        self._settings: RegistrySettings = client.settings
        self._wall = wall  # epoch seconds: x-ratelimit-reset is one
        self._sleep = sleep
        self._ids: dict[tuple[str, str], int] = {}
        self._blocked_until = 0.0  # epoch seconds: no request before
        # Limit answers since the last answer that was not one, for writes (DELETE, POST:
        # GitHub's content-creating limit) and reads apart: a read that goes through
        # between two limited DELETEs does not mean the DELETEs' limit is over.
        self._strikes: Counter[bool] = Counter()
        self._exhausted: str | None = None
        self.requests: Counter[str] = Counter()  # method -> requests sent, for the log
        self.waited = 0.0  # seconds spent waiting out limits

    # -- names --------------------------------------------------------------------------

    @property
    def _owner_path(self) -> str:
        kind = "users" if self._settings.owner_type == "user" else "orgs"
        return f"{self._settings.api_url}/{kind}/{quote(self._settings.owner, safe='')}"

    def package(self, repository: str) -> str:
        """GitHub's name of the package ``repository`` is: the part after the owner."""
        prefix = self._settings.owner.lower() + "/"
        if not is_repository(repository):
            raise RegistryError(f"{not_canonical(repository)}: it is never requested",
                                registry=self._settings.name)
        if not repository.startswith(prefix):
            raise RegistryError(f"{repository} is not a package of owner "
                                f"{self._settings.owner}", registry=self._settings.name)
        return repository[len(prefix):]

    def _versions_url(self, repository: str, version: int | None = None) -> str:
        # A package name with / is one path segment: %2F (GitHub's documented encoding).
        url = (f"{self._owner_path}/packages/container/"
               f"{quote(self.package(repository), safe='')}/versions")
        return url if version is None else f"{url}/{version}"

    # -- the request path -----------------------------------------------------------------

    def _fail(self, response: Response, what: str) -> RegistryError:
        message = _message(response)
        detail = f": {message}" if message else ""
        status = response.status_code
        if status == 401:
            return AuthenticationError(f"{what}: GitHub refused the token (HTTP 401{detail}); "
                                       "check token_file", registry=self._settings.name,
                                       status=401)
        if status == 403:
            return AuthenticationError(
                f"{what}: GitHub denied it (HTTP 403{detail}): the token needs read:packages "
                "and delete:packages (write:packages for restore) and admin rights on the "
                "package", registry=self._settings.name, status=403)
        return RegistryError(f"{what}: HTTP {status}{detail}", registry=self._settings.name,
                             status=status)

    async def _turn(self) -> None:
        """Wait until a request may go: never while a limit holds."""
        while True:
            if self._exhausted is not None:
                raise RateLimitExhaustedError(self._exhausted, registry=self._settings.name)
            delay = self._blocked_until - self._wall()
            if delay <= 0:
                return
            log.info("github rate limit: waiting", registry=self._settings.name,
                     seconds=round(delay, 1))
            self.waited += delay
            await self._sleep(delay)

    def _exhaust(self, delay: float) -> None:
        self._exhausted = (
            f"GitHub's rate limit asks to wait {delay / 60:.0f} minutes, longer than the "
            f"hour retention waits at once: nothing more is sent to GitHub in this run "
            "(every deletion is either done or not started); the next run goes on")
        raise RateLimitExhaustedError(self._exhausted, registry=self._settings.name)

    def _block(self, seconds: float, kind: str, message: str, *, margin: float = 0.0) -> None:
        if seconds > MAX_WAIT:
            self._exhaust(seconds)
        self._blocked_until = max(self._blocked_until, self._wall() + seconds + margin)
        log.warning("github rate limit", registry=self._settings.name, kind=kind,
                    seconds=round(seconds, 1), message=message[:200])

    async def _limit(self, method: str, response: Response, headers: dict[str, str]) -> bool:
        """Whether ``response`` is a rate limit (then it is waited for before the next
        request). A 403 is one only when its message or x-ratelimit-remaining: 0 says so;
        else it is a permission error."""
        status = response.status_code
        if status not in (403, 429):
            return False
        now = self._wall()
        message = _message(response)
        lowered = message.lower()
        remaining = response.headers.get("x-ratelimit-remaining")
        retry_after = _seconds(response.headers.get("retry-after"), now)
        write = method != "GET"
        backoff = SECONDARY_WAIT * 2 ** self._strikes[write]
        if retry_after is not None:
            wait, kind = retry_after, "secondary"
        elif remaining == "0" and (reset := _epoch(response.headers.get("x-ratelimit-reset"))):
            wait, kind = reset - now, "primary"
        elif "secondary rate limit" in lowered or "abuse" in lowered:
            wait, kind = backoff, "secondary"
        elif remaining == "0" or "rate limit" in lowered:
            # A primary limit whose reset the answer does not show: GET /rate_limit tells
            # (it does not count against the primary limit).
            reset = await self._core_reset(headers)
            wait, kind = (reset - now, "primary") if reset else (backoff, "primary")
        elif status == 429:
            wait, kind = backoff, "secondary"
        else:
            return False
        self._strikes[write] += 1
        # A second past a primary reset: x-ratelimit-reset is in whole seconds.
        self._block(max(wait, 1.0), kind, message, margin=1.0 if kind == "primary" else 0.0)
        return True

    async def _core_reset(self, headers: dict[str, str]) -> float | None:
        """When the primary limit resets, from GET /rate_limit; None when it is not spent
        (or that cannot be read)."""
        try:
            response = await self._client.send("GET", f"{self._settings.api_url}/rate_limit",
                                               headers=headers, retry=False)
            core = response.json()["resources"]["core"]
            if response.status_code == 200 and int(core["remaining"]) == 0:
                return float(core["reset"])
        except (RegistryError, ValueError, KeyError, TypeError):
            pass
        return None

    def _note(self, response: Response) -> None:
        """An answer that spent the primary limit: the next request waits for its reset."""
        if response.headers.get("x-ratelimit-remaining") == "0":
            reset = _epoch(response.headers.get("x-ratelimit-reset"))
            if reset is not None:
                self._block(max(reset - self._wall(), 0.0), "primary",
                            "x-ratelimit-remaining: 0", margin=1.0)

    async def call(self, method: str, url: str | URL, *, what: str,
                   params: dict[str, Any] | None = None,
                   not_after: float | None = None,
                   unless: Callable[[], bool] | None = None) -> Response:
        """One API request with the token, under GitHub's rate limits.

        A GET (and a restore's POST) limited by GitHub waits and goes again; connection
        errors and 5xx are retried for a GET. A DELETE limited raises RateLimitedError (it
        was not applied): the executor confirms the version's tags again, after the wait,
        before it sends another."""
        credentials = self._settings.credentials
        if credentials is None:
            raise AuthenticationError("no GitHub token: set token_file (or token_env)",
                                      registry=self._settings.name, status=401)
        # The one rule for every credential: api_url's origin, ghcr.io's own.
        reason = credential_refusal(str(url), self._settings)
        if reason is not None:
            raise AuthenticationError(f"the GitHub token is not sent to "
                                      f"{urlsplit(str(url)).hostname}: {reason}",
                                      registry=self._settings.name, status=401)
        headers = {"Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": API_VERSION,
                   "Authorization": f"Bearer {credentials.password.reveal()}"}
        retry = self._client.retry_policy
        attempt = limited = 0
        while True:
            await self._turn()
            self.requests[method] += 1
            try:
                response = await self._client.send(method, url, headers=headers,
                                                   params=params, retry=False,
                                                   not_after=not_after, unless=unless)
            except AuthenticationError:
                raise
            except RegistryError:
                if method != "GET" or attempt + 1 >= retry.attempts:
                    raise
                attempt += 1
                await self._sleep(retry.backoff(attempt - 1))
                continue
            if await self._limit(method, response, headers):
                limited += 1
                if method == "DELETE":
                    raise RateLimitedError(f"{what}: GitHub's rate limit; not applied, tried "
                                           "again after the wait", registry=self._settings.name,
                                           status=429)
                if limited >= MAX_LIMITED:
                    raise RegistryError(f"{what}: still rate-limited after {limited} waits",
                                        registry=self._settings.name, status=429)
                continue
            self._strikes[method != "GET"] = 0
            self._note(response)
            if response.status_code in (500, 502, 503, 504) and method == "GET" \
                    and attempt + 1 < retry.attempts:
                attempt += 1
                await self._sleep(retry.backoff(attempt - 1))
                continue
            return response

    async def _listing(self, url: str, what: str, params: dict[str, Any]) -> list[Any]:
        """Every entry of a paged listing, following Link headers on api_url's origin.
        Complete or an error (as every listing: a page lost would make its versions look
        absent)."""
        entries: list[Any] = []
        target: str | URL = url
        read: set[str] = set()
        base = URL(self._settings.api_url)
        for page in range(1, MAX_PAGES + 1):
            response = await self.call("GET", target, what=what,
                                       params=params if page == 1 else None)
            read.add(str(response.url))
            if response.status_code != 200 and page > 1:
                # A 404 there is a lost page, not an absent package.
                raise RegistryError(f"{what} (page {page}): HTTP {response.status_code}; the "
                                    "listing is incomplete", registry=self._settings.name)
            if response.status_code != 200:
                raise self._fail(response, what)
            try:
                doc = response.json()
            except ValueError:
                doc = None
            if not isinstance(doc, list):
                raise RegistryError(f"{what}, page {page}: the answer is not the expected "
                                    "JSON list (truncated or garbled)",
                                    registry=self._settings.name)
            entries.extend(doc)
            try:
                link = next_link(response.headers)
            except LinkError as exc:
                raise RegistryError(f"{what}: {str(exc)[:300]}; the rest of the listing is "
                                    "not known", registry=self._settings.name) from None
            if link is None:
                return entries
            try:
                following = response.url.join(link)
                away = not same_origin(following, base) or bool(following.userinfo)
            except ValueError:  # httpx2.InvalidURL too: the registry's answer, not a crash
                raise RegistryError(f"{what}: a Link header whose target cannot be read "
                                    f"({link[:200]!r})", registry=self._settings.name
                                    ) from None
            if away:
                raise RegistryError(f"{what}: a Link header points away from "
                                    f"{base.scheme}://{base.netloc.decode()}; refusing to "
                                    "follow it", registry=self._settings.name)
            if str(following) in read:
                raise RegistryError(f"{what}: the Link header of page {page} leads back to a "
                                    "page already read; the listing would never end",
                                    registry=self._settings.name)
            target = following
        raise RegistryError(f"{what}: more than {MAX_PAGES:,} pages; the listing looks "
                            "endless, so it is not trusted", registry=self._settings.name)

    # -- API ------------------------------------------------------------------------------

    async def packages(self) -> list[str]:
        """The owner's container packages, as repository names (``owner/package``)."""
        url = f"{self._owner_path}/packages"
        entries = await self._listing(url, f"GET {urlsplit(url).path}",
                                      {"package_type": "container", "per_page": PAGE})
        names = []
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise RegistryError(f"GET {urlsplit(url).path}: a package without a name",
                                    registry=self._settings.name)
            # Not checked here: a name outside the OCI grammar is an unreadable repository
            # (the scan says so), never requested.
            names.append(f"{self._settings.owner.lower()}/{name}")
        return sorted(set(names))

    async def versions(self, repository: str, *, missing_ok: bool = False,
                       deleted: bool = False) -> list[GhcrVersion]:
        """Every version of the package (``deleted``: those GitHub can still restore).
        ``missing_ok``: a 404 to the first page is an empty package (the scan, which met it
        in the listing moments ago: a package whose versions are all gone is gone)."""
        url = self._versions_url(repository)
        what = f"GET {urlsplit(url).path}"
        try:
            entries = await self._listing(url, what, {"per_page": PAGE, "state": "deleted"
                                                      if deleted else "active"})
        except RegistryError as exc:
            if exc.status == 404 and missing_ok:
                return []
            raise
        try:
            found = [_version(e) for e in entries]
        except _Garbled as exc:
            raise RegistryError(f"{what}: {exc}; the listing is not trusted",
                                registry=self._settings.name) from None
        if not deleted:
            for v in found:
                self._ids[(repository, v.digest)] = v.id
        return found

    async def manifests(self, repository: str) -> list[GhcrVersion]:
        """Every version, for the executor's re-read (as ACR's listing)."""
        return await self.versions(repository)

    async def version_id(self, repository: str, digest: str) -> int | None:
        """The id of the version that is ``digest``: as the last listing gave it, else from
        a listing now (a saved plan applied, a restore). None when there is none."""
        if (repository, digest) not in self._ids:
            await self.versions(repository, missing_ok=True)
        return self._ids.get((repository, digest))

    async def manifest_tags(self, repository: str, digest: str) -> set[str] | None:
        """The tags of ``digest``'s version now, read by its id (one request, whatever the
        package's size); None when the version is gone."""
        vid = await self.version_id(repository, digest)
        if vid is None:
            return None
        url = self._versions_url(repository, vid)
        what = f"GET {urlsplit(url).path}"
        response = await self.call("GET", url, what=what)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, what)
        try:
            version = _version(response.json())
        except (_Garbled, ValueError) as exc:
            raise RegistryError(f"{what}: the answer is not a package version ({exc})",
                                registry=self._settings.name) from None
        if version.digest != digest or version.id != vid:
            # Never the case on GitHub (an id is one manifest): not what the plan saw.
            raise RegistryError(f"{what}: version {vid} is {version.digest}, not {digest}",
                                registry=self._settings.name)
        return set(version.tags)

    async def delete(self, repository: str, digest: str, *,
                     not_after: float | None = None,
                     unless: Callable[[], bool] | None = None) -> bool:
        """Delete ``digest``'s version (and every tag on it). True when deleted now, False
        when it was already gone. GitHub's refusal of this one version (the last tagged
        one, a public one downloaded more than 5,000 times) fails it alone, with GitHub's
        message; a 403 that is not a limit is a permission error."""
        vid = await self.version_id(repository, digest)
        if vid is None:
            return False
        url = self._versions_url(repository, vid)
        what = f"DELETE {urlsplit(url).path}"
        # Not sent past ``not_after`` (the executor's confirm_window), like any DELETE.
        response = await self.call("DELETE", url, what=what, not_after=not_after,
                                   unless=unless)
        if response.status_code in (200, 202, 204):
            self._ids.pop((repository, digest), None)
            return True
        if response.status_code == 404:
            self._ids.pop((repository, digest), None)
            return False
        if response.status_code in (400, 409, 422):
            message = _message(response) or f"HTTP {response.status_code}"
            hint = (" (retention keeps a package's newest tagged version for this: a tag "
                    "moved since the plan)") if LAST_TAGGED in message.lower() else ""
            raise RegistryError(f"{what}: GitHub refused to delete version {vid}: "
                                f"{message}{hint}", registry=self._settings.name,
                                status=response.status_code)
        raise self._fail(response, what)

    async def deleted_version(self, repository: str, digest: str) -> GhcrVersion | None:
        """The version of ``digest`` GitHub can restore (deleted within 30 days), the one
        deleted last when there are several; None when there is none."""
        found = [v for v in await self.versions(repository, deleted=True, missing_ok=True)
                 if v.digest == digest]
        return max(found, default=None, key=lambda v: (
            v.deleted.timestamp() if v.deleted is not None else 0.0, v.id))

    async def restore(self, repository: str, version: GhcrVersion) -> None:
        """GitHub's own restore of a deleted version (its tags come back with it, unless
        another version holds them now)."""
        url = f"{self._versions_url(repository, version.id)}/restore"
        what = f"POST {urlsplit(url).path}"
        response = await self.call("POST", url, what=what)
        if response.status_code not in (200, 201, 204):
            raise self._fail(response, what)
        self._ids[(repository, version.digest)] = version.id


class GhcrClient(RegistryClient):
    """ghcr.io: manifests and blobs through its OCI API (token exchange with the GitHub
    token as password), the catalog, tags and deletions through GitHub's Packages API."""

    def __init__(self, settings: RegistrySettings, *, wall: Callable[[], float] = time.time,
                 **kwargs: Any):
        super().__init__(settings, **kwargs)
        self.github = GhcrApi(self, wall=wall, sleep=self._sleep)
        # ghcr.io has no referrers API: referrers are found as versions, and through
        # cosign's tags and the sha256-<hex> fallback index.
        self._referrers_api = False

    async def catalog(self) -> list[str]:
        if self.settings.repositories:
            return sorted(set(self.settings.repositories))
        return await self.github.packages()

    async def referrers(self, repository: str, digest: str) -> list[str] | None:
        return None

    async def delete_manifest(self, repository: str, digest: str, *,
                              retry: bool = True, not_after: float | None = None,
                              unless: Callable[[], bool] | None = None) -> bool:
        """By the version's id through GitHub's API (ghcr.io refuses an OCI DELETE). Never
        retried here: a limited DELETE raises RateLimitedError (429) for the executor.
        ``not_after``: not sent after that moment (RegistryClient.send)."""
        return await self.github.delete(repository, digest, not_after=not_after,
                                        unless=unless)

    async def aclose(self) -> None:
        if self.github.requests:
            log.info("github api requests", registry=self.settings.name,
                     requests=dict(self.github.requests),
                     rate_limit_waited=round(self.github.waited, 1))
        await super().aclose()
