"""Restore on a real registry: what `retention run` deleted comes back byte for byte, or is
reported as not restorable with nothing pushed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2

from retention.config import load_config
from retention.restore import Item, decide, push_order, select
from retention.runs import run_pass
from retention.setup import load_setup
from retention.state import JournalEntry, State
from tests.acr_emulator import AcrEmulator
from tests.pusher import OCI_INDEX, OCI_MANIFEST, Pushed, Pusher
from tests.servers import Fault, FaultProxy, Registry
from tests.test_acr import acr  # noqa: F401  (the fixture)
from tests.test_acr import write_config as acr_config
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
PR = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"], older_than: 1d}]\n'
WORKTREE = Path(__file__).resolve().parent.parent


def seed(pusher: Pusher) -> dict[str, Pushed]:
    """An image with a cosign signature, and a two-platform index, all to be deleted; a
    release that stays and shares the amd64 child's blobs."""
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"app layer" * 50,))
    sig = pusher.cosign_signature("app", image)
    amd = pusher.image("multi", None, created=OLD, layers=(b"shared base" * 40,))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm only" * 40,), arch="arm64")
    index = pusher.index("multi", "pr-2", [amd, arm])
    pusher.image("multi", "v1", created=OLD, layers=(b"shared base" * 40,),
                 annotations={"release": "v1"})  # the amd64 child's config and layer
    return {"image": image, "sig": sig, "amd": amd, "arm": arm, "index": index}


def repo_of(name: str) -> str:
    return "app" if name in ("image", "sig") else "multi"


def delete_all(config: Path, seeded: dict[str, Pushed]) -> None:
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {p.digest for p in seeded.values()}


def answers(url: str, repo: str, kind: str, digest: str) -> int:
    accept = ", ".join([OCI_MANIFEST, OCI_INDEX])
    return httpx2.get(f"{url}/v2/{repo}/{kind}/{digest}", headers={"Accept": accept}).status_code


def restore(config: Path, *extra: str) -> tuple[int, dict, str]:
    return cli("restore", "--config", str(config), "--output", "json", *extra)


def by_digest(doc: dict) -> dict[str, dict]:
    return {e["digest"]: e for e in doc["entries"]}


def test_restore_puts_back_an_image_its_signature_and_a_multi_arch_index(
        tmp_path, registry: Registry, pusher: Pusher):
    seeded = seed(pusher)
    config = write_config(tmp_path, registry.url, policy=PR)
    delete_all(config, seeded)
    for name, p in seeded.items():
        assert answers(registry.url, repo_of(name), "manifests", p.digest) == 404

    code, doc, _ = restore(config, "--since", "1h", "--dry-run")
    assert code == 0 and {e["status"] for e in doc["entries"]} == {"planned"}
    assert answers(registry.url, "app", "manifests", seeded["image"].digest) == 404

    code, doc, _ = restore(config, "--since", "1h")
    assert code == 0, doc
    entries = by_digest(doc)
    assert {d: e["status"] for d, e in entries.items()} == \
        {p.digest: "restored" for p in seeded.values()}
    assert doc["summary"]["restored"] == 5 and doc["summary"]["not_restorable"] == 0
    assert entries[seeded["image"].digest]["tags"] == ["pr-1"]
    assert entries[seeded["index"].digest]["policy"] == "p"
    # Pulled back: every manifest and every blob by digest, and the tags.
    for name, p in seeded.items():
        assert answers(registry.url, repo_of(name), "manifests", p.digest) == 200, name
        for blob, _ in p.blobs:
            assert answers(registry.url, repo_of(name), "blobs", blob) == 200, (name, blob)
    assert pusher.tags("app") == sorted(["pr-1", f"sha256-{seeded['image'].digest[7:]}.sig"])
    assert pusher.tags("multi") == ["pr-2", "v1"]
    for ref in ("app:pr-1", "multi:pr-2"):
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                              f"docker://{registry.host}/{ref}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    # Journaled; a second restore finds nothing left to do.
    state = State.open(tmp_path / "state")
    assert {r["status"] for r in state.restores()} == {"restored"}
    state.close()
    code, doc, _ = restore(config, "--since", "1h")
    assert code == 0 and doc["entries"] == []

    # The next run shows them protected as restored and deletes nothing (the hold: see
    # test_a_restore_is_held_for_restored_hold).
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and doc["actions"] == []
    protected = {d["digest"]: d for d in doc["protected"]}
    assert {protected[seeded["image"].digest]["reason"],
            protected[seeded["index"].digest]["reason"]} == {"restored"}
    assert "keep rule" in protected[seeded["image"].digest]["detail"]


