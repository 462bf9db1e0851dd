"""Images written by real clients age out as SPEC's "Time of a manifest" says: BuildKit's
attestations, reproducible builds (buildah --timestamp 0), oras artifacts, Helm charts,
cosign signatures and the OCI referrers fallback tag, on a real registry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.runs import run_pass
from retention.setup import load_setup
from retention.state import State
from tests.clients import Buildah, OciLayout, skopeo_copy
from tests.pusher import Pusher
from tests.servers import Registry
from tests.test_run_e2e import cli, deleted_digests, write_config

DAY = timedelta(days=1)


def _policy(body: str) -> str:
    return "name: p\nrepositories: {include: [\"**\"]}\n" + body


class Runs:
    """`retention run` passes on one state, each at a clock the test sets."""

    def __init__(self, tmp_path: Path, url: str, policy: str):
        self.config = write_config(tmp_path, url, policy=policy)
        self.setup = load_setup(self.config)
        self.state = State.open(tmp_path / "state")

    def at(self, when: datetime):
        return asyncio.run(run_pass(self.setup, self.setup.policies, dry_run=False,
                                    state=self.state, clock=lambda: when))

    def close(self) -> None:
        self.state.close()


def test_buildx_image_and_its_attestation_age_out_together(tmp_path, registry: Registry,
                                                           pusher: Pusher):
    now = datetime.now(UTC)
    layout = OciLayout(tmp_path / "oci")
    old = layout.buildx_image("build-1", created=now - 40 * DAY, content=b"build one")
    new = layout.buildx_image("build-2", created=now - 20 * DAY, content=b"build two")
    skopeo_copy(layout.path, "build-1", registry.host, "app")
    skopeo_copy(layout.path, "build-2", registry.host, "app")
    assert pusher.exists("app", old.attestation) and pusher.exists("app", old.index)

    config = write_config(tmp_path, registry.url, policy=_policy(
        "delete: [{tags: [\"build-*\"], older_than: 30d}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {old.index, old.platform, old.attestation}
    sources = {a["digest"]: a["time_source"] for a in doc["actions"]}
    assert sources[old.index] == "children"  # the platform image's config, not attestation
    assert sources[old.attestation] == "children"  # it goes with its index
    assert not pusher.exists("app", old.attestation)
    for digest in (new.index, new.platform, new.attestation):
        assert pusher.exists("app", digest)


def test_orphaned_buildx_index_is_collected_by_untagged_rule(tmp_path, registry, pusher):
    now = datetime.now(UTC)
    layout = OciLayout(tmp_path / "oci")
    old = layout.buildx_image("main", created=now - 20 * DAY, content=b"first")
    skopeo_copy(layout.path, "main", registry.host, "app")
    runs = Runs(tmp_path, registry.url, _policy(
        "delete: [{untagged: true, older_than: 7d}]\n"))
    try:
        assert runs.at(now).plan.actions == ()  # records app:main
        newer = OciLayout(tmp_path / "oci2").buildx_image("main", created=now,
                                                          content=b"second")
        skopeo_copy(tmp_path / "oci2", "main", registry.host, "app")
        result = runs.at(now + DAY)
        gone = {a.digest for a in result.plan.actions}
        assert gone == {old.index, old.platform, old.attestation}
        assert not pusher.exists("app", old.index)
        assert pusher.exists("app", newer.attestation)
    finally:
        runs.close()


def test_reproducible_nightlies_keep_the_last_pushes(tmp_path, registry: Registry, pusher):
    """buildah --timestamp 0 writes 1970: retention ages them from first sight, and
    newest: 2 keeps the two pushed last (seen: nightly-4 deleted, nightly-1 kept)."""
    buildah = Buildah(tmp_path / "buildah")
    runs = Runs(tmp_path, registry.url, _policy(
        "keep: [{newest: 2}]\ndelete: [{tags: [\"nightly-*\"]}]\n"))
    start = datetime.now(UTC)
    digests = {}
    try:
        for night in range(1, 5):
            digests[night] = buildah.push(registry.host, "tools", f"nightly-{night}",
                                          content=f"nightly {night}".encode())
            result = runs.at(start + night * DAY)
        assert pusher.tags("tools") == ["nightly-3", "nightly-4"]
        assert not pusher.exists("tools", digests[1]) and not pusher.exists("tools", digests[2])
    finally:
        runs.close()
    # nightly-3 is timed by its first sight a day ago; nightly-4, first seen now, is unknown.
    sources = {d.digest: d.time.source for d in result.plan.policies[0].kept}
    assert sources == {digests[3]: "first-seen", digests[4]: None}


def test_reproducible_build_ages_from_first_sight(tmp_path, registry: Registry, pusher):
    buildah = Buildah(tmp_path / "buildah")
    digest = buildah.push(registry.host, "tools", "pr-1", content=b"tool")
    runs = Runs(tmp_path, registry.url, _policy(
        "delete: [{tags: [\"pr-*\"], older_than: 7d}]\n"))
    start = datetime.now(UTC)
    try:
        assert runs.at(start).plan.actions == ()  # first seen now: unknown
        assert runs.at(start + 5 * DAY).plan.actions == ()  # seen 5d, not older than 7d
        result = runs.at(start + 8 * DAY)
        (action,) = result.plan.actions
        assert action.digest == digest and action.time.source == "first-seen"
        assert not pusher.exists("tools", digest)
    finally:
        runs.close()


def test_1970_image_does_not_push_a_release_out_of_newest(tmp_path, registry, pusher):
    now = datetime.now(UTC)
    old = pusher.image("svc", "release-1", created=now - 20 * DAY, layers=(b"r1",))
    new = pusher.image("svc", "release-2", created=now - 10 * DAY, layers=(b"r2",))
    tools = Buildah(tmp_path / "buildah").push(registry.host, "svc", "tools", content=b"t")
    config = write_config(tmp_path, registry.url, policy=_policy(
        "keep: [{newest: 2}]\ndelete: [{tags: [\"*\"]}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert doc["actions"] == []
    for digest in (old.digest, new.digest, tools):
        assert pusher.exists("svc", digest)
    code, table, _ = cli("plan", "--config", str(config))
    assert code == 0 and "keep rule 1" in table


def test_untagged_for_measures_from_losing_the_tag(tmp_path, registry, pusher: Pusher):
    now = datetime.now(UTC)
    fifty_days_old = pusher.image("app", "latest", created=now - 50 * DAY, layers=(b"v1",))
    runs = Runs(tmp_path, registry.url, _policy(
        "delete: [{untagged: true, untagged_for: 7d}]\n"))
    try:
        runs.at(now)
        pusher.image("app", "latest", created=now, layers=(b"v2",))
        assert runs.at(now + DAY).plan.actions == ()  # untagged since just now
        assert runs.at(now + 7 * DAY).plan.actions == ()  # 6 days
        (action,) = runs.at(now + 8 * DAY).plan.actions
        assert action.digest == fifty_days_old.digest
        assert action.reason == "delete rule 1: untagged, untagged for at least 7d"
        assert not pusher.exists("app", fifty_days_old.digest)
    finally:
        runs.close()


def test_oras_artifact_is_timed_by_its_created_annotation(tmp_path, registry, pusher):
    import oras.client

    now = datetime.now(UTC)
    stamp = (now - 40 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    artifact = tmp_path / "report.txt"
    artifact.write_text("an sbom, say")
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(target=f"{registry.host}/artifacts:sbom-1", files=[str(artifact)],
                manifest_annotations={"org.opencontainers.image.created": stamp},
                disable_path_validation=True)
    manifest = client.get_manifest(f"{registry.host}/artifacts:sbom-1")
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json" or \
        manifest["config"]["mediaType"].startswith("application/vnd.unknown")
    config = write_config(tmp_path, registry.url, policy=_policy(
        "delete: [{tags: [\"sbom-*\"], older_than: 30d}]\n"))
    code, doc, _ = cli("plan", "--config", str(config), "--output", "json")
    assert code == 0
    (action,) = doc["actions"]
    assert action["time_source"] == "annotation"


def test_helm_chart_ages_out(tmp_path, registry: Registry, pusher):
    import helm_sdkpy

    chart = tmp_path / "mychart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: mychart\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("{}\n")
    helm = helm_sdkpy.Configuration(plain_http=True)
    packaged = asyncio.run(helm_sdkpy.Package(helm).run(str(chart), str(tmp_path)))
    asyncio.run(helm_sdkpy.Push(helm).run(packaged, f"oci://{registry.host}/charts",
                                          plain_http=True))
    assert pusher.tags("charts/mychart") == ["0.1.0"]
    runs = Runs(tmp_path, registry.url, _policy(
        "delete: [{tags: [\"0.*\"], older_than: 30d}]\n"))
    start = datetime.now(UTC)
    try:
        assert runs.at(start).plan.actions == ()
        (action,) = runs.at(start + 40 * DAY).plan.actions
        assert action.time is not None and action.time.source in ("annotation", "first-seen")
        assert action.media_type == "application/vnd.oci.image.manifest.v1+json"
        assert not pusher.exists("charts/mychart", "0.1.0")
    finally:
        runs.close()


def test_cosign_and_referrers_fallback_go_with_their_image(tmp_path, registry, pusher):
    now = datetime.now(UTC)
    image = pusher.image("app", "pr-1", created=now - 40 * DAY, layers=(b"img",))
    sig = pusher.cosign_signature("app", image, "sig")
    att = pusher.cosign_signature("app", image, "att")
    sbom = pusher.oci_referrer("app", image, "application/spdx+json")
    fallback = f"sha256-{image.digest.split(':')[1]}"
    config = write_config(tmp_path, registry.url, policy=_policy(
        "delete: [{tags: [\"pr-*\"], older_than: 30d}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    gone = deleted_digests(doc)
    assert {image.digest, sig.digest, att.digest, sbom.digest} <= gone
    assert not pusher.exists("app", fallback)
    by = {a["digest"]: a for a in doc["actions"]}
    assert by[image.digest]["time_source"] == "created"
    assert by[sig.digest]["cascade_of"] == image.digest
