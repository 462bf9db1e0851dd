"""End to end against a real registry: `retention run` deletes exactly what `plan` showed,
and distribution's garbage collector frees exactly the bytes reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

from retention.cli import main
from tests.pusher import Pusher
from tests.servers import Fault

POLICY = """
name: orphans
repositories: {include: ["**"]}
delete:
  - untagged: true
  - tags: ["pr-*"]
    older_than: 1d
"""


def write_config(tmp_path: Path, url: str, *, mode: str = "enforce", policy: str = POLICY,
                 extra: str = "") -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "p.yaml").write_text(policy)
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  main:
    url: {url}
policies: policies
mode: {mode}
untagged_grace: 0s
state_dir: state
{extra}
""")
    return config


def cli(*args: str) -> tuple[int, dict | str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    text = out.getvalue()
    try:
        return code, json.loads(text), err.getvalue()
    except ValueError:
        return code, text, err.getvalue()


def deleted_digests(doc: dict) -> set[str]:
    return {a["digest"] for a in doc["actions"] if a["status"] == "deleted"}


def test_classic_repush_orphan_is_deleted_by_digest(tmp_path, registry, pusher: Pusher):
    config = write_config(tmp_path, registry.url)
    first = pusher.image("app", "latest", created="2024-01-01T00:00:00Z", layers=(b"v1",))
    # The first run records app:latest -> first; nothing to delete yet.
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []
    second = pusher.image("app", "latest", created="2024-02-01T00:00:00Z", layers=(b"v2",))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {first.digest}
    assert doc["actions"][0]["tags"] == []
    assert doc["actions"][0]["reason"] == "delete rule 1: untagged"
    assert not pusher.exists("app", first.digest)
    assert pusher.exists("app", "latest") and pusher.exists("app", second.digest)
    # A second run finds nothing more to do.
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []


def test_dry_run_predicts_bytes_that_gc_frees(tmp_path, registry, pusher: Pusher):
    shared = b"shared base layer" * 100
    keep = pusher.image("svc", "v1", created="2024-01-01T00:00:00Z", layers=(shared, b"k" * 50))
    pusher.image("svc", "pr-1", created="2024-01-01T00:00:00Z", layers=(shared, b"p1" * 70))
    pusher.image("svc", "pr-2", created="2024-01-01T00:00:00Z",
                 layers=(b"only pr-2" * 30, b"p2" * 90))
    amd = pusher.image("svc", None, created="2024-01-01T00:00:00Z", layers=(b"amd" * 40,))
    arm = pusher.image("svc", None, created="2024-01-01T00:00:00Z", layers=(b"arm" * 40,),
                       arch="arm64")
    index = pusher.index("svc", "pr-3", [amd, arm])
    pusher.cosign_signature("svc", index)
    pusher.image("other", "v1", created="2024-01-01T00:00:00Z", layers=(b"p1" * 70,))

    dry = write_config(tmp_path, registry.url, mode="dry-run")
    code, planned, _ = cli("plan", "--config", str(dry), "--output", "json")
    assert code == 0
    assert planned["mode"] == "dry-run"
    assert {a["status"] for a in planned["actions"]} == {"planned"}
    code, dry_run, _ = cli("run", "--config", str(dry), "--output", "json")
    assert code == 0 and dry_run["summary"]["deleted"] == 0
    assert pusher.exists("svc", "pr-1")  # dry-run deleted nothing

    enforce = write_config(tmp_path, registry.url, mode="enforce")
    code, done, _ = cli("run", "--config", str(enforce), "--output", "json")
    assert code == 0, done
    assert deleted_digests(done) == {a["digest"] for a in planned["actions"]}
    assert done["summary"]["reclaimed_bytes"] == planned["summary"]["reclaimable_bytes"] > 0
    cascades = {a["digest"]: a["cascade_of"] for a in done["actions"]}
    assert cascades[amd.digest] == index.digest and cascades[arm.digest] == index.digest

    before = registry.blob_store_bytes()
    registry.garbage_collect()
    freed = before - registry.blob_store_bytes()
    assert freed == done["summary"]["reclaimed_bytes"]
    assert pusher.exists("svc", keep.digest) and pusher.exists("other", "v1")


def test_changed_tags_are_not_deleted(tmp_path, registry, pusher: Pusher, proxy):
    old = pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z")
    config = write_config(tmp_path, proxy.url)

    # Between planning and deleting, someone tags the old build "rollback": the run's
    # re-read of tags (the second tags/list request) must see it and skip the manifest.
    original = proxy._take_fault
    calls = {"tags": 0}

    def retag_before_second_listing(method, path):
        if method == "GET" and "/tags/list" in path:
            calls["tags"] += 1
            if calls["tags"] == 2:
                pusher.tag("app", "rollback", old)
        return original(method, path)

    proxy._take_fault = retag_before_second_listing
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0
    (action,) = doc["actions"]
    assert action["status"] == "skipped"
    assert action["reason"].startswith("changed:")
    assert pusher.exists("app", old.digest)


def test_failed_repository_read_deletes_nothing_there(tmp_path, registry, pusher: Pusher,
                                                      proxy):
    pusher.image("bad", "pr-1", created="2024-01-01T00:00:00Z")
    pusher.image("good", "pr-1", created="2024-01-01T00:00:00Z")
    proxy.inject(Fault("GET", r"/v2/bad/tags/list", "status", times=100, status=500))
    config = write_config(tmp_path, proxy.url)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1  # the run failed...
    assert [a["repository"] for a in doc["actions"]] == ["good"]  # ...but good was cleaned
    assert doc["actions"][0]["status"] == "deleted"
    assert doc["errors"][0]["repository"] == "bad"
    assert pusher.exists("bad", "pr-1")


def test_second_run_makes_no_manifest_or_config_requests(tmp_path, registry, pusher: Pusher,
                                                         proxy):
    for i in range(5):
        pusher.image("keep", f"v{i}", created="2024-01-01T00:00:00Z", extra=str(i))
    amd = pusher.image("keep", None, created="2024-01-01T00:00:00Z", layers=(b"x",))
    pusher.index("keep", "multi", [amd])
    config = write_config(tmp_path, proxy.url)
    assert cli("run", "--config", str(config))[0] == 0
    start = len(proxy.requests)
    assert cli("run", "--config", str(config))[0] == 0
    second = proxy.requests[start:]
    assert [r for r in second if r[0] == "GET" and "/manifests/" in r[1]] == []
    assert [r for r in second if "/blobs/" in r[1]] == []


def test_max_deletions_exceeded_deletes_nothing_and_fails(tmp_path, registry, pusher: Pusher):
    for i in range(3):
        pusher.image("app", f"pr-{i}", created="2024-01-01T00:00:00Z", extra=str(i))
    config = write_config(tmp_path, registry.url, extra="max_deletions: 2")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    assert {a["status"] for a in doc["actions"]} == {"skipped"}
    assert "max_deletions exceeded" in doc["actions"][0]["reason"]
    assert pusher.tags("app") == ["pr-0", "pr-1", "pr-2"]


def test_wrong_password_is_clear_and_secret(tmp_path, basic_registry):
    secret = "hunter2-not-the-password"
    (tmp_path / "pw").write_text(secret + "\n")
    config = write_config(tmp_path, basic_registry.url, extra="")
    text = config.read_text().replace(f"url: {basic_registry.url}",
                                      f"url: {basic_registry.url}\n    username: robot\n"
                                      "    password_file: pw")
    config.write_text(text)
    for command in (["inventory"], ["plan"], ["run"], ["inventory", "--output", "json"]):
        code, out, err = cli(*command, "--config", str(config))
        assert code == 1, (command, out, err)
        assert "registry 'main'" in err and "rejected" in err
        assert secret not in str(out) + err


def test_invalid_policy_exits_2_and_touches_nothing(tmp_path, registry, pusher: Pusher, proxy):
    pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z")
    config = write_config(tmp_path, proxy.url, policy=POLICY + "  - tags: [1.10]\n")
    code, _out, err = cli("run", "--config", str(config))
    assert code == 2
    assert "p.yaml:8:12:" in err and "quote it" in err
    assert proxy.requests == []


def test_deletion_disabled_registry_fails_clearly(tmp_path):
    from tests.servers import start_registry

    reg = start_registry(tmp_path / "nodelete", delete=False)
    try:
        pusher = Pusher(reg.url)
        for i in range(3):
            pusher.image("app", f"pr-{i}", created="2024-01-01T00:00:00Z", extra=str(i))
        config = write_config(tmp_path, reg.url)
        code, doc, _err = cli("run", "--config", str(config), "--output", "json")
        assert code == 1
        assert doc["summary"]["failed"] == 3 and doc["summary"]["deleted"] == 0
        assert all("storage.delete.enabled: true" in a["reason"] for a in doc["actions"])
        # Nothing was deleted; the first refusal stopped the attempts on that registry.
        assert pusher.tags("app") == ["pr-0", "pr-1", "pr-2"]
    finally:
        reg.stop()


def test_dry_run_flag_wins_over_enforce(tmp_path, registry, pusher: Pusher):
    old = pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z")
    config = write_config(tmp_path, registry.url, mode="enforce")
    code, doc, _ = cli("run", "--config", str(config), "--dry-run", "--output", "json")
    assert code == 0
    assert doc["mode"] == "dry-run"
    assert [a["status"] for a in doc["actions"]] == ["planned"]
    assert doc["summary"]["reclaimed_bytes"] == 0 < doc["summary"]["reclaimable_bytes"]
    assert pusher.exists("app", old.digest)