def test_after_garbage_collection_nothing_is_pushed(tmp_path, registry: Registry,
                                                    pusher: Pusher, proxy: FaultProxy):
    seeded = seed(pusher)
    config = write_config(tmp_path, proxy.url, policy=PR)
    delete_all(config, seeded)
    registry.garbage_collect()

    code, doc, _ = restore(config, "--since", "1h")
    assert code == 1
    entries = by_digest(doc)
    assert {e["status"] for e in entries.values()} == {"not-restorable"}
    assert "garbage collector" in entries[seeded["image"].digest]["detail"]
    assert entries[seeded["arm"].digest]["detail"].startswith("blob sha256:")
    # The amd64 child's blobs survived (the release shares them), but alone it would be a
    # half-restored index: it stays out with its index.
    assert entries[seeded["amd"].digest]["detail"].startswith("index sha256:")
    assert entries[seeded["index"].digest]["detail"].startswith("child sha256:")
    assert entries[seeded["sig"].digest]["detail"].startswith(("subject sha256:", "blob"))
    assert proxy.count("PUT", "/manifests/") == 0
    assert answers(registry.url, "multi", "manifests", seeded["amd"].digest) == 404


def test_a_tag_pushed_again_in_between_is_left_alone(tmp_path, registry: Registry,
                                                     pusher: Pusher):
    old = pusher.image("app", "pr-1", created=OLD, layers=(b"old" * 30,))
    config = write_config(tmp_path, registry.url, policy=PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert deleted_digests(doc) == {old.digest}
    new = pusher.image("app", "pr-1", layers=(b"new" * 30,))  # someone pushes pr-1 again

    code, doc, _ = restore(config, "--digest", old.digest)
    assert code == 1  # the tag could not be put back
    [entry] = doc["entries"]
    assert entry["status"] == "tag-moved"
    assert f"tag pr-1 now points to sha256:{new.digest[7:19]}" in entry["detail"]
    assert answers(registry.url, "app", "manifests", old.digest) == 200
    head = httpx2.head(f"{registry.url}/v2/app/manifests/pr-1",
                       headers={"Accept": OCI_MANIFEST})
    assert head.headers["docker-content-digest"] == new.digest


def test_restore_killed_mid_way_is_completed_by_the_next(tmp_path, registry: Registry,
                                                         pusher: Pusher, proxy: FaultProxy):
    seeded = seed(pusher)
    config = write_config(tmp_path, proxy.url, policy=PR)
    delete_all(config, seeded)

    second_put, killed = threading.Event(), threading.Event()
    original, puts = proxy._take_fault, {"n": 0}

    def hooked(method: str, path: str):
        if method == "PUT" and "/manifests/" in path:
            puts["n"] += 1
            if puts["n"] == 2:  # hold the second PUT until the restore is killed
                second_put.set()
                killed.wait(30)
                return Fault(method, path, "status", status=503)
        return original(method, path)

    proxy._take_fault = hooked
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    process = subprocess.Popen([sys.executable, "-m", "retention", "restore", "--config",
                                str(config), "--since", "1h"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert second_put.wait(60), "the restore never sent a second PUT"
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        killed.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    with sqlite3.connect(tmp_path / "state" / "retention.sqlite3") as db:
        assert [s for (s,) in db.execute("SELECT status FROM restores")] == ["restoring"] * 2

    code, doc, _ = restore(config, "--since", "1h")
    assert code == 0, doc
    statuses = {e["digest"]: e["status"] for e in doc["entries"]}
    assert statuses == {p.digest: "restored" for p in seeded.values()}
    assert any("already present" in e["detail"] for e in doc["entries"])
    for name, p in seeded.items():
        assert answers(registry.url, repo_of(name), "manifests", p.digest) == 200, name
    assert pusher.tags("multi") == ["pr-2", "v1"] and "pr-1" in pusher.tags("app")


def test_a_restore_is_held_for_restored_hold(tmp_path, registry: Registry, pusher: Pusher):
    """The daemon deleted a restored manifest again a minute later: the hold was one plan,
    and a `plan` used it up. It is measured in time now."""
    seeded = seed(pusher)
    config = write_config(tmp_path, registry.url, policy=PR)  # restored_hold: 7d, the default
    delete_all(config, seeded)
    code, doc, _ = restore(config, "--since", "1h")
    assert code == 0, doc
    held = {datetime.fromisoformat(e["held_until"]) for e in doc["entries"]}
    soon = datetime.now(UTC) + timedelta(days=7)
    assert doc["restored_hold"] == "7d"
    assert all(soon - timedelta(minutes=1) < h <= soon for h in held)
    code, table, _ = cli("restore", "--config", str(config), "--digest", seeded["image"].digest)
    assert code == 0 and "nothing to restore" in table  # already back: nothing to say

    # Plans, dry runs and runs come and go: none of them uses the hold up.
    for command in (("plan",), ("run", "--dry-run"), ("plan",), ("run",), ("run",)):
        code, doc, _ = cli(*command, "--config", str(config), "--output", "json")
        assert code == 0 and {a["status"] for a in doc["actions"]} <= {"planned"}, command
        assert not [a for a in doc["actions"] if a["status"] == "deleted"]
        reasons = {d["digest"]: d["reason"] for d in doc["protected"]}
        assert reasons[seeded["image"].digest] == reasons[seeded["index"].digest] == \
            "restored", command
        assert doc["actions"] == [], command
    for name, p in seeded.items():
        assert answers(registry.url, repo_of(name), "manifests", p.digest) == 200, name

    # After the hold (the clock moved, not slept on), the policies decide again.
    setup = load_setup(config)
    later = min(held) + timedelta(seconds=1)
    state = State.open(tmp_path / "state")
    try:
        before = asyncio.run(run_pass(setup, setup.policies, dry_run=True, state=state,
                                      clock=lambda: min(held) - timedelta(seconds=1)))
        assert before.plan.actions == ()
        after = asyncio.run(run_pass(setup, setup.policies, dry_run=False, state=state,
                                     clock=lambda: later))
    finally:
        state.close()
    assert {a.digest for a in after.plan.actions} == {p.digest for p in seeded.values()}
    assert not after.failed
    assert answers(registry.url, "app", "manifests", seeded["image"].digest) == 404


def test_restore_says_how_long_it_holds_and_how_to_keep_for_good(
        tmp_path, registry: Registry, pusher: Pusher):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"held" * 30,))
    config = write_config(tmp_path, registry.url, policy=PR, extra="restored_hold: 2d12h")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert deleted_digests(doc) == {image.digest}

    code, table, _ = cli("restore", "--config", str(config), "--since", "1h", "--dry-run")
    assert code == 0 and "restored_hold (2d12h)" in table and "allowlist" in table
    code, table, _ = cli("restore", "--config", str(config), "--since", "1h")
    assert code == 0, table
    end = datetime.now(UTC) + timedelta(days=2, hours=12)
    [line] = [x for x in table.splitlines() if "held for restored_hold" in x]
    until = datetime.strptime(line.split(" until ")[1][:20], "%Y-%m-%d %H:%M:%SZ")
    assert abs(until.replace(tzinfo=UTC) - end) < timedelta(minutes=1)
    assert "plans and dry runs do not use the hold up" in line
    assert "keep rule" in line and "allowlist" in line


def test_usage_needs_a_window_or_digests(tmp_path, registry: Registry):
    config = write_config(tmp_path, registry.url, policy=PR)
    code, _, err = cli("restore", "--config", str(config))
    assert code == 2 and "--since" in err
    code, _, err = cli("restore", "--config", str(config), "--digest", "sha256:abc")
    assert code == 2 and "first 12 or more of its hex digits" in err


def test_digest_prefixes_as_the_tables_print_them(tmp_path, registry: Registry,
                                                  pusher: Pusher):
    seeded = seed(pusher)
    config = write_config(tmp_path, registry.url, policy=PR)
    delete_all(config, seeded)
    image = seeded["image"].digest
    _, listing, _ = cli("restore", "--config", str(config), "--since", "1h", "--dry-run")
    assert image[7:19] in listing  # the 12 hex digits restore prints

    for text in (image[7:19], image[:19], image[7:], image):
        code, doc, err = restore(config, "--digest", text, "--dry-run")
        assert code == 0, (text, err)
        assert image in {e["digest"] for e in doc["entries"]}, text
    code, doc, _ = restore(config, "--digest", image[7:19])
    assert code == 0 and by_digest(doc)[image]["status"] == "restored"
    assert answers(registry.url, "app", "manifests", image) == 200

    for text, why in ((image[7:18], "first 12 or more"), ("sha256:" + "0" * 12, "no deleted"),
                      ("SHA256:" + image[7:19], "first 12 or more"),
                      (image[7:19] + "xyz", "first 12 or more")):
        code, _, err = restore(config, "--digest", text)
        assert code == 2 and why in err and "Traceback" not in err, (text, err)


def test_an_ambiguous_prefix_and_an_unknown_policy_are_usage_errors(tmp_path,
                                                                      registry: Registry):
    state = State.open(tmp_path / "state")
    now = datetime.now(UTC)
    for digest in ("sha256:" + "ab" * 6 + "1" * 52, "sha256:" + "ab" * 6 + "2" * 52):
        entry = state.journal_begin(at=now, registry="main", repository="app", digest=digest,
                                    tags=["pr-1"], policy="gone", reason="r",
                                    media_type=OCI_MANIFEST, body=b"{}")
        state.journal_end(entry, status="deleted")
    state.close()
    config = write_config(tmp_path, registry.url, policy=PR)
    code, _, err = restore(config, "--digest", "ab" * 6)
    assert code == 2 and "ambiguous" in err and "sha256:abababababab" in err
    # One more digit tells them apart: the restore goes ahead (and finds the made-up
    # manifest's blobs missing: exit 1, not a usage error).
    code, doc, err = restore(config, "--digest", "ab" * 6 + "1", "--dry-run")
    assert code == 1 and "ambiguous" not in err
    assert [e["digest"] for e in doc["entries"]] == ["sha256:" + "ab" * 6 + "1" * 52]
    code, _, err = restore(config, "--since", "1h", "--policy", "nope")
    assert code == 2 and "no policy named 'nope'" in err and "gone, p" in err
    # A policy no longer configured that deleted something is still one to restore from.
    code, doc, err = restore(config, "--since", "1h", "--policy", "gone", "--dry-run")
    assert code == 1 and "no policy named" not in err and len(doc["entries"]) == 2


def test_restore_through_the_oci_api_on_acr(acr: AcrEmulator, tmp_path):  # noqa: F811
    old = datetime.now(UTC) - timedelta(days=30)
    image = acr.image("app", "pr-1", created=old, seed="1")
    signature = acr.image("app", f"sha256-{image[7:]}.sig", created=old, seed="sig")
    other = acr.image("app", "pr-2", created=old, seed="2")
    config = acr_config(tmp_path, acr, PR)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {image, signature, other}
    assert image not in acr.repos["app"]

    code, doc, _ = restore(config, "--digest", image)  # its signature comes with it
    assert code == 0, doc
    assert {e["digest"]: e["status"] for e in doc["entries"]} == \
        {image: "restored", signature: "restored"}
    assert image in acr.repos["app"] and signature in acr.repos["app"]
    assert acr.tags_of("app", image) == ["pr-1"]
    assert acr.count("PUT", rf"/v2/app/manifests/{image}", status=201) == 1

    # Where ACR no longer holds the blobs (it frees a deleted manifest's unique layers),
    # nothing is pushed.
    acr.blobs["app"].clear()
    puts = acr.count("PUT", "/manifests/", status=201)
    code, doc, _ = restore(config, "--digest", other)
    assert code == 1 and [e["status"] for e in doc["entries"]] == ["not-restorable"]
    assert acr.count("PUT", "/manifests/", status=201) == puts
    assert other not in acr.repos["app"]


# -- the decisions, on journal entries alone ------------------------------------------------

def _entry(i: int, digest: str, body: bytes, media_type: str, tags=()) -> JournalEntry:
    return JournalEntry(id=i, at=datetime(2024, 1, 1, tzinfo=UTC), registry="r",
                        repository="x", digest=digest, tags=tuple(tags), policy="p",
                        status="deleted", media_type=media_type, body=body)


def test_children_come_before_their_index_and_a_named_child_may_come_alone():
    def image(n: int) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"digest": f"sha256:{n:064x}", "size": 1},
                           "layers": []}).encode()

    child_a, child_b = _entry(2, "sha256:" + "a" * 64, image(1), OCI_MANIFEST), \
        _entry(3, "sha256:" + "b" * 64, image(2), OCI_MANIFEST)
    index_body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"digest": child_a.digest, "size": 1}, {"digest": child_b.digest, "size": 1}]}).encode()
    index = _entry(1, "sha256:" + "c" * 64, index_body, OCI_INDEX, ["pr-1"])
    items = select([index], [child_a, child_b])
    assert [k[2] for k in push_order(items, items)] == [child_a.digest, child_b.digest,
                                                        index.digest]
    none = dict.fromkeys(items, False)
    bad = decide(items, none, {("r", "x", child_b.digest): ["sha256:" + "2" * 64]}, {})
    assert set(bad) == set(items)  # b lacks a blob, so its index, so a
    assert bad[("r", "x", child_a.digest)].startswith("index sha256:cccccccccccc")
    named = {k: Item(**{**{f: getattr(v, f) for f in Item.__slots__}, "named": True})
             if k[2] == child_a.digest else v for k, v in items.items()}
    bad = decide(named, none, {("r", "x", child_b.digest): ["sha256:" + "2" * 64]}, {})
    assert ("r", "x", child_a.digest) not in bad


