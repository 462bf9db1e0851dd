"""GitHub Container Registry (SPEC "GitHub Container Registry"), against the suite's emulator
of GitHub's Packages API layered over the real registry (tests/ghcr_emulator.py)."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import Credentials, RegistrySettings, load_config
from retention.errors import ConfigError
from retention.registry.client import RetryPolicy
from retention.registry.ghcr import GhcrClient
from retention.runs import Connections, make_client, run_pass
from retention.scanner import Scanner
from retention.secrets import Secret
from retention.setup import load_setup
from retention.state import State
from tests.clients import OciLayout, skopeo_copy
from tests.ghcr_emulator import (
    ADMIN_MESSAGE,
    DOWNLOADS_MESSAGE,
    ApiFault,
    FakeClock,
    GhcrEmulator,
)
from tests.pusher import Pusher
from tests.servers import Recorder

DAY = timedelta(days=1)
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
OLD = datetime.now(UTC) - 40 * DAY


@pytest.fixture
def ghcr(registry) -> GhcrEmulator:
    emulator = GhcrEmulator(registry.url).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def gh_pusher(ghcr: GhcrEmulator) -> Pusher:
    p = Pusher(ghcr.oci_url, auth=(ghcr.owner, ghcr.token))
    yield p
    p.close()


def settings(em: GhcrEmulator, **overrides) -> RegistrySettings:
    return RegistrySettings(**{
        "name": "gh", "url": em.oci_url, "type": "ghcr", "owner": em.owner,
        "credentials": Credentials(em.owner, Secret(em.token)),
        "owner_type": em.owner_type, "api_url": em.api_url, **overrides})


def scan(em: GhcrEmulator, connections: Connections | None = None, **overrides):
    async def go():
        async with make_client(settings(em, **overrides), connections=connections) as client:
            return await Scanner(client).scan()
    return asyncio.run(go())


def write_config(tmp_path: Path, em: GhcrEmulator, policy: str, *, mode: str = "enforce",
                 extra: str = "") -> Path:
    (tmp_path / "p.yaml").write_text(policy)
    (tmp_path / "token").write_text(em.token + "\n")
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  gh:
    type: ghcr
    url: {em.oci_url}
    owner: {em.owner}
    owner_type: {em.owner_type}
    api_url: {em.api_url}
    token_file: token{extra}
policies: p.yaml
mode: {mode}
untagged_grace: 0s
state_dir: state
""")
    return config


def policy(body: str) -> str:
    return 'name: p\nrepositories: {include: ["**"]}\n' + body


