"""Found in an adversarial review of the gate before each DELETE, on a real registry."""

from __future__ import annotations

from tests.pusher import OCI_INDEX
from tests.test_executor import OLD, PR, on_request, run_with_window
from tests.test_run_e2e import write_config


def test_child_stays_when_its_deleted_index_is_pushed_again_mid_run(tmp_path, registry,
                                                                     pusher, proxy):
    """The index goes; before its child's DELETE someone pushes that same index again (a
    rollback re-pushes the build by a new tag): the index is back and lists the child, so
    the child stays, even though the plan knew the index's digest."""
    child = pusher.image("multi", None, created=OLD, layers=(b"child",))
    index = pusher.index("multi", "pr-1", [child])
    body = pusher.client.get(f"/v2/multi/manifests/{index.digest}",
                             headers={"Accept": OCI_INDEX}).content

    def after_the_index_delete() -> None:
        # The child's body is read (for the journal) after the index's DELETE is answered.
        on_request(proxy, "GET", f"/v2/multi/manifests/{child.digest}",
                   lambda: pusher.manifest("multi", "rollback", body, OCI_INDEX))

    on_request(proxy, "DELETE", index.digest, after_the_index_delete)
    config = write_config(tmp_path, proxy.url, policy=PR)
    statuses, reasons = run_with_window(config, 0.0)  # a fresh read before every DELETE
    assert statuses[index.digest] == "deleted"
    assert pusher.exists("multi", "rollback")
    assert pusher.exists("multi", child.digest), "the re-pushed index lost its child"
    assert statuses[child.digest] == "skipped", reasons[child.digest]


def test_signature_stays_when_its_deleted_subject_is_pushed_again_mid_run(tmp_path, registry,
                                                                          pusher, proxy):
    """The image goes; before its signature's DELETE the same image is pushed again (a
    rollback): it is back, and its signature stays with it."""
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"signed",))
    signature = pusher.cosign_signature("app", image)
    body = pusher.client.get(f"/v2/app/manifests/{image.digest}",
                             headers={"Accept": image.media_type}).content

    def after_the_image_delete() -> None:
        on_request(proxy, "GET", f"/v2/app/manifests/{signature.digest}",
                   lambda: pusher.manifest("app", "rollback", body, image.media_type))

    on_request(proxy, "DELETE", image.digest, after_the_image_delete)
    config = write_config(tmp_path, proxy.url, policy=PR)
    statuses, reasons = run_with_window(config, 0.0)
    assert statuses[image.digest] == "deleted"
    assert pusher.exists("app", "rollback")
    assert pusher.exists("app", signature.digest), "the re-pushed image lost its signature"
    assert statuses[signature.digest] == "skipped", reasons[signature.digest]
