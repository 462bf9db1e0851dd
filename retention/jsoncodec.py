"""JSON read and written on a scan's path, through orjson: a cold plan reads a manifest and a
config and writes a facts record for every image, and the standard library's json took
~10 µs for each of those against orjson's 1-4 µs.

The outcome is the standard library's wherever the two differ: orjson refuses what json
reads (a lone surrogate, NaN, a byte order mark), and that is then read by json; orjson
cannot write a lone surrogate, and that is then written by json. Only an integer beyond 64
bits reads differently (a float, not an int): no size or count is that large, and every
reader here wants an int and takes anything else for a malformed document.
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
        return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text (json.dumps with separators=(",", ":"), but not escaping text
    beyond ASCII: the same document once read)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))
