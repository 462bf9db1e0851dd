"""The HTTP connection to one registry: pyreqwest (Rust's reqwest and hyper) underneath, one
request and one answer at a time above. Retries, authorization and what an answer means live
in the client; this module only sends a request and reads its whole answer.

Why pyreqwest (docs/performance.md): a plan is thousands of small requests, and on a
registry's own machine the CPU a request costs the client is CPU the registry does not get.
Against the same docker-registry at 8 in flight, httpx 0.28 used ~1.7 ms of CPU a request,
aiohttp 3.x ~0.25 ms (C parser, but a Python connection, protocol and stream per request),
pyreqwest ~0.15 ms (the HTTP/1.1 exchange, pooling and TLS in Rust, on a thread of its own).
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.proxy import ProxyBuilder
from pyreqwest.response import Response as PyResponse
from yarl import URL

from retention import jsoncodec
from retention.registry.tls import pem_certificates

log = structlog.get_logger("retention.registry")

# A URL's user:password@ and its query, in an exception's message.
_USERINFO = re.compile(r"(://)[^/\s'\"@]*@")
_QUERY = re.compile(r"(://[^\s'\"?#]*)[?#][^\s'\"]*")
# How rustls says that a certificate chain was not verified (UnknownIssuer, Expired,
# NotValidForName...): retrying cannot fix trust.
_UNTRUSTED = "invalid peer certificate"
_CA_AS_SERVER = "CaUsedAsEndEntity"
CONNECT_TIMEOUT = timedelta(seconds=10)


def _safe(message: str) -> str:
    """An HTTP library's messages name whole URLs (the URL of a redirect, a connect timeout,
    an answer it could not parse). A storage backend's signed URL carries its credential in
    the query (S3's X-Amz-Signature, Azure's sig=), which the log redactor does not know."""
    return _QUERY.sub(r"\1?[query removed]", _USERINFO.sub(r"\1", message))


def _causes(exc: PyreqwestError) -> list[str]:
    """reqwest's chain of causes, outermost first ("error sending request for url (...)",
    "client error (Connect)", "tcp connect error", "Connection refused (os error 111)")."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    found = [str(c.get("message")) for c in causes or () if isinstance(c, dict)]
    return found or [str(exc.args[0]) if exc.args else type(exc).__name__]


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
    (after redirects), as it was sent."""

    status_code: int
    content: bytes = b""
    headers: CIMultiDictProxy[str] = field(default_factory=_no_headers)
    sent_to: str = ""
    # The headers this request was sent with (the Authorization a 401 answered, say).
    request_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> URL:
        """``sent_to`` as a URL (made when asked for: only a listing's pages need it)."""
        return URL(self.sent_to, encoded=True)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsoncodec.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: URL) -> tuple[str, str, int | None]:
    """Scheme, host (case aside) and port (the scheme's default when none is written)."""
    return url.scheme, (url.host or "").lower(), url.port


def same_origin(a: URL, b: URL) -> bool:
    return _origin(a) == _origin(b)


