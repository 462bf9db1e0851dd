"""Bytes a deletion frees: the executor's Ledger (as manifests really go) and the planner's
freed_bytes (a whole plan at once) agree, and never claim what distribution's garbage
collector keeps."""

from __future__ import annotations

from datetime import UTC, datetime

from retention.accounting import Ledger, freed_bytes
from retention.inventory import Blob, Inventory, Manifest, Repository

SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
UNKNOWN = "application/vnd.example.unknown+json"
IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def d(n: int) -> str:
    return f"sha256:{n:064x}"


def run_credits(inventory: Inventory, gone: list[tuple[str, str]]) -> dict:
    ledger = Ledger(inventory)
    credits: dict = {}
    for key in gone:
        for owner, size in ledger.remove(key, owner=key):
            credits[owner] = credits.get(owner, 0) + size
    return credits


def test_with_an_unknown_manifest_present_a_listed_child_is_claimed_only_as_a_body():
    """Found in review: one digest is a layer of the image deleted and a child an index
    lists. While a manifest of an unknown type (which may hold any layer: its references are
    unknown) stays, only manifest bodies are claimed; the run credited the layer once the
    index went."""
    shared = d(9)
    legacy = Manifest(d(1), UNKNOWN, 500, parsed=False)
    image = Manifest(d(2), IMAGE, 200, blobs=(Blob(d(3), 50), Blob(shared, 1000)))
    index = Manifest(d(4), INDEX, 300, children=(shared,))
    inventory = Inventory("main", "reg", (Repository("legacy", (legacy,)),
                                          Repository("app", (image, index))),
                          datetime.now(UTC))
    gone = [("app", image.digest), ("app", index.digest)]
    bodies = image.size + index.size
    assert sum(run_credits(inventory, gone).values()) == bodies
    assert sum(freed_bytes(inventory, gone=gone).values()) == bodies


def test_a_schema1_manifests_layers_are_its_references_and_nothing_more():
    """A schema 1 manifest whose layers were read (sizes unknown there: 0) keeps exactly
    those: the image's config, its other layer and a child's body are claimed, as the
    garbage collector frees them; the shared layer is not while the schema 1 manifest stays.
    Its 0 never replaces the size the image gives, wherever it is listed."""
    shared, legacy_layer = d(9), d(10)
    legacy = Manifest(d(1), SCHEMA1, 500, blobs=(Blob(legacy_layer, 0),), parsed=False)
    image = Manifest(d(2), IMAGE, 200, blobs=(Blob(d(3), 50), Blob(shared, 1000),
                                              Blob(legacy_layer, 70)))
    index = Manifest(d(4), INDEX, 300, children=(shared,))
    for repos in ((Repository("app", (image, index)), Repository("legacy", (legacy,))),
                  (Repository("legacy", (legacy,)), Repository("app", (image, index)))):
        inventory = Inventory("main", "reg", repos, datetime.now(UTC))
        gone = [("app", image.digest), ("app", index.digest)]
        freed = 200 + 50 + 1000 + 300  # not the layer the schema 1 manifest holds
        assert sum(run_credits(inventory, gone).values()) == freed
        assert sum(freed_bytes(inventory, gone=gone).values()) == freed
        # The schema 1 manifest found gone: its layer is freed, at the image's size.
        ledger = Ledger(inventory)
        for key in gone:
            ledger.remove(key, owner=key)
        assert ledger.remove(("legacy", legacy.digest), owner=None) == [
            (("app", image.digest), 70)]
        gone.append(("legacy", legacy.digest))
        assert sum(run_credits(inventory, gone).values()) == freed + 70 + 500
        assert sum(freed_bytes(inventory, gone=gone).values()) == freed + 70 + 500


def test_a_listed_child_is_credited_to_the_deletion_of_that_child():
    """Everything parsed: the body of a child is freed with the last of the child and its
    index, and paid for by the child's own deletion, in either order."""
    child = Manifest(d(5), IMAGE, 400, blobs=(Blob(d(6), 60), Blob(d(7), 700)))
    index = Manifest(d(8), INDEX, 300, children=(child.digest,))
    inventory = Inventory("main", "reg", (Repository("multi", (index, child)),),
                          datetime.now(UTC))
    for gone in ([("multi", index.digest), ("multi", child.digest)],
                 [("multi", child.digest), ("multi", index.digest)]):
        run = run_credits(inventory, gone)
        assert run == {("multi", child.digest): 1160, ("multi", index.digest): 300}
        assert sum(freed_bytes(inventory, gone=gone).values()) == 1460
