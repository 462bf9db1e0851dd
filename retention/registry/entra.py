"""Microsoft Entra ID for Azure Container Registry.

An Entra access token (from ``azure-identity``: workload identity on AKS, managed identity,
service principals, via DefaultAzureCredential) is exchanged at ``/oauth2/exchange`` for an
ACR refresh token, which ``/oauth2/token`` turns into access tokens per scope. Each token is
renewed before it expires, so runs of several hours never fail with 401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import structlog

from retention.errors import AuthenticationError, RegistryError
from retention.registry.http import Response

log = structlog.get_logger("retention.registry.entra")

# The registry client's request path with its retry policy:
# send(method, url, *, headers=None, params=None, data=None) -> Response.
Send = Callable[..., Awaitable[Response]]

ACR_SCOPE = "https://containerregistry.azure.net/.default"
_MARGIN = 300.0  # renew tokens this long before they expire


class TokenCredential(Protocol):
    """azure.core's credential protocol: ``get_token(*scopes)`` returns an object with
    ``token`` and ``expires_on`` (epoch seconds)."""

    def get_token(self, *scopes: str) -> Any: ...


def default_credential() -> TokenCredential | None:
    """DefaultAzureCredential when azure-identity is installed (pip install retention[azure])."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return None
    return DefaultAzureCredential()


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verification: only to time the renewal."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class _Refresh:
    token: str
    expires: float  # epoch seconds


class EntraExchange:
    def __init__(self, credential: TokenCredential, *, registry: str,
                 wall_clock: Callable[[], float] = time.time):
        self._credential = credential
        self._registry = registry
        self._now = wall_clock
        self._refresh: _Refresh | None = None
        self._lock = asyncio.Lock()

    async def access_token(self, send: Send, *, realm: str, service: str,
                           scope: str) -> tuple[str, float]:
        """(access token, lifetime in seconds) for ``scope``. ``send`` is the registry
        client's request path: ACR throttles /oauth2/token and /oauth2/exchange (429 with
        Retry-After) like every other endpoint, and those are retried the same way. It is
        also where the Authenticator checks each URL before a token goes to it (the exchange
        URL is made here, from the realm): nothing here sends elsewhere."""
        for attempt in (1, 2):
            refresh = await self._refresh_token(send, realm=realm, service=service)
            response = await self._post(send, realm, {
                "grant_type": "refresh_token", "service": service, "scope": scope,
                "refresh_token": refresh})
            if response.status_code == 200:
                token = _field(response, "access_token")
                if token is None:
                    break
                expires = jwt_expiry(token)
                lifetime = (expires - self._now()) if expires else 300.0
                return token, max(lifetime, 1.0)
            if response.status_code == 401 and attempt == 1:
                self._refresh = None  # revoked or expired early: exchange again
                continue
            raise AuthenticationError(
                f"ACR refused the Entra ID refresh token for {scope!r} (HTTP "
                f"{response.status_code}): the identity needs AcrPull and delete rights, or "
                "a role with content/read, content/delete and metadata/read",
                registry=self._registry, status=response.status_code)
        raise AuthenticationError("ACR answered /oauth2/token without an access token",
                                  registry=self._registry)

    async def _post(self, send: Send, url: str, form: dict[str, str]) -> Response:
        try:
            return await send("POST", url, data=form)
        except AuthenticationError:
            raise  # the URL refused before anything was sent: its own message says why
        except RegistryError as exc:
            detail = str(exc).removeprefix(f"registry {self._registry!r}: ")
            raise AuthenticationError(f"ACR's token service is unreachable: {detail}",
                                      registry=self._registry) from None

    async def _refresh_token(self, send: Send, *, realm: str, service: str) -> str:
        async with self._lock:
            current = self._refresh
            if current is not None and current.expires - _MARGIN > self._now():
                return current.token
            try:
                entra = await asyncio.to_thread(self._credential.get_token, ACR_SCOPE)
            except Exception as exc:  # azure-identity raises many kinds; all mean "no token"
                raise AuthenticationError(
                    f"no Microsoft Entra ID token: {type(exc).__name__}: {exc}. Configure "
                    "workload identity, a managed identity or AZURE_CLIENT_ID/"
                    "AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or give username/password",
                    registry=self._registry) from None
            parts = urlsplit(realm)
            exchange = urlunsplit((parts.scheme, parts.netloc, "/oauth2/exchange", "", ""))
            response = await self._post(send, exchange, {
                "grant_type": "access_token", "service": service,
                "access_token": entra.token})
            token = _field(response, "refresh_token") if response.status_code == 200 else None
            if token is None:
                raise AuthenticationError(
                    f"ACR's /oauth2/exchange refused the Entra ID token (HTTP "
                    f"{response.status_code}): is the identity granted a role on this "
                    "registry?", registry=self._registry, status=response.status_code)
            expires = jwt_expiry(token) or float(entra.expires_on)
            self._refresh = _Refresh(token, expires)
            log.info("acr refresh token renewed", registry=self._registry,
                     valid_for_s=int(expires - self._now()))
            return token


def _field(response: Response, name: str) -> str | None:
    try:
        value = response.json().get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
