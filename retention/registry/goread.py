"""JSON read the way distribution reads a manifest: Go's encoding/json into typed structs.

What references what is decided by the registry's reading, not by ours: distribution's
garbage collector keeps what its reading of an index lists, and a push of an index is
accepted once the children that reading lists exist. Go reads JSON differently from
Python's json in ways anyone who can push may use (each checked against distribution 2.8
in tests/test_go_reading.py):

- an object key matches a struct field ignoring case (Unicode simple folding: the long s,
  U+017F, is an ``s``, the Kelvin sign a ``k``), and every key that matches is decoded in
  turn: the last one wins, ``"manifests": []`` then ``"Manifests": [C]`` lists C;
- a key decoded again decodes into what is there: a list reuses the elements (and their
  fields) an earlier list left, up to the longest one since it was last emptied or nulled,
  and a map or an object keeps the entries the new one does not name;
- ``null`` leaves a string, a number or an object as it was and empties a list, a map or
  a pointer; a missing field is its zero value (a descriptor without ``size`` is size 0);
- invalid UTF-8 in a string is one U+FFFD per byte, an escaped lone surrogate one U+FFFD;
- unknown keys are skipped whatever they hold (but must be JSON).

What Go refuses (a value of another type, a number where an integer must be, a byte order
mark, ``NaN``) is :class:`GoRefused`; what Python cannot read although Go may (nesting
beyond Python's stack) is :class:`NotReadLikeGo`. Both mean: unparsed.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

_REPLACE = "retention-go-utf8"


def _one_per_byte(exc: UnicodeError) -> tuple[str, int]:
    # Go's utf8.DecodeRune takes one byte of anything invalid at a time, where Python's
    # "replace" writes one U+FFFD for a whole invalid sequence.
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error(_REPLACE, _one_per_byte)

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Go folds a key to a field's name with Unicode simple folding; for fields spelt in ASCII
# letters, "." and digits, that is ASCII case plus the long s and the Kelvin sign.
_FOLD = {**{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}, 0x017F: ord("s"),
         0x212A: ord("k")}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class GoRefused(ValueError):
    """Go's encoding/json does not read this document into distribution's structs."""


class NotReadLikeGo(ValueError):
    """Go may read this document, but not as far as retention can tell."""


class _Integer(str):
    """A number written as an integer, as written: what Go makes of a number depends on
    the field it goes to."""

    __slots__ = ()


class _Fraction(str):
    """Any other number (a fraction, an exponent), as written."""

    __slots__ = ()


def _refuse_constant(name: str) -> Any:
    raise GoRefused(f"{name} is not JSON")


def loads(body: bytes) -> Any:
    """The JSON value of ``body`` as Go's decoder meets it: an object is a tuple of its
    (key, value) pairs in order, duplicates included; a number is its text (an _Integer or
    a _Fraction). GoRefused where Go's scanner refuses it."""
    # Bytes beyond UTF-8 are replaced before reading: in a string that is what Go does,
    # anywhere else both refuse them. A byte order mark is refused by Go and by json.loads
    # of text (json.loads of bytes would have skipped it, or read UTF-16).
    text = body.decode("utf-8", _REPLACE)
    try:
        doc = json.loads(text, object_pairs_hook=tuple, parse_int=_Integer,
                         parse_float=_Fraction, parse_constant=_refuse_constant)
        # Only an escape makes a lone surrogate, which Go reads as U+FFFD.
        return _no_surrogates(doc) if _SURROGATE_ESCAPE.search(text) else doc
    except RecursionError:
        # Go reads 10,000 levels, Python's stack fewer: what Go makes of it is unknown.
        raise NotReadLikeGo("JSON nested too deeply to read") from None
    except GoRefused:
        raise
    except ValueError as exc:
        raise GoRefused(f"not JSON: {exc}") from None


