"""Manifest media types and parsing of manifest bodies into what the inventory needs."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from retention import jsoncodec
from retention.inventory import Blob

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEXES = frozenset({DOCKER_LIST, OCI_INDEX})
# Sent on every manifest request so the registry never converts to schema 1 for us.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

CREATED_ANNOTATION = "org.opencontainers.image.created"
# BuildKit's attestation manifests (provenance, SBOM) sit in an image index beside the platform
# images, marked on their descriptor: this annotation, and platform unknown/unknown.
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"
IMAGE_CONFIGS = frozenset(
    {"application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"}
)
# Layers a registry does not store (Windows base layers): clients fetch them from their
# descriptor's `urls`.
FOREIGN_LAYERS = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


class ManifestFormatError(ValueError):
    """The body is not a manifest we understand."""


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    config: Blob | None = None
    config_media_type: str | None = None
    layers: tuple[Blob, ...] = ()
    children: tuple[Blob, ...] = ()  # for an index: the manifests it references
    attestations: tuple[str, ...] = ()  # children that are BuildKit attestation manifests
    subject: str | None = None
    artifact_type: str | None = None
    created_annotation: datetime | None = None
    # Of the config and layers, the digests the registry does not store (SPEC: they count 0
    # bytes): every descriptor naming it has `urls` or a foreign layer type.
    foreign: frozenset[str] = frozenset()
    # Of those, the digests every descriptor of which has `urls`: distribution accepts a
    # manifest without them (a push checks only descriptors without `urls`), so restore
    # does not need them.
    remote: frozenset[str] = frozenset()

    def _blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers) if self.config is not None else self.layers

    def stored_blobs(self) -> tuple[Blob, ...]:
        """Config and layers with the bytes the registry stores for each: 0 when foreign."""
        return tuple(Blob(b.digest, 0) if b.digest in self.foreign else b
                     for b in self._blobs())

    def required_blobs(self) -> tuple[str, ...]:
        """The distinct config and layers the registry must hold to accept this manifest."""
        return tuple(dict.fromkeys(b.digest for b in self._blobs()
                                   if b.digest not in self.remote))


def _has_urls(d: dict[str, object]) -> bool:
    urls = d.get("urls")
    return isinstance(urls, list) and len(urls) > 0


def _foreign_type(d: dict[str, object]) -> bool:
    media_type = d.get("mediaType")
    return isinstance(media_type, str) and media_type in FOREIGN_LAYERS


def _foreign(descriptors: list[tuple[Blob, dict[str, object]]]) -> tuple[frozenset[str],
                                                                          frozenset[str]]:
    """(foreign, remote) digests of an image's config and layers, as ParsedManifest says.
    A digest also named by a descriptor the registry had to hold is stored."""
    named = {b.digest for b, _ in descriptors}
    stored = {b.digest for b, d in descriptors
              if not _has_urls(d) and not _foreign_type(d)}
    local = {b.digest for b, d in descriptors if not _has_urls(d)}
    return frozenset(named - stored), frozenset(named - local)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time, or None when it is absent or unreadable (unknown means keep)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Go writes nanoseconds; Python reads at most microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[: min(digits, 6)].ljust(6, "0") + rest[digits:]
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return None  # a time without a zone is ambiguous: unknown
        # At the calendar's edge (0001-01-01 east of UTC) there is no UTC time to give.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _descriptor(d: object, what: str) -> Blob:
    if not isinstance(d, dict):
        raise ManifestFormatError(f"{what} is not an object")
    digest, size = d.get("digest"), d.get("size")
    if not isinstance(digest, str) or ":" not in digest:
        raise ManifestFormatError(f"{what} has no valid digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestFormatError(f"{what} has no valid size")
    return Blob(digest, size)


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse a manifest body. Raises ManifestFormatError for schema 1 and anything malformed."""
    try:
        doc = jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestFormatError(f"not JSON: {exc}") from None
    try:
        return _parse_document(doc, content_type)
    except ManifestFormatError as exc:
        # orjson reads an integer beyond 64 bits as a float, which no descriptor accepts:
        # json's reading is the one that counts (an index left unparsed would no longer
        # protect a tagged child of its own), so what orjson's did not make sense of is read
        # again by json. Any other document reads the same in both.
        try:
            again = jsoncodec.json_loads(body)
        except (ValueError, UnicodeDecodeError):
            raise exc from None
        return _parse_document(again, content_type)


