"""retention.jsoncodec reads and writes as the standard library's json does (the one
exception, integers beyond 64 bits, is the docstring's)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention import jsoncodec

# What a manifest, a config or a facts record holds: no integer beyond 64 bits.
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                         | st.dictionaries(st.text(), inner, max_size=5), max_leaves=30)


@given(documents)
def test_what_json_writes_reads_back_the_same(document):
    for text in (json.dumps(document), json.dumps(document, ensure_ascii=False)):
        assert jsoncodec.loads(text.encode("utf-8", "surrogatepass")) == json.loads(text)
        assert jsoncodec.loads(text) == json.loads(text)


@given(documents)
def test_what_it_writes_json_reads_as_the_document(document):
    assert json.loads(jsoncodec.dumps(document)) == document


@pytest.mark.parametrize("text", [b'{"a": "\\ud800"}', b'{"a": NaN}', b"\xef\xbb\xbf{}",
                                  b'{"a": Infinity}'])
def test_what_orjson_refuses_is_read_as_json_reads_it(text):
    # Compared as json writes them: NaN is not equal to itself.
    assert json.dumps(jsoncodec.loads(text)) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": 1,}', b"\xff", b"[1] x"])
def test_what_is_not_json_is_a_value_error(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsoncodec.loads(text)


def test_a_lone_surrogate_is_written_as_json_writes_it():
    value = {"a": "\ud800"}
    assert jsoncodec.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert json.loads(jsoncodec.dumps(value)) == value
