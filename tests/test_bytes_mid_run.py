"""Bytes with a push during the run (SPEC "Deletion is safe at the moment of each DELETE",
`reclaimed_bytes`): a manifest pushed while the run deletes keeps its blobs referenced, so
what it shares with a deleted build is not reported as freed. Each scenario pushes through
a hook in the fault proxy while a DELETE is in flight, then compares what the run reported
with what distribution's garbage collector really frees."""

from __future__ import annotations

from tests.pusher import Pushed
from tests.servers import Fault
from tests.test_executor import PR, gc_freed, on_request
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
SHARED = bytes(range(256)) * 800  # a 200 kB layer


def _bytes(doc: dict) -> dict[str, int]:
    return {a["digest"]: a["bytes"] for a in doc["actions"] if a["status"] == "deleted"}


def _body_and_config(image: Pushed) -> int:
    return image.size + image.blobs[0][1]


def test_a_rebuild_pushed_mid_run_keeps_the_layer_it_shares(tmp_path, registry, pusher,
                                                            proxy):
    old = pusher.image("app", "pr-1", created=OLD, layers=(SHARED,))
    other = pusher.image("app", "pr-2", created=OLD, layers=(b"other build" * 40,),
                         extra="other")
    # The rebuild: the same layer, another config; pushed while the first DELETE is sent.
    first = min([old, other], key=lambda p: p.digest)
    on_request(proxy, "DELETE", first.digest,
               lambda: pusher.image("app", "v2", created=OLD, layers=(SHARED,), extra="2"))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {old.digest, other.digest}
    assert pusher.exists("app", "v2")
    assert _bytes(doc) == {old.digest: _body_and_config(old),
                           other.digest: other.size + sum(s for _, s in other.blobs)}
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry)


def test_a_rebuild_pushed_after_the_last_delete_is_seen(tmp_path, registry, pusher, proxy):
    """One deletion only: the push comes after the one confirmation read, while its DELETE
    is in flight; the read after the repository's last DELETE sees it."""
    old = pusher.image("app", "pr-1", created=OLD, layers=(SHARED,))
    on_request(proxy, "DELETE", old.digest,
               lambda: pusher.image("app", "v2", created=OLD, layers=(SHARED,), extra="2"))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert _bytes(doc) == {old.digest: _body_and_config(old)}
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry)


def test_the_untagged_child_of_an_index_pushed_mid_run_keeps_its_layer(tmp_path, registry,
                                                                       pusher, proxy):
    """Only the index is tagged (the API lists tags, not manifests): its children are read
    too, and the child holds the layer."""
    old = pusher.image("app", "pr-1", created=OLD, layers=(SHARED,))

    def multi_arch_rebuild() -> None:
        child = pusher.image("app", None, created=OLD, layers=(SHARED,), extra="child")
        pusher.index("app", "v2", [child])

    on_request(proxy, "DELETE", old.digest, multi_arch_rebuild)
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert _bytes(doc) == {old.digest: _body_and_config(old)}
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry)


def test_a_build_pushed_again_after_its_deletion_frees_nothing(tmp_path, registry, pusher,
                                                                proxy):
    """A CI retry pushes the very build the run deleted a moment before: it is back, and
    the garbage collector frees none of it."""
    a = pusher.image("app", "pr-1", created=OLD, layers=(b"a" * 400,), extra="a")
    b = pusher.image("app", "pr-2", created=OLD, layers=(b"b" * 400,), extra="b")
    early, late = sorted([a, b], key=lambda p: p.digest)
    body = pusher.client.get(f"/v2/app/manifests/{early.digest}",
                             headers={"Accept": early.media_type}).content
    on_request(proxy, "DELETE", late.digest,
               lambda: pusher.manifest("app", "retry", body, early.media_type))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {early.digest, late.digest}
    assert pusher.exists("app", early.digest)
    assert _bytes(doc) == {early.digest: 0,
                           late.digest: late.size + sum(s for _, s in late.blobs)}
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry)


def test_a_newcomer_that_cannot_be_read_keeps_every_config_and_layer(tmp_path, registry,
                                                                     pusher, proxy):
    """A manifest pushed mid-run that retention cannot read may reference anything: only
    manifest bodies are claimed (less than the collector frees, never more)."""
    old = pusher.image("app", "pr-1", created=OLD, layers=(b"own layer" * 40,))
    pushed: list[Pushed] = []

    def push_unreadable() -> None:
        new = pusher.image("app", "v2", created=OLD, layers=(b"new layer" * 40,))
        pushed.append(new)
        proxy.inject(Fault("GET", rf"/v2/app/manifests/{new.digest}", "status", times=100,
                           status=500))

    on_request(proxy, "DELETE", old.digest, push_unreadable)
    config = write_config(tmp_path, proxy.url, policy=PR)
    _, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert deleted_digests(doc) == {old.digest}, doc
    assert _bytes(doc) == {old.digest: old.size}
    assert doc["summary"]["reclaimed_bytes"] < gc_freed(registry)
