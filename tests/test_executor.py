"""The executor on a real registry: every DELETE is safe at the moment it is sent.

Each scenario changes the registry while the run is deleting (through a hook in the fault
proxy, which runs just before the proxy forwards a request) and checks what survives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from retention.executor import Executor, TagConfirmation
from retention.metrics import Metrics
from retention.runs import collect, open_clients, plan_all, run_pass
from retention.setup import load_setup
from retention.state import State
from tests.factories import inv, make_plan, man, name_of
from tests.pusher import Pushed, Pusher
from tests.servers import Fault, FaultProxy, Registry
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
PR = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"]}]\n'


def on_request(proxy: FaultProxy, method: str, fragment: str, action: Callable[[], None],
               *, times: int = 1) -> None:
    """Run ``action`` just before the proxy forwards the first ``times`` matching requests:
    the registry changes while retention is between deciding and deleting."""
    original = proxy._take_fault
    left = {"n": times}

    def hooked(m: str, path: str):
        if m == method and fragment in path and left["n"] > 0:
            left["n"] -= 1
            action()
        return original(m, path)

    proxy._take_fault = hooked


def run_with_window(config: Path, window: float) -> tuple[dict[str, str], dict]:
    """One enforced pass, with the executor's confirmation window set: status by digest."""
    setup = load_setup(config)

    async def go():
        state = State.memory()
        async with open_clients(setup, ["main"]) as clients:
            inventories = await collect(clients, state)
            plan = plan_all(setup, inventories, setup.policies, now=datetime.now(UTC))
            executor = Executor(clients, state=state, confirm_window=window)
            report = await executor.apply(plan, dry_run=False, inventories=inventories)
        return plan, report

    plan, report = asyncio.run(go())
    statuses = {a.digest: report.outcomes[(a.registry, a.repository, a.digest)].status
                for a in plan.actions}
    reasons = {a.digest: report.outcomes[(a.registry, a.repository, a.digest)].reason
               for a in plan.actions}
    return statuses, reasons


# -- 1. tags are confirmed shortly before each DELETE -----------------------------------------

def test_rollback_during_the_run_is_seen_before_its_delete(tmp_path, registry, pusher, proxy):
    """Someone tags an old build `latest` while the run is deleting another one: the
    re-confirmation before that build's own DELETE sees it."""
    first = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    second = pusher.image("app", "pr-2", created=OLD, layers=(b"two",))
    config = write_config(tmp_path, proxy.url, policy=PR)
    # Plan order is by digest: roll back to whichever is deleted second.
    early, late = sorted([first, second], key=lambda p: p.digest)
    on_request(proxy, "DELETE", early.digest, lambda: pusher.tag("app", "latest", late))
    statuses, reasons = run_with_window(config, 0.0)
    assert statuses == {early.digest: "deleted", late.digest: "skipped"}
    assert reasons[late.digest].startswith("changed: tags are now ['latest', 'pr-")
    assert pusher.exists("app", "latest") and pusher.exists("app", late.digest)


def test_default_window_bounds_the_gap_between_confirmation_and_delete(
        tmp_path, registry, pusher, proxy):
    """With the default window, a DELETE that follows a slow one re-reads the tags: the
    gap between confirming a manifest's tags and deleting it stays bounded, however long
    the run takes."""
    first = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    second = pusher.image("app", "pr-2", created=OLD, layers=(b"two",))
    early, late = sorted([first, second], key=lambda p: p.digest)
    config = write_config(tmp_path, proxy.url, policy=PR)
    # The first DELETE takes longer than the window; the rollback happens meanwhile.
    proxy.inject(Fault("DELETE", early.digest, "delay", seconds=6.0))
    on_request(proxy, "DELETE", early.digest, lambda: pusher.tag("app", "latest", late))
    _, doc, _ = cli("run", "--config", str(config), "--output", "json")
    status = {a["digest"]: a["status"] for a in doc["actions"]}
    assert status == {early.digest: "deleted", late.digest: "skipped"}, doc
    assert pusher.exists("app", "latest")
    # Listed once to plan and at least twice before deleting: once per window.
    assert proxy.count("GET", r"/v2/app/tags/list") >= 3