def cli(*args: str) -> tuple[int, dict | str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    try:
        return code, json.loads(out.getvalue()), err.getvalue()
    except ValueError:
        return code, out.getvalue(), err.getvalue()


def run(config: Path, *, clock: FakeClock | None = None, dry_run: bool = False,
        state: State | None = None):
    """One `retention run` pass, the clients waiting on ``clock`` (no real waits)."""
    setup = load_setup(config)
    own = state is None
    state = state or State.open(config.parent / "state")
    connections = Connections(retry=FAST, sleep=clock.sleep if clock else None,
                              wall=clock.time if clock else None)
    try:
        return asyncio.run(run_pass(setup, setup.policies, dry_run=dry_run, state=state,
                                    connections=connections))
    finally:
        if own:
            state.close()


def statuses(result) -> dict[str, str]:
    return {a.digest: result.report.outcomes[(a.registry, a.repository, a.digest)].status
            for a in result.plan.actions}


def orphans(pusher: Pusher, em: GhcrEmulator, repo: str, n: int, *, when=OLD) -> list[str]:
    """``n`` images pushed one after another under tag `latest`: all but the last are
    untagged versions, pushed ``when``."""
    digests = []
    for i in range(n):
        digests.append(pusher.image(repo, "latest", layers=(f"{repo} {i}".encode(),)).digest)
        em.backdate(repo, digests[-1], when)
    return digests[:-1]


# -- config ------------------------------------------------------------------------------


def test_config_ghcr_keys(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(policy("delete: [{untagged: true}]\n"))
    (tmp_path / "token").write_text("ghp_secret_value\n")

    def load(text: str, env: dict | None = None):
        (tmp_path / "retention.yaml").write_text(text + "policies: p.yaml\n")
        return load_config(tmp_path / "retention.yaml", environ=env or {})

    config = load("registries:\n  gh:\n    url: https://ghcr.io\n    owner: My-Org\n"
                  "    token_file: token\n")
    gh = config.registries["gh"]
    assert (gh.type, gh.owner, gh.owner_type, gh.api_url) == (
        "ghcr", "My-Org", "org", "https://api.github.com")  # the defaults for ghcr.io
    assert gh.credentials.password.reveal() == "ghp_secret_value"
    assert "ghp_secret_value" not in repr(gh)
    ghes = load("registries:\n  gh:\n    url: https://containers.ghe.example.com\n"
                "    type: ghcr\n    owner: me\n    owner_type: user\n"
                "    api_url: https://ghe.example.com/api/v3/\n    token_env: GH_TOKEN\n",
                {"GH_TOKEN": "ghp_from_env"}).registries["gh"]
    assert (ghes.owner_type, ghes.api_url) == ("user", "https://ghe.example.com/api/v3")
    assert ghes.credentials.password.reveal() == "ghp_from_env"

    bad = [
        ("    type: ghcr\n    token_file: token\n", "owner is missing"),
        ("    type: ghcr\n    owner: o\n", "token_file (or token_env) is missing"),
        ("    type: ghcr\n    owner: o\n    owner_type: team\n    token_file: token\n",
         "owner_type must be org or user"),
        ("    type: ghcr\n    owner: o\n    api_url: http://api.github.com\n"
         "    token_file: token\n", "must be https when the registry is"),
        ("    type: ghcr\n    owner: o\n    api_url: https://u:p@api.github.com\n"
         "    token_file: token\n", "must not carry a user or password"),
        ("    type: ghcr\n    owner: bad_owner!\n    token_file: token\n",
         "must be a GitHub organization or user name"),
        ("    owner: o\n    token_file: token\n", "registries.gh.owner is for type ghcr only"),
        ("    type: ghcr\n    owner: o\n    token_file: token\n    token_env: X\n",
         "give token_file or token_env, not both"),
        ("    type: ghcr\n    owner: o\n    token_file: token\n    repositories: [other/app]\n",
         "'other/app' is not a package of owner o"),
    ]
    for body, message in bad:
        url = "https://registry.example.com" if "owner is for" in message else \
            "https://ghcr.io"
        with pytest.raises(ConfigError) as info:
            load(f"registries:\n  gh:\n    url: {url}\n{body}")
        assert message in str(info.value), (body, str(info.value))
        assert str(info.value).startswith(str(tmp_path / "retention.yaml") + ":")


# -- repositories and manifests ----------------------------------------------------------


def test_packages_and_versions_are_listed_by_link_paging(ghcr: GhcrEmulator, gh_pusher):
    """250+ versions in a package with / in its name: 3 pages of 100; packages paged by
    Link too; the name sent as %2F; every version, untagged ones too; created_at is the
    push time; bodies read through ghcr.io with a token for the GitHub token."""
    base = gh_pusher.image("my-org/team/tool", "base", layers=(b"shared",))
    for i in range(259):
        gh_pusher.manifest("my-org/team/tool", f"b{i}" if i % 2 else None, {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": base.blobs[0][0], "size": base.blobs[0][1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": base.blobs[1][0], "size": base.blobs[1][1]}],
            "annotations": {"n": str(i)}}, "application/vnd.oci.image.manifest.v1+json")
    for name in ("a", "b", "c", "d"):
        gh_pusher.image(f"my-org/{name}", "v1", layers=(name.encode(),))
    ghcr.backdate("my-org/a", next(iter(ghcr.digests("my-org/a"))), OLD)
    ghcr.packages_per_page = 2  # packages come 2 a page: 3 pages for 5

    inventory = scan(ghcr)
    repos = {r.name: r for r in inventory.repositories}
    assert sorted(repos) == ["my-org/a", "my-org/b", "my-org/c", "my-org/d",
                             "my-org/team/tool"]
    assert all(r.error is None for r in repos.values())
    tool = repos["my-org/team/tool"]
    assert len(tool.manifests) == 260 and ghcr.digests("my-org/team/tool") == {
        m.digest for m in tool.manifests}
    assert sum(1 for m in tool.manifests if not m.tags) == 130  # untagged, listed
    pages = [p for m, p in ghcr.api_requests if "versions" in p and "team%2Ftool" in p]
    assert len(pages) == 3 and "per_page=100" in pages[0]
    assert not any("team/tool/versions" in p for _, p in ghcr.api_requests)
    assert sum(1 for m, p in ghcr.api_requests if p.startswith("/orgs/my-org/packages?")
               or ("/orgs/my-org/packages" in p and "page=" in p and "versions" not in p)) == 3
    (a,) = repos["my-org/a"].manifests
    assert a.pushed is not None and abs(a.pushed - OLD) < timedelta(seconds=2)
    # ghcr.io: the token exchange (bearer), never a catalog, a referrers call or a config.
    mine = [r for r in ghcr.oci_requests if r[2] != "basic"]
    assert mine and {how for _, _, how in mine} <= {"bearer", "none"}
    assert not any("_catalog" in p or "/referrers/" in p or "/blobs/" in p
                   for _, p, _ in mine)


