"""Manifests are read the way the registry reads them (SPEC, after the protections table).

Each odd document is pushed to a real distribution 2.8. What distribution reads a document to
reference is learnt from the registry itself: it refuses an index whose children are not in
the repository (an image manifest whose blobs are not), naming each one it looked for
(MANIFEST_BLOB_UNKNOWN), so a push to an empty repository lists exactly the references its
reading found, and a document it cannot read is refused as MANIFEST_INVALID. Retention's
reading of the same bytes, served back by the registry, must find the same references, or
refuse the document too; or, where marked, be unparsed (its repository then protected by
unparsed-parent).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.registry.mediatypes import ACCEPT, ManifestFormatError, parse_manifest
from tests.pusher import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Pushed,
    Pusher,
    sha,
)
from tests.servers import Registry, start_registry
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
REFUSED = "refused"  # distribution refuses the document itself (MANIFEST_INVALID)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[tuple[Registry, Pusher, dict[str, Pushed]]]:
    """One registry for the table: repository ``odd`` holds two images, C and D, and the
    blobs the image manifests below name."""
    reg = start_registry(tmp_path_factory.mktemp("go-reading") / "registry")
    pusher = Pusher(reg.url)
    images = {"C": pusher.image("odd", "c", layers=(b"c",)),
              "D": pusher.image("odd", "d", layers=(b"d",))}
    for name, data in BLOBS.items():
        digest, size = pusher.blob("odd", data)
        images[name] = Pushed(digest, size, OCI_LAYER)
    yield reg, pusher, images
    pusher.close()
    reg.stop()


BLOBS = {"config": b'{"architecture": "amd64", "os": "linux"}', "L1": b"layer one",
         "L2": b"layer two"}


def distribution_references(pusher: Pusher, body: bytes, media_type: str
                            ) -> frozenset[str] | str:
    """The digests distribution's reading of ``body`` references, from a push to a
    repository that holds none of them; REFUSED when it does not take the document for
    any other reason (MANIFEST_INVALID; DIGEST_INVALID for a reference without a digest)."""
    r = pusher.client.put(f"/v2/empty-{uuid.uuid4().hex}/manifests/{sha(body)}",
                          content=body, headers={"Content-Type": media_type})
    if r.status_code == 201:
        return frozenset()
    errors = r.json()["errors"]
    if errors and all(e["code"] == "MANIFEST_BLOB_UNKNOWN" for e in errors):
        return frozenset(e["detail"] for e in errors)
    assert {e["code"] for e in errors} <= {"MANIFEST_INVALID", "DIGEST_INVALID",
                                           "MANIFEST_BLOB_UNKNOWN"}, r.text
    return REFUSED


def retention_references(body: bytes, media_type: str | None) -> frozenset[str] | str:
    try:
        parsed = parse_manifest(body, media_type)
    except ManifestFormatError:
        return REFUSED
    blobs = ((parsed.config,) if parsed.config else ()) + parsed.layers
    return frozenset(c.digest for c in parsed.children + blobs)


class Obj(list):
    """A JSON object as (key, value) pairs: keys may repeat, in any order."""


class Raw(str):
    """JSON text written as it is (what json.dumps would not write)."""


def o(*pairs: tuple[str, object]) -> Obj:
    return Obj(pairs)


def _raw(value: object) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(f"{_raw(k)}:{_raw(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_raw(v) for v in value) + "]"
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value)


def _body(doc: Obj) -> bytes:
    # Keys and strings may hold lone surrogates standing for bytes that are not UTF-8.
    return _raw(doc).encode("utf-8", "surrogateescape")


def _desc(p: Pushed, *pairs: tuple[str, object], size: bool = True) -> Obj:
    return o(("mediaType", p.media_type), ("digest", p.digest),
             *((("size", p.size),) if size else ()), *pairs)


def _index(*pairs: tuple[str, object], media_type: str = OCI_INDEX) -> Obj:
    return o(("schemaVersion", 2), *((("mediaType", media_type),) if media_type else ()),
             *pairs)


def _image(i: dict[str, Pushed], *pairs: tuple[str, object]) -> Obj:
    return o(("schemaVersion", 2), ("mediaType", OCI_MANIFEST),
             ("config", o(("mediaType", OCI_CONFIG), ("digest", i["config"].digest),
                          ("size", i["config"].size))), *pairs)


def _layer(p: Pushed) -> Obj:
    return o(("mediaType", OCI_LAYER), ("digest", p.digest), ("size", p.size))


# name -> (the document, given the images; its Content-Type; what both read it to
# reference: names of images and blobs, or REFUSED[; "unparsed": retention does not read
# what distribution accepts])
CASES: dict[str, tuple] = {
    "manifests then Manifests: the last wins": (
        lambda i: _index(("manifests", []), ("Manifests", [_desc(i["C"])])), OCI_INDEX,
        ("C",)),
    "Manifests then manifests: the last wins": (
        lambda i: _index(("Manifests", [_desc(i["C"])]), ("manifests", [])), OCI_INDEX, ()),
    "MANIFESTS alone": (
        lambda i: _index(("MANIFESTS", [_desc(i["C"])])), OCI_INDEX, ("C",)),
    "a long s folds to s": (
        lambda i: _index(("manife\u017fts", [_desc(i["C"])])), OCI_INDEX, ("C",)),
    "an escaped key": (
        lambda i: _index((Raw('"\\u006danifests"'), [_desc(i["C"])])), OCI_INDEX,
        ("C",)),
    "manifests then null": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("Manifests", None)), OCI_INDEX,
        ()),
    "null then Manifests": (
        lambda i: _index(("manifests", None), ("Manifests", [_desc(i["C"])])), OCI_INDEX,
        ("C",)),
    "a shorter list decodes into the first element": (
        lambda i: _index(("manifests", [_desc(i["C"]), _desc(i["D"])]),
                         ("Manifests", [o(("size", 5))])), OCI_INDEX, ("C",)),
    "a third list brings back what the second dropped": (
        lambda i: _index(("manifests", [_desc(i["C"]), _desc(i["D"])]),
                         ("Manifests", [o(("size", 5))]), ("MANIFESTS", [o(), o()])),
        OCI_INDEX, ("C", "D")),
    "an empty list in between forgets the elements": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("Manifests", []),
                         ("MANIFESTS", [o(("size", 1))])), OCI_INDEX, REFUSED),
    "digest twice: the last wins": (
        lambda i: _index(("manifests", [_desc(i["C"], ("digest", i["D"].digest))])),
        OCI_INDEX, ("D",)),
    "digest then DIGEST": (
        lambda i: _index(("manifests", [_desc(i["C"], ("DIGEST", i["D"].digest))])),
        OCI_INDEX, ("D",)),
    "a descriptor without size": (
        lambda i: _index(("manifests", [_desc(i["C"], size=False)])), OCI_INDEX, ("C",)),
    "size null": (
        lambda i: _index(("manifests", [_desc(i["C"], ("size", None), size=False)])),
        OCI_INDEX, ("C",)),
    "a negative size": (
        lambda i: _index(("manifests", [_desc(i["C"], ("size", -3), size=False)])),
        OCI_INDEX, ("C",)),
    "subject null": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("subject", None)), OCI_INDEX,
        ("C",)),
    "mediaType then MediaType null": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("MediaType", None)), OCI_INDEX,
        ("C",)),
    "no mediaType, Manifests": (
        lambda i: _index(("Manifests", [_desc(i["C"])]), media_type=""), OCI_INDEX, ("C",)),
    "a docker list with MEDIATYPE": (
        lambda i: o(("schemaVersion", 2), ("MEDIATYPE", DOCKER_LIST),
                    ("manifests", [_desc(i["C"])])), DOCKER_LIST, ("C",)),
    "unknown fields of every kind": (
        lambda i: _index(("manifests", [_desc(i["C"], ("x", Raw("1e999")))]),
                         ("layers", None), ("big", Raw("1" * 5000)),
                         ("nested", o(("a", [1, o(("b", None))]))), ("artifactType", "x/y")),
        OCI_INDEX, ("C",)),
    "a Latin-1 byte in an annotation": (
        lambda i: _index(("manifests", [_desc(i["C"])]),
                         ("annotations", o(("a", Raw('"caf\udce9"'))))), OCI_INDEX, ("C",)),
    "a Latin-1 byte in an unknown key": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("caf\udce9", 1)), OCI_INDEX,
        ("C",)),
    "a lone surrogate escaped in an annotation": (
        lambda i: _index(("manifests", [_desc(i["C"], ("annotations",
                                                        o(("a", Raw('"\\ud800"')))))])),
        OCI_INDEX, ("C",)),
    "annotations twice": (
        lambda i: _index(("manifests", [_desc(i["C"], ("annotations", o(("a", "1"))),
                                               ("Annotations", o(("b", None))))])),
        OCI_INDEX, ("C",)),
    "NaN": (lambda i: _index(("manifests", [_desc(i["C"])]), ("x", Raw("NaN"))),
            OCI_INDEX, REFUSED),
    "a byte order mark": (
        lambda i: Raw("\ufeff" + _raw(_index(("manifests", [_desc(i["C"])])))), OCI_INDEX,
        REFUSED),
    "schemaVersion 2.0": (
        lambda i: o(("schemaVersion", Raw("2.0")), ("mediaType", OCI_INDEX),
                    ("manifests", [_desc(i["C"])])), OCI_INDEX, REFUSED),
    "size 1e3": (
        lambda i: _index(("manifests", [_desc(i["C"], ("size", Raw("1e3")), size=False)])),
        OCI_INDEX, REFUSED),
    "a size beyond 64 bits": (
        lambda i: _index(("manifests", [_desc(i["C"], ("size", 2 ** 64), size=False)])),
        OCI_INDEX, REFUSED),
    "an index's annotation that is a number (2.8's list has no annotations)": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("annotations", o(("a", 1)))),
        OCI_INDEX, ("C",)),
    "a child's annotation that is a number": (
        lambda i: _index(("manifests", [_desc(i["C"], ("annotations", o(("a", 1))))])),
        OCI_INDEX, REFUSED),
    "an image's annotation that is a number": (
        lambda i: _image(i, ("layers", []), ("annotations", o(("a", 1)))), OCI_MANIFEST,
        REFUSED),
    "a subject that is a number (2.8 has no subject)": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("subject", 1)), OCI_INDEX,
        ("C",), "unparsed"),
    "Manifests that is an object": (
        lambda i: _index(("manifests", [_desc(i["C"])]), ("Manifests", o(("a", 1)))),
        OCI_INDEX, REFUSED),
    "an image: layers then Layers": (
        lambda i: _image(i, ("layers", [_layer(i["L1"])]), ("Layers", [_layer(i["L2"])])),
        OCI_MANIFEST, ("config", "L2")),
    "an image: CONFIG without size, layers null": (
        lambda i: _image(i, ("CONFIG", o(("digest", i["L1"].digest))), ("layers", None)),
        OCI_MANIFEST, ("L1",)),
    "a docker image: Layers only": (
        lambda i: o(("schemaVersion", 2), ("mediaType", DOCKER_MANIFEST),
                    ("config", o(("digest", i["config"].digest))),
                    ("Layers", [_layer(i["L1"])])), DOCKER_MANIFEST, ("config", "L1")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_retention_reads_what_distribution_reads(shared, case: str):
    _, pusher, images = shared
    build, media_type, expected, *unparsed = CASES[case]
    body = _body(build(images))
    theirs = distribution_references(pusher, body, media_type)
    want = REFUSED if expected == REFUSED else frozenset(images[n].digest for n in expected)
    assert theirs == want, "distribution read it otherwise than this table says"
    if theirs == REFUSED:
        assert retention_references(body, media_type) == REFUSED
        return
    # Pushed where its references exist, and read back as a scan reads it.
    r = pusher.client.put(f"/v2/odd/manifests/{sha(body)}", content=body,
                          headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text
    served = pusher.client.get(f"/v2/odd/manifests/{sha(body)}", headers={"Accept": ACCEPT})
    assert served.content == body
    # Or, where marked, unparsed: what another registry makes of it is unknown.
    assert retention_references(served.content, served.headers["content-type"]) == \
        (REFUSED if unparsed else theirs)


def test_a_document_nested_deeper_than_python_reads_is_unparsed(shared):
    """Go reads 10,000 levels; past Python's stack retention cannot tell what Go read: the
    index is unparsed, where distribution sees its child."""
    _, pusher, images = shared
    deep = Raw("[" * 1500 + "]" * 1500)
    body = _body(_index(("manifests", [_desc(images["C"])]), ("x", deep)))
    assert distribution_references(pusher, body, OCI_INDEX) == {images["C"].digest}
    assert retention_references(body, OCI_INDEX) == REFUSED


# -- property: random spellings, orders and repetitions, read by the registry and by retention

DIGESTS = ["sha256:" + c * 64 for c in "0123"]
MANIFESTS_KEYS = ["manifests", "Manifests", "MANIFESTS", "manife\u017fts", "mAnIfEsTs",
                  "manifest", "manifests "]
DIGEST_KEYS = ["digest", "Digest", "DIGEST", "dige\u017ft", "digests"]
SIZE_KEYS = ["size", "Size", "\u017fize"]


def _object(pairs: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(pairs, max_size=4).map(Obj)


_descriptors = _object(st.one_of(
    st.tuples(st.sampled_from(DIGEST_KEYS), st.one_of(st.sampled_from(DIGESTS), st.none())),
    st.tuples(st.sampled_from(SIZE_KEYS), st.one_of(st.integers(-5, 2 ** 40), st.none())),
    st.tuples(st.sampled_from(["annotations", "Annotations"]), st.one_of(
        st.none(), _object(st.tuples(st.sampled_from(["a", "b"]),
                                     st.one_of(st.none(), st.just("x"))))))))
_lists = st.one_of(st.none(), st.lists(_descriptors, max_size=3))


@st.composite
def _indexes(draw) -> Obj:
    entries = draw(st.lists(st.tuples(st.sampled_from(MANIFESTS_KEYS), _lists), max_size=4))
    media_type = draw(st.sampled_from([[("mediaType", OCI_INDEX)], [],
                                       [("MediaType", OCI_INDEX), ("mediatype", None)]]))
    doc = o(("schemaVersion", 2), *media_type, *entries)
    if draw(st.booleans()):
        doc.append(("subject", None))
    return doc


PROPERTY = settings(max_examples=int(os.environ.get("RETENTION_PROPERTY_EXAMPLES", "150")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.function_scoped_fixture])


@PROPERTY
@given(doc=_indexes())
def test_property_retention_reads_what_distribution_reads(shared, doc: list):
    """For any mix of spellings, orders, repetitions, nulls and missing fields: the
    children distribution's reading names are those retention's reading names, and a
    document one refuses the other refuses (a descriptor without a digest, for one)."""
    _, pusher, _ = shared
    body = _body(doc)
    theirs = distribution_references(pusher, body, OCI_INDEX)
    served = OCI_INDEX
    if theirs == frozenset():
        # Taken for an index without children; read back, distribution may take it for an
        # image manifest (no mediaType, no manifests: an empty config), as retention must.
        assert pusher.client.put(f"/v2/odd/manifests/{sha(body)}", content=body,
                                 headers={"Content-Type": OCI_INDEX}).status_code == 201
        served = pusher.client.get(f"/v2/odd/manifests/{sha(body)}",
                                   headers={"Accept": ACCEPT}).headers["content-type"]
        if served != OCI_INDEX:
            theirs = REFUSED  # a config without a digest: unparsed
    assert retention_references(body, served) == theirs, body.decode()


# -- end to end: the child the registry sees is kept ------------------------------------------

POLICY_UNTAGGED = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{untagged: true}]\n'
POLICY_BUILDS = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["build-*"]}]\n'


def _odd_index(child: Pushed, how: str) -> bytes:
    """An index listing ``child`` in a way only Go's reading sees."""
    if how == "case":
        doc = _index(("manifests", []), ("Manifests", [_desc(child)]))
    elif how == "null-and-no-size":
        doc = _index(("manifests", [_desc(child, size=False)]), ("subject", None))
    else:  # deep: distribution reads it, retention cannot tell how
        doc = _index(("manifests", [_desc(child)]), ("x", Raw("[" * 1500 + "]" * 1500)))
    return _body(doc)