# -- the journal, before each DELETE --------------------------------------------------------

def test_the_body_is_journaled_before_the_delete_is_sent(tmp_path, registry: Registry,
                                                         pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "pr-1", created=OLD, layers=(b"journaled" * 20,))
    config = write_config(tmp_path, proxy.url, policy=PR)
    seen: list[tuple[str, bytes]] = []

    def look_at_the_journal() -> None:  # runs as the DELETE reaches the proxy
        with sqlite3.connect(tmp_path / "state" / "retention.sqlite3") as db:
            seen.extend(db.execute("SELECT j.status, b.body FROM journal j JOIN "
                                   "journal_bodies b ON b.journal_id = j.id WHERE j.digest=?",
                                   (image.digest,)).fetchall())

    original = proxy._take_fault

    def hooked(method: str, path: str):
        if method == "DELETE":
            look_at_the_journal()
        return original(method, path)

    proxy._take_fault = hooked
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {image.digest}
    assert len(seen) == 1 and seen[0][0] == "deleting"
    assert "sha256:" + hashlib.sha256(seen[0][1]).hexdigest() == image.digest
    state = State.open(tmp_path / "state")
    assert [e["status"] for e in state.journal()] == ["deleted"]
    state.close()


def test_a_manifest_that_cannot_be_read_is_not_deleted(tmp_path, registry: Registry,
                                                       pusher: Pusher, proxy: FaultProxy):
    image = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, proxy.url, policy=PR)
    code, _, _ = cli("run", "--config", str(config), "--dry-run")  # facts cached in the state
    assert code == 0
    proxy.inject(Fault("GET", r"/manifests/sha256:", "status", times=100, status=500))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    [action] = doc["actions"]
    assert action["status"] == "skipped"
    assert action["reason"].startswith("could not read the manifest to journal it")
    assert proxy.count("DELETE", "/manifests/") == 0
    assert pusher.exists("app", image.digest)