def test_confirmation_is_reused_within_the_window(tmp_path, registry, pusher, proxy):
    for i in range(6):
        pusher.image("app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and len(deleted_digests(doc)) == 6
    # One listing to plan, one to confirm all six deletions (they take far less than 5 s),
    # one after the last DELETE for what was pushed meanwhile (reclaimed bytes).
    assert proxy.count("GET", r"/v2/app/tags/list") == 3


# -- 2. a child goes only after every parent is gone ------------------------------------------

def two_parents(pusher: Pusher) -> tuple[Pushed, Pushed, Pushed]:
    child = pusher.image("multi", None, created=OLD, layers=(b"shared child",))
    one = pusher.image("multi", None, created=OLD, layers=(b"only in one",), arch="arm64")
    first = pusher.index("multi", "pr-1", [child, one])
    second = pusher.index("multi", "pr-2", [child])
    return child, first, second


def test_shared_child_stays_when_its_other_index_is_retagged(tmp_path, registry, pusher,
                                                              proxy):
    child, first, second = two_parents(pusher)
    config = write_config(tmp_path, proxy.url, policy=PR)
    early, late = sorted([first, second], key=lambda p: p.digest)
    on_request(proxy, "DELETE", early.digest, lambda: pusher.tag("multi", "keep", late))
    statuses, reasons = run_with_window(config, 0.0)
    assert statuses[early.digest] == "deleted"
    assert statuses[late.digest] == "skipped" and reasons[late.digest].startswith("changed")
    assert statuses[child.digest] == "skipped"
    assert late.digest.split(":")[1][:12] in reasons[child.digest]
    assert pusher.exists("multi", child.digest) and pusher.exists("multi", "keep")


def test_shared_child_stays_when_its_other_index_fails_to_delete(tmp_path, registry, pusher,
                                                                  proxy):
    child, first, second = two_parents(pusher)
    proxy.inject(Fault("DELETE", second.digest, "status", times=100, status=500))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    status = {a["digest"]: a for a in doc["actions"]}
    assert status[first.digest]["status"] == "deleted"
    assert status[second.digest]["status"] == "failed"
    assert status[child.digest]["status"] == "skipped"
    assert "which references it, stays (failed" in status[child.digest]["reason"]
    assert pusher.exists("multi", child.digest) and pusher.exists("multi", second.digest)
    # The arm64 child only the first index held went with it.
    assert len(deleted_digests(doc)) == 2


def test_directly_matched_child_stays_when_its_index_fails(tmp_path, registry, pusher, proxy):
    """A child with a tag of its own that a delete rule matches still waits for its index."""
    child = pusher.image("multi", "pr-child", created=OLD, layers=(b"tagged child",))
    index = pusher.index("multi", "pr-index", [child])
    proxy.inject(Fault("DELETE", index.digest, "status", times=100, status=500))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    status = {a["digest"]: a["status"] for a in doc["actions"]}
    assert status == {index.digest: "failed", child.digest: "skipped"}
    assert pusher.exists("multi", "pr-child")


def test_referrer_waits_for_its_subject(tmp_path, registry, pusher, proxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"signed",))
    signature = pusher.cosign_signature("app", image)
    proxy.inject(Fault("DELETE", image.digest, "status", times=100, status=500))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    status = {a["digest"]: a["status"] for a in doc["actions"]}
    assert status == {image.digest: "failed", signature.digest: "skipped"}
    assert pusher.exists("app", signature.digest)


# -- 3. all policies of a run are settled together --------------------------------------------

TWO_POLICIES = """
name: a-images
repositories: {include: ["**"]}
delete: [{tags: ["pr-*"]}]
---
name: b-sboms
repositories: {include: ["**"]}
delete: [{tags: ["sbom-*"]}]
"""


