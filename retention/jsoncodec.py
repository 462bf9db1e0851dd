"""JSON read and written on a scan's path, through orjson: a cold plan reads a manifest and a
config and writes a facts record for every image, and the standard library's json took
~10 µs for each of those against orjson's 1-4 µs.

The outcome is the standard library's wherever the two differ: orjson refuses what json
reads (a lone surrogate, NaN, a byte order mark), and that is then read by json; orjson
cannot write a lone surrogate, and that is then written by json. Only an integer beyond 64
bits (from 2**64 up, or below -2**63) reads differently, as a float, not an int: no size or
count is that large, and every reader here wants an int and takes anything else for a
malformed document. JSON nested too deeply for either is a ValueError, as any JSON that
cannot be read.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The document; ValueError (json's JSONDecodeError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json_loads(data)


def json_loads(data: bytes | str, **options: Any) -> Any:
    """The standard library's reading (``options`` are json.loads's), where its outcome
    must be had exactly; ValueError when it is not JSON."""
    try:
        return json.loads(data, **options)
    except RecursionError:
        # Nested deeper than Python's stack (orjson refuses beyond 1,023 levels): a
        # document anyone who can push may write, and not one to end a run.
        raise ValueError("JSON nested too deeply to read") from None


def dumps(value: Any) -> str:
    """Compact JSON text (json.dumps with separators=(",", ":"), but not escaping text
    beyond ASCII: the same document once read)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))
