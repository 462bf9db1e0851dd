"""The pinned-digest allowlist: digests that no policy may delete."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retention.errors import ConfigError, Problem

_DIGEST = r"sha256:[0-9a-f]{64}"
_BARE = re.compile(_DIGEST)
# [host[:port]/]repo@digest; a host is the first component when it has a dot or a colon
# or is "localhost", as docker's reference grammar has it.
_REFERENCE = re.compile(rf"(?P<name>[a-z0-9][a-z0-9._/:-]*)@(?P<digest>{_DIGEST})")


@dataclass(frozen=True, slots=True)
class Pin:
    digest: str
    repository: str | None = None  # None: any repository
    host: str | None = None  # None: any registry


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
        for pin in self._by_digest.get(digest, ()):
            if pin.repository is not None and pin.repository != repository:
                continue
            if pin.host is not None and pin.host != host:
                continue
            return True
        return False


def parse_entry(text: str) -> Pin | None:
    if text.startswith("docker-pullable://"):
        text = text[len("docker-pullable://"):]
    if _BARE.fullmatch(text):
        return Pin(text)
    m = _REFERENCE.fullmatch(text)
    if not m:
        return None
    name = m.group("name")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return Pin(m.group("digest"), repository=rest, host=first)
    if ":" in name:
        return None  # a tag before the digest (repo:tag@digest) is ambiguous: refuse it
    return Pin(m.group("digest"), repository=name)


def allowlist_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def load_allowlist(path: Path | None) -> Allowlist:
    """Read a file or a directory of files; every bad line is reported, with its number."""
    if path is None:
        return Allowlist.of(())
    problems: list[Problem] = []
    pins: list[Pin] = []
    for file in allowlist_files(path):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(file), 1, 1, f"cannot read allowlist: {exc}"))
            continue
        for number, raw in enumerate(lines, start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            pin = parse_entry(text)
            if pin is None:
                col = len(raw) - len(raw.lstrip()) + 1
                problems.append(Problem(
                    str(file), number, col,
                    f"not a pinned digest: {text!r}; write sha256:<64 hex>, repo@sha256:<hex>, "
                    "host/repo@sha256:<hex> or docker-pullable://host/repo@sha256:<hex>",
                ))
                continue
            pins.append(pin)
    if problems:
        raise ConfigError(problems)
    return Allowlist.of(pins)
