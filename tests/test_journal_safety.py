"""The journal and restore when the registry misbehaves mid-run (found in review; each of
these failed before its fix): what went is restorable, what someone else deleted is not,
nothing is half-restored, and nothing is deleted without a durable journal."""

from __future__ import annotations

import httpx2

from tests.pusher import OCI_INDEX, OCI_MANIFEST, Pusher
from tests.servers import Fault, FaultProxy, Registry
from tests.test_executor import on_request
from tests.test_restore import PR, answers, by_digest, restore
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
UNTAGGED = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{untagged: true}]\n'


def answer_lost(status: int):
    """Forward the request (the registry applies it), then answer ``status`` instead."""
    def rewrite(method, path, _status, headers, body):
        return status, {"Content-Type": "application/json"}, \
            b'{"errors":[{"code":"UNKNOWN","message":"answer lost"}]}'
    return rewrite


def statuses(doc: dict) -> dict[str, str]:
    return {a["digest"]: a["status"] for a in doc["actions"]}


# -- a DELETE that went through but whose answer was a non-retryable error -------------

def test_delete_applied_but_answered_500_is_journaled_restorable(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"f1" * 30,))
    config = write_config(tmp_path, proxy.url, policy=PR)
    proxy.inject(Fault("DELETE", image.digest, "rewrite", rewrite=answer_lost(500)))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert not pusher.exists("app", image.digest)  # the DELETE did go through
    assert code == 0 and statuses(doc) == {image.digest: "deleted"}, doc
    # The executor checks whether a DELETE answered 500 went through: it did, so it is
    # journaled deleted, and restore finds it.
    _code, rdoc, _ = restore(config, "--digest", image.digest)
    assert answers(registry.url, "app", "manifests", image.digest) == 200, (doc, rdoc)


# -- the answer to a DELETE lost (503), then the re-check HEAD fails --------------------

def test_lost_answer_then_failed_recheck_is_not_closed_as_skipped(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"f2" * 30,))
    config = write_config(tmp_path, proxy.url, policy=PR)
    proxy.inject(Fault("DELETE", image.digest, "rewrite", rewrite=answer_lost(503)))
    # Only the executor's "did my DELETE go through?" HEAD is by digest in this run.
    proxy.inject(Fault("HEAD", f"/manifests/{image.digest}", "status", status=503, times=50))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert not pusher.exists("app", image.digest)
    action = doc["actions"][0]
    # Not "skipped": whether it went is unknown, so it failed and its journal row stays open.
    assert action["status"] == "failed" and code == 1, action
    proxy.faults.clear()
    code, rdoc, _ = restore(config, "--digest", image.digest)
    assert answers(registry.url, "app", "manifests", image.digest) == 200, rdoc


# -- someone else deleted it between retention's GET and its DELETE -------------------

def test_restore_does_not_resurrect_what_someone_else_deleted(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"f3" * 30,))
    config = write_config(tmp_path, proxy.url, policy=PR)
    on_request(proxy, "DELETE", image.digest, lambda: httpx2.delete(
        f"{registry.url}/v2/app/manifests/{image.digest}").raise_for_status())
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert not pusher.exists("app", image.digest)
    assert code == 0 and doc["summary"]["reclaimed_bytes"] == 0, doc
    # retention's DELETE got 404: it deleted nothing, and its journal row says "gone".
    _code, rdoc, _ = restore(config, "--since", "1h")
    assert proxy.count("PUT", "/manifests/") == 0, rdoc
    assert answers(registry.url, "app", "manifests", image.digest) == 404


# -- an index whose PUT fails after its children were pushed --------------------------

def test_index_push_failing_does_not_leave_children_restored_alone(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd f4" * 40,))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm f4" * 40,), arch="arm64")
    index = pusher.index("multi", "pr-2", [amd, arm])
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {amd.digest, arm.digest, index.digest}
    proxy.inject(Fault("PUT", f"/manifests/{index.digest}", "status", status=500, times=10))
    _code, rdoc, _ = restore(config, "--since", "1h")
    entries = by_digest(rdoc)
    assert entries[index.digest]["status"] == "failed"
    # The children are back alone, reported "restored" (and marked so): half-restored.
    assert {entries[d]["status"] for d in (amd.digest, arm.digest)} != {"restored"}, rdoc


# -- a tags/list 404 on the first page, twice, with manifests still served ------------

def test_tags_list_404_with_known_digests_alive_deletes_nothing(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "v1", created=OLD, layers=(b"f5" * 30,))
    config = write_config(tmp_path, proxy.url, policy=UNTAGGED)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == set()  # tagged: kept; state knows it
    # A 404 (not NAME_UNKNOWN) on tags/list for a few seconds (scan, then the confirmation).
    proxy.inject(Fault("GET", "/v2/app/tags/list", "status", status=404, times=2,
                       body=b"<html>404 Not Found</html>"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert pusher.exists("app", image.digest), doc
    head = httpx2.head(f"{registry.url}/v2/app/manifests/v1",
                       headers={"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX])})
    assert head.status_code == 200


# -- the state cannot be opened: deletions go ahead with a journal only in memory -----

def test_no_delete_without_a_durable_journal(tmp_path, registry: Registry, pusher: Pusher):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"f6" * 30,))
    config = write_config(tmp_path, registry.url, policy=PR)
    (tmp_path / "state").write_text("not a directory")  # State.open falls back to memory
    _code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    # Nothing is deleted while nothing can be journaled durably.
    assert pusher.exists("app", image.digest), doc