def _no_surrogates(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _SURROGATE.sub("\ufffd", value)
    if kind is list:
        return [_no_surrogates(v) for v in value]
    if kind is tuple:
        return tuple((_no_surrogates(k), _no_surrogates(v)) for k, v in value)
    return value


def _what(value: Any) -> str:
    kind = type(value)
    if kind is tuple:
        return "an object"
    if kind is list:
        return "a list"
    if kind is _Integer or kind is _Fraction:
        return f"the number {value}"
    if kind is str:
        return "a string"
    return "true" if value is True else "false"


# -- Go types and their decoding ------------------------------------------------------------
# Each decode(value, current) is Go's json.Unmarshal of ``value`` (from loads) into
# ``current``, a value of that type: GoRefused where Go reports a type error (it decodes
# the rest, but the document is refused all the same). A struct and a map are updated in
# place, as a slice's backing list is.


class _String:
    def new(self) -> Any:
        return ""

    def decode(self, value: Any, current: Any) -> Any:
        if type(value) is str:
            return value
        if value is None:
            return current  # null leaves a string as it was
        raise GoRefused(f"{_what(value)} where Go wants a string")


class _Int64:
    def new(self) -> Any:
        return 0

    def decode(self, value: Any, current: Any) -> Any:
        if value is None:
            return current
        if type(value) is not _Integer:  # Go's ParseInt takes no fraction, no exponent
            raise GoRefused(f"{_what(value)} where Go wants an integer")
        number = int(value)
        if not _INT64[0] <= number <= _INT64[1]:
            raise GoRefused(f"{value} is beyond 64 bits")
        return number


class _Map:
    """map[string]string."""

    def new(self) -> Any:
        return None  # nil

    def decode(self, value: Any, current: Any) -> Any:
        if value is None:
            return None
        if type(value) is not tuple:
            raise GoRefused(f"{_what(value)} where Go wants an object")
        entries = {} if current is None else current
        for key, item in value:
            # Each entry starts from a zero string: null there is "".
            entries[key] = STRING.decode(item, "")
        return entries


STRING, INT64, MAP = _String(), _Int64(), _Map()


class GoSlice:
    """A slice as decoding leaves it: ``items`` are the visible elements; ``backing`` also
    holds those an earlier, longer list left behind (Go decodes into them again)."""

    __slots__ = ("backing", "length")

    def __init__(self, backing: list[Any], length: int):
        self.backing, self.length = backing, length

    @property
    def items(self) -> list[Any]:
        return self.backing[:self.length]


class Slice:
    def __init__(self, elem: Any):
        self.elem = elem

    def new(self) -> Any:
        return None  # nil

    def decode(self, value: Any, current: Any) -> Any:
        if value is None:
            return None
        if type(value) is not list:
            raise GoRefused(f"{_what(value)} where Go wants a list")
        if not value:
            return GoSlice([], 0)  # a new empty slice: what an earlier list left is gone
        elem = self.elem
        backing = current.backing if current is not None else []
        for i, item in enumerate(value):
            if i < len(backing):
                backing[i] = elem.decode(item, backing[i])
            else:
                backing.append(elem.decode(item, elem.new()))
        return GoSlice(backing, len(value))


class Struct:
    """A struct by its fields' JSON names (embedded structs' fields promoted, as Go does):
    decoded as a dict of the fields set (a missing one is its zero value)."""

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields
        self._folded = {name.lower(): name for name in fields}

    def new(self) -> dict[str, Any]:
        return {}

    def field(self, key: str) -> str | None:
        """The field a key decodes into: the one of that name, else one that name folds to
        (Go prefers the exact match; no two fields here fold alike)."""
        if key in self.fields:
            return key
        return self._folded.get(key.translate(_FOLD))

    def decode(self, value: Any, current: Any) -> Any:
        if value is None:
            return current  # null leaves a struct as it was
        if type(value) is not tuple:
            raise GoRefused(f"{_what(value)} where Go wants an object")
        fields = self.fields
        for key, item in value:
            name = key if key in fields else self._folded.get(key.translate(_FOLD))
            if name is not None:
                kind = fields[name]
                if kind is STRING and type(item) is str:
                    current[name] = item  # the common case, without a call
                    continue
                current[name] = kind.decode(item, current[name] if name in current
                                            else kind.new())
        return current


class Pointer:
    def __init__(self, elem: Struct):
        self.elem = elem

    def new(self) -> Any:
        return None  # nil

    def decode(self, value: Any, current: Any) -> Any:
        if value is None:
            return None
        return self.elem.decode(value, {} if current is None else current)


def unmarshal(kind: Struct, doc: Any) -> dict[str, Any]:
    """json.Unmarshal of a whole document into a new struct of ``kind``."""
    return kind.decode(doc, {})


def items(value: GoSlice | None) -> list[Any]:
    """A slice's elements (none for nil)."""
    return [] if value is None else value.items


# -- distribution 2.8's structs (github.com/docker/distribution, manifest/...) --------------

_V1_PLATFORM = Struct({"architecture": STRING, "os": STRING, "os.version": STRING,
                       "os.features": Slice(STRING), "variant": STRING})
_PLATFORM_SPEC = Struct({**_V1_PLATFORM.fields, "features": Slice(STRING)})
_DESCRIPTOR_FIELDS = {"mediaType": STRING, "size": INT64, "digest": STRING,
                      "urls": Slice(STRING), "annotations": MAP,
                      "platform": Pointer(_V1_PLATFORM)}
DESCRIPTOR = Struct(_DESCRIPTOR_FIELDS)
# manifestlist.ManifestDescriptor: its own platform shadows the embedded descriptor's.
MANIFEST_DESCRIPTOR = Struct({**_DESCRIPTOR_FIELDS, "platform": _PLATFORM_SPEC})
VERSIONED = Struct({"schemaVersion": INT64, "mediaType": STRING})
MANIFEST_LIST = Struct({**VERSIONED.fields, "manifests": Slice(MANIFEST_DESCRIPTOR)})
SCHEMA2_MANIFEST = Struct({**VERSIONED.fields, "config": DESCRIPTOR,
                           "layers": Slice(DESCRIPTOR)})
OCI_MANIFEST = Struct({**SCHEMA2_MANIFEST.fields, "annotations": MAP})
# What retention reads beyond them (OCI 1.1, as distribution 3 declares it), each alone.
SUBJECT = Struct({"subject": Pointer(DESCRIPTOR)})
ANNOTATIONS = Struct({"annotations": MAP})
ARTIFACT_TYPE = Struct({"artifactType": STRING})
