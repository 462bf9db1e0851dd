"""The HTTP connection to one registry: httpx2 underneath, one request and one capped answer
at a time above. Retries, authorization and what an answer means live in the client; this
module only sends a request and reads its answer, up to a size.

Why httpx2: it is the maintained line of httpx (the same API, ``import httpx2``), which the
design names and lightkube already brings for the clusters, so the image ships one HTTP
stack. Its TLS is Python's ssl (OpenSSL), which verifies as Go, docker and curl do: a
self-signed CA certificate used as the server's own is accepted when trusted (rustls
refused it). httpx 0.28's connection pool cost ~3 ms of CPU a request (encode/httpx#3215),
httpx2's ~1.6 ms, against the registry's own ~1.9 ms (issue 26's figures; a bare GET /v2/
at 8 in flight costs ~0.3 ms here; docs/performance.md has the plan's).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx2

from retention import jsoncodec
from retention.registry.tls import pem_certificates

# A URL's user:password@ and its query, in an exception's message.
_USERINFO = re.compile(r"(://)[^/\s'\"@]*@")
_QUERY = re.compile(r"(://[^\s'\"?#]*)[?#][^\s'\"]*")
CONNECT_TIMEOUT = 10.0  # seconds; the DNS lookup and the TLS handshake included
# The whole answer (status, headers, body: one hop of a redirect) must have come this many
# timeouts after it was asked for (120 s by default): the timeout bounds each read, and an
# answer sent a byte at a time, each within it, would otherwise hold its request (and the
# run, and every later run of its policies) for ever. 8 MiB in 120 s is ~70 KB/s.
DEADLINE_TIMEOUTS = 4
# Any answer is read up to this, and no further (docs/operations.md, "Limits"): a tag or
# catalog page, a token, an error's body. Manifests and configs have smaller caps of their
# own (the client's). A page of 1,000 tags is ~50 KiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A "." or ".." segment, which httpx2 resolves away (to another path: a DELETE elsewhere).
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")


def _safe(message: str) -> str:
    """An HTTP library's messages may name whole URLs. A storage backend's signed URL
    carries its credential in the query (S3's X-Amz-Signature, Azure's sig=), which the log
    redactor does not know."""
    return _QUERY.sub(r"\1?[query removed]", _USERINFO.sub(r"\1", message))


class TransportError(Exception):
    """No answer: the connection failed, was reset, or timed out. ``untrusted_certificate``:
    TLS refused the server's certificate (retrying cannot fix that); ``host`` is then the
    host:port that presented it, None when that was the registry's own origin."""

    def __init__(self, message: str, *, untrusted_certificate: bool = False,
                 host: str | None = None, plain_http: bool = False):
        super().__init__(message)
        self.untrusted_certificate = untrusted_certificate
        self.host = host
        self.plain_http = plain_http  # https:// to a plain-HTTP server: not worth a retry


class AnswerTooLarge(TransportError):
    """An answer longer than the cap for it: not read past the cap (the connection is
    dropped), and not asked for again (it would be as long)."""


# The answer headers the client reads, and all an answer keeps.
HEADERS_READ = ("link", "location", "docker-content-digest", "content-type", "content-length",
                "www-authenticate", "retry-after",
                # GitHub's primary rate limit (GHCR): an answer with none left holds the next
                # request until the reset, instead of spending one on a refusal.
                "x-ratelimit-remaining", "x-ratelimit-reset")
_READ = frozenset(name.encode() for name in HEADERS_READ)


