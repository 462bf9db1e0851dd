"""The HTTP connection to one registry: aiohttp underneath, one request and one answer at a
time above. Retries, authorization and what an answer means live in the client; this module
only sends a request and reads its whole answer.

Why aiohttp and not httpx (docs/performance.md): a plan is thousands of small requests, and
on a registry's own machine the CPU a request costs the client is CPU the registry does not
get. Against the same docker-registry at 8 in flight, httpx 0.28 (pool sized to the
concurrency, sniffio installed) used ~1.7 ms of CPU a request, httpx over an aiohttp
transport ~0.85 ms, aiohttp alone ~0.3-0.45 ms (C parser, no per-request pool scan).
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# A URL's user:password@ and its query, in an exception's message.
_USERINFO = re.compile(r"(://)[^/\s'\"@]*@")
_QUERY = re.compile(r"(://[^\s'\"?#]*)[?#][^\s'\"]*")


def _safe(message: str) -> str:
    """aiohttp's messages name whole URLs (the URL of a redirect, a connect timeout, an
    answer it could not parse). A storage backend's signed URL carries its credential in
    the query (S3's X-Amz-Signature, Azure's sig=), which the log redactor does not know."""
    return _QUERY.sub(r"\1?[query removed]", _USERINFO.sub(r"\1", message))


def _no_headers() -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict())


class TransportError(Exception):
    """No answer: the connection failed, was reset, or timed out."""

    def __init__(self, message: str, *, untrusted_certificate: bool = False):
        super().__init__(message)
        self.untrusted_certificate = untrusted_certificate


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer: status, headers (case-insensitive), body, and the URL that gave it
    (after redirects)."""

    status_code: int
    content: bytes = b""
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    url: URL = field(default_factory=URL)
    # The headers this request was sent with (the Authorization a 401 answered, say).
    request_headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def same_origin(a: URL, b: URL) -> bool:
    """Scheme, host (case aside) and port (the scheme's default when none is written)."""
    return (a.scheme, (a.host or "").lower(), a.port) == (b.scheme, (b.host or "").lower(),
                                                           b.port)


class HttpSession:
    """Connections to a registry (and its token service), at most ``connections`` open.

    The aiohttp session is made on first use, inside the running event loop, as aiohttp
    requires.
    """

    def __init__(self, base_url: str, *, verify: ssl.SSLContext | bool, timeout: float,
                 connections: int, user_agent: str):
        self._base = base_url.rstrip("/")
        self._verify = verify
        # connect: the DNS lookup too, which sock_connect (the TCP connect) leaves unbounded.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0,
                                              sock_read=timeout)
        self._connections = connections
        self._headers = {"User-Agent": user_agent}
        self._session: aiohttp.ClientSession | None = None
        # The proxy for each scheme://host, read from the environment once (as curl and
        # httpx honour HTTP(S)_PROXY and NO_PROXY). aiohttp's trust_env would look them up
        # on every request: 0.65 ms of CPU each, more than the request itself.
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._verify),
                timeout=self._timeout,
                headers=self._headers,
                # No cookies: the distribution API does not use them, and a jar costs
                # CPU on every answer.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
            # aiohttp sends an "idempotent" request (DELETE and PUT among them) a second
            # time, unasked, when its kept-alive connection drops before an answer. A DELETE
            # whose answer was lost may have gone through: the executor checks it (a HEAD)
            # and journals it instead, and sends nothing again without re-confirming the
            # manifest's tags. No public setting exists (aiohttp's own test client sets this
            # attribute); tests/test_http.py fails if a DELETE is ever sent twice.
            self._session._retry_connection = False
        return self._session

    def _url(self, url: str | URL) -> URL:
        """A path is on the registry; an absolute URL (a token realm, a Link the client
        checked) is used as given, byte for byte."""
        if isinstance(url, URL):
            return url
        if url.startswith(("http://", "https://")):
            return URL(url, encoded=True)
        return URL(self._base + url, encoded=True)

    def _proxy(self, url: URL) -> str | None:
        key = (url.scheme, url.host or "")
        if key not in self._proxies:
            proxy = urllib.request.getproxies().get(url.scheme)
            if proxy and urllib.request.proxy_bypass(url.host or ""):
                proxy = None
            self._proxies[key] = proxy or None
        return self._proxies[key]

    async def request(self, method: str, url: str | URL, *,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, Any] | None = None,
                      data: Mapping[str, str] | None = None,
                      content: bytes | None = None,
                      follow_redirects: bool = False) -> Response:
        """Send, and read the whole answer. Raises TransportError when there is none.

        ``follow_redirects`` (GET and HEAD only): redirects are followed here, hop by hop,
        so that each hop goes through the proxy the environment names for its own host
        (a registry reached directly may send blob reads to storage only a proxy reaches),
        and the Authorization header is dropped for good once a hop leaves the origin of
        the one before it (a storage backend must not receive the registry's credentials).
        """
        sent = dict(headers or {})
        try:
            target = self._url(url)
            if params:
                target = target.update_query({k: str(v) for k, v in params.items()})
            hop_headers = sent
            for _ in range(MAX_REDIRECTS + 1):
                async with self._open().request(
                        method, target, headers=hop_headers,
                        data=data if data is not None else content, allow_redirects=False,
                        proxy=self._proxy(target)) as answer:
                    body = await answer.read()
                    location = answer.headers.get("Location")
                    if not (follow_redirects and method in ("GET", "HEAD")
                            and answer.status in REDIRECTS and location):
                        return Response(answer.status, body, answer.headers, answer.url, sent)
                following = URL(location)
                if following.scheme not in ("http", "https", ""):
                    raise TransportError(f"a redirect to a {following.scheme}: URL")
                if not following.absolute:
                    following = answer.url.join(following)
                if not same_origin(following, target):
                    hop_headers = {k: v for k, v in hop_headers.items()
                                   if k.lower() != "authorization"}
                target = following
            raise TransportError(f"more than {MAX_REDIRECTS} redirects")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(_safe(str(exc.certificate_error)),
                                 untrusted_certificate=True) from None
        except aiohttp.ClientSSLError as exc:
            raise TransportError(_safe(f"TLS: {exc}"),
                                 untrusted_certificate="CERTIFICATE_VERIFY_FAILED" in str(exc)
                                 ) from None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # ValueError: a URL that yarl cannot read (a realm, a redirect), or one with a
            # user:password aiohttp will not send beside an Authorization header. No answer,
            # as for a connection error: a RegistryError, not a crash of the whole run.
            raise TransportError(_safe(f"{type(exc).__name__}: {exc}")) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