def _parse_document(doc: Any, content_type: str | None) -> ParsedManifest:
    if not isinstance(doc, dict):
        raise ManifestFormatError("not a JSON object")
    declared = doc.get("mediaType")
    header = (content_type or "").split(";")[0].strip()
    media_type = declared if isinstance(declared, str) and declared else header
    if doc.get("schemaVersion") == 1 or media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise ManifestFormatError("schema 1 manifest")
    if doc.get("schemaVersion") != 2:
        raise ManifestFormatError(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if not media_type:
        # OCI allows omitting mediaType; the shape tells which one it is.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST

    subject = None
    if "subject" in doc:
        subject = _descriptor(doc["subject"], "subject").digest
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    created = parse_time(annotations.get(CREATED_ANNOTATION))
    artifact_type = doc.get("artifactType") if isinstance(doc.get("artifactType"), str) else None

    if media_type in INDEXES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestFormatError("index without a manifests list")
        children = tuple(_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries))
        return ParsedManifest(
            media_type=media_type,
            children=children,
            attestations=tuple(c.digest for c, e in zip(children, entries, strict=True)
                               if is_attestation_descriptor(e)),
            subject=subject,
            artifact_type=artifact_type,
            created_annotation=created,
        )
    if media_type in IMAGE_MANIFESTS:
        config = doc.get("config")
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise ManifestFormatError("layers is not a list")
        config_blob = _descriptor(config, "config")
        # Anything but text (a list, a number) names no type: not one to end a run on.
        config_type = config.get("mediaType") if isinstance(config.get("mediaType"), str) \
            else None
        layer_blobs = tuple(_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers))
        foreign, remote = _foreign([(config_blob, config), *zip(layer_blobs, layers,
                                                                  strict=True)])
        return ParsedManifest(
            media_type=media_type,
            config=config_blob,
            config_media_type=config_type,
            layers=layer_blobs,
            foreign=foreign,
            remote=remote,
            subject=subject,
            artifact_type=artifact_type or (
                config_type if config_type not in IMAGE_CONFIGS else None),
            created_annotation=created,
        )
    raise ManifestFormatError(f"unsupported media type {media_type!r}")


_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# Keys distribution reads from a schema 1 manifest for its references. Go's encoding/json
# matches keys ignoring case, the last one winning; Python's json keeps exact keys.
_SCHEMA1_KEYS = {k.lower(): k for k in ("schemaVersion", "fsLayers", "blobSum")}


class _Ambiguous(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object read as Go would read it for these keys, or _Ambiguous: a key twice
    (ignoring case), or one of the keys above spelt in another case."""
    folded = [k.lower() for k, _ in pairs]
    if len(set(folded)) != len(folded):
        raise _Ambiguous("a key twice")
    if any(_SCHEMA1_KEYS.get(f, k) != k for f, (k, _) in zip(folded, pairs, strict=True)):
        raise _Ambiguous("a key in another case")
    return dict(pairs)


def _b64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_payloads(body: bytes, doc: dict[str, object]) -> list[bytes]:
    """The payload each JWS signature of a signed schema 1 manifest covers: what
    distribution reads the manifest from (libtrust: the body's first formatLength bytes,
    then formatTail). ValueError when a signature does not say."""
    signatures = doc.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise ValueError("no signatures")
    payloads = []
    for signature in signatures:
        if not isinstance(signature, dict):
            raise ValueError("not a signature")
        protected = jsoncodec.json_loads(_b64url(signature.get("protected")))
        if not isinstance(protected, dict):
            raise ValueError("a protected header that is not an object")
        length, tail = protected.get("formatLength"), protected.get("formatTail")
        if type(length) is not int or not 0 < length <= len(body):
            raise ValueError("no formatLength")
        payloads.append(body[:length] + _b64url(tail))
    return payloads


def _read_as_go(text: bytes) -> Any:
    """JSON as Go reads these keys; ValueError when Go could read it otherwise (or when it
    is nested too deeply to read)."""
    return jsoncodec.json_loads(text, object_pairs_hook=_strict_object)


def _layers(doc: Any) -> tuple[str, ...] | None:
    """The distinct layers of a schema 1 manifest; None when they are not all readable."""
    if not isinstance(doc, dict) or type(doc.get("schemaVersion")) is not int \
            or doc["schemaVersion"] != 1:
        return None
    layers = doc.get("fsLayers")
    if not isinstance(layers, list) or not layers:
        return None
    digests = []
    for layer in layers:
        digest = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(digest, str) or _SHA256.fullmatch(digest) is None:
            return None
        digests.append(digest)
    return tuple(dict.fromkeys(digests))


def schema1_layers(body: bytes) -> tuple[str, ...] | None:
    """The distinct ``fsLayers[].blobSum`` digests of a signed Docker schema 1 manifest, in
    order: what distribution's garbage collector marks for it (SignedManifest.References,
    read from the signed payload). None when its references are unknown: not a readable
    schema 1 manifest, no layer, a digest that is not ``sha256:<64 hex>`` (a partial list
    would let a layer it holds be claimed as freed), a key Go would read differently (twice,
    or in another case), or a signed payload whose layers differ from the body's."""
    try:
        doc = _read_as_go(body)
        layers = _layers(doc)
        if layers is None:
            return None
        for payload in _signed_payloads(body, doc):
            if _layers(_read_as_go(payload)) != layers:
                return None
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    return layers


def is_attestation_descriptor(d: dict[str, object]) -> bool:
    """Whether an index entry is a BuildKit attestation manifest: both marks must be there,
    since an attestation does not count for its index's time and a platform image wrongly
    taken for one could make an index look older than it is."""
    annotations = d.get("annotations")
    platform = d.get("platform")
    return (isinstance(annotations, dict)
            and annotations.get(REFERENCE_TYPE_ANNOTATION) == ATTESTATION_MANIFEST
            and isinstance(platform, dict)
            and platform.get("os") == "unknown" and platform.get("architecture") == "unknown")


def config_created(body: bytes) -> datetime | None:
    """The ``created`` time of an image config blob, or None."""
    try:
        doc = jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parse_time(doc.get("created")) if isinstance(doc, dict) else None
