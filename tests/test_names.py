"""Names that go into a registry's URL paths (issue 24 item 3, issue 30 item 4): repository
names are canonical where written and where listed; tags and digests from a registry's
answers follow the OCI grammars; restore pushes only where a journal row may lead. On the
real registry, through the fault-injecting proxy where an answer must be odd."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3

import pytest

from retention.config import RegistrySettings, load_config
from retention.errors import ConfigError, RegistryError
from retention.names import is_digest, is_repository, is_tag
from retention.registry.client import RegistryClient
from tests.acr_emulator import AcrEmulator, TagEntry
from tests.pusher import Pusher
from tests.servers import Fault, FaultProxy, Registry
from tests.test_acr import acr  # noqa: F401  (the fixture)
from tests.test_acr import write_config as acr_config
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
HEX = "a" * 64
NOT_CANONICAL = ["ci/./app", "ci/x/../app", "ci/%61pp", "ci\\app", "CI/app", "ci/App",
                 "ci//app", "/ci/app", "ci/app/", "ci/app\n", "ci/-app", "ci/app_", "ci/ap p",
                 "ci/\u0430pp", ""]
EXCLUDING = """
name: ci
repositories: {include: ["**"], exclude: ["ci/app"]}
delete:
  - tags: ["pr-*"]
