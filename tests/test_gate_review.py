"""Found in an adversarial review of the gate before each DELETE, on a real registry."""

from __future__ import annotations

from pathlib import Path

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


def one_url_twice(tmp_path: Path, url: str, policies: str, extra: str = "") -> Path:
    """A config with two registries, first and second, of one URL (one storage)."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(policies)
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  first: {{url: {url}}}
  second: {{url: {url}}}
policies: policies
mode: enforce
untagged_grace: 0s
state_dir: state
{extra}""")
    return config


def test_in_use_protects_in_every_registry_of_that_url(tmp_path, registry, pusher):
    """Two registries with one URL (other credentials, say: the config allows it) are one
    storage: an image a cluster runs is in use for the policies of both."""
    from tests.kube_emulator import KubeEmulator, pod, workload
    from tests.test_inuse_e2e import POLICY, protected, ref
    from tests.test_run_e2e import cli, deleted_digests

    used = pusher.image("payments/api", "v1", created=OLD, layers=(b"api-v1",))
    other = pusher.image("payments/api", "v0", created=OLD, layers=(b"api-v0",))
    cluster = KubeEmulator(tmp_path / "kube-prod")
    cluster.start()
    try:
        cluster.add(pod("kube-system", "coredns", ["registry.k8s.io/coredns/coredns:v1"]))
        cluster.add(workload("deployments", "payments", "api",
                             [ref(registry, "payments/api", used.digest)]))
        config = one_url_twice(tmp_path, registry.url, POLICY + "registry: second\n", f"""
in_use:
  clusters:
    - name: prod
      kubeconfig: {cluster.kubeconfig(tmp_path / "prod.yaml")}
""")
        code, doc, err = cli("run", "--config", str(config), "--output", "json")
    finally:
        cluster.stop()
    assert pusher.exists("payments/api", used.digest), "deleted an image a cluster runs"
    assert code == 0, err
    assert deleted_digests(doc) == {other.digest}
    assert protected(doc) == {used.digest: "in-use"}


def test_restored_hold_holds_in_every_registry_of_that_url(tmp_path, registry, pusher):
    """Registry `first` deleted it and restore put it back; `second`, with the same URL
    (one storage), must hold it too."""
    from tests.test_run_e2e import cli, deleted_digests

    image = pusher.image("app", "pr-1", created=OLD, layers=(b"restored",))
    config = one_url_twice(
        tmp_path, registry.url,
        f"{PR}registry: first\n---\n{PR.replace('name: p', 'name: q')}registry: second\n")
    code, doc, err = cli("run", "--config", str(config), "--policy", "p", "--output", "json")
    assert code == 0 and deleted_digests(doc) == {image.digest}, err
    code, _, err = cli("restore", "--config", str(config), "--digest", image.digest)
    assert code == 0 and pusher.exists("app", image.digest), err
    code, doc, err = cli("run", "--config", str(config), "--policy", "q", "--output", "json")
    assert pusher.exists("app", image.digest), "a restored manifest deleted again at once"
    assert code == 0 and doc["actions"] == [], err
    assert {d["reason"] for d in doc["protected"]} == {"restored"}


def test_a_restored_child_is_held_when_a_new_index_listing_it_goes(tmp_path, registry,
                                                                     pusher):
    """An orphan deleted, then restored (held for restored_hold); a new index listing it is
    pushed and a policy deletes that index: the restored manifest stays with its hold, it
    does not go as the index's cascade."""
    from tests.test_run_e2e import POLICY, cli, deleted_digests, write_config

    orphan = pusher.image("app", "latest", created=OLD, layers=(b"restored child",))
    config = write_config(tmp_path, registry.url, policy=POLICY)
    assert cli("run", "--config", str(config))[0] == 0  # records app:latest -> orphan
    pusher.image("app", "latest", created=OLD, layers=(b"the next build",))
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {orphan.digest}, err
    code, _, err = cli("restore", "--config", str(config), "--digest", orphan.digest)
    assert code == 0 and pusher.exists("app", orphan.digest), err
    index = pusher.index("app", "pr-9", [orphan])
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert pusher.exists("app", orphan.digest), "a restored manifest went within its hold"
    assert code == 0 and deleted_digests(doc) == {index.digest}, err


def test_an_image_pushed_while_the_repository_delete_is_throttled_stays(tmp_path):
    """delete_empty_repositories on ACR: the repository is confirmed empty, its DELETE is
    throttled (429), and CI pushes a new image meanwhile. The DELETE sent again would take
    the new image with the repository: emptiness is confirmed again first."""
    from datetime import UTC, datetime, timedelta

    from tests.acr_emulator import AcrEmulator, EmulatorFault
    from tests.test_acr import write_config as acr_config
    from tests.test_run_e2e import cli

    acr = AcrEmulator()
    acr.start()
    try:
        old = datetime.now(UTC) - timedelta(days=30)
        acr.image("ephemeral/pr-7", "pr-7", created=old, seed="a")
        pushed: list[str] = []
        acr.faults.append(EmulatorFault(
            "DELETE", r"^/acr/v1/ephemeral/pr-7$", status=429, code="TOOMANYREQUESTS",
            fail_after_hook=True,
            hook=lambda *_: pushed.append(acr.image("ephemeral/pr-7", "v2", seed="new"))))
        config = acr_config(tmp_path, acr, 'name: p\nrepositories: {include: ["ephemeral/**"]}'
                            '\ndelete: [{tags: ["pr-*"]}]\ndelete_empty_repositories: true\n')
        code, doc, err = cli("run", "--config", str(config), "--output", "json")
        assert pushed
        assert "ephemeral/pr-7" in acr.repos and pushed[0] in acr.repos["ephemeral/pr-7"], \
            "the repository went with an image pushed after it was found empty"
        assert [a["status"] for a in doc["actions"]] == ["deleted"], err
        assert code == 0, doc
    finally:
        acr.stop()


def test_a_confirming_listing_shown_incomplete_confirms_nothing(tmp_path, registry, pusher,
                                                                proxy):
    """The listing read before a DELETE leaves out ``v1``, a tag the plan saw that still
    resolves (distribution#4891): it is incomplete, so a tag no listing showed yet may be
    missing too. Here ``v1.0``, given to the build about to go as the run reads the tags
    again, is left out as well: the build stays (the SPEC: the repository is unreadable
    for the run)."""
    from tests.servers import Fault, drop_tags
    from tests.test_executor import on_request_after_scan
    from tests.test_run_e2e import cli

    pusher.image("app", "v1", created=OLD, layers=(b"kept",))
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    on_request_after_scan(proxy, lambda: pusher.tag("app", "v1.0", doomed))
    # The plan's listing is complete; every later one leaves out v1 and v1.0.
    proxy.inject(Fault("GET", r"^/v2/app/tags/list", "rewrite", times=100, skip=1,
                       rewrite=drop_tags("v1", "v1.0")))
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert pusher.exists("app", "v1.0") and pusher.exists("app", doomed.digest), \
        "deleted a build through a listing known to be incomplete"
    (action,) = doc["actions"]
    assert action["status"] == "skipped" and "'v1'" in action["reason"], action
    assert code == 1, err
