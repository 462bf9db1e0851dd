"""Azure Container Registry, against the suite's emulator of its documented API."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import Credentials, RegistrySettings
from retention.errors import AuthenticationError
from retention.registry.client import RetryPolicy
from retention.runs import Connections, make_client, run_pass
from retention.scanner import Scanner
from retention.secrets import Secret
from retention.setup import load_setup
from retention.state import State
from tests.acr_emulator import AcrEmulator, EmulatorFault, FakeEntraCredential

NOW = datetime.now(UTC)
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


@pytest.fixture
def acr():
    emulator = AcrEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


def acr_settings(acr: AcrEmulator, *, password: str | None = None) -> RegistrySettings:
    creds = Credentials(acr.admin[0], Secret(password or acr.admin[1])) \
        if password != "" else None
    return RegistrySettings(name="acr", url=acr.url, type="acr", credentials=creds)


def scan(settings: RegistrySettings, connections: Connections | None = None):
    async def go():
        async with make_client(settings, connections=connections) as client:
            return await Scanner(client).scan()
    return asyncio.run(go())


def write_config(tmp_path: Path, acr: AcrEmulator, policy: str, *, mode: str = "enforce",
                 credentials: bool = True) -> Path:
    (tmp_path / "p.yaml").write_text(policy)
    (tmp_path / "pw").write_text(acr.admin[1])
    creds = f"\n    username: {acr.admin[0]}\n    password_file: pw" if credentials else ""
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  acr:
    url: {acr.url}
    type: acr{creds}
policies: p.yaml
mode: {mode}
untagged_grace: 0s
state_dir: state
""")
    return config


def test_listing_is_one_paged_call_per_100_manifests(acr: AcrEmulator):
    for i in range(250):
        acr.image("big/app", f"b{i}", created=NOW - timedelta(days=i), seed=str(i))
    for i in range(5):
        acr.image("small", seed=f"untagged {i}", created=NOW - timedelta(days=3))
    inventory = scan(acr_settings(acr))
    repos = {r.name: r for r in inventory.repositories}
    assert len(repos["big/app"].manifests) == 250
    assert len(repos["small"].manifests) == 5  # untagged manifests are listed too
    # Answered pages (the first request of each scope also meets the 401 challenge).
    assert acr.count("GET", r"/acr/v1/big/app/_manifests", status=200) == 3
    assert acr.count("GET", r"/acr/v1/small/_manifests", status=200) == 1
    # No tag-by-tag resolution and no config blobs: the listing has it all.
    assert acr.count("HEAD", r"/manifests/") == 0
    assert acr.count("GET", r"/blobs/") == 0
    m = next(m for m in repos["big/app"].manifests if m.tags == ("b3",))
    assert m.pushed is not None and abs(m.pushed - (NOW - timedelta(days=3))) < timedelta(
        seconds=1)


def test_locks_on_manifest_or_tag(acr: AcrEmulator, tmp_path: Path):
    old = NOW - timedelta(days=30)
    locked = acr.image("app", "pr-1", created=old, seed="1")
    by_tag = acr.image("app", "pr-2", created=old, seed="2")
    free = acr.image("app", "pr-3", created=old, seed="3")
    acr.lock_manifest("app", locked)
    acr.lock_tag("app", "pr-2")
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                          'delete: [{tags: ["pr-*"], older_than: 1d}]\n')
    out = io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out) == 0
    doc = json.loads(out.getvalue())
    assert {a["digest"] for a in doc["actions"]} == {free}
    assert {p["digest"]: p["reason"] for p in doc["protected"]} == {locked: "locked",
                                                                   by_tag: "locked"}
    assert set(acr.repos["app"]) == {locked, by_tag}