class _Rustls:
    """Requests through pyreqwest: one client for each proxy (and one for none)."""

    def __init__(self, *, verify: bool, ca_pem: bytes | None, timeout: timedelta,
                 connections: int, user_agent: str):
        self._verify = verify
        self._ca_pem = ca_pem
        self._timeout = timeout
        self._connections = connections
        self._user_agent = user_agent
        self._clients: dict[str | None, Client] = {}

    def _client(self, proxy: str | None) -> Client:
        client = self._clients.get(proxy)
        if client is None:
            builder = (ClientBuilder()
                       .max_connections(self._connections)
                       .user_agent(self._user_agent)
                       # Redirects are followed by HttpSession, hop by hop.
                       .follow_redirects(False)
                       # The DNS lookup too (reqwest bounds the whole connect): a resolver
                       # gone quiet must not hang the run.
                       .connect_timeout(CONNECT_TIMEOUT)
                       # Each read, not the whole answer: a large blob that keeps coming is
                       # not cut off, an answer that stops coming is.
                       .read_timeout(self._timeout)
                       # Bodies exactly as sent (a manifest is hashed), and a HEAD's
                       # Content-Length kept: no Accept-Encoding, no decoding.
                       .gzip(False).brotli(False).zstd(False).deflate(False))
            # Never the library's own reading of the environment: HttpSession chooses.
            builder = builder.proxy(ProxyBuilder.all(proxy)) if proxy else builder.no_proxy()
            if not self._verify:
                builder = builder.danger_accept_invalid_certs(True)
            elif self._ca_pem is not None:
                builder = builder.add_root_certificate_pem(self._ca_pem)
            client = self._clients[proxy] = builder.build()
        return client

    async def exchange(self, method: str, target: str, headers: Mapping[str, str],
                       content: bytes | None, proxy: str | None
                       ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        # A request handed to reqwest goes on when this task is cancelled (a shutdown): it
        # is not recalled, a DELETE included (journaled "deleting" before it is sent, so a
        # restore finds it all the same). The client's own limit (max_connections) holds
        # it in the count of requests on their way until it ends.
        try:
            request = self._client(proxy).request(method, target)
            try:
                request = request.headers(headers)
            except ValueError:
                # Its text quotes the value, a token perhaps: not for a log.
                raise TransportError("a request header value that cannot be sent (a control "
                                     "character in it)") from None
            if content is not None:
                request = request.body_bytes(content)
            answer = await request.build().send()
            body = (await answer.bytes()).to_bytes()
            return answer.status, _headers_read(answer), body
        except PyreqwestError as exc:
            causes = _causes(exc)
            if any(_CA_AS_SERVER in c for c in causes):
                raise _CaAsServerCertificate(" ".join(causes)) from None
            # The first cause names the URL, which the caller's message names already. The
            # exception's class is left out: reqwest's kinds are coarse (a request written and
            # then cut off comes as a ConnectError), the causes say what happened.
            message = "; ".join(c for c in causes if not c.startswith("error sending request")
                                ) or "; ".join(causes)
            raise TransportError(_safe(f"no answer: {message}"),
                                 untrusted_certificate=any(_UNTRUSTED in c for c in causes)
                                 ) from None

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


# The answer headers the client reads, and all an answer through reqwest keeps: a copy of
# every header of every answer was a visible share of a cold plan's CPU.
HEADERS_READ = ("link", "location", "docker-content-digest", "content-type", "content-length",
                "www-authenticate", "retry-after")


def _headers_read(answer: PyResponse) -> CIMultiDictProxy[str]:
    """The answer's HEADERS_READ. reqwest reads a value beyond ASCII as no text at all (a
    ValueError): in one of these, that makes the answer unreadable (a TransportError, not a
    crash); anywhere else (a proxy's own note) it is never looked at."""
    kept: CIMultiDict[str] = CIMultiDict()
    for name in HEADERS_READ:
        try:
            values = answer.get_header_all(name)
        except ValueError:
            raise TransportError(f"an answer whose {name} header is not text (a value "
                                 "beyond ASCII)") from None
        for value in values:
            kept.add(name, value)
    return CIMultiDictProxy(kept)


class _CaAsServerCertificate(TransportError):
    """rustls refused a CA certificate used as the server's own (CaUsedAsEndEntity)."""


class _OpenSSL:
    """Requests through aiohttp and Python's ssl (OpenSSL), for a server whose certificate
    rustls refuses and OpenSSL, Go (docker, skopeo) and curl accept: a self-signed
    certificate marked as a CA (basicConstraints CA:TRUE), which ``openssl req -x509``
    writes by default and Docker's guide for a registry's self-signed certificate makes."""

    def __init__(self, *, verify: bool, ca_pem: bytes | None, timeout: timedelta,
                 connections: int, user_agent: str):
        import aiohttp  # only for such a server

        self._aiohttp = aiohttp
        ssl_context: ssl.SSLContext | bool = False
        if verify:
            # The system's store and ca_file, as rustls is given them; and, as rustls, Go and
            # docker, no host name taken from a certificate's CN.
            ssl_context = ssl.create_default_context()
            ssl_context.hostname_checks_common_name = False
            if ca_pem is not None:  # as read at the start, the bytes rustls was given
                ssl_context.load_verify_locations(cadata=ca_pem.decode())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=ssl_context),
            # connect: the DNS lookup too, which sock_connect leaves unbounded.
            timeout=aiohttp.ClientTimeout(total=None,
                                          connect=CONNECT_TIMEOUT.total_seconds(),
                                          sock_connect=CONNECT_TIMEOUT.total_seconds(),
                                          sock_read=timeout.total_seconds()),
            headers={"User-Agent": user_agent},
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        # aiohttp sends an "idempotent" request (DELETE among them) a second time, unasked,
        # when its kept-alive connection drops before an answer: a DELETE whose answer was
        # lost may have gone through. No public setting exists (aiohttp's own test client
        # sets this attribute).
        self._session._retry_connection = False

    async def exchange(self, method: str, target: URL, headers: Mapping[str, str],
                       content: bytes | None, proxy: str | None
                       ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        aiohttp = self._aiohttp
        try:
            async with self._session.request(method, target, headers=headers, data=content,
                                             allow_redirects=False, proxy=proxy) as answer:
                return answer.status, answer.headers, await answer.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(_safe(str(exc.certificate_error)),
                                 untrusted_certificate=True) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise TransportError(_safe(f"TLS: {exc}"),
                                 untrusted_certificate="CERTIFICATE_VERIFY_FAILED" in str(exc)
                                 ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(_safe(f"{type(exc).__name__}: {exc}")) from None

    async def aclose(self) -> None:
        await self._session.close()


class HttpSession:
    """Connections to a registry (and its token service, its storage), at most
    ``connections`` requests in flight on each.

    Requests go through pyreqwest (rustls). A server that presents a CA certificate as its
    own, which rustls refuses, is spoken to through aiohttp and OpenSSL from then on.
    Clients are made on first use, inside the running event loop.
    """

    def __init__(self, base_url: str, *, verify: bool = True, ca_file: Path | None = None,
                 timeout: float, connections: int, user_agent: str):
        self._base = base_url.rstrip("/")
        try:
            self._base_url: URL | None = URL(self._base, encoded=True)
        except ValueError:
            # Refused at each request, as that registry's error (config refuses such a URL
            # first): not here, where it would end a run for every registry.
            self._base_url = None
        self._base_origin = _origin(self._base_url) if self._base_url else None
        self._verify = verify
        self._timeout = timedelta(seconds=timeout)
        self._connections = connections
        self._user_agent = user_agent
        # Read once, now (a missing file fails the start, not a request), and given to both
        # stacks as read: its certificates only (config checks there are some).
        self._ca_pem = pem_certificates(ca_file.read_bytes()) if ca_file is not None else None
        self._rustls = _Rustls(verify=verify, timeout=self._timeout, connections=connections,
                               ca_pem=self._ca_pem, user_agent=user_agent)
        self._openssl: _OpenSSL | None = None
        self._openssl_origins: set[tuple[str, str, int | None]] = set()
        # The proxy for each scheme://host, read from the environment once, as curl and
        # httpx honour HTTP(S)_PROXY and NO_PROXY (urllib's reading of them).
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _target(self, url: str | URL, params: Mapping[str, Any] | None) -> str | URL:
        """Where a request goes. A path on the registry with no query to add stays text,
        the registry's URL and the path joined (nearly all of a plan's requests: yarl's
        reading of each was a visible share of a plan's CPU). An absolute URL (a token
        realm, a Link the client checked) is used as given, byte for byte."""
        absolute = isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))
        if isinstance(url, str) and not params and not absolute:
            return self._base + url
        if isinstance(url, str):
            url = URL(url if absolute else self._base + url, encoded=True)
        if params:
            url = url.update_query({k: str(v) for k, v in params.items()})
        return url

    def _proxy(self, url: URL) -> str | None:
        key = (url.scheme, url.host or "")
        if key not in self._proxies:
            proxy = urllib.request.getproxies().get(url.scheme)
            if proxy and urllib.request.proxy_bypass(url.host or ""):
                proxy = None
            self._proxies[key] = proxy or None
        return self._proxies[key]

    async def _exchange(self, method: str, target: str | URL, headers: Mapping[str, str],
                        content: bytes | None) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """``target``: text is a URL on the registry (see _target)."""
        if isinstance(target, str):
            if self._base_url is None:
                raise TransportError("the registry's URL cannot be read (its host or port)")
            url, origin, text = self._base_url, self._base_origin, target
        else:
            url, origin, text = target, _origin(target), str(target)
        if url.user is not None or url.password is not None:
            # Credentials of the URL's own, beside (or instead of) ours: not sent.
            raise TransportError("a URL with a user or password in it")
        proxy = self._proxy(url)
        if origin not in self._openssl_origins:
            try:
                return await self._rustls.exchange(method, text, headers, content, proxy)
            except _CaAsServerCertificate:
                # Refused in the handshake, before the request was written: sending it again
                # is safe, a DELETE included.
                log.info("server certificate is a CA certificate; using OpenSSL for it",
                         host=url.host, port=url.port)
                self._openssl_origins.add(origin)
        if self._openssl is None:
            try:
                self._openssl = _OpenSSL(verify=self._verify, ca_pem=self._ca_pem,
                                         timeout=self._timeout,
                                         connections=self._connections,
                                         user_agent=self._user_agent)
            except (ssl.SSLError, ValueError) as exc:
                raise TransportError(f"TLS through OpenSSL: {exc}",
                                     untrusted_certificate=True) from None
        try:
            return await self._openssl.exchange(method, URL(text, encoded=True), headers,
                                                content, proxy)
        except TransportError as exc:
            if exc.untrusted_certificate:
                # Not trusted here either (anyone can present a CA certificate): rustls
                # again next time.
                self._openssl_origins.discard(origin)
            raise

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

        A request that was written is never sent again by the library (hyper re-sends only
        a request that never left, on a kept-alive connection found closed): a DELETE whose
        answer was lost may have gone through, which the executor checks with a HEAD.
        """
        sent = dict(headers or {})
        hop_headers = sent
        if data is not None:
            content = urllib.parse.urlencode(data).encode()
            hop_headers = {**sent, "Content-Type": "application/x-www-form-urlencoded"}
        try:
            target = self._target(url, params)
            for _ in range(MAX_REDIRECTS + 1):
                status, answered, body = await self._exchange(method, target, hop_headers,
                                                              content)
                location = answered.get("Location")
                if not (follow_redirects and method in ("GET", "HEAD")
                        and status in REDIRECTS and location):
                    return Response(status, body, answered, str(target), sent)
                here = URL(target, encoded=True) if isinstance(target, str) else target
                following = URL(location)
                if following.scheme not in ("http", "https", ""):
                    raise TransportError(f"a redirect to a {following.scheme}: URL")
                if not following.absolute:
                    following = here.join(following)
                if not same_origin(following, here):
                    hop_headers = {k: v for k, v in hop_headers.items()
                                   if k.lower() != "authorization"}
                target = following
            raise TransportError(f"more than {MAX_REDIRECTS} redirects")
        except (TimeoutError, ValueError) as exc:
            # ValueError: a URL that yarl or reqwest cannot read (a realm, a redirect). No
            # answer, as for a connection error: a RegistryError, not a crash of the run.
            raise TransportError(_safe(f"{type(exc).__name__}: {exc}")) from None

    async def aclose(self) -> None:
        await self._rustls.aclose()
        if self._openssl is not None:
            await self._openssl.aclose()
            self._openssl = None
