"""Image references (``host/repo:tag@digest``) as container runtimes read them.

One parser for the allowlist and for the images Kubernetes workloads name, so a pin and a
running pod that mean the same image always meet: hosts compare case-insensitively, without
the scheme's default port, Docker Hub's three names are one host (with ``library/`` implied
for one-segment names), and a registry's ``aliases`` count as its own host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from retention.names import is_digest, is_repository, is_tag, not_canonical

DOCKER_HUB = "docker.io"
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DEFAULT_PORTS = (":443", ":80")
PULLABLE_PREFIX = "docker-pullable://"

# The reference grammar of distribution/reference (names, tags and digests from
# retention.names), slightly relaxed where runtimes are (uppercase hosts are normalised
# rather than refused).
_HOST = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                   r"(?::[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference. ``host`` is normalised (see :func:`normalize_host`); it is
    None when the text named no host and the caller gave no default (an allowlist entry that
    applies to any registry)."""

    host: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None


def normalize_host(host: str) -> str:
    """``Registry.Example.com:443`` -> ``registry.example.com``; Docker Hub -> docker.io."""
    host = host.lower()
    for port in _DEFAULT_PORTS:
        if host.endswith(port):
            host = host[: -len(port)]
            break
    return DOCKER_HUB if host in _DOCKER_HUB_NAMES else host


def normalize_repository(host: str | None, repository: str) -> str:
    """Docker Hub's official images live under ``library/``: ``nginx`` is ``library/nginx``."""
    if host == DOCKER_HUB and "/" not in repository:
        return f"library/{repository}"
    return repository


def _splits_host(first: str) -> bool:
    # As docker does: the first path component is a host when it has a dot or a port, is
    # localhost, or has an uppercase letter (repository names cannot).
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


def parse_reference(text: str, *, default_host: str | None = DOCKER_HUB) -> Reference | None:
    """Parse ``[docker-pullable://][host[:port]/]repo[:tag][@digest]``; None when malformed.

    ``default_host`` is the host of a reference that names none: Docker Hub for what a
    container runtime pulls, None for an allowlist entry meant for any registry.
    """
    parsed = read_reference(text, default_host=default_host)
    return parsed if isinstance(parsed, Reference) else None


def read_reference(text: str, *, default_host: str | None = DOCKER_HUB) -> Reference | str:
    """As :func:`parse_reference`, with the reason (a sentence) instead of None."""
    text = text.strip()
    if text.startswith(PULLABLE_PREFIX):
        text = text[len(PULLABLE_PREFIX):]
    name, at, digest = text.partition("@")
    if at and not is_digest(digest):
        return f"{digest!r} is not a digest"
    host: str | None = None
    first, slash, rest = name.partition("/")
    if slash and _splits_host(first):
        if not _HOST.fullmatch(first):
            return f"{first!r} is not a host name"
        host, name = first, rest
    # A colon after the last slash starts the tag (a colon before it was a port).
    tag = None
    slash_at = name.rfind("/")
    colon_at = name.rfind(":")
    if colon_at > slash_at:
        name, tag = name[:colon_at], name[colon_at + 1:]
        if not is_tag(tag):
            return f"{tag!r} is not a tag"
    if not is_repository(name):
        return not_canonical(name)
    if host is None and default_host is not None:
        host = default_host
    host = normalize_host(host) if host is not None else None
    return Reference(host, normalize_repository(host, name), tag, digest or None)


@dataclass(frozen=True, slots=True)
class Hosts:
    """Which configured registry each host name (normalised) belongs to."""

    by_host: Mapping[str, str]  # normalised host or alias -> registry name
    canonical: Mapping[str, str]  # registry name -> its normalised URL host

    @classmethod
    def of(cls, registries: Iterable[tuple[str, str, Iterable[str]]]) -> Hosts:
        """From (registry name, URL host, aliases) triples."""
        by_host: dict[str, str] = {}
        canonical: dict[str, str] = {}
        for name, host, aliases in registries:
            canonical[name] = normalize_host(host)
            for h in (host, *aliases):
                # The first registry to claim a host keeps it; config validation reports
                # a host claimed twice.
                by_host.setdefault(normalize_host(h), name)
        return cls(by_host, canonical)

    def registry_of(self, host: str) -> str | None:
        return self.by_host.get(normalize_host(host))

    def registries_of(self, host: str) -> tuple[str, ...]:
        """Every registry ``host`` names: the one that claims it, and any other with the
        same URL host (the config allows two, with other credentials say: one storage, so
        what is in use there is in use for the policies of both)."""
        first = self.registry_of(host)
        if first is None:
            return ()
        own = self.canonical[first]
        return tuple(name for name, h in self.canonical.items() if h == own)

    def canonical_host(self, host: str) -> str:
        """The registry's own (URL) host for an alias; any other host as it is, normalised."""
        host = normalize_host(host)
        name = self.by_host.get(host)
        return self.canonical[name] if name is not None else host


NO_HOSTS = Hosts({}, {})