def test_a_package_name_outside_the_grammar_is_unreadable_never_requested(ghcr, gh_pusher):
    gh_pusher.image("my-org/app", "v1")
    ghcr.packages["Bad..Name"] = ghcr.packages["app"]
    repos = {r.name: r for r in scan(ghcr).repositories}
    assert repos["my-org/Bad..Name"].error is not None
    assert "never requested" in repos["my-org/Bad..Name"].error
    assert repos["my-org/app"].error is None
    assert not any("Bad" in p for _, p in ghcr.api_requests[1:])


def test_orphans_are_found_on_the_first_run(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    """Every version is listed: a re-pushed tag's old version is an orphan at once, with no
    state from an earlier run. Deleted through the API by version id, never the OCI
    DELETE, each after a GET of that version."""
    old = orphans(gh_pusher, ghcr, "my-org/web", 3)
    ids = {d: ghcr.version("my-org/web", d).id for d in old}
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true, older_than: 1d}]\n"))
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert {a["digest"]: a["status"] for a in doc["actions"]} == dict.fromkeys(old, "deleted")
    assert ghcr.token not in err + json.dumps(doc)  # never in output or logs
    assert "github api requests" in err  # the run's request counts, logged
    assert all(a["bytes"] > 0 for a in doc["actions"])  # as on distribution
    assert len(ghcr.digests("my-org/web")) == 1
    assert sorted(ghcr.deletions) == sorted(ids.values())
    assert not any(m == "DELETE" for m, _, _ in ghcr.oci_requests)
    requests = [(m, p) for m, p in ghcr.api_requests if "/versions/" in p]
    for digest, vid in ids.items():
        delete = requests.index(("DELETE", f"/orgs/my-org/packages/container/web/versions/{vid}"))
        assert requests[delete - 1] == ("GET", f"/orgs/my-org/packages/container/web/versions/"
                                               f"{vid}"), digest


# -- the failure stories of the cleanup actions ------------------------------------------


