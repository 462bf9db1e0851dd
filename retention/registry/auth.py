"""Registry authentication: HTTP basic and the bearer-token challenge.

Tokens are cached per scope until shortly before they expire. Every credential (the password
or docker config entry, a bearer token, the Entra ID access token, ACR's refresh token) passes
one rule, ``credential_refusal``, before it leaves: a registry (or anyone able to forge its
401) must not be able to point us at a host of its choosing and collect it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from retention.config import Credentials, RegistrySettings
from retention.errors import AuthenticationError, RegistryError
from retention.registry.entra import EntraExchange, Send
from retention.registry.http import Response

_PARAM = re.compile(r'\s*([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
# Renew this long before the registry says a token expires, so a request that starts
# with a valid token does not arrive with an expired one.
_EXPIRY_MARGIN = 30.0
# A URL's authority as a credential may be sent to it: a host name or IP address and a port,
# nothing else. Anything more (a user@, a backslash, a percent-escape) is where URL parsers
# disagree on the host: urllib would check one host, and the HTTP library connect to another.
_AUTHORITY = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                        r"(?::[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(scheme: str, netloc: str) -> tuple[str, int] | None:
    """(host, port) of a plain ``host[:port]``, lowercased, the scheme's port when none is
    written; None when it is not that."""
    if not _AUTHORITY.fullmatch(netloc):
        return None
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:  # a port beyond 65535
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _written(scheme: str, host: str, port: int) -> str:
    """``host`` or ``host:port`` as token_hosts takes it: the port when it is not the
    scheme's own."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def credential_refusal(url: str, settings: RegistrySettings) -> str | None:
    """Why no credential of this registry may be sent to ``url``, or None when one may.

    The one rule for every credential of every kind: the registry's own origin (scheme, host
    and port: another port of the same host may be another service), or a host listed in
    ``token_hosts`` (``host`` is the scheme's own port, ``host:port`` that one); never plain
    http when the registry is https; never a URL with a user or password of its own. On
    GitHub Container Registry (type ghcr) the origin of ``api_url`` is the registry's too."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        return "its URL carries a user name or password of its own"
    if scheme not in _DEFAULT_PORTS:
        return "it is not an http(s) URL"
    target = _host_port(scheme, parts.netloc)
    if target is None:
        return "its host and port cannot be read unambiguously"
    registry = urlsplit(settings.url)
    own_scheme = registry.scheme.lower()
    if own_scheme == "https" and scheme != "https":
        return ("it is plain http while the registry is https: credentials never travel "
                "unencrypted from an https registry")
    own = _host_port(own_scheme, registry.netloc) if own_scheme in _DEFAULT_PORTS else None
    if scheme == own_scheme and target == own:
        return None
    if settings.type == "ghcr" and settings.api_url:
        # GitHub's REST API (api.github.com, or /api/v3 of an Enterprise Server) takes the
        # same token as ghcr.io: its origin is the registry's own second one.
        api = urlsplit(settings.api_url)
        api_scheme = api.scheme.lower()
        if scheme == api_scheme and api_scheme in _DEFAULT_PORTS and \
                target == _host_port(api_scheme, api.netloc):
            return None
    for entry in settings.token_hosts:
        if _host_port(scheme, entry.strip().lower()) == target:
            return None
    return (f"it is not the registry's own origin ({settings.url}) and not in token_hosts; "
            f"if it is the registry's token service, add {_written(scheme, *target)!r} to "
            "the registry's token_hosts")


def _where(url: str) -> str:
    """The host and port a URL names, for a message: never its user:password."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    return netloc if _AUTHORITY.fullmatch(netloc) else repr(netloc[:100])


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lowercased
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password.reveal()}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # monotonic


