"""One error hierarchy, with messages a user can act on."""

from __future__ import annotations

from dataclasses import dataclass


class RetentionError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One located validation problem: printed as ``path:line:col: message``."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(RetentionError):
    """Invalid configuration, policy or allowlist. Carries every problem found."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]):
        self.problems = tuple(sorted(problems, key=lambda p: (p.path, p.line, p.column)))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(RetentionError):
    """The command line asks for something impossible (exit code 2)."""


class RegistryError(RetentionError):
    """A registry answered something we cannot work with, or not at all."""

    def __init__(self, message: str, *, registry: str = "", status: int | None = None,
                 retry_after: float | None = None):
        self.registry = registry
        self.status = status
        self.retry_after = retry_after  # seconds, when the registry said when to come back
        prefix = f"registry {registry!r}: " if registry else ""
        super().__init__(prefix + message)


class AnswerTooLargeError(RegistryError):
    """An answer longer than the cap for what it is (a manifest, a config, a page): not read
    past the cap, nor asked for again."""


class AuthenticationError(RegistryError):
    """Credentials were refused, or could not be used safely."""


class DeletionDisabledError(RegistryError):
    """The registry refuses deletes (405 / UNSUPPORTED)."""


class DeleteRefusedError(RegistryError):
    """ACR refused a DELETE with 405. ACR answers so for a locked manifest, tag or
    repository, and for a registry that refuses every write (its storage quota reached):
    which one it is is read from the attributes (``changeableAttributes``), not guessed from
    the answer."""


class NotSentError(RegistryError):
    """A request was not sent because the moment it was allowed until had passed (a DELETE
    whose tag confirmation had grown too old while it waited). Nothing reached the
    registry: check again, then try again."""


class ManifestLockedError(RegistryError):
    """The registry refuses to delete one manifest because that manifest (or its tag or
    repository) is locked, as ACR answers for ``deleteEnabled: false``. It fails that manifest
    only: deliberately neither a DeletionDisabledError nor an AuthenticationError, which stop
    every deletion on the registry."""


class StateError(RetentionError):
    """The embedded state database cannot be used."""


class RateLimitedError(RegistryError):
    """GitHub refused a request for a rate limit (primary or secondary), whatever status it
    used (403 or 429): nothing was done, and the request may go again once the limit has
    been waited out. Its status is 429 so that every caller retries it as throttling."""


class RateLimitExhaustedError(DeletionDisabledError):
    """A rate limit asks to wait longer than retention waits at once (an hour): nothing more
    is sent to that registry in this run. A DeletionDisabledError because, like a registry
    that refuses deletes, it stops every further deletion there; each is then either done
    or not started."""