def test_referrer_goes_in_the_same_run_as_its_subject_deleted_by_another_policy(
        tmp_path, registry, pusher, proxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"described",))
    sbom = pusher.oci_referrer("app", image, "application/spdx+json")
    pusher.tag("app", "sbom-1", sbom)
    config = write_config(tmp_path, proxy.url, policy=TWO_POLICIES)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    by_digest = {a["digest"]: a for a in doc["actions"]}
    assert by_digest[image.digest]["status"] == "deleted"
    assert by_digest[sbom.digest]["status"] == "deleted"
    assert by_digest[sbom.digest]["policy"] == "b-sboms"
    assert not pusher.exists("app", sbom.digest) and not pusher.exists("app", image.digest)


def test_what_an_aborted_policy_would_delete_survives_for_the_others(
        tmp_path, registry, pusher):
    """a-images is aborted by its max_deletions: its index stays, and so does the child
    that b-children's rule matched."""
    child = pusher.image("multi", "sha-1", created=OLD, layers=(b"child",))
    pusher.index("multi", "pr-1", [child])
    pusher.image("other", "pr-2", created=OLD, layers=(b"x",))
    policies = """
name: a-images
repositories: {include: ["**"]}
delete: [{tags: ["pr-*"]}]
max_deletions: 1
---
name: b-children
repositories: {include: ["**"]}
delete: [{tags: ["sha-*"]}]
"""
    config = write_config(tmp_path, registry.url, policy=policies)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    assert deleted_digests(doc) == set()
    assert {(d["policy"], d["reason"]) for d in doc["protected"]} == \
        {("b-children", "index-child")}
    assert pusher.exists("multi", child.digest)


# -- 5. bytes are what the garbage collector really frees -------------------------------------

def gc_freed(registry: Registry) -> int:
    before = registry.blob_store_bytes()
    registry.garbage_collect()
    return before - registry.blob_store_bytes()


def test_bytes_of_a_failed_deletion_are_not_claimed(tmp_path, registry, pusher, proxy):
    shared = b"layer shared by two builds" * 50
    first = pusher.image("app", "pr-1", created=OLD, layers=(shared, b"own one" * 10))
    second = pusher.image("app", "pr-2", created=OLD, layers=(shared, b"own two" * 10))
    late = max([first, second], key=lambda p: p.digest)
    proxy.inject(Fault("DELETE", late.digest, "status", times=100, status=500))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    reclaimed = doc["summary"]["reclaimed_bytes"]
    assert reclaimed == gc_freed(registry) > 0
    assert reclaimed < len(shared)  # the shared layer stays with the build that stays


def _unreadable(proxy: FaultProxy, repository: str) -> None:
    proxy.inject(Fault("GET", rf"/v2/{repository}/tags/list", "status", times=100, status=500))


def test_bytes_shared_with_an_unreadable_repository_are_not_claimed(tmp_path, registry,
                                                                    pusher, proxy):
    shared = b"layer shared across repositories" * 50
    pusher.image("app", "pr-1", created=OLD, layers=(shared, b"own" * 10))
    pusher.image("other", "v1", created=OLD, layers=(shared,))
    config = write_config(tmp_path, proxy.url, policy=PR, mode="dry-run")
    assert cli("run", "--config", str(config))[0] == 0  # the state learns both
    config = write_config(tmp_path, proxy.url, policy=PR)
    _unreadable(proxy, "other")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1 and doc["errors"][0]["repository"] == "other"
    assert doc["summary"]["reclaimable_bytes"] == doc["summary"]["reclaimed_bytes"]
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry) > 0
    assert doc["summary"]["reclaimed_bytes"] < len(shared)


def test_a_manifest_already_gone_is_not_credited(tmp_path, registry, pusher, proxy):
    first = pusher.image("app", "pr-1", created=OLD, layers=(b"first" * 40,), extra="1")
    second = pusher.image("app", "pr-2", created=OLD, layers=(b"second" * 40,), extra="2")
    early, late = sorted([first, second], key=lambda p: p.digest)

    def someone_else_deletes_it() -> None:
        assert pusher.client.delete(f"/v2/app/manifests/{late.digest}").status_code == 202

    on_request(proxy, "DELETE", early.digest, someone_else_deletes_it)
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0
    by_digest = {a["digest"]: a for a in doc["actions"]}
    assert by_digest[late.digest]["status"] == "deleted" and by_digest[late.digest]["bytes"] == 0
    theirs = late.size + sum(size for _, size in late.blobs)
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry) - theirs > 0