class Authenticator:
    """Adds authorization to requests and answers the registry's challenges."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        send: Send,
        clock: Callable[[], float] = time.monotonic,
        entra: EntraExchange | None = None,
    ):
        self._settings = settings
        # The client's own request path (its retry policy): token requests are throttled
        # and retried like every other.
        self._send = send
        self._clock = clock
        self._entra = entra  # ACR with Microsoft Entra ID instead of a password
        self._basic = False  # the registry asked for basic auth
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def headers(self, scope: str, url: object = None) -> dict[str, str]:
        """The Authorization for a request of ``scope``. ``url``: where it goes, a path on
        the registry or an absolute URL (text or httpx2's), which the rule checks: a credential
        for another origin raises AuthenticationError instead."""
        token = self._tokens.get(scope)
        if token is not None and token.expires > self._clock():
            found = {"Authorization": f"Bearer {token.value}"}
        elif self._basic and self._settings.credentials is not None:
            found = {"Authorization": basic_header(self._settings.credentials)}
        else:
            return {}
        if url is not None and not (isinstance(url, str) and url.startswith("/")):
            self._check(str(url), "the request")
        return found

    def _check(self, url: str, what: str) -> None:
        """Raise AuthenticationError (as a 401: unauthorised, not retried) when no credential
        may go to ``url``. The message names the host, never the credential."""
        reason = credential_refusal(url, self._settings)
        if reason is not None:
            raise AuthenticationError(f"credentials not sent to {what} at {_where(url)}: "
                                      f"{reason}", registry=self._settings.name, status=401)

    async def _send_credentials(self, method: str, url: str, **kwargs: object) -> Response:
        """The request path of every request that carries a credential to a token service
        (the password's token GET, Entra's exchange, ACR's refresh token): the rule is
        checked here, on the URL actually sent to, whoever built it."""
        self._check(url, "the token service")
        return await self._send(method, url, **kwargs)

    def forget(self, scope: str) -> None:
        self._tokens.pop(scope, None)

    async def answer(self, response: Response, scope: str) -> None:
        """Prepare to retry after a 401; raise AuthenticationError if retrying cannot help."""
        name = self._settings.name
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            raise AuthenticationError("answered 401 without an authentication challenge",
                                      registry=name, status=401)
        if challenge.scheme == "basic":
            if self._settings.credentials is None:
                raise AuthenticationError(
                    "requires credentials: set username and password_file (or password_env, "
                    "or docker_config) for this registry", registry=name, status=401)
            if self._basic:
                raise AuthenticationError(
                    f"the username or password for user {self._settings.credentials.username!r}"
                    " was rejected (HTTP 401)", registry=name, status=401)
            self._basic = True
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise AuthenticationError(f"unsupported authentication scheme {challenge.scheme!r}",
                                      registry=name, status=401)
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            current = self._tokens.get(scope)
            sent = response.request_headers.get("Authorization")
            if current is not None and current.expires > self._clock() and \
                    sent != f"Bearer {current.value}":
                return  # another request renewed it while this one waited
            self._tokens.pop(scope, None)
            self._tokens[scope] = await self._fetch_token(challenge.params, scope)

    async def _fetch_token(self, params: dict[str, str], scope: str) -> _Token:
        name = self._settings.name
        realm = params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuthenticationError(f"token realm {realm!r} is not an http(s) URL",
                                      registry=name)
        if self._entra is not None:
            self._check(realm, "the token service")  # before an Entra token is even asked for
            token, lifetime = await self._entra.access_token(
                self._send_credentials, realm=realm, service=params.get("service", ""),
                scope=params.get("scope") or scope)
            return _Token(token, self._clock() + lifetime - min(_EXPIRY_MARGIN, lifetime / 5))
        query: dict[str, str] = {}
        if "service" in params:
            query["service"] = params["service"]
        query["scope"] = params.get("scope") or scope
        credentials = self._settings.credentials
        where = _where(realm)
        try:
            if credentials is None:  # anonymous: nothing of ours to keep from any host
                response = await self._send("GET", realm, params=query)
            else:
                response = await self._send_credentials(
                    "GET", realm, params=query,
                    headers={"Authorization": basic_header(credentials)})
        except AuthenticationError:
            raise
        except RegistryError as exc:
            detail = str(exc).removeprefix(f"registry {name!r}: ")
            raise AuthenticationError(f"token service {where} unreachable: {detail}",
                                      registry=name) from None
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        if response.status_code == 401:
            raise AuthenticationError(
                f"the token service at {where} rejected {who} (HTTP 401): check the "
                "username and password", registry=name, status=401)
        if response.status_code == 403:
            # The credentials are fine; this scope (one repository, say) is not granted.
            raise AuthenticationError(
                f"the token service at {where} refused {query['scope']!r} to {who} "
                "(HTTP 403): the account lacks permission for it", registry=name, status=403)
        if response.status_code != 200:
            raise AuthenticationError(f"the token service at {where} answered HTTP "
                                      f"{response.status_code}", registry=name,
                                      status=response.status_code)
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"the token service at {where} answered without a "
                                      "token", registry=name)
        margin = min(_EXPIRY_MARGIN, lifetime / 5)
        return _Token(value, self._clock() + lifetime - margin)

