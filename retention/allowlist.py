"""The pinned-digest allowlist: digests that no policy may delete."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retention.errors import ConfigError, Problem
from retention.references import (
    NO_HOSTS,
    PULLABLE_PREFIX,
    Hosts,
    normalize_host,
    normalize_repository,
    read_reference,
)
from retention.textfiles import read_text

_BARE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Pin:
    digest: str
    repository: str | None = None  # None: any repository
    host: str | None = None  # normalised, aliases resolved; None: any registry
    source: str = field(default="", compare=False)  # file:line, for warnings


@dataclass(frozen=True, slots=True)
class Allowlist:
    pins: tuple[Pin, ...] = ()
    _by_digest: dict[str, tuple[Pin, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, pins: Iterable[Pin]) -> Allowlist:
        pins = tuple(pins)
        index: dict[str, list[Pin]] = {}
        for pin in pins:
            index.setdefault(pin.digest, []).append(pin)
        return cls(pins, {k: tuple(v) for k, v in index.items()})

    def pinned(self, digest: str, *, repository: str, host: str) -> bool:
        pins = self._by_digest.get(digest)
        if not pins:  # most digests: no pin to compare the host with
            return False
        host = normalize_host(host)
        for pin in pins:
            if pin.host is not None and pin.host != host:
                continue
            if pin.repository is not None and repository not in (
                    pin.repository, normalize_repository(host, pin.repository)):
                # A pin without a host names `nginx` as a person would; on Docker Hub
                # that is library/nginx.
                continue
            return True
        return False


def parse_entry(text: str, *, hosts: Hosts = NO_HOSTS, source: str = "") -> Pin | None:
    """One allowlist line (comment stripped) as a Pin; None when it is not a pinned digest."""
    pin = read_entry(text, hosts=hosts, source=source)
    return pin if isinstance(pin, Pin) else None


def read_entry(text: str, *, hosts: Hosts = NO_HOSTS, source: str = "") -> Pin | str:
    """One allowlist line (comment stripped) as a Pin; else why it is not one (a sentence,
    empty when there is nothing more to say than "not a pinned digest").

    A tag before the digest (``repo:v1@sha256:...``) is ignored: the digest is what is
    pinned. Hosts are normalised and a registry's aliases resolved to its URL host, so the
    planner compares hosts as plain strings."""
    if text.startswith(PULLABLE_PREFIX):
        text = text[len(PULLABLE_PREFIX):]
    if _BARE.fullmatch(text):
        return Pin(text, source=source)
    ref = read_reference(text, default_host=None)
    if isinstance(ref, str):
        # Say what is wrong: `ci/./app@sha256:...` looks like a pin of ci/app, and is not.
        return ref
    if ref.digest is None or not _BARE.fullmatch(ref.digest):
        return ""
    host = hosts.canonical_host(ref.host) if ref.host is not None else None
    return Pin(ref.digest, repository=ref.repository, host=host, source=source)


def unknown_host_pins(allowlist: Allowlist, hosts: Hosts) -> list[Pin]:
    """Pins naming a host that no configured registry has: they protect nothing."""
    known = set(hosts.canonical.values())
    return [p for p in allowlist.pins if p.host is not None and p.host not in known]


def allowlist_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def load_allowlist(path: Path | None, *, hosts: Hosts = NO_HOSTS) -> Allowlist:
    """Read a file or a directory of files; every bad line is reported, with its number."""
    if path is None:
        return Allowlist.of(())
    problems: list[Problem] = []
    pins: list[Pin] = []
    try:
        files = allowlist_files(path)
    except OSError as exc:  # a directory that cannot be listed
        raise ConfigError([Problem(str(path), 1, 1, f"cannot read allowlist: {exc.strerror}")]) \
            from None
    for file in files:
        try:
            lines = read_text(file).splitlines()
        except OSError as exc:
            problems.append(Problem(str(file), 1, 1, f"cannot read allowlist: {exc.strerror}"))
            continue
        except ConfigError as exc:  # not UTF-8
            problems.extend(exc.problems)
            continue
        for number, raw in enumerate(lines, start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            pin = read_entry(text, hosts=hosts, source=f"{file}:{number}")
            if not isinstance(pin, Pin):
                col = len(raw) - len(raw.lstrip()) + 1
                why = f" ({pin})" if pin else ""
                problems.append(Problem(
                    str(file), number, col,
                    f"not a pinned digest: {text!r}{why}; write sha256:<64 hex>, "
                    "repo@sha256:<hex>, host/repo@sha256:<hex>, host/repo:tag@sha256:<hex> or "
                    "docker-pullable://host/repo@sha256:<hex>",
                ))
                continue
            pins.append(pin)
    if problems:
        raise ConfigError(problems)
    return Allowlist.of(pins)