def test_classic_acr_sequence(acr: AcrEmulator, tmp_path: Path):
    first = acr.image("web", "latest", created=NOW - timedelta(days=10), seed="v1")
    second = acr.image("web", "latest", created=NOW - timedelta(days=1), seed="v2")
    assert acr.tags_of("web", first) == []  # ACR lists it with tags null: an orphan
    config = write_config(tmp_path, acr, 'name: orphans\nrepositories: {include: ["**"]}\n'
                          'delete: [{untagged: true, older_than: 1d}]\n')
    out = io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out) == 0
    doc = json.loads(out.getvalue())
    assert [(a["digest"], a["status"]) for a in doc["actions"]] == [(first, "deleted")]
    assert acr.count("DELETE", rf"/v2/web/manifests/{first}", status=202) == 1
    assert set(acr.repos["web"]) == {second}


def test_index_children_and_referrers(acr: AcrEmulator, tmp_path: Path):
    old = NOW - timedelta(days=30)
    amd = acr.image("multi", created=old, seed="amd")
    arm = acr.image("multi", created=old, seed="arm")
    index = acr.index("multi", "pr-1", children=[amd, arm], created=old)
    sbom = acr.image("multi", created=old, seed="sbom", subject=index)
    keeper_child = acr.image("multi", created=old, seed="keeper")
    acr.index("multi", "v1", children=[keeper_child], created=old)
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                          'delete: [{tags: ["pr-*"]}, {untagged: true}]\n')
    out = io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out) == 0
    doc = json.loads(out.getvalue())
    assert {a["digest"] for a in doc["actions"]} == {index, amd, arm, sbom}
    assert keeper_child in acr.repos["multi"]


def test_failed_index_read_protects_the_repository(acr: AcrEmulator, tmp_path: Path):
    old = NOW - timedelta(days=30)
    child = acr.image("multi", created=old, seed="c")
    index = acr.index("multi", "v1", children=[child], created=old)
    acr.image("multi", created=old, seed="orphan")
    acr.throttle.append(["GET", rf"/v2/multi/manifests/{index}", 100, 500])
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                          'delete: [{untagged: true}]\n')
    out = io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out,
                stderr=io.StringIO()) == 1
    doc = json.loads(out.getvalue())
    assert doc["actions"] == []
    assert doc["errors"][0]["repository"] == "multi"
    assert len(acr.repos["multi"]) == 3


def test_throttling_honours_retry_after(acr: AcrEmulator):
    acr.image("app", "v1", seed="x")
    acr.throttle.append(["GET", r"/acr/v1/app/_manifests", 2, 429])
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go():
        settings = acr_settings(acr)
        from retention.registry.client import RegistryClient

        async with RegistryClient(settings, retry=FAST, sleep=fake_sleep) as client:
            return await Scanner(client).scan()

    inventory = asyncio.run(go())
    assert len(inventory.repositories[0].manifests) == 1
    assert sleeps == [1.0, 1.0]


def test_wrong_admin_password(acr: AcrEmulator):
    acr.image("app", "v1")
    with pytest.raises(AuthenticationError) as info:
        scan(acr_settings(acr, password="wrong-password-xyz"))
    assert "registry 'acr'" in str(info.value)
    assert "wrong-password-xyz" not in str(info.value)


def test_entra_id_exchange_and_renewal_during_a_long_run(acr: AcrEmulator, tmp_path: Path):
    acr.access_lifetime = 2  # seconds: tokens expire during the run
    old = NOW - timedelta(days=30)
    for i in range(6):
        acr.image(f"repo-{i}", "pr-1", created=old, seed=str(i))
        acr.image(f"repo-{i}", "v1", created=old, seed=f"keep {i}")
    credential = FakeEntraCredential(acr)
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                          'delete: [{tags: ["pr-*"]}]\n', credentials=False)
    setup = load_setup(config)
    real_sleep = asyncio.sleep

    async def slow_transport_run():
        # Make the run outlast the tokens: pause before each repository's deletions (the
        # repositories go a few at a time, in parallel).
        from retention import executor

        original = executor.Executor._apply_repository

        async def paced(self, *args, **kwargs):
            await real_sleep(2.5)
            return await original(self, *args, **kwargs)

        executor.Executor._apply_repository = paced
        try:
            return await run_pass(setup, setup.policies, dry_run=False, state=State.memory(),
                                  connections=Connections(azure_credential=credential))
        finally:
            executor.Executor._apply_repository = original

    result = asyncio.run(slow_transport_run())
    assert not result.failed, result.report
    assert sum(1 for o in result.report.outcomes.values() if o.status == "deleted") == 6
    assert credential.calls == 1  # one Entra token, one exchange...
    assert acr.issued[("refresh",)] == 1
    # ...and access tokens renewed as they expired: repo-5's listing token from the scan had
    # expired by the time its deletions were re-checked, and a new one was issued.
    assert acr.issued[("access", "repository:repo-5:metadata_read")] >= 2


