"""Registry authentication: HTTP basic and the bearer-token challenge.

Tokens are cached per scope until shortly before they expire. Credentials are sent to a token
realm only when it lives on the registry's own host or on a host the configuration lists in
``token_hosts``: a registry (or anyone able to forge its 401) must not be able to point us at
a host of its choosing and collect the password.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from retention.config import Credentials, RegistrySettings
from retention.errors import AuthenticationError, RegistryError
from retention.registry.entra import EntraExchange, Send
from retention.registry.http import Response

log = structlog.get_logger("retention.registry.auth")

_PARAM = re.compile(r'\s*([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
# Renew this long before the registry says a token expires, so a request that starts
# with a valid token does not arrive with an expired one.
_EXPIRY_MARGIN = 30.0


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
        self._warned_hosts: set[str] = set()

    def headers(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token.expires > self._clock():
            return {"Authorization": f"Bearer {token.value}"}
        if self._basic and self._settings.credentials is not None:
            return {"Authorization": basic_header(self._settings.credentials)}
        return {}

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
            token, lifetime = await self._entra.access_token(
                self._send, realm=realm, service=params.get("service", ""),
                scope=params.get("scope") or scope)
            return _Token(token, self._clock() + lifetime - min(_EXPIRY_MARGIN, lifetime / 5))
        query: dict[str, str] = {}
        if "service" in params:
            query["service"] = params["service"]
        query["scope"] = params.get("scope") or scope
        headers = {}
        credentials = self._settings.credentials
        if credentials is not None:
            if self._may_receive_credentials(realm):
                headers["Authorization"] = basic_header(credentials)
            elif parts.hostname not in self._warned_hosts:
                self._warned_hosts.add(parts.hostname)
                log.warning("token realm not trusted with credentials", registry=name,
                            realm_host=parts.netloc,
                            hint="add the host to token_hosts if it is the registry's own "
                                 "token service")
        try:
            response = await self._send("GET", realm, params=query, headers=headers)
        except RegistryError as exc:
            detail = str(exc).removeprefix(f"registry {name!r}: ")
            raise AuthenticationError(f"token service {parts.netloc} unreachable: {detail}",
                                      registry=name) from None
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        if response.status_code == 401:
            raise AuthenticationError(
                f"the token service at {parts.netloc} rejected {who} (HTTP 401): check the "
                "username and password", registry=name, status=401)
        if response.status_code == 403:
            # The credentials are fine; this scope (one repository, say) is not granted.
            raise AuthenticationError(
                f"the token service at {parts.netloc} refused {query['scope']!r} to {who} "
                "(HTTP 403): the account lacks permission for it", registry=name, status=403)
        if response.status_code != 200:
            raise AuthenticationError(f"the token service at {parts.netloc} answered HTTP "
                                      f"{response.status_code}", registry=name,
                                      status=response.status_code)
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"the token service at {parts.netloc} answered without a "
                                      "token", registry=name)
        margin = min(_EXPIRY_MARGIN, lifetime / 5)
        return _Token(value, self._clock() + lifetime - margin)

    def _may_receive_credentials(self, realm: str) -> bool:
        parts = urlsplit(realm)
        registry = urlsplit(self._settings.url)
        if registry.scheme == "https" and parts.scheme != "https":
            return False  # never downgrade a password to plain HTTP
        allowed = {registry.hostname, *self._settings.token_hosts}
        return parts.hostname in allowed or parts.netloc in allowed

