"""Azure Container Registry's data-plane API (``/acr/v1/``), beside the OCI one.

One paged call lists up to 100 manifests of a repository with digest, tags, push time, size,
media type and ``changeableAttributes``, untagged manifests included: no need to resolve
tags one by one, and orphans are found without remembering them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retention.errors import RegistryError
from retention.names import is_digest, is_tag
from retention.registry.client import RegistryClient
from retention.registry.mediatypes import parse_time

PAGE = 100  # ACR's page size for _catalog, _manifests and _tags


@dataclass(frozen=True, slots=True)
class AcrManifest:
    digest: str
    tags: tuple[str, ...]
    media_type: str
    size: int
    created: datetime | None  # push time
    delete_enabled: bool


@dataclass(frozen=True, slots=True)
class AcrTag:
    name: str
    digest: str
    delete_enabled: bool


def _delete_enabled(entry: dict[str, Any]) -> bool:
    attributes = entry.get("changeableAttributes") or {}
    # Absent means the default, which is deletable; anything but a real true locks.
    return attributes.get("deleteEnabled", True) is True


class _OutsideGrammar(ValueError):
    """A listed tag or digest that must not go into a URL path."""


def _digest(value: Any) -> str:
    # It names the manifest in the plan and goes into a DELETE's URL: the OCI grammar only.
    if not isinstance(value, str):
        raise ValueError(f"not a digest: {value!r}")
    if not is_digest(value):
        raise _OutsideGrammar(f"the listing names {value[:200]!r}, which is not a digest")
    return value


def _tag(value: Any) -> str:
    # Restore pushes a journaled tag by name, into a URL.
    if not isinstance(value, str):
        raise ValueError(f"not a tag: {value!r}")
    if not is_tag(value):
        raise _OutsideGrammar(f"the listing names {value[:200]!r}, which is not a tag "
                              "(OCI grammar)")
    return value


class AcrApi:
    def __init__(self, client: RegistryClient):
        self._client = client

    def _pages(self, path: str, key: str, *, scope: str,
               missing_ok: bool = True) -> AsyncIterator[list[Any]]:
        return self._client.pages(path, key, scope=scope, sizes=(PAGE,),
                                  missing_ok=missing_ok)

    async def catalog(self) -> list[str]:
        names: list[str] = []
        async for page in self._pages("/acr/v1/_catalog", "repositories",
                                      scope="registry:catalog:*", missing_ok=False):
            names.extend(str(n) for n in page)
        return sorted(set(names))

    async def manifests(self, repository: str, *, missing_ok: bool = False
                        ) -> list[AcrManifest]:
        """Every manifest of the repository. ``missing_ok``: a 404 to the first request is
        an empty repository (the scan, which met it in the catalog moments ago); otherwise
        it raises, so that a transient 404 never reads as "nothing is there"."""
        path = self._client.path(repository, "_manifests", api="/acr/v1")
        out = []
        async for page in self._pages(path, "manifests", missing_ok=missing_ok,
                                      scope=f"repository:{repository}:metadata_read"):
            for entry in page:
                try:
                    out.append(AcrManifest(
                        digest=_digest(entry["digest"]),
                        tags=tuple(_tag(t) for t in entry.get("tags") or ()),
                        media_type=str(entry.get("mediaType") or ""),
                        size=int(entry.get("imageSize") or 0),
                        created=parse_time(entry.get("createdTime")),
                        delete_enabled=_delete_enabled(entry),
                    ))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise self._garbled(path, exc) from None
        return out

    async def tags(self, repository: str) -> list[AcrTag]:
        path = self._client.path(repository, "_tags", api="/acr/v1")
        out = []
        async for page in self._pages(path, "tags",
                                      scope=f"repository:{repository}:metadata_read"):
            for entry in page:
                try:
                    out.append(AcrTag(_tag(entry["name"]), _digest(entry["digest"]),
                                      _delete_enabled(entry)))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise self._garbled(path, exc) from None
        return out

    async def manifest_tags(self, repository: str, digest: str) -> set[str] | None:
        """The tags on one manifest now (one request, whatever the repository's size);
        None when the manifest is gone."""
        path = self._client.path(repository, "_manifests", digest, api="/acr/v1")
        response = await self._client.request(
            "GET", path, scope=f"repository:{repository}:metadata_read")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._client.failure(response, f"GET {path}")
        try:
            entry = response.json()["manifest"]
            return {str(t) for t in entry.get("tags") or ()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(f"GET {path}: the answer is not ACR's manifest attributes",
                                registry=self._client.settings.name) from None

    async def confirmed_empty(self, repository: str) -> bool:
        """True only when ACR's listing positively answers that the repository holds no
        manifest: a complete listing, with none in it. A 404 is not that answer (it may be
        transient, or the repository already gone): nothing is confirmed then."""
        try:
            manifests = await self.manifests(repository)
        except RegistryError as exc:
            if exc.status == 404:
                return False
            raise
        return not manifests

    def _garbled(self, path: str, exc: Exception) -> RegistryError:
        if isinstance(exc, _OutsideGrammar):
            return RegistryError(f"GET {path}: {exc}; the listing is not trusted",
                                 registry=self._client.settings.name)
        return RegistryError(f"GET {path}: an entry of the answer is not the expected JSON",
                             registry=self._client.settings.name)

    async def delete_repository(self, repository: str) -> bool:
        path = self._client.path(repository, api="/acr/v1")
        response = await self._client.request(
            "DELETE", path, scope=f"repository:{repository}:delete")
        if response.status_code in (200, 202, 204):
            return True
        if response.status_code == 404:
            return False
        raise self._client.failure(response, f"DELETE {path}")