@dataclass(frozen=True, slots=True)
class AnswerHeaders:
    """An answer's HEADERS_READ: names lowercased, each name's values in the order sent."""

    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> AnswerHeaders:
        values: dict[str, tuple[str, ...]] = {}
        for name, value in pairs:
            key = name.lower()
            values[key] = (*values.get(key, ()), value)
        return cls(values)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (a second WWW-Authenticate line is another
        challenge, not more of the first)."""
        found = self.values.get(name.lower())
        return found[0] if found else default

    def get_list(self, name: str) -> tuple[str, ...]:
        return self.values.get(name.lower(), ())


def _headers_read(raw: list[tuple[bytes, bytes]]) -> AnswerHeaders:
    """HEADERS_READ of an answer. Their values must be ASCII (what RFC 9110 lets a sender
    write): a Location or a Link beyond it makes the answer unreadable (a TransportError, not
    a guess at its encoding); a header nothing reads (a proxy's own note) is never looked
    at."""
    kept: dict[str, tuple[str, ...]] = {}
    for name, value in raw:
        key = name.lower()
        if key in _READ:
            if not value.isascii():
                raise TransportError(f"an answer whose {key.decode()} header is not text (a "
                                     "value beyond ASCII)")
            text = key.decode()
            kept[text] = (*kept.get(text, ()), value.decode())
    return AnswerHeaders(kept)


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: status, the headers read (case-insensitive), body, and the URL that gave
    it (after redirects), as it was sent."""

    status_code: int
    content: bytes = b""
    headers: AnswerHeaders = field(default_factory=AnswerHeaders)
    sent_to: str = ""
    # The headers this request was sent with (the Authorization a 401 answered, say).
    request_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> httpx2.URL:
        """``sent_to`` as a URL (made when asked for: only a listing's pages need it)."""
        return httpx2.URL(self.sent_to)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsoncodec.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


Origin = tuple[str, str, int | None]


def origin(url: httpx2.URL) -> Origin:
    """Scheme, host (httpx2 lowercases it) and port (the scheme's own when none is
    written: https://h and https://h:443 are one origin)."""
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def same_origin(a: httpx2.URL, b: httpx2.URL) -> bool:
    return origin(a) == origin(b)


def _tls_context(*, verify: bool, ca_pem: bytes | None) -> ssl.SSLContext:
    """OpenSSL's verification, as Go (docker, skopeo) and curl verify: the system's store
    (SSL_CERT_FILE and SSL_CERT_DIR honoured) and ``ca_pem`` beside it; a CA certificate
    used as the server's own is accepted when trusted; no host name taken from a CN."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    context.hostname_checks_common_name = False
    # Python 3.13 turns X509_STRICT on, which refuses a CA certificate without keyUsage
    # as a server's own (`openssl req -x509`'s default); Go and OpenSSL's default accept it.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    if ca_pem is not None:  # as read at the start
        context.load_verify_locations(cadata=ca_pem.decode())
    return context


def _refuse_cookies() -> CookieJar:
    """No cookie is kept, nor sent back: a storage host's cookie is not ours to carry."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


# How OpenSSL says that what came back to its TLS hello was no TLS at all: a plain-HTTP
# server's "HTTP/1.1 400" read as a TLS record.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "UNKNOWN_PROTOCOL")


def _failure(exc: BaseException, host: str | None) -> TransportError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TransportError(_safe(f"TLS: {cause.verify_message or cause}"),
                                  untrusted_certificate=True, host=host)
        if isinstance(cause, ssl.SSLError) and any(
                marker in str(cause.reason or cause).upper() for marker in _NOT_TLS):
            # Not "received corrupt message": what to do. Retrying cannot change it.
            return TransportError(
                f"the server answered plain HTTP, not TLS ({host or 'the registry'}): if it "
                "serves plain http, write its url with http:// (and know that credentials "
                "then cross the network in clear)", plain_http=True)
        cause = cause.__cause__ or cause.__context__
    detail = str(exc) or "the connection ended"
    return TransportError(_safe(f"no answer: {type(exc).__name__}: {detail}"))


class HttpSession:
    """Connections to a registry (and its token service, its storage), at most
    ``connections`` on each pool.

    ``verify`` and ``ca_file`` are the registry's own: they apply to its origin (scheme,
    host and port) only. Any other host (a token service, a storage backend a blob read
    is redirected to) is verified against the system's store: a registry cannot lend its
    private CA, or its lack of verification, to a host it names.
    """

    def __init__(self, base_url: str, *, verify: bool = True, ca_file: Path | None = None,
                 timeout: float, connections: int, user_agent: str):
        self._base = base_url.rstrip("/")
        self._base_url: httpx2.URL | None = None
        try:
            parsed = httpx2.URL(self._base)
            if parsed.scheme in _DEFAULT_PORTS and parsed.host:
                self._base_url = parsed
        except (httpx2.InvalidURL, ValueError):
            # Refused at each request, as that registry's error (config refuses such a URL
            # first): not here, where it would end a run for every registry.
            pass
        self._origin = origin(self._base_url) if self._base_url is not None else None
        self._verify = verify
        # Read once, now (a missing file fails the start, not a request): its certificates
        # only (config checks there are some).
        self._ca_pem = pem_certificates(ca_file.read_bytes()) if ca_file is not None else None
        self._timeout = httpx2.Timeout(timeout, connect=CONNECT_TIMEOUT, pool=None)
        self._deadline = timeout * DEADLINE_TIMEOUTS
        self._limits = httpx2.Limits(max_connections=connections,
                                     max_keepalive_connections=connections)
        self._user_agent = user_agent
        # One client (and pool) for each (proxy, the registry's origin or not).
        self._clients: dict[tuple[str | None, bool], httpx2.AsyncClient] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}
        # The proxy for each scheme://host, read from the environment once, as curl and
        # httpx honour HTTP(S)_PROXY and NO_PROXY (urllib's reading of them).
        self._proxies: dict[tuple[str, str], str | None] = {}
        self._writes: set[asyncio.Task] = set()

    def _context(self, registry: bool) -> ssl.SSLContext:
        context = self._contexts.get(registry)
        if context is None:
            try:
                context = _tls_context(verify=self._verify or not registry,
                                       ca_pem=self._ca_pem if registry else None)
            except (ssl.SSLError, ValueError) as exc:
                raise TransportError(f"TLS: {exc}", untrusted_certificate=True) from None
            self._contexts[registry] = context
        return context

    def _client(self, proxy: str | None, registry: bool) -> httpx2.AsyncClient:
        client = self._clients.get((proxy, registry))
        if client is None:
            transport = httpx2.AsyncHTTPTransport(
                verify=self._context(registry), limits=self._limits,
                # The proxy HttpSession chose, never one the library reads itself.
                proxy=proxy, trust_env=False,
                # No implicit retries. The pool re-sends nothing it wrote (httpcore2 takes
                # another connection only on ConnectionNotAvailable, raised before a byte of
                # the request is written): a DELETE whose answer was lost may have gone
                # through, which the executor checks with a HEAD.
                retries=0)
            client = httpx2.AsyncClient(
                transport=transport, trust_env=False, timeout=self._timeout,
                follow_redirects=False,  # followed by request(), hop by hop
                headers={"User-Agent": self._user_agent}, cookies=_refuse_cookies())
            # Bodies exactly as sent (a manifest is hashed), and a HEAD's Content-Length
            # kept: no Accept-Encoding (and aiter_raw decodes nothing).
            del client.headers["Accept-Encoding"]
            self._clients[(proxy, registry)] = client
        return client

    def _target(self, url: str | httpx2.URL, params: Mapping[str, Any] | None
                ) -> str | httpx2.URL:
        """Where a request goes. A path on the registry stays text: the registry's URL and
        the path joined (and the query appended), never resolved against a base URL. An
        absolute URL (a token realm, a Link the client checked) is read by httpx2."""
        if isinstance(url, str):
            if not url[:8].lower().startswith(("http://", "https://")):
                target = self._base + url
                if params:
                    target += ("&" if "?" in url else "?") + urllib.parse.urlencode(
                        {k: str(v) for k, v in params.items()})
                return target
            url = httpx2.URL(url)
        if params:
            url = url.copy_merge_params({k: str(v) for k, v in params.items()})
        return url

    def _proxy(self, scheme: str, host: str) -> str | None:
        key = (scheme, host)
        if key not in self._proxies:
            proxy = urllib.request.getproxies().get(scheme)
            if proxy and urllib.request.proxy_bypass(host):
                proxy = None
            self._proxies[key] = proxy or None
        return self._proxies[key]

    async def _exchange(self, method: str, target: str | httpx2.URL,
                        headers: Mapping[str, str], content: bytes | None, max_bytes: int
                        ) -> tuple[int, AnswerHeaders, bytes]:
        """``target``: text is a URL on the registry (see _target)."""
        if isinstance(target, str):
            if self._base_url is None:
                raise TransportError("the registry's URL cannot be read (its host or port)")
            url = self._base_url
            path = target[len(self._base):].partition("?")[0]
            if _DOT_SEGMENT.search(path):
                raise TransportError(f"a path with a . or .. segment in it ({path[:200]!r})")
            registry = True
        else:
            url = target
            registry = origin(target) == self._origin
        if url.userinfo:
            # Credentials of the URL's own, beside (or instead of) ours: not sent.
            raise TransportError("a URL with a user or password in it")
        client = self._client(self._proxy(url.scheme, url.host), registry)
        try:
            request = client.build_request(method, target, headers=headers, content=content)
        except (UnicodeEncodeError, httpx2.LocalProtocolError):
            # Its text quotes the value, a token perhaps: not for a log.
            raise TransportError("a request header value that cannot be sent (beyond ASCII, "
                                 "or a control character)") from None
        elsewhere = None if registry else f"{url.host}:{url.port or _DEFAULT_PORTS[url.scheme]}"
        exchange = self._send(client, request, max_bytes, elsewhere)
        if method in ("GET", "HEAD"):
            return await exchange
        # A write goes on when its caller alone is cancelled, its connection taken in the
        # pool until its answer ends: never more than `connections` requests are on their
        # way. Closing the session (the end of a run, a shutdown) cuts it off; a DELETE cut
        # off may have gone through all the same (journaled "deleting" before it is sent,
        # restore and the next run find it).
        task = asyncio.ensure_future(exchange)
        self._writes.add(task)
        task.add_done_callback(_forget(self._writes))
        return await asyncio.shield(task)

    async def _send(self, client: httpx2.AsyncClient, request: httpx2.Request,
                    max_bytes: int, elsewhere: str | None
                    ) -> tuple[int, AnswerHeaders, bytes]:
        deadline = asyncio.timeout(self._deadline)
        try:
            async with deadline:
                answer = await client.send(request, stream=True)
                try:
                    headers = _headers_read(answer.headers.raw)
                    body = await _body(answer, max_bytes, head=request.method == "HEAD")
                finally:
                    # Not read to its end (over the cap, past the deadline): the connection
                    # is closed, not drained.
                    await answer.aclose()
        except TransportError:
            raise
        except (httpx2.HTTPError, httpx2.InvalidURL, ssl.SSLError, OSError) as exc:
            if deadline.expired():  # TimeoutError, or what the library made of the cancel
                raise TransportError(f"no whole answer within {self._deadline:g} s (it came "
                                     "too slowly, or not at all)") from None
            raise _failure(exc, elsewhere) from None
        return answer.status_code, headers, body

    async def request(self, method: str, url: str | httpx2.URL, *,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, Any] | None = None,
                      data: Mapping[str, str] | None = None,
                      content: bytes | None = None,
                      follow_redirects: bool = False,
                      max_bytes: int = MAX_ANSWER_BYTES) -> Response:
        """Send, and read the answer, up to ``max_bytes`` of it (AnswerTooLarge beyond).
        Raises TransportError when there is no answer.

        ``follow_redirects`` (GET and HEAD only): redirects are followed here, hop by hop,
        so that each hop goes through the proxy the environment names for its own host
        (a registry reached directly may send blob reads to storage only a proxy reaches)
        and is verified as its own origin is, and the Authorization header is dropped for
        good once a hop leaves the origin of the one before it (a storage backend must not
        receive the registry's credentials).

        A request that was written is never sent again: a DELETE whose answer was lost may
        have gone through, which the executor checks with a HEAD.
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
                                                              content, max_bytes)
                location = answered.get("location")
                if not (follow_redirects and method in ("GET", "HEAD")
                        and status in REDIRECTS and location):
                    return Response(status, body, answered, str(target), sent)
                here = httpx2.URL(target) if isinstance(target, str) else target
                following = here.join(location)
                if following.scheme not in _DEFAULT_PORTS:
                    raise TransportError(f"a redirect to a {following.scheme}: URL")
                if not same_origin(following, here):
                    hop_headers = {k: v for k, v in hop_headers.items()
                                   if k.lower() != "authorization"}
                target = following
            raise TransportError(f"more than {MAX_REDIRECTS} redirects")
        except (TimeoutError, ValueError, httpx2.InvalidURL) as exc:
            # A URL that httpx2 cannot read (a realm, a redirect). No answer, as for a
            # connection error: a RegistryError, not a crash of the run.
            raise TransportError(_safe(f"{type(exc).__name__}: {exc}")) from None

    async def aclose(self) -> None:
        for task in self._writes:
            task.cancel()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


def _forget(tasks: set[asyncio.Task]):
    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it may be gone
    return done


async def _body(answer: httpx2.Response, max_bytes: int, *, head: bool) -> bytes:
    """The body, up to ``max_bytes``: AnswerTooLarge as soon as it is known to be longer
    (by its Content-Length, or by what came), without reading the rest."""
    # A HEAD's Content-Length is the GET's; its (empty) body is read all the same, so that
    # its connection is left ready for the next request.
    length = None if head else answer.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise AnswerTooLarge(f"an answer of {int(length):,} bytes, over the cap of "
                             f"{max_bytes:,}; not read")
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise AnswerTooLarge(f"an answer over the cap of {max_bytes:,} bytes; not read "
                                 "past it")
        chunks.append(chunk)
    return b"".join(chunks)
