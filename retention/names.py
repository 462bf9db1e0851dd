"""The grammars of the names that go into a registry's URL paths: repository names, tags and
digests (OCI distribution spec).

One implementation for every place a name is written (config, allowlist), listed (a catalog,
a tag listing, a ``Docker-Content-Digest`` header) or read back (the journal, for restore):
a name outside its grammar is never put into a URL, because ``ci/./app``, ``ci/%61pp`` or a
tag ``../../other/manifests/latest`` reach another repository once the URL is normalised,
while excludes, pins and in-use compare the name as written.
"""

from __future__ import annotations

import re

# A path component: lower-case letters and digits, separated by one `.`, one or two `_`, or
# any number of `-`.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# algorithm ":" encoded, and the registered algorithms' own encodings (lower-case hex).
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_REGISTERED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}

REPOSITORY_RULE = ("lower-case letters and digits, separated by '.', '_', '__' or '-'; "
                   "components joined by '/'")


def is_repository(name: str) -> bool:
    """A canonical repository name: ``ci/app``, never ``ci/./app``, ``CI/app``, ``ci\\app``."""
    return _REPOSITORY.fullmatch(name) is not None


def is_tag(name: str) -> bool:
    return _TAG.fullmatch(name) is not None


def is_digest(value: str) -> bool:
    if _DIGEST.fullmatch(value) is None:
        return False
    algorithm, _, encoded = value.partition(":")
    registered = _REGISTERED.get(algorithm)
    return registered is None or registered.fullmatch(encoded) is not None


def is_reference(value: str) -> bool:
    """What may follow ``/manifests/`` in a URL: a tag or a digest."""
    return is_tag(value) or is_digest(value)


def not_canonical(name: str) -> str:
    """The sentence that says why a repository name is refused."""
    return (f"{name!r} is not a canonical repository name ({REPOSITORY_RULE}); a registry "
            "normalises such a name into another repository's")
