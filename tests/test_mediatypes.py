"""Manifest parsing: what the client understands, and what it refuses (kept, never deleted)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from retention.inventory import Blob
from retention.registry.mediatypes import (
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestFormatError,
    config_created,
    parse_manifest,
    parse_time,
    schema1_layers,
)

D = "sha256:" + "a" * 64


def body(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_oci_image_with_subject_and_annotation():
    parsed = parse_manifest(body({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D,
                   "size": 10},
        "layers": [{"mediaType": "x", "digest": D, "size": 5}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": D, "size": 1},
        "annotations": {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"},
    }), OCI_MANIFEST)
    assert parsed.subject == D
    assert parsed.created_annotation == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parsed.artifact_type is None


def test_media_type_from_shape_when_absent():
    parsed = parse_manifest(body({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D, "size": 3}]}), None)
    assert parsed.media_type == OCI_INDEX and parsed.children[0].digest == D


def test_docker_manifest_list():
    parsed = parse_manifest(body({"schemaVersion": 2, "mediaType": DOCKER_LIST,
                                  "manifests": []}), DOCKER_LIST)
    assert parsed.children == ()



def test_an_index_with_a_size_beyond_64_bits_is_refused_as_go_refuses_it():
    """Go's int64 cannot hold it: distribution refuses the document, and one in a registry
    is unparsed (its repository protected by unparsed-parent)."""
    with pytest.raises(ManifestFormatError, match="beyond 64 bits"):
        parse_manifest(body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": D, "size": 2**64}]}), OCI_INDEX)


def test_missing_or_null_fields_are_go_zero_values():
    parsed = parse_manifest(body({"schemaVersion": 2, "mediaType": OCI_INDEX}), OCI_INDEX)
    assert parsed.children == ()
    parsed = parse_manifest(body({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                  "config": {"digest": D, "size": -1}, "layers": None,
                                  "subject": None, "annotations": None}), OCI_MANIFEST)
    assert parsed.config == Blob(D, 0) and parsed.layers == () and parsed.subject is None


@pytest.mark.parametrize(("raw", "why"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "a list where Go wants an object"),
    (body({"schemaVersion": 1, "name": "x", "fsLayers": []}), "schema 1"),
    (body({"schemaVersion": 3}), "unsupported schemaVersion"),
    (body({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": "x"}}),
     "no valid digest"),
    (body({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"digest": D, "size": 1.0}}), "the number 1.0 where Go wants an integer"),
    (body({"schemaVersion": 2, "mediaType": "application/vnd.example.thing"}),
     "unsupported media type"),
])
def test_refused_manifests(raw: bytes, why: str):
    with pytest.raises(ManifestFormatError, match=why):
        parse_manifest(raw, None)


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-06-01T00:00:00.123456789Z", datetime(2024, 6, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ("2024-06-01T02:00:00+02:00", datetime(2024, 6, 1, 0, 0, tzinfo=UTC)),
    ("2024-06-01T00:00:00", None),  # no zone: ambiguous, unknown
    ("0001-01-01T00:00:00+01:00", None),  # before the calendar begins, in UTC
    ("9999-12-31T23:59:59-01:00", None),  # after it ends
    ("yesterday", None),
    ("", None),
    (None, None),
    (12345, None),
])
def test_parse_time(text, expected):
    assert parse_time(text) == expected


def test_config_created():
    assert config_created(b'{"created": "2020-01-01T00:00:00Z"}') == datetime(
        2020, 1, 1, tzinfo=UTC)
    assert config_created(b"garbage") is None
    assert config_created(b'{"created": "0001-01-01T00:00:00Z"}') == datetime(
        1, 1, 1, tzinfo=UTC)  # the planner treats times before 2000 as unknown
    assert config_created(b'{"created": "0001-01-01T00:00:00+01:00"}') is None


def test_json_nested_deeper_than_python_reads_is_a_format_error():
    """1,020 levels: Go reads them (to 10,000), Python's json does not. What Go makes of
    the document is then unknown: unparsed, never a RecursionError that ends the run."""
    deep = b"[" * 1020 + b"]" * 1020
    with pytest.raises(ManifestFormatError, match="nested too deeply"):
        parse_manifest(b'{"schemaVersion": 2, "x": ' + deep + b"}", None)


@pytest.mark.parametrize("config_type", [["a", "b"], {"a": 1}, 1e400, 7])
def test_a_config_media_type_that_is_not_text_is_refused_as_go_refuses_it(config_type):
    """Go cannot decode it into a string: distribution refuses the document."""
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                      "config": {"mediaType": config_type, "digest": D, "size": 2}})
    with pytest.raises(ManifestFormatError, match="where Go wants a string"):
        parse_manifest(raw.replace("Infinity", "1e400").encode(), OCI_MANIFEST)


def _buildkit_index(platform: dict | None, annotation: str | None) -> bytes:
    attestation = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 2}
    if annotation is not None:
        attestation["annotations"] = {"vnd.docker.reference.type": annotation,
                                      "vnd.docker.reference.digest": "sha256:" + "a" * 64}
    if platform is not None:
        attestation["platform"] = platform
    return body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1,
         "platform": {"architecture": "amd64", "os": "linux"}}, attestation]})


@pytest.mark.parametrize(("platform", "annotation", "is_attestation"), [
    ({"architecture": "unknown", "os": "unknown"}, "attestation-manifest", True),
    ({"architecture": "amd64", "os": "linux"}, "attestation-manifest", False),
    ({"architecture": "unknown", "os": "unknown"}, None, False),
    ({"architecture": "unknown", "os": "unknown"}, "something-else", False),
    (None, "attestation-manifest", False),
])
def test_buildkit_attestation_children_are_told_apart(platform, annotation, is_attestation):
    parsed = parse_manifest(_buildkit_index(platform, annotation), OCI_INDEX)
    assert len(parsed.children) == 2
    assert parsed.attestations == (("sha256:" + "b" * 64,) if is_attestation else ())


def _signed(doc: dict, *, tail: bytes | None = None) -> bytes:
    """A schema 1 body as libtrust lays it out: the payload's JSON without its closing brace,
    then the signatures, then the brace; the protected header says how much of the body the
    signature covers (formatLength) and what follows it in the payload (formatTail). The
    signature itself is not checked here (nor by the garbage collector: by the push)."""
    payload = json.dumps(doc, indent=3).encode()
    head = payload[:payload.rindex(b"}")].rstrip()
    tail = payload[len(head):] if tail is None else tail  # a signer may name any tail

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    protected = b64(json.dumps({"formatLength": len(head), "formatTail": b64(tail)}).encode())
    return head + b',\n   "signatures": [{"protected": "' + protected.encode() + \
        b'", "signature": "x"}]\n}'


@pytest.mark.parametrize("signatures", [
    "x", [], ["x"], [{}], [{"protected": 5}], [{"protected": "!!"}],
    [{"protected": base64.urlsafe_b64encode(b"[1, 2]").decode()}],  # not an object
    [{"protected": base64.urlsafe_b64encode(b'{"formatLength": "9"}').decode()}],
])
def test_schema1_layers_of_malformed_signatures_are_unknown(signatures):
    """A body whose signatures say nothing readable: its references are unknown (None), and
    reading it never fails the scan."""
    doc = {"schemaVersion": 1, "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
           "signatures": signatures}
    assert schema1_layers(json.dumps(doc).encode()) is None


def test_schema1_layers_are_the_distinct_blobsums():
    """What distribution's garbage collector marks for a schema 1 manifest: its fsLayers'
    blobSums, each once, read from the signed payload; None when they cannot all be read
    (references then unknown)."""
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    s1 = {"schemaVersion": 1, "name": "x", "tag": "v0"}
    layers = [{"blobSum": a}, {"blobSum": b}, {"blobSum": a}]
    assert schema1_layers(_signed({**s1, "fsLayers": layers})) == (a, b)
    for bad in (b"not json", b"\xff", b"[]", _signed({**s1, "schemaVersion": 2}),
                _signed(s1), _signed({**s1, "fsLayers": []}),
                _signed({**s1, "fsLayers": {"blobSum": a}}),
                _signed({**s1, "fsLayers": [{"blobSum": a}, "x"]}),
                _signed({**s1, "fsLayers": [{"blobSum": a}, {}]}),
                _signed({**s1, "fsLayers": [{"blobSum": "sha256:" + "A" * 64}]}),
                _signed({**s1, "fsLayers": [{"blobSum": "sha512:" + "a" * 128}]}),
                _signed({**s1, "fsLayers": [{"blobSum": a + "0"}]}),
                _signed({**s1, "fsLayers": [{"blobSum": 5}]}),
                # Found in review: Go reads keys ignoring case, the last one winning, and
                # distribution reads the manifest from the signed payload, not the body.
                json.dumps({**s1, "fsLayers": layers}).encode(),  # not signed
                _signed({**s1, "fsLayers": [{"blobSum": a}], "FSLayers": [{"blobSum": b}]}),
                _signed({**s1, "fsLayers": [{"blobSum": a, "BlobSum": b}]}),
                _signed({**s1, "SchemaVersion": 2, "fsLayers": layers}),
                _signed({**s1, "schemaVersion": True, "fsLayers": layers}),
                _signed({**s1, "fsLayers": [{"blobSum": a}]},  # the payload's own fsLayers
                        tail=b', "fsLayers": [{"blobSum": "' + b.encode() + b'"}]}')):
        assert schema1_layers(bad) is None, bad
