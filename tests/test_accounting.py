"""Bytes a deletion frees: the executor's Ledger (as manifests really go) and the planner's
freed_bytes (a whole plan at once) agree, and never claim what distribution's garbage
collector keeps."""

from __future__ import annotations

from datetime import UTC, datetime

from retention.accounting import Ledger, freed_bytes
from retention.inventory import Blob, Inventory, Manifest, Repository

SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
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


def test_with_a_schema1_manifest_present_a_listed_child_is_claimed_only_as_a_body():
    """Found in review: one digest is a layer of the image deleted and a child an index
    lists. While a schema 1 manifest (which may hold any layer) stays, only manifest bodies
    are claimed; the run credited the layer once the index went."""
    shared = d(9)
    legacy = Manifest(d(1), SCHEMA1, 500, parsed=False)
    image = Manifest(d(2), IMAGE, 200, blobs=(Blob(d(3), 50), Blob(shared, 1000)))
    index = Manifest(d(4), INDEX, 300, children=(shared,))
    inventory = Inventory("main", "reg", (Repository("legacy", (legacy,)),
                                          Repository("app", (image, index))),
                          datetime.now(UTC))
    gone = [("app", image.digest), ("app", index.digest)]
    bodies = image.size + index.size
    assert sum(run_credits(inventory, gone).values()) == bodies
    assert sum(freed_bytes(inventory, gone=gone).values()) == bodies


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
