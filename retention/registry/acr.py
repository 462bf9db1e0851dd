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


def _refuses_delete(entry: dict[str, Any]) -> bool:
    """Attributes that refuse a DELETE, as read after ACR refused one: deleteEnabled false,
    or writeEnabled false (which ACR documents as refusing deletes and pushes alike)."""
    attributes = entry.get("changeableAttributes") or {}
    return attributes.get("deleteEnabled", True) is False or \
        attributes.get("writeEnabled", True) is False


@dataclass(frozen=True, slots=True)
class AcrLock:
    """A lock that explains a refused DELETE: on the ``repository`` (every manifest in it),
    or on the ``manifest`` (itself, or one of its tags)."""

    scope: str  # "repository" or "manifest"
    detail: str  # what is locked and how to unlock it


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
        try:
            entry = await self._attributes(path, "manifest", repository)
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return {str(t) for t in entry.get("tags") or ()}
        except TypeError:
            raise self._not_attributes(path) from None

    async def lock_of(self, repository: str, digest: str) -> AcrLock | None:
        """After ACR refused to delete ``digest`` (405): the lock that explains it, read
        from the attributes of the repository, the manifest and each of its tags; None when
        none of them is locked, so the refusal is about the registry (its storage quota,
        say). Raises RegistryError when one cannot be read: then nothing is explained."""
        unlock = "az acr repository update --name <registry> --delete-enabled true " \
                 "--write-enabled true"
        path = self._client.path(repository, api="/acr/v1")
        if _refuses_delete(await self._attributes(path, None, repository)):
            return AcrLock("repository", f"the repository {repository} is locked (ACR "
                           f"changeableAttributes); unlock it ({unlock} --repository "
                           f"{repository}) if its manifests should go")
        path = self._client.path(repository, "_manifests", digest, api="/acr/v1")
        manifest = await self._attributes(path, "manifest", repository)
        if _refuses_delete(manifest):
            return AcrLock("manifest", f"the manifest is locked (ACR changeableAttributes); "
                           f"unlock it ({unlock} --image {repository}@{digest}) if it "
                           "should go")
        tags = manifest.get("tags") or []
        if not isinstance(tags, list):
            raise self._not_attributes(path)
        for tag in sorted(str(t) for t in tags):
            path = self._client.path(repository, "_tags", tag, tag_ok=True,
                                     api="/acr/v1")
            if _refuses_delete(await self._attributes(path, "tag", repository)):
                return AcrLock("manifest", f"its tag {tag} is locked (ACR "
                               f"changeableAttributes); unlock it ({unlock} --image "
                               f"{repository}:{tag}) if the manifest should go")
        return None

    async def _attributes(self, path: str, key: str | None,
                          repository: str) -> dict[str, Any]:
        """The attributes object of one repository, manifest or tag (under ``key`` in the
        answer; the answer itself for a repository)."""
        response = await self._client.request(
            "GET", path, scope=f"repository:{repository}:metadata_read")
        if response.status_code != 200:
            raise self._client.failure(response, f"GET {path}")
        try:
            doc = response.json()
        except ValueError:
            doc = None
        entry = doc.get(key) if key is not None and isinstance(doc, dict) else doc
        if not isinstance(entry, dict) or not isinstance(
                entry.get("changeableAttributes") or {}, dict):
            raise self._not_attributes(path)
        return entry

    def _not_attributes(self, path: str) -> RegistryError:
        return RegistryError(f"GET {path}: the answer is not ACR's attributes",
                             registry=self._client.settings.name)

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

    async def delete_repository(self, repository: str, *, retry: bool = True,
                                not_after: float | None = None) -> bool:
        """Delete the repository and all it holds. ``retry=False``: one attempt (a 429 or 503
        raises), for a caller that confirms it empty again first; ``not_after``: not sent
        after that moment (the client's ``send``)."""
        path = self._client.path(repository, api="/acr/v1")
        # The executor sends it with retry=False: after a lost answer (a reset, a 503 from
        # the gateway) the repository may be gone already, and a push since may have made
        # it anew; a DELETE sent again without a new listing would take that push.
        response = await self._client.request(
            "DELETE", path, scope=f"repository:{repository}:delete", retry=retry,
            not_after=not_after)
        if response.status_code in (200, 202, 204):
            return True
        if response.status_code == 404:
            return False
        raise self._client.failure(response, f"DELETE {path}")