def test_delete_empty_repositories(acr: AcrEmulator, tmp_path: Path):
    old = NOW - timedelta(days=30)
    acr.image("ephemeral/pr-7", "pr-7", created=old, seed="a")
    acr.image("ephemeral/pr-8", "pr-8", created=old, seed="b")
    acr.image("ephemeral/pr-8", "keep", created=old, seed="c")
    policy = ('name: p\nrepositories: {include: ["ephemeral/**"]}\n'
              'delete: [{tags: ["pr-*"]}]\ndelete_empty_repositories: true\n')
    config = write_config(tmp_path, acr, policy)
    assert main(["run", "--config", str(config)], stdout=io.StringIO()) == 0
    assert "ephemeral/pr-7" not in acr.repos  # emptied, then deleted
    assert acr.count("DELETE", r"^/acr/v1/ephemeral/pr-7$") == 1
    assert "ephemeral/pr-8" in acr.repos  # still holds "keep"
    assert acr.count("DELETE", r"^/acr/v1/ephemeral/pr-8$") == 0


def test_a_repository_delete_whose_answer_is_lost_is_not_sent_again(acr: AcrEmulator,
                                                                     tmp_path: Path):
    """ACR deleted the emptied repository, but its answer was lost (a 503 from the gateway);
    meanwhile CI pushed a new image under the same name. Sending the DELETE again would take
    that image, which no plan ever saw: before any DELETE is sent again the repository is
    listed again, found not empty, and kept."""
    old = NOW - timedelta(days=30)
    acr.image("ephemeral/pr-7", "pr-7", created=old, seed="a")
    pushed: list[str] = []

    def deleted_then_pushed_again(method: str, path: str) -> None:
        with acr.lock:  # what ACR does with the DELETE...
            acr.repos.pop("ephemeral/pr-7", None)
            acr.tags.pop("ephemeral/pr-7", None)
        # ...and a push that lands before any retry would.
        pushed.append(acr.image("ephemeral/pr-7", "pr-9", seed="pushed after the plan"))

    acr.faults.append(EmulatorFault("DELETE", r"^/acr/v1/ephemeral/pr-7$", status=503,
                                    code="UNAVAILABLE", hook=deleted_then_pushed_again,
                                    fail_after_hook=True))
    policy = ('name: p\nrepositories: {include: ["ephemeral/**"]}\n'
              'delete: [{tags: ["pr-7"]}]\ndelete_empty_repositories: true\n')
    config = write_config(tmp_path, acr, policy)
    out = io.StringIO()
    main(["run", "--config", str(config), "--output", "json"], stdout=out)
    assert acr.count("DELETE", r"^/acr/v1/ephemeral/pr-7$") == 1
    assert pushed and pushed[0] in acr.repos.get("ephemeral/pr-7", {})  # still there
    assert json.loads(out.getvalue())["actions"][0]["status"] == "deleted"


def test_dry_run_on_acr_deletes_nothing(acr: AcrEmulator, tmp_path: Path):
    acr.image("web", "latest", created=NOW - timedelta(days=10), seed="v1")
    acr.image("web", "latest", created=NOW - timedelta(days=1), seed="v2")
    config = write_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                          'delete: [{untagged: true}]\ndelete_empty_repositories: true\n',
                          mode="dry-run")
    out = io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out) == 0
    assert json.loads(out.getvalue())["actions"][0]["status"] == "planned"
    assert len(acr.repos["web"]) == 2
    assert acr.count("DELETE", ".") == 0