@pytest.mark.parametrize(("how", "tagged", "reason"), [
    ("case", False, None),  # a child is no orphan: untagged: true does not match it
    ("case", True, "index-child"),
    ("null-and-no-size", True, "index-child"),
    ("deep", True, "unparsed-parent"),
])
def test_a_child_only_the_registrys_reading_sees_is_kept(tmp_path, registry, pusher: Pusher,
                                                         how: str, tagged: bool,
                                                         reason: str | None):
    """An index tagged ``latest`` lists C the way only Go's reading sees it. Read as JSON
    is read in Python, C was an orphan (deleted by ``untagged: true``) or the index was
    unparsed and a tagged C went to its tag rule: the kept index then pointed at nothing."""
    child = pusher.image("app", "build-1", created=OLD, layers=(b"child",))
    pusher.manifest("app", "latest", _odd_index(child, how), OCI_INDEX)
    other = pusher.image("app", "build-2", created=OLD, layers=(b"other",))
    config = write_config(tmp_path, registry.url,
                          policy=POLICY_BUILDS if tagged else POLICY_UNTAGGED)
    if not tagged:
        # Seen tagged, then its tag moves on: C is untagged and known, as is the other.
        assert cli("run", "--config", str(config), "--output", "json")[0] == 0
        pusher.image("app", "build-1", created=OLD, layers=(b"next",))
        pusher.image("app", "build-2", created=OLD, layers=(b"next",))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert pusher.exists("app", child.digest), "the index's child was deleted"
    if reason is not None:
        assert (child.digest, reason) in {(p["digest"], p["reason"]) for p in doc["protected"]}
    # What nothing references still goes, except beside an index retention cannot read.
    assert deleted_digests(doc) == (set() if how == "deep" else {other.digest}), doc
    r = pusher.client.get(f"/v2/app/manifests/{child.digest}",
                          headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200


def test_facts_of_an_index_read_before_are_read_again(tmp_path, registry, pusher: Pusher):
    """A state written by the reading before (the index's facts cached without C): the
    first run of this version reads the index again, and C stays."""
    child = pusher.image("app", "build-1", created=OLD, layers=(b"child",))
    pusher.manifest("app", "latest", _odd_index(child, "case"), OCI_INDEX)
    config = write_config(tmp_path, registry.url, policy=POLICY_UNTAGGED)
    assert cli("run", "--config", str(config), "--output", "json")[0] == 0
    pusher.image("app", "build-1", created=OLD, layers=(b"next",))
    db = sqlite3.connect(tmp_path / "state" / "retention.sqlite3", isolation_level=None)
    for digest, data in db.execute("SELECT digest, data FROM facts").fetchall():
        facts = json.loads(data)
        if facts["children"]:  # as the reading before cached it: no child, no marker
            facts["children"], facts["attestations"] = [], []
            del facts["read_as_go"]
            db.execute("UPDATE facts SET data=? WHERE digest=?", (json.dumps(facts), digest))
    db.close()
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == set(), doc
    assert pusher.exists("app", child.digest)
