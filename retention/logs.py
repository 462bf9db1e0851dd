"""Structured logging: JSON by default, console output for people at a terminal.

A redaction processor runs last before rendering, so no secret reaches a log line even when
a library puts one in an exception message: the configured passwords are replaced wherever
they appear, and so are Authorization header values and token-like fields.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from retention.secrets import Secret

_SENSITIVE_KEYS = re.compile(r"pass(word)?|secret|token|authorization|credential", re.I)
_AUTH_VALUE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.I)
REDACTED = "[redacted]"


class Redactor:
    """A structlog processor that removes secrets from every event."""

    def __init__(self, secrets: Iterable[Secret] = ()):
        self._secrets: list[str] = []
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[Secret]) -> None:
        # Longest first, so a secret containing another is removed whole.
        values = {s.reveal() for s in secrets if s and len(s.reveal()) >= 4}
        self._secrets = sorted(values, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Secret):
            return REDACTED
        if isinstance(value, dict):
            return {k: REDACTED if _SENSITIVE_KEYS.search(str(k)) else self._clean(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._clean(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key in list(event):
            if _SENSITIVE_KEYS.search(key):
                event[key] = REDACTED
            else:
                event[key] = self._clean(event[key])
        return event


def configure(
    *,
    fmt: str = "json",
    stream: TextIO | None = None,
    level: str = "info",
    secrets: Iterable[Secret] = (),
) -> Redactor:
    """Configure structlog for the process. ``fmt`` is json or console; console is also
    chosen when ``fmt`` is "auto" and the stream is a terminal. Returns the redactor, whose
    secrets the daemon replaces when the configuration is reloaded."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    # NO_COLOR (no-color.org): set to anything non-empty, no colours, even on a terminal.
    colors = stream.isatty() and not os.environ.get("NO_COLOR")
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=colors)
                     if fmt == "console" else structlog.processors.JSONRenderer())
    redactor = Redactor(secrets)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (APScheduler, httpx2) log through the standard library: render their lines
    # the same way, through the same redaction, so every line of output is one JSON event.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redactor, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    # One line per HTTP request is noise; retention logs what matters about requests.
    for noisy in ("httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # APScheduler's info lines ("Adding job tentatively", "Job ... executed successfully")
    # were a third of the daemon's log and say nothing retention does not say itself.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    return redactor