"""


@pytest.mark.parametrize("name", ["app", "ci/app", "a.b/c_d/e__f/g--h-i", "0/1", "a" * 300])
def test_canonical_names(name):
    assert is_repository(name)


@pytest.mark.parametrize("name", NOT_CANONICAL)
def test_names_a_url_would_normalise_are_not_canonical(name):
    assert not is_repository(name)


def test_tag_and_digest_grammars():
    assert is_tag("v1.0_rc-1") and is_tag("_x") and is_tag("A" * 128)
    for bad in ["", ".x", "-x", "A" * 129, "v1/x", "../x", "v\u00e9", "x:y", "x%2f", "x\n"]:
        assert not is_tag(bad), bad
    assert is_digest(f"sha256:{HEX}") and is_digest("sha512:" + "b" * 128)
    assert is_digest("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
    for bad in [f"sha256:{HEX.upper()}", f"sha256:{HEX[:-1]}", f"sha256:{HEX}\n", "sha256",
                f"SHA256:{HEX}", f"sha512:{HEX}", f"md5:x/../../other/manifests/{HEX}",
                ":abc", "sha256:"]:
        assert not is_digest(bad), bad


# ------------------------------------------------------------------------------------------
# Where written: a registry's `repositories`, allowlist entries.


def test_non_canonical_repositories_are_validation_errors_at_their_place(tmp_path):
    (tmp_path / "policies").mkdir()
    written = ["ci/app", "ci/./app", "ci/x/../app", "ci/%61pp", "ci\\\\app", "CI/app"]
    lines = "".join(f'      - "{n}"\n' for n in written)
    path = tmp_path / "retention.yaml"
    path.write_text("registries:\n  main:\n    url: http://127.0.0.1:5000\n"
                    f"    repositories:\n{lines}policies: policies\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    found = [str(p) for p in exc.value.problems]
    assert len(found) == 5, found
    for number, (problem, name) in enumerate(zip(found, written[1:], strict=True), start=6):
        shown = name.replace("\\\\", "\\")
        assert problem.startswith(f"{path}:{number}:9: registries.main.repositories: "
                                  f"{shown!r} is not a canonical repository name"), problem


def test_non_canonical_allowlist_entries_are_errors_that_say_why(tmp_path, registry):
    digest = f"sha256:{HEX}"
    (tmp_path / "pinned.txt").write_text(
        f"ci/app@{digest}\n"
        f"ci/./app@{digest}\n"
        f"  registry.example.com/ci/%61pp@{digest}\n"
        f"ci\\app@{digest}\n")
    config = write_config(tmp_path, registry.url, policy=EXCLUDING, extra="allowlist: pinned.txt")
    code, out, err = cli("validate", "--config", str(config))
    assert code == 2, (out, err)
    assert f"{tmp_path}/pinned.txt:2:1: not a pinned digest: 'ci/./app@{digest}' ('ci/./app' " \
           "is not a canonical repository name" in err
    assert f"{tmp_path}/pinned.txt:3:3: not a pinned digest: " in err
    assert "('ci/%61pp' is not a canonical repository name" in err
    assert f"{tmp_path}/pinned.txt:4:1: " in err and f"{tmp_path}/pinned.txt:1:" not in err


def test_the_dot_segment_that_deleted_a_pin_in_an_excluded_repository_is_refused(
        tmp_path, registry, pusher: Pusher):
    """The reproduction: `ci/./app` in `repositories` read and deleted in ci/app, which the
    policy excludes and whose digest the allowlist pins."""
    pinned = pusher.image("ci/app", "pr-1", created=OLD, layers=(b"pinned",))
    (tmp_path / "pinned.txt").write_text(f"ci/app@{pinned.digest}\n")
    config = write_config(tmp_path, registry.url, policy=EXCLUDING,
                          extra="allowlist: pinned.txt")
    config.write_text(config.read_text().replace(
        f"    url: {registry.url}\n", f"    url: {registry.url}\n    repositories: [ci/./app]\n"))
    code, out, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 2, (out, err)
    assert f"{config}:5:20: registries.main.repositories: 'ci/./app' is not a canonical " \
           "repository name" in err
    assert "Traceback" not in err
    assert pusher.exists("ci/app", pinned.digest)


# ------------------------------------------------------------------------------------------
# Where listed: a catalog's names, a tag listing, a Docker-Content-Digest header.


def _rewrite_json(key: str, change):
    def rewrite(method, path, status, headers, body):
        if status != 200:
            return status, headers, body
        doc = json.loads(body)
        doc[key] = change(doc.get(key) or [])
        return status, headers, json.dumps(doc).encode()
    return rewrite


def test_a_catalog_name_that_is_not_canonical_is_never_requested(tmp_path, registry,
                                                                pusher: Pusher,
                                                                proxy: FaultProxy):
    pinned = pusher.image("ci/app", "pr-1", created=OLD, layers=(b"pinned",))
    doomed = pusher.image("web", "pr-1", created=OLD, layers=(b"doomed",))
    (tmp_path / "pinned.txt").write_text(f"ci/app@{pinned.digest}\n")
    odd = ["ci/./app", "ci/x/../app", "ci/%61pp", "ci\\app", "CI/app"]
    # The catalog names ci/app only in forms a URL normalises into it.
    proxy.inject(Fault("GET", r"^/v2/_catalog", "rewrite", times=100, rewrite=_rewrite_json(
        "repositories", lambda names: [*odd, *(n for n in names if n != "ci/app")])))
    config = write_config(tmp_path, proxy.url, policy=EXCLUDING, extra="allowlist: pinned.txt")
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, (doc, err)
    assert deleted_digests(doc) == {doomed.digest}  # the other repositories are cleaned
    unreadable = {e["repository"]: e["message"] for e in doc["errors"]}
    assert sorted(unreadable) == sorted(odd)
    assert all("is not a canonical repository name" in m for m in unreadable.values())
    assert [p for _, p in proxy.requests if re.search(r"(?i)/v2/ci|%61pp|%5c", p)] == []
    assert pusher.exists("ci/app", pinned.digest)


def test_a_listed_tag_outside_the_grammar_makes_the_repository_unreadable(
        tmp_path, registry, pusher: Pusher, proxy: FaultProxy):
    old = pusher.image("web", "pr-1", created=OLD, layers=(b"old",))
    other = pusher.image("api", "pr-1", created=OLD, layers=(b"api",))
    bad = "../../api/manifests/pr-1"
    proxy.inject(Fault("GET", r"^/v2/web/tags/list", "rewrite", times=100,
                       rewrite=_rewrite_json("tags", lambda tags: [*tags, bad])))
    config = write_config(tmp_path, proxy.url)
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, (doc, err)
    assert deleted_digests(doc) == {other.digest}
    [error] = doc["errors"]
    assert error["repository"] == "web"
    assert f"the listing names {bad!r}, which is not a tag" in error["message"]
    assert pusher.exists("web", old.digest)
    assert [p for _, p in proxy.requests if p.startswith("/v2/web/manifests/")] == []


def test_a_digest_header_outside_the_grammar_deletes_nothing(tmp_path, registry,
                                                            pusher: Pusher, proxy: FaultProxy):
    """A Docker-Content-Digest that a URL normalises into another repository's manifest:
    `web`'s pr-1 named by it would be read, and deleted, as `keep`'s release."""
    pusher.image("web", "pr-1", created=OLD, layers=(b"pr",))
    release = pusher.image("keep", "v1", created=OLD, layers=(b"release",))
    config = write_config(tmp_path, proxy.url)
    assert cli("plan", "--config", str(config))[0] == 0  # web is known: a HEAD per tag now
    forged = f"sha512:x/../../../keep/manifests/{release.digest}"

    def forge(method, path, status, headers, body):
        headers = {k: v for k, v in headers.items() if k.lower() != "docker-content-digest"}
        return status, {**headers, "Docker-Content-Digest": forged}, body

    proxy.inject(Fault("HEAD", r"^/v2/web/manifests/pr-1", "rewrite", times=100,
                       rewrite=forge))
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, (doc, err)
    assert doc["actions"] == []
    [error] = doc["errors"]
    assert error["repository"] == "web"
    assert f"names the manifest {forged!r}, which is not a digest" in error["message"]
    assert proxy.count("DELETE", "") == 0
    assert pusher.exists("keep", release.digest) and pusher.exists("web", "pr-1")


def test_on_acr_a_listed_name_or_tag_outside_its_grammar_deletes_nothing_there(
        acr: AcrEmulator, tmp_path):  # noqa: F811
    pinned = acr.image("ci/app", "pr-1", seed="pinned")
    odd = acr.image("web", "pr-1", seed="odd tag")
    doomed = acr.image("api", "pr-1", seed="doomed")
    # The catalog also lists ci/app as ci/./app (the emulator, like a URL, reads it as ci/app)
    # and web carries a tag a URL would lead elsewhere with.
    acr.repos["ci/./app"], acr.tags["ci/./app"] = acr.repos["ci/app"], acr.tags["ci/app"]
    acr.tags["web"]["../../ci/app/manifests/x"] = TagEntry(odd)
    (tmp_path / "pinned.txt").write_text(f"ci/app@{pinned}\n")
    config = acr_config(tmp_path, acr, EXCLUDING)
    config.write_text(config.read_text() + "allowlist: pinned.txt\n")
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, (doc, err)
    assert deleted_digests(doc) == {doomed}
    errors = {e["repository"]: e["message"] for e in doc["errors"]}
    assert sorted(errors) == ["ci/./app", "web"]
    assert "'ci/./app' is not a canonical repository name" in errors["ci/./app"]
    assert "the listing names '../../ci/app/manifests/x', which is not a tag" in errors["web"]
    assert pinned in acr.repos["ci/app"] and odd in acr.repos["web"]


# ------------------------------------------------------------------------------------------
# Read back: a journal row, for restore.


def test_restore_pushes_only_where_a_journal_row_may_lead(tmp_path, registry: Registry,
                                                         pusher: Pusher):
    pr = 'name: p\nrepositories: {include: ["**"]}\ndelete: [{tags: ["pr-*"]}]\n'
    # web's builds are also in `other` (same bytes, same digests): a push there would work.
    images = {n: pusher.image("web", f"pr-{n}", created=OLD, layers=(f"layer {n}".encode(),))
              for n in range(1, 5)}
    for n in range(1, 5):
        pusher.image("other", f"v{n}", created=OLD, layers=(f"layer {n}".encode(),))
    config = write_config(tmp_path, registry.url, policy=pr)
    config.write_text(config.read_text().replace(
        f"    url: {registry.url}\n", f"    url: {registry.url}\n    repositories: [web]\n"))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {p.digest for p in images.values()}

    with sqlite3.connect(tmp_path / "state" / "retention.sqlite3") as db:
        def edit(n: int, column: str, value: str) -> None:
            db.execute(f"UPDATE journal SET {column} = ? WHERE digest = ?",
                       (value, images[n].digest))
        edit(1, "repository", "web/../other")  # normalised into other
        edit(2, "repository", "other")  # canonical, but not among the registry's repositories
        edit(3, "tags", json.dumps(["../../other/manifests/planted"]))
        edit(4, "registry", "elsewhere")  # no such registry
    code, doc, err = cli("restore", "--config", str(config), "--since", "1h", "--output",
                         "json")
    assert code == 1, (doc, err)
    details = {e["digest"]: (e["status"], e["detail"]) for e in doc["entries"]}
    assert details == {
        images[1].digest: ("not-restorable", "'web/../other' is not a "
                           "canonical repository name (lower-case letters and digits, "
                           "separated by '.', '_', '__' or '-'; components joined by '/'); a "
                           "registry normalises such a name into another repository's: "
                           "nothing is pushed there"),
        images[2].digest: ("not-restorable", "repository other is not in registry main's "
                           "repositories in the configuration: nothing is pushed there"),
        images[3].digest: ("not-restorable", "the journal names tag "
                           "'../../other/manifests/planted', which is not a tag (OCI "
                           "grammar): nothing is pushed"),
        images[4].digest: ("not-restorable", "registry elsewhere is not in the configuration"),
    }
    assert pusher.tags("other") == ["v1", "v2", "v3", "v4"]
    for p in images.values():
        assert not pusher.exists("web", p.digest)



def test_the_client_puts_no_name_outside_its_grammar_into_a_url(proxy: FaultProxy):
    """The one place paths are made: whatever a caller passes (a plan file, a journal row, a
    manifest's descriptor), nothing is sent for a name outside its grammar."""

    async def go() -> list[str]:
        refused = []
        async with RegistryClient(RegistrySettings(name="main", url=proxy.url)) as client:
            calls = [client.tags("ci/./app"), client.head_manifest("ci/%61pp", "latest"),
                     client.get_manifest("ci/app", "../../x/manifests/latest"),
                     client.delete_manifest("ci/app", "latest"),
                     client.delete_manifest("ci/app", f"md5:x/../../y/manifests/{HEX}"),
                     client.get_blob("CI/app", f"sha256:{HEX}"),
                     client.blob_exists("ci/app", f"sha256:{HEX.upper()}"),
                     client.put_manifest("ci\\app", "v1", b"{}", "application/json")]
            for call in calls:
                try:
                    await call
                except RegistryError as exc:
                    refused.append(str(exc))
        return refused

    refused = asyncio.run(go())
    assert len(refused) == 8, refused
    assert "'ci/./app' is not a canonical repository name" in refused[0]
    assert "'latest' is not a digest (OCI grammar): /v2/ci/app/manifests/... by it is never " \
           "requested" in refused[3]
    assert proxy.requests == []