def test_journal_keep_prunes_old_bodies_and_old_databases_still_open(tmp_path):
    old_schema = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, registry TEXT NOT NULL,
        repository TEXT NOT NULL, digest TEXT NOT NULL, tags TEXT NOT NULL,
        bytes INTEGER NOT NULL, policy TEXT NOT NULL, reason TEXT NOT NULL,
        status TEXT NOT NULL);
    INSERT INTO meta VALUES ('schema_version', '1');
    """
    (tmp_path / "s").mkdir()
    with sqlite3.connect(tmp_path / "s" / "retention.sqlite3") as db:
        db.executescript(old_schema)
    state = State.open(tmp_path / "s")
    assert state.path is not None  # opened, not fallen back to memory
    now = datetime.now(UTC)
    for days, digest in ((40, "sha256:" + "1" * 64), (1, "sha256:" + "2" * 64)):
        entry = state.journal_begin(at=now - timedelta(days=days), registry="r",
                                    repository="x", digest=digest, tags=["t"], policy="p",
                                    reason="r", media_type=OCI_MANIFEST, body=b"{}")
        state.journal_end(entry, status="deleted")
    assert state.prune_journal(now - timedelta(days=30)) == 1
    kept = state.deletions_to_restore(since=now - timedelta(days=365))
    assert [e.digest for e in kept] == ["sha256:" + "2" * 64]
    state.close()


def test_journal_keep_is_a_duration(tmp_path):
    (tmp_path / "p.yaml").write_text(PR)
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  main: {url: 'https://r.example'}\npolicies: p.yaml\n"
                      "journal_keep: a month\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2 and ":4:15:" in err and "invalid duration 'a month'" in err
    config.write_text("registries:\n  main: {url: 'https://r.example'}\npolicies: p.yaml\n"
                      "journal_keep: 7d\n")
    assert load_config(config).journal_keep == timedelta(days=7)


def test_restored_hold_is_a_duration(tmp_path):
    (tmp_path / "p.yaml").write_text(PR)
    config = tmp_path / "retention.yaml"
    head = "registries:\n  main: {url: 'https://r.example'}\npolicies: p.yaml\n"
    config.write_text(head + "restored_hold: a week\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2 and ":4:16:" in err and "invalid duration 'a week'" in err
    config.write_text(head + "restored_hold: -1d\n")
    assert cli("validate", "--config", str(config))[0] == 2
    config.write_text(head)
    assert load_config(config).restored_hold == timedelta(days=7)
    config.write_text(head + "restored_hold: 36h\n")
    assert load_config(config).restored_hold == timedelta(hours=36)