def test_the_body_of_a_child_an_index_still_lists_is_not_claimed(tmp_path, registry, pusher):
    """The same image in two repositories; someone deleted it from the one where an index
    lists it. Deleting it from the other frees its config and layer, not its body: the
    garbage collector marks every child an index lists, there or not."""
    child = pusher.image("multi", None, created=OLD, layers=(b"child layer" * 20,))
    pusher.index("multi", "v1", [child])
    assert pusher.image("app", "pr-1", created=OLD, layers=(b"child layer" * 20,)) == child
    assert pusher.client.delete(f"/v2/multi/manifests/{child.digest}").status_code == 202
    config = write_config(tmp_path, registry.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {child.digest}
    config_and_layer = sum(size for _, size in child.blobs)
    assert doc["summary"]["reclaimable_bytes"] == doc["summary"]["reclaimed_bytes"]
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry) == config_and_layer


def _schema1_beside_an_image(tmp_path: Path, reg: Registry) -> Pushed:
    """A schema 1 manifest `legacy:v0` pushed by skopeo, and `app:pr-1`, an old image
    sharing its one layer (returned)."""
    from tests.test_reading import _skopeo_schema1

    _skopeo_schema1(tmp_path, reg.host, "legacy", "v0")
    pusher = Pusher(reg.url)
    (layer,) = [d for d in (tmp_path / "layout/blobs/sha256").iterdir()
                if d.read_bytes()[:2] == b"\x1f\x8b"]  # the gzipped layer
    try:
        return pusher.image("app", "pr-1", created=OLD, layers=(layer.read_bytes(),))
    finally:
        pusher.close()


def test_layers_a_schema1_manifest_may_hold_are_not_claimed(tmp_path):
    """A schema 1 manifest (which retention does not parse) shares its layer with the image
    deleted: the garbage collector keeps that layer for it (its fsLayers). Retention reads
    those layers, so it claims exactly what the collector frees: the image's body and
    config, not the shared layer."""
    from tests.servers import start_registry

    reg = start_registry(tmp_path / "registry", schema1=True)
    try:
        doomed = _schema1_beside_an_image(tmp_path, reg)
        config = write_config(tmp_path, reg.url, policy=PR)
        code, doc, _ = cli("run", "--config", str(config), "--output", "json")
        assert code == 0, doc
        assert deleted_digests(doc) == {doomed.digest}
        assert doc["summary"]["reclaimable_bytes"] == doc["summary"]["reclaimed_bytes"]
        body_and_config = doomed.size + doomed.blobs[0][1]
        assert doc["summary"]["reclaimed_bytes"] == gc_freed(reg) == body_and_config
    finally:
        reg.stop()


# Found in review: a repository that cannot be read still holds what it held, and the
# garbage collector marks it all, children listed by an index and a schema 1 manifest's
# layers included; its last-known manifests lost both.

def test_an_index_in_an_unreadable_repository_keeps_its_childs_body(tmp_path, registry,
                                                                    pusher, proxy):
    child = pusher.image("multi", None, created=OLD, layers=(b"child layer" * 20,))
    pusher.index("multi", "v1", [child])
    assert pusher.image("app", "pr-1", created=OLD, layers=(b"child layer" * 20,)) == child
    assert pusher.client.delete(f"/v2/multi/manifests/{child.digest}").status_code == 202
    assert cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR,
                                                   mode="dry-run")))[0] == 0  # seen once
    _unreadable(proxy, "multi")
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    assert code == 1 and doc["errors"][0]["repository"] == "multi"
    assert deleted_digests(doc) == {child.digest}
    config_and_layer = sum(size for _, size in child.blobs)
    assert doc["summary"]["reclaimable_bytes"] == doc["summary"]["reclaimed_bytes"]
    assert doc["summary"]["reclaimed_bytes"] == gc_freed(registry) == config_and_layer