def test_multi_arch_children_are_never_deleted_while_their_index_stays(tmp_path, ghcr,
                                                                        gh_pusher):
    """actions/delete-package-versions#162, snok#43: "delete untagged" deleted the platform
    children of tagged multi-arch images. Pushed with skopeo, as BuildKit lays it out;
    beside them a real orphan, which goes."""
    layout = OciLayout(tmp_path / "oci")
    kept = layout.buildx_image("v1", created=OLD, content=b"release one")
    skopeo_copy(layout.path, "v1", ghcr.oci_url.split("//")[1], "my-org/app",
                creds=f"{ghcr.owner}:{ghcr.token}")
    for digest in (kept.index, kept.platform, kept.attestation):
        ghcr.backdate("my-org/app", digest, OLD)
    assert ghcr.tags_of("my-org/app", kept.platform) == []  # its own untagged version
    (orphan,) = orphans(gh_pusher, ghcr, "my-org/app", 2)
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert {a["digest"]: a["status"] for a in doc["actions"]} == {orphan: "deleted"}
    assert {kept.index, kept.platform, kept.attestation} <= ghcr.digests("my-org/app")
    assert [ghcr.packages["app"][i].digest for i in ghcr.deletions] == [orphan]


def test_an_old_multi_arch_image_goes_whole_with_its_attestation(tmp_path, ghcr, gh_pusher):
    layout = OciLayout(tmp_path / "oci")
    old = layout.buildx_image("pr-1", created=OLD, content=b"one")
    new = layout.buildx_image("pr-2", created=OLD, content=b"two")
    host = ghcr.oci_url.split("//")[1]
    for tag in ("pr-1", "pr-2"):
        skopeo_copy(layout.path, tag, host, "my-org/app", creds=f"{ghcr.owner}:{ghcr.token}")
    gh_pusher.image("my-org/app", "main", layers=(b"main",))  # a tagged version stays
    for digest in (old.index, old.platform, old.attestation):
        ghcr.backdate("my-org/app", digest, OLD)
    config = write_config(tmp_path, ghcr, policy(
        "delete: [{tags: [\"pr-*\"], older_than: 30d}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert {a["digest"]: a["status"] for a in doc["actions"]} == {
        old.index: "deleted", old.platform: "deleted", old.attestation: "deleted"}
    order = [ghcr.packages["app"][i].digest for i in ghcr.deletions]
    assert order[0] == old.index  # the index first: never a tagged image without a child
    assert {new.index, new.platform, new.attestation} <= ghcr.digests("my-org/app")


def test_signatures_follow_their_subject_and_stay_with_a_kept_one(tmp_path, ghcr, gh_pusher):
    """dataaxiom#104: the cosign signature of a kept image deleted as untagged junk. Here
    a kept image's .sig stays (`referrer`); a deleted image's .sig and .att go with it."""
    kept = gh_pusher.image("my-org/app", "v1.0", layers=(b"release",))
    gone = gh_pusher.image("my-org/app", "pr-7", layers=(b"pr",))
    kept_sig = gh_pusher.cosign_signature("my-org/app", kept)
    gone_sig = gh_pusher.cosign_signature("my-org/app", gone)
    gone_att = gh_pusher.cosign_signature("my-org/app", gone, "att")
    for digest in ghcr.digests("my-org/app"):
        ghcr.backdate("my-org/app", digest, OLD)
    config = write_config(tmp_path, ghcr, policy(
        "keep: [{tags: [\"v*\"]}]\n"
        "delete: [{tags: [\"pr-*\"], older_than: 1d}, {untagged: true}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert {a["digest"]: (a["status"], a["cascade_of"]) for a in doc["actions"]} == {
        gone.digest: ("deleted", None), gone_sig.digest: ("deleted", gone.digest),
        gone_att.digest: ("deleted", gone.digest)}
    assert ghcr.digests("my-org/app") == {kept.digest, kept_sig.digest}


def test_a_tag_moved_onto_a_planned_version_survives(tmp_path, ghcr, gh_pusher):
    """Between the plan and its DELETE someone tags the planned version `release`: the
    version's read just before the DELETE shows it, and it is skipped (`changed`)."""
    planned = gh_pusher.image("my-org/app", "pr-1", layers=(b"pr one",))
    other = gh_pusher.image("my-org/app", "pr-2", layers=(b"pr two",))
    gh_pusher.image("my-org/app", "main", layers=(b"main",))
    for digest in (planned.digest, other.digest):
        ghcr.backdate("my-org/app", digest, OLD)
    vid = ghcr.version("my-org/app", planned.digest).id
    ghcr.faults.append(ApiFault("GET", rf"/versions/{vid}$",
                                hook=lambda *_: gh_pusher.tag("my-org/app", "release",
                                                              planned)))
    config = write_config(tmp_path, ghcr, policy(
        "delete: [{tags: [\"pr-*\"], older_than: 1d}]\n"))
    result = run(config)
    assert statuses(result) == {planned.digest: "skipped", other.digest: "deleted"}
    reason = result.report.outcomes[("gh", "my-org/app", planned.digest)].reason
    assert reason.startswith("changed: tags are now ['pr-1', 'release']")
    assert planned.digest in ghcr.digests("my-org/app")
    assert ghcr.tags_of("my-org/app", planned.digest) == ["pr-1", "release"]


# -- rate limits -------------------------------------------------------------------------


def test_a_secondary_limit_mid_deletions_is_waited_out_no_version_deleted_twice(
        tmp_path, ghcr: GhcrEmulator, gh_pusher):
    """snok#59, #93: secondary limits ended runs halfway. GitHub allows 80 content-creating
    requests a minute; here 4 (the emulator's setting), so the 5th DELETE is refused with
    403 and retry-after: retention waits as told (on a clock of the test's: no real wait),
    reads the version again, and goes on. Nothing is sent while the limit holds."""
    clock = FakeClock()
    ghcr.clock = clock.time
    ghcr.per_minute = 4
    old = orphans(gh_pusher, ghcr, "my-org/app", 11)
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config, clock=clock)
    assert set(statuses(result).values()) == {"deleted"} and len(statuses(result)) == 10
    assert ghcr.digests("my-org/app").isdisjoint(old)
    assert len(ghcr.deletions) == len(set(ghcr.deletions)) == 10  # none twice
    assert ghcr.races == []  # never raced
    limited = [a for a in ghcr.api_answered if a[2] == 403]
    assert len(limited) == 2  # at the 5th and the 9th
    assert sum(clock.slept) >= 2 * 60 - 2  # two minutes waited, as told
    assert not result.failed


@pytest.mark.parametrize("status", [403, 429])
def test_a_secondary_limit_without_retry_after_waits_a_minute_then_longer(
        tmp_path, ghcr, gh_pusher, status):
    clock = FakeClock()
    ghcr.clock = clock.time
    orphans(gh_pusher, ghcr, "my-org/app", 6)
    # The third DELETE is limited, and again after the first minute: the wait doubles.
    ghcr.faults.append(ApiFault("DELETE", "/versions/", status=status, skip=2, times=2,
                                message="You have exceeded a secondary rate limit."))
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config, clock=clock)
    assert set(statuses(result).values()) == {"deleted"}
    assert len(ghcr.deletions) == len(set(ghcr.deletions)) == 5
    assert [round(s) for s in clock.slept if s >= 1] == [60, 120]


