"""Manifest media types and parsing of manifest bodies into what the inventory needs."""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from retention import jsoncodec
from retention.inventory import Blob
from retention.registry import goread

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


class Schema1Manifest(ManifestFormatError):
    """A Docker schema 1 manifest: not parsed, but what it references is only layers
    (fsLayers), never another manifest."""


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
    if isinstance(urls, goread.GoSlice):  # as distribution decoded it (nil: none)
        urls = goread.items(urls)
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


def _blob(d: dict[str, Any], what: str) -> Blob:
    """A descriptor as Go decoded it (missing fields are zero values)."""
    digest = d.get("digest", "")
    if ":" not in digest:
        raise ManifestFormatError(f"{what} has no valid digest")
    # distribution never checks a size: absent is 0, and so is a negative one here, so that
    # no size the registry ignored is ever counted as freed.
    return Blob(digest, max(d.get("size", 0), 0))


# The struct distribution 2.8 reads each media type into (manifest/...).
_STRUCTS = {DOCKER_MANIFEST: goread.SCHEMA2_MANIFEST, OCI_MANIFEST: goread.OCI_MANIFEST,
            DOCKER_LIST: goread.MANIFEST_LIST, OCI_INDEX: goread.MANIFEST_LIST}


def _kind(media_type: str) -> str | None:
    if media_type in INDEXES:
        return "index"
    if media_type in IMAGE_MANIFESTS:
        return "image"
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        return "schema 1"
    return None


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """A manifest read the way distribution reads it (registry/storage/manifeststore.go,
    Get: by the schemaVersion and mediaType the body declares, through Go's encoding/json,
    see goread). Schema1Manifest for schema 1; ManifestFormatError for anything else
    distribution would not read, or that retention cannot be sure to read as it does."""
    try:
        doc = goread.loads(body)
        versioned = goread.unmarshal(goread.VERSIONED, doc)
    except ValueError as exc:
        raise ManifestFormatError(str(exc)) from None
    version, declared = versioned.get("schemaVersion", 0), versioned.get("mediaType", "")
    header = (content_type or "").split(";")[0].strip()
    try:
        if version == 1:
            kind = "schema 1"
        elif version != 2:
            raise ManifestFormatError(f"unsupported schemaVersion {version}")
        elif declared:
            kind = _kind(declared)
            if kind not in ("index", "image"):
                raise ManifestFormatError(f"unsupported media type {declared!r}")
        else:
            # OCI allows omitting mediaType: distribution takes it for an index when its
            # manifests decode to a list (an empty one too), else for an image manifest.
            listed = goread.unmarshal(goread.MANIFEST_LIST, doc).get("manifests")
            kind = "index" if listed is not None else "image"
        if _kind(header) not in (None, kind):
            # Served as one kind and read as another: which one the registry's collector
            # follows is not known here.
            raise ManifestFormatError(f"served as {header!r} but reads as {kind} manifest")
        if kind == "schema 1":
            raise Schema1Manifest("schema 1 manifest")
        media_type = declared or (header if _kind(header) == kind else
                                  OCI_INDEX if kind == "index" else OCI_MANIFEST)
        # Without a mediaType distribution reads the OCI kind the shape tells.
        struct = _STRUCTS[declared or (OCI_INDEX if kind == "index" else OCI_MANIFEST)]
        m = goread.unmarshal(struct, doc)
        # A subject distribution 2.8 ignores, but one retention cannot read might be read
        # by another registry: unparsed.
        subject = goread.unmarshal(goread.SUBJECT, doc).get("subject")
    except goread.GoRefused as exc:
        raise ManifestFormatError(str(exc)) from None
    # Annotations and an artifact type only date and describe; where distribution's struct
    # has no such field it accepts any value there, and one of another type tells nothing.
    for extra in (goread.ANNOTATIONS, goread.ARTIFACT_TYPE):
        if not extra.fields.keys() <= struct.fields.keys():
            with contextlib.suppress(goread.GoRefused):
                m.update(goread.unmarshal(extra, doc))
    return _parsed(m, subject, media_type)


def _parsed(m: dict[str, Any], subject: dict[str, Any] | None, media_type: str
            ) -> ParsedManifest:
    annotations = m.get("annotations") or {}
    subject_digest = _blob(subject, "subject").digest if subject is not None else None
    artifact_type = m.get("artifactType") or None
    created = parse_time(annotations.get(CREATED_ANNOTATION))
    if media_type in INDEXES:
        entries = goread.items(m.get("manifests"))
        children = tuple(_blob(e, f"manifests[{i}]") for i, e in enumerate(entries))
        return ParsedManifest(
            media_type=media_type,
            children=children,
            attestations=tuple(c.digest for c, e in zip(children, entries, strict=True)
                               if is_attestation_descriptor(e)),
            subject=subject_digest,
            artifact_type=artifact_type,
            created_annotation=created,
        )
    config = m.get("config", {})
    config_type = config.get("mediaType") or None
    config_blob = _blob(config, "config")
    layers = goread.items(m.get("layers"))
    layer_blobs = tuple(_blob(e, f"layers[{i}]") for i, e in enumerate(layers))
    # Read from the descriptors as distribution decoded them (urls, mediaType: any case).
    foreign, remote = _foreign([(config_blob, config), *zip(layer_blobs, layers, strict=True)])
    return ParsedManifest(
        media_type=media_type,
        config=config_blob,
        config_media_type=config_type,
        layers=layer_blobs,
        foreign=foreign,
        remote=remote,
        subject=subject_digest,
        artifact_type=artifact_type or (
            config_type if config_type not in IMAGE_CONFIGS else None),
        created_annotation=created,
    )


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