def test_a_schema1_manifest_in_an_unreadable_repository_keeps_its_layers(tmp_path):
    from tests.servers import start_registry

    reg = start_registry(tmp_path / "registry", schema1=True)
    proxy = FaultProxy(reg.url)
    try:
        proxy.url = proxy.start()
        doomed = _schema1_beside_an_image(tmp_path, reg)
        assert cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR,
                                                       mode="dry-run")))[0] == 0
        _unreadable(proxy, "legacy")
        code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url,
                                                               policy=PR)),
                           "--output", "json")
        assert code == 1 and doc["errors"][0]["repository"] == "legacy"
        assert deleted_digests(doc) == {doomed.digest}
        assert doc["summary"]["reclaimable_bytes"] == doc["summary"]["reclaimed_bytes"]
        body_and_config = doomed.size + doomed.blobs[0][1]  # the shared layer stays
        assert doc["summary"]["reclaimed_bytes"] == gc_freed(reg) == body_and_config
    finally:
        proxy.stop()
        reg.stop()


# -- 6. a run cut short by shutdown is not a success ------------------------------------------

def test_shutdown_during_a_run_is_not_a_success(tmp_path, registry, pusher, proxy):
    for i in range(3):
        pusher.image("app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    config = write_config(tmp_path, proxy.url, policy=PR)
    setup = load_setup(config)
    metrics = Metrics(CollectorRegistry())

    async def go():
        stop = asyncio.Event()
        on_request(proxy, "DELETE", "/manifests/", stop.set)
        return await run_pass(setup, setup.policies, dry_run=False, state=State.memory(),
                              metrics=metrics, stop=stop)

    result = asyncio.run(go())
    statuses = sorted(o.status for o in result.report.outcomes.values())
    assert statuses == ["deleted", "skipped", "skipped"]
    assert result.policy_outcome("p") == "failure" and result.failed
    assert metrics.registry.get_sample_value("retention_last_success_timestamp_seconds",
                                             {"policy": "p"}) is None
    assert metrics.registry.get_sample_value("retention_runs_total",
                                             {"policy": "p", "outcome": "failure"}) == 1


def test_tag_confirmation_reads_at_most_once_per_window(registry, pusher):
    """The cost of confirming: one listing and a HEAD per tag, per window."""
    for i in range(3):
        pusher.image("app", f"v{i}", created=OLD, layers=(f"l{i}".encode(),))
    setup_path = Path(registry.root).parent / "cfg"
    setup_path.mkdir()
    config = write_config(setup_path, registry.url, policy=PR)
    setup = load_setup(config)

    async def go(window: float) -> int:
        async with open_clients(setup, ["main"]) as clients:
            confirmation = TagConfirmation(clients["main"], "app", window=window)
            for _ in range(4):
                await confirmation.read("sha256:" + "0" * 64)
            return confirmation.reads

    assert asyncio.run(go(60.0)) == 1
    assert asyncio.run(go(0.0)) == 4


# -- found in review: what else changes while the run deletes ---------------------------------

# A parent pushed after the plan: the re-read of tags shows it, and it is read.
def test_child_reused_by_an_index_pushed_mid_run_stays(tmp_path, registry, pusher, proxy):
    child = pusher.image("multi", None, created=OLD, layers=(b"reproducible child",))
    old = pusher.index("multi", "pr-1", [child])
    config = write_config(tmp_path, proxy.url, policy=PR)
    # A reproducible rebuild: same platform manifest, a new index with a new tag.
    on_request(proxy, "DELETE", old.digest,
               lambda: pusher.index("multi", "v2", [child], annotations={"rebuild": "2"}))
    statuses, _ = run_with_window(config, 0.0)  # tags re-read before every DELETE
    assert statuses[old.digest] == "deleted"
    assert pusher.exists("multi", "v2")
    assert pusher.exists("multi", child.digest), "v2 now points at an index missing its child"


# The daemon runs one policy at a time; every policy is planned, so the others still count.
TWO = """
name: a-keep
repositories: {include: ["**"]}
keep: [{tags: ["pr-1"]}]
delete: [{tags: ["never-*"]}]
---
name: b-prs
repositories: {include: ["**"]}
delete: [{tags: ["pr-*"]}]
"""


def test_what_plan_says_another_policy_keeps_survives_the_daemons_run(
        tmp_path, registry, pusher):
    kept = pusher.image("app", "pr-1", created=OLD, layers=(b"kept",))
    pusher.image("app", "pr-2", created=OLD, layers=(b"gone",))
    config = write_config(tmp_path, registry.url, policy=TWO)
    _, doc, _ = cli("plan", "--config", str(config), "--output", "json")
    assert kept.digest not in {a["digest"] for a in doc["actions"]}  # plan: kept
    setup = load_setup(config)
    b = next(p for p in setup.policies if p.name == "b-prs")
    # exactly what Daemon.run_policy does (daemon.py:252)
    asyncio.run(run_pass(setup, [b], dry_run=False, state=State.memory()))
    assert pusher.exists("app", "pr-1"), "deleted what `retention plan` said a-keep keeps"


# A DELETE carried out whose answer was lost (504): the retry finds it gone, and says so.
def test_delete_whose_answer_was_lost_is_reported_deleted(tmp_path, registry, pusher, proxy):
    img = pusher.image("app", "pr-1", created=OLD, layers=(b"lost answer" * 40,))
    proxy.inject(Fault("DELETE", img.digest, "status", status=504,
                       headers={"Retry-After": "6"}))
    on_request(proxy, "DELETE", img.digest,
               lambda: pusher.client.delete(f"/v2/app/manifests/{img.digest}"))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert not pusher.exists("app", img.digest)
    action = doc["actions"][0]
    assert action["status"] == "deleted", (code, action["reason"], doc["summary"])


# A run cancelled (shutdown took too long): what was deleted is already counted.
def test_deletions_are_counted_even_if_the_run_is_cancelled(tmp_path, registry, pusher, proxy):
    a = pusher.image("app", "pr-1", created=OLD, layers=(b"a" * 40,))
    b = pusher.image("app", "pr-2", created=OLD, layers=(b"b" * 40,))
    late = max([a, b], key=lambda p: p.digest)
    proxy.inject(Fault("DELETE", late.digest, "delay", seconds=4.0))
    config = write_config(tmp_path, proxy.url, policy=PR)
    setup = load_setup(config)
    metrics = Metrics(CollectorRegistry())

    async def go():
        task = asyncio.create_task(run_pass(setup, setup.policies, dry_run=False,
                                            state=State.memory(), metrics=metrics))
        # Cancel while the late DELETE is held by the proxy (the early one is done).
        deadline = asyncio.get_running_loop().time() + 20
        while proxy.count("DELETE", late.digest) == 0:
            assert asyncio.get_running_loop().time() < deadline, "the late DELETE never came"
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    gone = sum(not pusher.exists("app", p.digest) for p in (a, b))
    assert gone >= 1
    assert metrics.registry.get_sample_value(
        "retention_manifests_deleted_total", {"registry": "main", "policy": "p"}) == gone
    # And the bytes the early one freed (settled as the run is cancelled): its body and its
    # layer, not its config, which the late one (not known to be gone) shares.
    early = min([a, b], key=lambda p: p.digest)
    assert metrics.registry.get_sample_value(
        "retention_reclaimed_bytes_total", {"registry": "main", "policy": "p"}) == \
        early.size + early.blobs[1][1]


# A digest matched by an aborted policy and by another: the other one says why it stays.
def test_second_policy_reports_what_it_matched_when_the_first_is_aborted():
    text = """
name: a
repositories: {include: ["**"]}
delete: [{tags: ["pr-*"]}]
max_deletions: 1
---
name: b
repositories: {include: ["**"]}
delete: [{tags: ["pr-*"]}]
"""
    p = make_plan(text, inv(man("x", "pr-1"), man("y", "pr-2")))
    b = next(pp for pp in p.policies if pp.policy == "b")
    said = {name_of(a.digest) for a in b.actions} | {name_of(d.digest) for d in
                                                      (*b.protected, *b.kept)}
    assert said == {"x", "y"}, (said, b)


# -- the re-read before a DELETE: tags that vanish, newcomers that cannot be read ----------


def test_tag_vanishing_during_the_reread_is_not_a_change_of_others(tmp_path, registry,
                                                                    pusher, proxy):
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
    other = pusher.image("app", "v1", created=OLD, layers=(b"other",))
    # The scan reads v1; by the re-read it is gone (deleted between listing and HEAD).
    proxy.inject(Fault("HEAD", r"/v2/app/manifests/v1$", "status", status=404, skip=1,
                       times=100))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {doomed.digest}
    assert pusher.exists("app", other.digest)


def test_newcomer_gone_before_it_is_read_is_only_known_by_its_tags(tmp_path, registry,
                                                                    pusher, proxy):
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
    newcomer: list[Pushed] = []

    def push_and_hide() -> None:
        newcomer.append(pusher.image("app", "v2", created=OLD, layers=(b"new",)))
        # Deleted again before retention reads it: a 404 on its GET.
        proxy.inject(Fault("GET", rf"/v2/app/manifests/{newcomer[0].digest}", "status",
                           status=404, times=100))

    on_request_after_scan(proxy, push_and_hide)
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    # Its tag v2 names no subject and nothing else links it to pr-1: pr-1 goes.
    assert code == 0, doc
    assert deleted_digests(doc) == {doomed.digest}
    assert newcomer and pusher.exists("app", newcomer[0].digest)


def test_unparseable_newcomer_keeps_everything_it_might_reference(tmp_path):
    from tests.servers import start_registry
    from tests.test_reading import _skopeo_schema1

    reg = start_registry(tmp_path / "registry", schema1=True)
    proxy = FaultProxy(reg.url)
    proxy.url = proxy.start()
    try:
        pusher = Pusher(reg.url)
        doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
        on_request_after_scan(proxy, lambda: _skopeo_schema1(tmp_path, reg.host, "app",
                                                             "legacy"))
        code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url,
                                                                policy=PR)),
                           "--output", "json")
        assert code == 0, doc
        (action,) = doc["actions"]
        assert action["status"] == "skipped" and "changed" in action["reason"], action
        assert pusher.exists("app", doomed.digest)
        pusher.close()
    finally:
        proxy.stop()
        reg.stop()


def on_request_after_scan(proxy: FaultProxy, action: Callable[[], None]) -> None:
    """Run ``action`` as the executor re-reads the repository's tags (the second
    tags/list): something pushed after the plan, before the DELETE."""
    original = proxy._take_fault
    seen = {"n": 0}

    def hooked(m: str, path: str):
        if m == "GET" and "/tags/list" in path:
            seen["n"] += 1
            if seen["n"] == 2:
                action()
        return original(m, path)

    proxy._take_fault = hooked


def test_no_delete_without_its_journal_entry(tmp_path, registry, pusher):
    img = pusher.image("app", "pr-1", created=OLD, layers=(b"unjournaled",))
    setup = load_setup(write_config(tmp_path, registry.url, policy=PR))
    state = State.memory()
    # A real SQLite failure (as a full disk gives) while journaling the body.
    state._db.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON journal_bodies "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    result = asyncio.run(run_pass(setup, setup.policies, dry_run=False, state=state,
                                  metrics=Metrics(CollectorRegistry())))
    (outcome,) = result.report.outcomes.values()
    assert outcome.status == "skipped" and "could not journal it" in outcome.reason
    assert result.failed and "disk full" in str(result.report.errors[0])
    assert pusher.exists("app", img.digest)