def test_a_primary_limit_waits_for_its_reset(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    clock = FakeClock()
    ghcr.clock = clock.time
    for name in ("a", "b"):
        orphans(gh_pusher, ghcr, f"my-org/{name}", 2)
    # 6 requests an hour: the packages, 2 packages' versions, a version's read and its
    # DELETE, the other's read; the second DELETE meets the limit.
    ghcr.primary_limit = 6
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config, clock=clock)
    assert set(statuses(result).values()) == {"deleted"} and len(ghcr.deletions) == 2
    assert ghcr.races == []
    # The answer that spent the last request said so (x-ratelimit-remaining: 0): the next
    # request waits for the reset instead of meeting a refusal; one already on its way then
    # (two packages are read at once) may still meet it, once.
    assert [s for _, _, s in ghcr.api_answered].count(403) <= 1
    # Waited until the reset (whole seconds), an hour after the window began, and a second
    # more.
    # (A request already on its way when the limit was spent waits the second left.)
    (waited,) = [s for s in clock.slept if s > 60]
    assert 3600 <= waited <= 3601
    assert sum(clock.slept) <= 3602


def test_a_403_that_is_no_limit_is_a_permission_error(tmp_path, ghcr, gh_pusher):
    """A token without delete:packages (or admin on the package): 403 with GitHub's
    message. Not waited for: every deletion on the registry fails, saying why."""
    clock = FakeClock()
    ghcr.clock = clock.time
    ghcr.scopes.discard("delete:packages")
    orphans(gh_pusher, ghcr, "my-org/app", 3)
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config, clock=clock)
    assert set(statuses(result).values()) == {"failed"}
    assert result.failed and clock.slept == []
    reasons = {o.reason for o in result.report.outcomes.values()}
    assert all(ADMIN_MESSAGE in r for r in reasons)
    assert sum(1 for m, p in ghcr.api_requests if m == "DELETE") == 1  # then it stopped


