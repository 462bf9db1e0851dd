"""Listings that silently leave something out, on a real registry behind the fault proxy.

distribution 3.1.0 on S3 drops from tags/list a tag that another listed tag is a prefix of
(``0.1.20`` beside ``0.1.2``, distribution/distribution#4891): the manifest only that tag
named then looks untagged, an orphan an untagged rule deletes. A tag retention saw before
and the listing no longer shows is looked up (a HEAD by tag) first, at the plan and before
each DELETE.
"""

from __future__ import annotations

import shutil

from tests.pusher import Pusher
from tests.servers import (
    Fault,
    FaultProxy,
    Registry,
    drop_repositories,
    drop_tags,
    paged_tags,
)
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"


def seed(pusher: Pusher):
    """``build`` and ``build-2``: one of them prefixes the other, as in distribution#4891
    (which leaves out the longer one; the tests have the proxy leave out ``build``)."""
    kept = pusher.image("app", "build", created=OLD, layers=(b"tagged build" * 20,))
    newer = pusher.image("app", "build-2", created=OLD, layers=(b"newer build" * 20,))
    return kept, newer


def test_a_tag_left_out_of_the_listing_that_still_resolves_makes_the_repository_unreadable(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    kept, _ = seed(pusher)
    orphan = pusher.image("other", "v1", created=OLD)
    config = write_config(tmp_path, proxy.url)  # deletes every orphan, untagged_grace 0s
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []  # app:build -> kept is recorded
    pusher.image("other", "v1", created=OLD, layers=(b"re-pushed" * 20,))

    proxy.inject(Fault("GET", r"^/v2/app/tags/list", "rewrite", times=100,
                       rewrite=drop_tags("build")))
    requests_before = len(proxy.requests)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    assert proxy.count("DELETE", r"/v2/app/") == 0
    assert pusher.exists("app", kept.digest) and pusher.exists("app", "build")
    [error] = [e["message"] for e in doc["errors"] if e["repository"] == "app"]
    assert "does not show tag 'build'" in error and "still resolves" in error
    # The missing tag is looked up by tag, once (the first run read the tags by GET); the
    # read of the repository stops there.
    assert proxy.count("HEAD", r"/v2/app/manifests/build$") == 1
    assert proxy.count("HEAD", r"/v2/app/manifests/") == 1
    # The other repository is read and decided as usual: its orphan goes.
    assert deleted_digests(doc) == {orphan.digest}
    assert pusher.exists("other", "v1")
    # Where no tag is missing, no tag is looked up beyond those listed.
    by_tag = {p for m, p in proxy.requests[requests_before:]
              if m == "HEAD" and "/manifests/sha256:" not in p}
    assert by_tag == {"/v2/app/manifests/build", "/v2/other/manifests/v1"}


def test_a_tag_really_removed_leaves_its_manifest_an_orphan(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    kept, newer = seed(pusher)
    config = write_config(tmp_path, proxy.url)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []

    # The tag is removed from the registry's storage (distribution's own layout): it is
    # gone for every client, and the HEAD by tag answers 404.
    shutil.rmtree(registry.root / "docker/registry/v2/repositories/app/_manifests/tags/build")
    assert not pusher.exists("app", "build")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {kept.digest}
    assert proxy.count("HEAD", r"/v2/app/manifests/build$") == 1  # the check's one HEAD
    assert pusher.exists("app", newer.digest)


def test_a_link_to_another_repositorys_listing_is_refused(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    """A paged tags/list whose Link leads to another repository's listing (a caching proxy
    or a registry that mixes them up; same origin, so no credential leaves): app's later
    pages are never read and other's tags are taken for app's. A manifest tagged only on a
    lost page (here ``z``, given to it since the last run, when its old tag went) then looks
    untagged and is deleted. The next page must be the same listing: the same path."""
    pusher.image("app", "a", created=OLD)
    moved = pusher.image("app", "old", created=OLD, layers=(b"moved build" * 20,))
    pusher.image("other", "v1", created=OLD)
    config = write_config(tmp_path, proxy.url)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []  # app:old -> moved is recorded
    shutil.rmtree(registry.root / "docker/registry/v2/repositories/app/_manifests/tags/old")
    pusher.tag("app", "z", moved)  # promoted: tagged z now, z on the listing's page 2

    paged = paged_tags(1)

    def elsewhere(method, path, status, headers, body):
        status, headers, body = paged(method, path, status, headers, body)
        if "Link" in headers:
            headers["Link"] = '</v2/other/tags/list?n=1000>; rel="next"'
        return status, headers, body

    proxy.inject(Fault("GET", r"^/v2/app/tags/list", "rewrite", times=100,
                       rewrite=elsewhere))
    before = len(proxy.requests)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert proxy.count("DELETE", r"/v2/app/") == 0
    assert pusher.exists("app", moved.digest) and pusher.exists("app", "z")
    assert code == 1
    [error] = [e["message"] for e in doc["errors"] if e["repository"] == "app"]
    assert "/v2/other/tags/list" in error, error
    # The Link is not followed: other's listing is read once, for other.
    assert [p for m, p in proxy.requests[before:] if "/v2/other/tags/list" in p] == \
        ["/v2/other/tags/list?n=1000"]


def test_a_tag_the_plan_saw_left_out_of_the_confirming_listing_is_looked_up(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    """The executor's re-read of the tags before a DELETE is a listing too. Between the plan
    and the DELETE, ``latest`` is rolled back onto the old build the plan deletes, and the
    listing leaves ``latest`` out (as distribution#4891 would once a tag ``late`` is pushed).
    The plan saw ``latest``: it is looked up, and the old build stays."""
    old = pusher.image("app", "pr-1", created=OLD)
    pusher.image("app", "latest", created=OLD, layers=(b"current build" * 20,))
    config = write_config(tmp_path, proxy.url)  # deletes pr-* older than 1d
    drop = drop_tags("latest")

    def rollback_then_drop(method, path, status, headers, body):
        pusher.tag("app", "latest", old)
        return drop(method, path, status, headers, body)

    # The plan's read of the listing goes untouched; the executor's re-read is the second.
    proxy.inject(Fault("GET", r"^/v2/app/tags/list", "rewrite", times=100, skip=1,
                       rewrite=rollback_then_drop))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert proxy.count("GET", r"^/v2/app/tags/list") >= 2  # the re-read happened
    assert pusher.exists("app", old.digest) and pusher.exists("app", "latest")
    (action,) = doc["actions"]
    assert action["digest"] == old.digest and action["status"] == "skipped", action
    assert "latest" in action["reason"]
    assert code == 0


def test_a_tag_deleted_by_the_run_is_looked_up_once_more_not_at_every_re_read(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    """The cost of the above with one read per DELETE (confirm_window 0s): the tags of a
    manifest the run deleted leave the listing, are looked up once (404) and then never
    again, not once per later DELETE (quadratic in a repository's deletions)."""
    from tests.test_executor import PR, run_with_window

    builds = [pusher.image("app", f"pr-{i}", created=OLD, layers=(f"b{i}".encode(),))
              for i in range(5)]
    config = write_config(tmp_path, proxy.url, policy=PR)
    statuses, _ = run_with_window(config, 0.0)
    assert set(statuses.values()) == {"deleted"} and len(statuses) == 5
    for i, build in enumerate(builds):
        deleted_at = proxy.requests.index(("DELETE", f"/v2/app/manifests/{build.digest}"))
        later = [p for m, p in proxy.requests[deleted_at:]
                 if m == "HEAD" and p == f"/v2/app/manifests/pr-{i}"]
        assert len(later) <= 1, (i, later)


def test_a_repository_the_catalog_leaves_out_is_kept_whole_and_holds_its_blobs(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    shared = b"a layer both repositories hold" * 40
    held = pusher.image("app", "v1", created=OLD, layers=(shared,))
    orphan = pusher.image("other", "v1", created=OLD, layers=(shared, b"own" * 30))
    config = write_config(tmp_path, proxy.url)  # deletes every orphan, untagged_grace 0s
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []  # both repositories are recorded
    pusher.image("other", "v1", created=OLD, layers=(b"re-pushed" * 20,))

    proxy.inject(Fault("GET", r"^/v2/_catalog", "rewrite", times=100,
                       rewrite=drop_repositories("app")))
    listed_before = proxy.count("GET", r"^/v2/app/tags/list")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1  # the catalog is incomplete: said, not hidden
    [error] = [e["message"] for e in doc["errors"] if e["repository"] == "app"]
    assert "left out of the registry's catalog" in error and "#4903" in error
    # The other repository goes on: its orphan is deleted, but the layer it shares with the
    # repository the catalog left out is not counted as freed (app still holds it).
    assert deleted_digests(doc) == {orphan.digest}
    [action] = doc["actions"]
    own = [size for blob, size in orphan.blobs if blob not in dict(held.blobs)]
    assert len(own) == 1  # its own layer; the shared layer and config are app's too
    assert action["bytes"] == orphan.size + sum(own)
    # One request to check it (the catalog is not trusted for it, nor is it read).
    assert proxy.count("GET", r"^/v2/app/tags/list") == listed_before + 1
    assert proxy.count("HEAD", r"^/v2/app/") == 0


def test_a_repository_really_gone_from_the_catalog_is_not_an_error(
        tmp_path, registry: Registry, pusher: Pusher, proxy: FaultProxy):
    pusher.image("app", "v1", created=OLD)
    pusher.image("other", "v1", created=OLD)
    config = write_config(tmp_path, proxy.url)
    assert cli("run", "--config", str(config), "--output", "json")[0] == 0
    # Removed from the registry's storage: gone for every client (NAME_UNKNOWN).
    shutil.rmtree(registry.root / "docker/registry/v2/repositories/app")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert not [e for e in doc["errors"] if e["repository"] == "app"]
