"""Inventories built from a real registry: images, indexes, children, referrers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from retention.config import RegistrySettings
from retention.inventory import Blob
from retention.registry.client import RegistryClient
from retention.scanner import MemoryCache, Scanner
from tests.pusher import Pusher
from tests.servers import Fault, start_registry


def scan(url: str, **kwargs):
    async def go():
        async with RegistryClient(RegistrySettings(name="main", url=url)) as client:
            return await Scanner(client, **kwargs).scan()
    return asyncio.run(go())


def test_images_tags_and_times(registry, pusher: Pusher):
    t1 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    old = pusher.image("app", "v1", created=t1, layers=(b"a", b"b"))
    pusher.tag("app", "stable", old)
    new = pusher.image("app", "v2", created="2024-06-01T00:00:00.123456789Z", docker=True)
    inv = scan(registry.url)
    (repo,) = inv.repositories
    by_digest = {m.digest: m for m in repo.manifests}
    assert set(by_digest) == {old.digest, new.digest}
    assert by_digest[old.digest].tags == ("stable", "v1")
    assert by_digest[old.digest].created == t1
    assert by_digest[new.digest].created == datetime(2024, 6, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert by_digest[new.digest].media_type.endswith("manifest.v2+json")
    assert {b.digest for b in by_digest[old.digest].blobs} == {d for d, _ in old.blobs}
    assert by_digest[old.digest].size == old.size
    assert inv.host == registry.host


def test_index_children_are_listed_untagged(registry, pusher: Pusher):
    amd = pusher.image("multi", None, created="2024-01-01T00:00:00Z", arch="amd64")
    arm = pusher.image("multi", None, created="2024-01-02T00:00:00Z", arch="arm64",
                       layers=(b"arm",))
    oci = pusher.index("multi", "1.0", [amd, arm])
    dl_child = pusher.image("multi", None, docker=True, created="2024-01-03T00:00:00Z",
                            layers=(b"d",))
    docker_list = pusher.index("multi", "docker", [dl_child], docker=True)
    inv = scan(registry.url)
    ms = {m.digest: m for m in inv.repositories[0].manifests}
    assert set(ms) == {amd.digest, arm.digest, oci.digest, dl_child.digest, docker_list.digest}
    assert ms[oci.digest].children == (amd.digest, arm.digest)
    assert ms[oci.digest].media_type == "application/vnd.oci.image.index.v1+json"
    assert ms[amd.digest].tags == ()
    assert ms[docker_list.digest].children == (dl_child.digest,)


def test_cosign_and_oci_referrers(registry, pusher: Pusher):
    image = pusher.image("signed", "v1", created="2024-01-01T00:00:00Z")
    sig = pusher.cosign_signature("signed", image)
    att = pusher.cosign_signature("signed", image, suffix="att")
    sbom = pusher.oci_referrer("signed", image, "application/spdx+json")
    inv = scan(registry.url)
    ms = {m.digest: m for m in inv.repositories[0].manifests}
    hexpart = image.digest.split(":")[1]
    assert ms[sig.digest].subject == image.digest
    assert ms[sig.digest].referrer_tags == (f"sha256-{hexpart}.sig",)
    assert ms[sig.digest].tags == ()
    assert ms[att.digest].subject == image.digest
    assert ms[sbom.digest].subject == image.digest  # found through the fallback index
    assert ms[sbom.digest].artifact_type == "application/spdx+json"
    fallback = next(m for m in ms.values() if m.referrer_tags == (f"sha256-{hexpart}",))
    assert fallback.subject == image.digest
    assert fallback.children == (sbom.digest,)


def test_schema1_and_garbage_marked_unparsed(tmp_path):
    # A registry that accepts schema 1 (distribution 2.8 refuses its push unless told to),
    # skopeo writing a real signed schema-1 manifest: the parser rejects it, and the
    # scanner's unparsed path (the only source of `unknown-media-type`) must mark it so.
    from tests.test_reading import _skopeo_schema1

    reg = start_registry(tmp_path / "registry", schema1=True)
    try:
        _skopeo_schema1(tmp_path, reg.host, "odd", "legacy")
        odd = Pusher(reg.url)
        good = odd.image("odd", "ok", created="2024-01-01T00:00:00Z")
        cfg = odd.blob("odd", b'{"x": 1}')
        weird = odd.manifest("odd", "weird", {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.example.config", "digest": cfg[0],
                       "size": cfg[1]}, "layers": [], "unexpected": True,
        }, "application/vnd.oci.image.manifest.v1+json")
        odd.close()
        inv = scan(reg.url)
    finally:
        reg.stop()
    ms = {m.digest: m for m in inv.repositories[0].manifests}
    (legacy,) = [m for m in ms.values() if m.tags == ("legacy",)]
    assert not legacy.parsed
    assert legacy.media_type.startswith("application/vnd.docker.distribution.manifest.v1")
    # Its fsLayers (what the garbage collector marks for it), sizes unknown; nothing else.
    layers = [f"sha256:{f.name}" for f in (tmp_path / "layout/blobs/sha256").iterdir()
              if f.read_bytes()[:2] == b"\x1f\x8b"]  # the gzipped layer
    assert legacy.blobs == tuple(Blob(d, 0) for d in layers) and legacy.children == ()
    assert ms[good.digest].parsed
    assert ms[weird.digest].parsed  # unknown fields are fine; the shape is an image
    assert ms[weird.digest].artifact_type == "application/vnd.example.config"


def test_second_scan_uses_cache(registry, pusher: Pusher, proxy):
    pusher.image("c", "v1", created="2024-01-01T00:00:00Z")
    amd = pusher.image("c", None, created="2024-01-01T00:00:00Z", layers=(b"x",))
    pusher.index("c", "multi", [amd])
    cache = MemoryCache()
    first = scan(proxy.url, cache=cache)
    before = len(proxy.requests)
    second = scan(proxy.url, cache=cache)
    later = proxy.requests[before:]
    assert first.repositories == second.repositories
    assert not [r for r in later if r[0] == "GET" and "/manifests/" in r[1]]
    assert not [r for r in later if "/blobs/" in r[1]]


def test_known_digest_of_orphan_is_found(registry, pusher: Pusher):
    first = pusher.image("app", "latest", created="2024-01-01T00:00:00Z")
    pusher.image("app", "latest", created="2024-02-01T00:00:00Z", layers=(b"new",))
    inv = scan(registry.url, known_digests=lambda repo: [first.digest])
    ms = {m.digest: m for m in inv.repositories[0].manifests}
    assert ms[first.digest].tags == ()
    gone = "sha256:" + "0" * 64
    inv = scan(registry.url, known_digests=lambda repo: [gone])
    assert gone not in {m.digest for m in inv.repositories[0].manifests}


def test_subject_of_a_signature_is_found_after_its_tag_moved(registry, pusher: Pusher):
    old = pusher.image("app", "stable", created="2024-01-01T00:00:00Z")
    sig = pusher.cosign_signature("app", old)
    new = pusher.image("app", "stable", created="2024-02-01T00:00:00Z", layers=(b"n",))
    inv = scan(registry.url)
    ms = {m.digest: m for m in inv.repositories[0].manifests}
    assert set(ms) == {old.digest, sig.digest, new.digest}
    assert ms[old.digest].tags == ()
    assert ms[sig.digest].subject == old.digest


def test_referrers_api_where_the_registry_has_it():
    """Distribution 2.8 has no referrers API; the suite's ACR emulator has one, and serves
    as a plain OCI registry here (type oci, explicit repositories)."""
    from datetime import UTC, datetime

    from tests.acr_emulator import AcrEmulator

    acr = AcrEmulator()
    acr.start()
    try:
        when = datetime(2024, 1, 1, tzinfo=UTC)
        image = acr.image("app", "v1", created=when, seed="img")
        sbom = acr.image("app", created=when, seed="sbom", subject=image)  # untagged
        from retention.config import Credentials
        from retention.secrets import Secret

        settings = RegistrySettings(name="oci", url=acr.url, repositories=("app",),
                                    credentials=Credentials(acr.admin[0],
                                                            Secret(acr.admin[1])))

        async def go():
            async with RegistryClient(settings) as client:
                return await Scanner(client).scan()

        inv = asyncio.run(go())
        ms = {m.digest: m for m in inv.repositories[0].manifests}
        assert set(ms) == {image, sbom}  # the untagged referrer found through the API
        assert ms[sbom].subject == image
        assert acr.count("GET", rf"/v2/app/referrers/{image}", status=200) == 1
    finally:
        acr.stop()


def test_manifest_disappearing_mid_scan_is_left_out(registry, pusher: Pusher, proxy):
    stays = pusher.image("app", "v1", created="2024-01-01T00:00:00Z", layers=(b"stays",))
    goes = pusher.image("app", "v2", created="2024-01-01T00:00:00Z", layers=(b"goes",))
    # Listed and HEADed, then deleted by someone else before its body is read.
    proxy.inject(Fault("GET", rf"/v2/app/manifests/{goes.digest}", "status", status=404,
                       times=10))
    inv = scan(proxy.url)
    (repo,) = inv.repositories
    assert repo.error is None
    assert {m.digest for m in repo.manifests} == {stays.digest}


def test_access_denied_on_one_repository_fails_only_that_one(registry, pusher: Pusher, proxy):
    import pytest

    from retention.errors import AuthenticationError

    pusher.image("open", "v1", created="2024-01-01T00:00:00Z")
    pusher.image("closed", "v1", created="2024-01-01T00:00:00Z", layers=(b"closed",))
    proxy.inject(Fault("GET", r"/v2/closed/tags/list", "status", status=403, times=10))
    repos = {r.name: r for r in scan(proxy.url).repositories}
    assert repos["open"].error is None and len(repos["open"].manifests) == 1
    assert repos["closed"].error and repos["closed"].manifests == ()
    # Every repository refused: the credentials are wrong, the scan as a whole fails.
    proxy.inject(Fault("GET", r"/v2/open/tags/list", "status", status=403, times=10))
    with pytest.raises(AuthenticationError):
        scan(proxy.url)


def test_each_repository_is_recorded_as_it_is_read(registry, pusher: Pusher, proxy):
    """The state records a repository as soon as it is read (in the time the registry spends
    on the others), and the scan's manifests carry the times it knows; a repository that
    could not be read stays as it was recorded."""
    from datetime import timedelta

    from retention.state import State

    state = State.memory()
    a = pusher.image("app", "v1", created="2024-01-01T00:00:00Z")
    b = pusher.image("app", "v2", created="2024-01-01T00:00:00Z", layers=(b"two",))
    other = pusher.image("other", "v1", created="2024-01-01T00:00:00Z", layers=(b"o",))
    t1 = datetime(2026, 1, 1, tzinfo=UTC)
    t2 = t1 + timedelta(days=3)

    def scan_at(t: datetime):
        return scan(proxy.url, cache=state, sightings=state, clock=lambda: t,
                    known_digests=lambda repo: state.known_digests("main", repo))

    first = scan_at(t1)
    # First sight: not known to be older than this run, and tagged.
    assert {(m.first_seen, m.untagged_since) for r in first.repositories
            for m in r.manifests} == {(None, None)}
    assert state.last_tags("main", "app") == {"v1": a.digest, "v2": b.digest}

    pusher.tag("app", "v2", a)  # b loses its only tag
    proxy.inject(Fault("GET", r"/v2/other/tags/list", "status", status=403, times=10))
    repos = {r.name: r for r in scan_at(t2).repositories}
    ms = {m.digest: m for m in repos["app"].manifests}
    assert (ms[a.digest].first_seen, ms[a.digest].untagged_since) == (t1, None)
    assert (ms[b.digest].first_seen, ms[b.digest].untagged_since) == (t1, t2)
    assert state.last_tags("main", "app") == {"v1": a.digest, "v2": a.digest}
    assert repos["other"].error
    assert state.known_digests("main", "other") == [other.digest]
    assert state.last_tags("main", "other") == {"v1": other.digest}


def test_an_orphan_first_seen_untagged_in_this_run_is_in_grace(registry, pusher: Pusher, proxy):
    """An orphan seen for the first time in this run has been untagged for zero time
    (SPEC), however long the scan went on after its repository was recorded."""
    from datetime import timedelta

    from retention.planner import GRACE, Options, plan
    from retention.policy import policies_from_text
    from retention.scanner import ScanOptions
    from retention.state import State

    T0 = datetime(2026, 1, 1, tzinfo=UTC)
    T1 = T0 + timedelta(days=3)
    state = State.memory()
    clock = [T0]
    first = pusher.image("app", "v1", created="2024-01-01T00:00:00Z", layers=(b"1",))
    pusher.image("zzz", "v1", created="2024-01-01T00:00:00Z", layers=(b"z",))

    def read():
        # One repository at a time: app (sorted first) is read before zzz.
        return scan(proxy.url, cache=state, sightings=state, clock=lambda: clock[0],
                    known_digests=lambda r: state.known_digests("main", r),
                    options=ScanOptions(parallel_repositories=1))

    read()  # run 1: app:v1 -> first, tagged
    pusher.image("app", "v1", created="2024-02-01T00:00:00Z", layers=(b"2",))  # first: orphan
    clock[0] = T1

    def slow_scan(_method: str, _path: str) -> None:
        clock[0] = T1 + timedelta(hours=2)  # the rest of the scan takes two hours

    proxy.inject(Fault("GET", r"/v2/zzz/tags/list", "hook", hook=slow_scan))
    inventory = read()  # run 2: first is seen untagged for the first time
    orphan = next(m for r in inventory.repositories for m in r.manifests
                  if m.digest == first.digest)
    # Dated when the scan ended, not when its repository was read two hours earlier ...
    assert orphan.untagged_since == inventory.collected_at == T1 + timedelta(hours=2)
    # ... so the orphan has been untagged for zero time and untagged_grace protects it.
    policy = policies_from_text('name: p\nrepositories: {include: ["**"]}\n'
                                'delete: [{untagged: true}]\n', registries=["main"])
    p = plan(inventory, policy, now=clock[0],
             options=Options(untagged_grace=timedelta(hours=1)))
    assert [a.digest for pp in p.policies for a in pp.actions] == []
    assert {d.digest: d.reason for pp in p.policies for d in pp.protected} == \
        {first.digest: GRACE}