def test_a_wait_beyond_an_hour_ends_the_run_every_deletion_done_or_not_started(
        tmp_path, ghcr, gh_pusher):
    clock = FakeClock()
    ghcr.clock = clock.time
    old = orphans(gh_pusher, ghcr, "my-org/app", 6)
    ghcr.faults.append(ApiFault("DELETE", "/versions/", status=429, skip=2,
                                message="You have exceeded a secondary rate limit.",
                                headers={"retry-after": "7200"}))
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    sent = len(ghcr.api_requests)
    result = run(config, clock=clock)
    outcomes = statuses(result)
    assert sorted(outcomes.values()) == ["deleted", "deleted", "failed", "failed", "failed"]
    assert result.failed and clock.slept == []
    gone = [d for d in old if outcomes[d] == "deleted"]
    assert ghcr.digests("my-org/app").isdisjoint(gone)
    assert len(ghcr.deletions) == 2
    # Nothing was sent to GitHub after the limit's answer.
    after = ghcr.api_requests[sent:]
    limited = next(i for i, (m, _) in enumerate(after) if m == "DELETE" and
                   sum(1 for mm, _ in after[:i + 1] if mm == "DELETE") == 3)
    assert after[limited + 1:] == []
    text = " ".join(o.reason for o in result.report.outcomes.values() if o.reason)
    assert "longer than the hour retention waits at once" in text


# -- refusals ----------------------------------------------------------------------------


