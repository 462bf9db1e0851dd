"""Foreign (non-distributable) layers: Windows base layers, which clients fetch from the
descriptor's `urls` and a registry does not store. They count 0 bytes (plan, run, metrics)
and restore does not need them (SPEC "Deletion is safe at the moment of each DELETE",
"Restore"). Checked on a real registry that accepts such layers, as registries serving
Windows images are configured to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from retention.inventory import Blob
from retention.registry.mediatypes import parse_manifest
from retention.scanner import ManifestFacts
from retention.state import State
from tests.pusher import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Pushed,
    Pusher,
    sha,
)
from tests.servers import Registry, start_registry
from tests.test_executor import gc_freed
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
PR = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"], older_than: 1d}]\n'
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
BASE_URL = "https://mcr.microsoft.com/v2/windows/servercore/blobs/"
# The Windows base layer: named by every image below, never uploaded to the registry.
BASE = sha(b"windows servercore base layer, never uploaded")
BASE_SIZE = 1_500_000_000


@pytest.fixture
def windows_registry(tmp_path: Path) -> Iterator[Registry]:
    """distribution 2.8 refuses every foreign URL unless its configuration allows them."""
    reg = start_registry(tmp_path / "registry", foreign_urls=r"^https://mcr\.microsoft\.com/")
    yield reg
    reg.stop()


def windows_image(pusher: Pusher, repo: str, tag: str, own: bytes, *, oci: bool) -> Pushed:
    """An image on the foreign base layer plus one layer of its own (uploaded)."""
    config = pusher.blob(repo, json.dumps({"os": "windows", "created": OLD, "x": tag}).encode())
    layer = pusher.blob(repo, own)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": config[0],
                   "size": config[1]},
        "layers": [
            {"mediaType": OCI_NONDISTRIBUTABLE if oci else DOCKER_FOREIGN, "digest": BASE,
             "size": BASE_SIZE, "urls": [BASE_URL + BASE]},
            {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "digest": layer[0],
             "size": layer[1]},
        ],
    }
    pushed = pusher.manifest(repo, tag, doc, media_type)
    return Pushed(pushed.digest, pushed.size, media_type, (config, layer))


def stored(image: Pushed) -> int:
    """What the registry stores for an image: its body, config and own layer."""
    return image.size + sum(size for _, size in image.blobs)


KINDS = pytest.mark.parametrize("oci", [False, True],
                                ids=["docker-foreign", "oci-nondistributable"])


@KINDS
def test_a_foreign_layer_counts_no_bytes(tmp_path, windows_registry: Registry, oci: bool):
    pusher = Pusher(windows_registry.url)
    try:
        first = windows_image(pusher, "win", "pr-1", b"first's own layer" * 30, oci=oci)
        second = windows_image(pusher, "win", "pr-2", b"second's own layer" * 30, oci=oci)
    finally:
        pusher.close()
    expected = {first.digest: stored(first), second.digest: stored(second)}
    config = write_config(tmp_path, windows_registry.url, policy=PR)

    code, plan, _ = cli("plan", "--config", str(config), "--output", "json")
    assert code == 0, plan
    assert {a["digest"]: a["bytes"] for a in plan["actions"]} == expected
    assert plan["summary"]["reclaimable_bytes"] == sum(expected.values())

    code, run, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, run
    assert deleted_digests(run) == set(expected)
    assert {a["digest"]: a["bytes"] for a in run["actions"]} == expected
    assert run["summary"]["reclaimed_bytes"] == gc_freed(windows_registry) \
        == sum(expected.values())


@KINDS
def test_restore_does_not_need_a_foreign_layer(tmp_path, windows_registry: Registry,
                                               oci: bool):
    """The registry takes the image back without its base layer, and so does restore."""
    pusher = Pusher(windows_registry.url)
    try:
        image = windows_image(pusher, "win", "pr-1", b"own layer" * 30, oci=oci)
        config = write_config(tmp_path, windows_registry.url, policy=PR)
        code, run, _ = cli("run", "--config", str(config), "--output", "json")
        assert code == 0 and deleted_digests(run) == {image.digest}, run
        assert not pusher.exists("win", "pr-1")

        code, doc, _ = cli("restore", "--config", str(config), "--output", "json",
                           "--digest", image.digest)
        assert code == 0, json.dumps(doc)
        assert [e["status"] for e in doc["entries"]] == ["restored"], json.dumps(doc)
        assert pusher.exists("win", "pr-1")
    finally:
        pusher.close()


def test_foreign_and_remote_descriptors_are_told_apart():
    """0 bytes for `urls` or a foreign type; restore needs every blob without `urls` (what
    distribution 2.8 checks on a push), and a digest a stored descriptor also names."""
    def layer(digest: str, media_type: str, urls: object = None) -> dict:
        return {"mediaType": media_type, "digest": digest, "size": 7,
                **({"urls": urls} if urls is not None else {})}

    a, b, c, d, e, cfg = (f"sha256:{x * 64}" for x in "abcdef")
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": 3},
           "layers": [layer(a, OCI_NONDISTRIBUTABLE, [BASE_URL]),  # foreign, remote
                      layer(b, OCI_NONDISTRIBUTABLE),  # foreign type, but the push needs it
                      layer(c, OCI_LAYER, [BASE_URL]),  # urls: foreign, remote
                      layer(d, OCI_LAYER, []),  # no urls: stored
                      layer(e, DOCKER_FOREIGN, [BASE_URL]), layer(e, OCI_LAYER)]}  # stored
    parsed = parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST)
    assert parsed.foreign == {a, b, c}
    assert parsed.remote == {a, c}
    assert [(x.digest, x.size) for x in parsed.stored_blobs()] == \
        [(cfg, 3), (a, 0), (b, 0), (c, 0), (d, 7), (e, 7), (e, 7)]
    assert parsed.required_blobs() == (cfg, b, d, e)


def test_image_facts_cached_before_foreign_layers_counted_nothing_are_read_again(
        tmp_path: Path):
    """An image's facts cached while a foreign layer counted its full size: read again,
    once, or the next run reports those bytes as freed. Facts cached since are trusted."""
    state = State.open(tmp_path)
    image = ManifestFacts("sha256:w", DOCKER_MANIFEST, 1,
                          blobs=(Blob("sha256:c", 2), Blob(BASE, 0)))
    index = ManifestFacts("sha256:i", "application/vnd.oci.image.index.v1+json", 1,
                          children=("sha256:w",))
    state.put_facts(image)
    state.put_facts(index)
    state.close()
    state = State.open(tmp_path)
    assert state.get_facts("sha256:w") == image
    rows = state._db.execute("SELECT digest, data FROM facts").fetchall()
    for digest, data in rows:
        old = json.loads(data)
        del old["stored_sizes"]  # the layout of an older version
        state._db.execute("UPDATE facts SET data=? WHERE digest=?", (json.dumps(old), digest))
    assert state.get_facts("sha256:w") is None
    assert state.get_facts("sha256:i") == index  # no blobs of its own: nothing to correct