def test_the_last_tagged_version_is_never_planned(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    """A policy that would empty a package keeps its newest tagged version, with the
    children of that index (`last-tagged-version`); GitHub would refuse its DELETE."""
    first = gh_pusher.image("my-org/app", "pr-1", layers=(b"1",))
    children = [gh_pusher.image("my-org/app", None, layers=(b"amd",), arch="amd64"),
                gh_pusher.image("my-org/app", None, layers=(b"arm",), arch="arm64")]
    newest = gh_pusher.index("my-org/app", "pr-2", children)
    for digest in ghcr.digests("my-org/app"):
        ghcr.backdate("my-org/app", digest, OLD)
    ghcr.backdate("my-org/app", newest.digest, OLD + DAY)
    config = write_config(tmp_path, ghcr, policy(
        "delete: [{tags: [\"pr-*\"], older_than: 1d}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert {a["digest"]: a["status"] for a in doc["actions"]} == {first.digest: "deleted"}
    assert {p["digest"]: p["reason"] for p in doc["protected"]} == {
        newest.digest: "last-tagged-version"}
    assert ghcr.digests("my-org/app") == {newest.digest, *(c.digest for c in children)}
    assert not any(s == 400 for _, _, s in ghcr.api_answered)  # never refused


def test_other_refusals_fail_that_version_only(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    old = orphans(gh_pusher, ghcr, "my-org/app", 4)
    popular = ghcr.version("my-org/app", old[1])
    popular.public, popular.downloads = True, 12_000
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config)
    assert statuses(result) == {old[0]: "deleted", old[1]: "failed", old[2]: "deleted"}
    reason = result.report.outcomes[("gh", "my-org/app", old[1])].reason
    assert DOWNLOADS_MESSAGE in reason and "version" in reason
    assert result.failed


# -- credentials ---------------------------------------------------------------------------


def test_the_token_goes_to_api_url_and_ghcr_only(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    """A Link header leading to another host is not followed: the listing is incomplete,
    the repository unreadable, and the other host receives nothing."""
    orphans(gh_pusher, ghcr, "my-org/app", 2)
    elsewhere = Recorder()
    elsewhere.start()
    try:
        ghcr.max_per_page = 1
        real = ghcr.api_url
        ghcr.api_url = elsewhere.url  # the emulator writes its Links to the other host
        inventory = scan(ghcr, api_url=real)
        ghcr.api_url = real
        (repo,) = inventory.repositories
        assert repo.error is not None and "points away" in repo.error
        assert elsewhere.received == []
    finally:
        elsewhere.stop()


def test_request_counts_are_exported_like_any_registry(ghcr, gh_pusher):
    orphans(gh_pusher, ghcr, "my-org/app", 2)
    seen: Counter = Counter()

    async def go():
        async with GhcrClient(settings(ghcr), observe=lambda method, code, _s: seen.update(
                [(method, code)])) as client:
            await Scanner(client).scan()
            await client.delete_manifest("my-org/app", sorted(
                d for d in ghcr.digests("my-org/app") if not ghcr.tags_of("my-org/app", d))[0])
    asyncio.run(go())
    assert seen[("GET", "200")] >= 3 and seen[("DELETE", "204")] == 1


# -- restore -------------------------------------------------------------------------------


def test_restore_uses_githubs_restore_and_checks_the_digest_is_served(tmp_path, ghcr,
                                                                      gh_pusher):
    children = [gh_pusher.image("my-org/app", None, layers=(b"amd",), arch="amd64"),
                gh_pusher.image("my-org/app", None, layers=(b"arm",), arch="arm64")]
    index = gh_pusher.index("my-org/app", "pr-1", children)
    single = gh_pusher.image("my-org/app", "pr-2", layers=(b"single",))
    gh_pusher.image("my-org/app", "main", layers=(b"main",))
    for digest in (index.digest, single.digest, *(c.digest for c in children)):
        ghcr.backdate("my-org/app", digest, OLD)
    config = write_config(tmp_path, ghcr, policy(
        "delete: [{tags: [\"pr-*\"], older_than: 1d}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and len(ghcr.deletions) == 4, doc
    ids = {ghcr.packages["app"][i].digest: i for i in ghcr.deletions}
    # pr-2 was pushed again meanwhile: its tag is left where it is now.
    moved = gh_pusher.image("my-org/app", "pr-2", layers=(b"newer",))

    code, doc, _ = cli("restore", "--config", str(config), "--since", "1h", "--dry-run",
                       "--output", "json")
    assert {e["digest"]: e["status"] for e in doc["entries"]} == dict.fromkeys(ids, "planned")
    assert {e["detail"] for e in doc["entries"] if e["digest"] == index.digest} == {
        f"would restore version {ids[index.digest]} (GitHub's restore), then tags pr-1"}
    assert not any(m == "POST" for m, _ in ghcr.api_requests)
    code, doc, _ = cli("restore", "--config", str(config), "--since", "1h", "--output", "json")
    by = {e["digest"]: e for e in doc["entries"]}
    assert by[index.digest]["status"] == "restored", by
    assert by[index.digest]["detail"] == f"version {ids[index.digest]} restored by GitHub; " \
                                         "tags back: pr-1"
    assert by[single.digest]["status"] == "tag-moved"
    assert f"tag pr-2 now points to sha256:{moved.digest[7:19]}" in by[single.digest]["detail"]
    assert code == 1  # a tag left elsewhere is reported as not fully restored
    posts = [p for m, p in ghcr.api_requests if m == "POST"]
    assert sorted(posts) == sorted(f"/orgs/my-org/packages/container/app/versions/{i}/restore"
                                   for i in ids.values())
    # Children before their index; no manifest pushed through ghcr.io for them.
    assert posts.index(f"/orgs/my-org/packages/container/app/versions/{ids[index.digest]}"
                       "/restore") == 2
    assert not any(m == "PUT" and "/manifests/" in p for m, p, how in ghcr.oci_requests
                   if how == "bearer")
    for digest in ids:
        assert gh_pusher.exists("my-org/app", digest)
    assert ghcr.tags_of("my-org/app", index.digest) == ["pr-1"]


def test_restore_after_30_days_pushes_the_bytes_again(tmp_path, ghcr, gh_pusher):
    (orphan,) = orphans(gh_pusher, ghcr, "my-org/app", 2)
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and ghcr.deletions, doc
    ghcr.packages["app"][ghcr.deletions[0]].deleted_at -= 31 * 86400  # beyond GitHub's
    code, doc, _ = cli("restore", "--config", str(config), "--digest", orphan,
                       "--output", "json")
    assert code == 0, doc
    (entry,) = doc["entries"]
    assert entry["status"] == "restored" and entry["detail"] == "pushed"
    assert not any(m == "POST" for m, _ in ghcr.api_requests)
    assert orphan in ghcr.digests("my-org/app")  # a new version of the same digest


# -- the rate-limit budget (docs/registries.md) ----------------------------------------------


def test_a_token_deletes_500_versions_an_hour(tmp_path, ghcr: GhcrEmulator, gh_pusher):
    """Measured against the emulator's documented limits (GitHub's: 5,000 requests an hour;
    80 content-creating requests a minute, 500 an hour): the DELETEs are the bound. Each
    deletion costs 2 requests (the version's read, its DELETE), the listing one per 100
    versions: 500 deletions an hour, in bursts of 80 a minute, the rest the next hour."""
    clock = FakeClock()
    ghcr.clock = clock.time
    start = clock.now
    base = gh_pusher.image("my-org/app", "latest", layers=(b"shared",))
    for i in range(540):  # untagged versions, pushed by digest
        gh_pusher.manifest("my-org/app", None, {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": base.blobs[0][0], "size": base.blobs[0][1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": base.blobs[1][0], "size": base.blobs[1][1]}],
            "annotations": {"n": str(i)}}, "application/vnd.oci.image.manifest.v1+json")
    config = write_config(tmp_path, ghcr, policy("delete: [{untagged: true}]\n"))
    result = run(config, clock=clock)
    assert set(statuses(result).values()) == {"deleted"} and len(ghcr.deletions) == 540
    assert ghcr.races == []
    times = sorted(v.deleted_at - start for v in ghcr.packages["app"].values()
                   if v.deleted_at is not None)
    assert sum(1 for t in times if t < 3600) == 500
    assert max(Counter(int(t // 60) for t in times if t < 3600).values()) == 80
    assert 3600 <= times[500] < 3700
    requests = Counter(m for m, p in ghcr.api_requests if p != "/rate_limit")
    limited = sum(1 for _, _, s in ghcr.api_answered if s == 403)
    assert requests["DELETE"] == 540 + limited
    # The reads: each version's, the listing's pages, and the listing again whenever the
    # executor looks for versions pushed meanwhile (once a confirm window).
    # (a few dozen here; bounded loosely: their number follows the machine's speed).
    assert 540 + limited <= requests["GET"] < 1.5 * (540 + limited)
    assert (requests["GET"] + requests["DELETE"]) / 540 < 2.6  # of the 5,000 an hour
