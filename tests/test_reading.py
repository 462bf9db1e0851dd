"""Reading a registry: a partial or odd answer never turns into a deletion.

Each test reproduces one way an incomplete or unusual answer used to make `retention` delete
what it must keep, or stop working for a whole registry, against a real registry (through the
suite's fault proxy) or the ACR emulator."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.config import Credentials, RegistrySettings
from retention.errors import RegistryError
from retention.registry import client as client_module
from retention.registry.client import RegistryClient, RetryPolicy
from retention.registry.entra import EntraExchange
from retention.scanner import Scanner
from retention.secrets import Secret
from tests.acr_emulator import AcrEmulator, EmulatorFault, FakeEntraCredential, TagEntry
from tests.conftest import PASSWORD, USER
from tests.pusher import OCI_CONFIG, OCI_MANIFEST, Pusher
from tests.servers import Fault, paged_tags, set_link, start_registry
from tests.test_acr import write_config as acr_config
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
NOW = datetime.now(UTC)


@pytest.fixture
def acr():
    emulator = AcrEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


def _no_sleep_client(settings: RegistrySettings, **kw) -> RegistryClient:
    sleeps: list[float] = kw.pop("sleeps", [])

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return RegistryClient(settings, retry=FAST, sleep=fake_sleep, **kw)


def _run(coro_fn, settings: RegistrySettings, **kw):
    async def go():
        async with _no_sleep_client(settings, **kw) as client:
            return await asyncio.wait_for(coro_fn(client), timeout=60)
    return asyncio.run(go())


# -- 1. a failed page is not the end of a listing -----------------------------------------


def test_lost_tags_page_makes_the_repository_unreadable(tmp_path, registry, pusher: Pusher,
                                                         proxy):
    """Tags paged one per page; page 2 answers 404. The image tagged on page 2 must not
    look untagged (it is a known digest from the first run, so it would be deleted as an
    orphan)."""
    a = pusher.image("app", "a-keep", created=OLD, extra="a")
    z = pusher.image("app", "z-keep", created=OLD, extra="z")
    other = pusher.image("other", "pr-1", created=OLD)
    proxy.inject(Fault("GET", r"/tags/list", "rewrite", times=10**6, rewrite=paged_tags(1)))
    config = write_config(tmp_path, proxy.url)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 0 and deleted_digests(doc) == {other.digest}

    # From now on every page after the first of app's tags answers 404.
    proxy.faults.insert(0, Fault("GET", r"/v2/app/tags/list\?last=", "status", times=10**6,
                                 status=404))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, doc
    assert doc["actions"] == []
    (error,) = doc["errors"]
    assert error["repository"] == "app"
    assert "page 2" in error["message"] and "incomplete" in error["message"]
    assert pusher.exists("app", a.digest) and pusher.exists("app", z.digest)


def test_first_page_404_is_a_missing_repository_later_pages_are_errors(registry,
                                                                     pusher: Pusher, proxy):
    pusher.image("app", "a")
    pusher.tag("app", "b", pusher.image("app", "c", extra="c"))
    proxy.inject(Fault("GET", r"/tags/list", "rewrite", times=10**6, rewrite=paged_tags(1)))
    s = RegistrySettings(name="main", url=proxy.url)
    assert _run(lambda c: c.tags("app"), s) == ["a", "b", "c"]
    assert _run(lambda c: c.tags("missing"), s) == []
    for status in (404, 500, 403, 400):
        proxy.faults.insert(0, Fault("GET", r"/v2/app/tags/list\?last=b", "status",
                                     status=status, body=b"{}"))
        with pytest.raises(RegistryError, match=r"page 3: the listing is incomplete"):
            _run(lambda c: c.tags("app"), s)


@pytest.mark.parametrize("body", [
    b'{"name": "app", "tags": ["a", "b"',  # cut off
    b'{"name": "app"}',  # no tags key
    b'{"name": "app", "tags": "a"}',
    b'{"name": "app", "tags": [{"x": 1}]}',
    b'<html>gateway</html>',
])
def test_truncated_or_garbled_page_is_an_error(registry, pusher: Pusher, proxy, body):
    pusher.image("app", "a")

    def garble(method, path, status, headers, _body):
        return status, headers, body

    proxy.inject(Fault("GET", r"/v2/app/tags/list", "rewrite", rewrite=garble))
    with pytest.raises(RegistryError, match="not the expected JSON"):
        _run(lambda c: c.tags("app"), RegistrySettings(name="main", url=proxy.url))


def _lost_page_acr(acr: AcrEmulator) -> tuple[str, list[str]]:
    """An index on page 2+ of ACR's _manifests listing with a child on page 1."""
    old = NOW - timedelta(days=30)
    for i in range(110):
        acr.image("multi", f"v{i}", created=old, seed=f"tagged {i}")
    for attempt in range(200):
        children = [acr.image("multi", created=old, seed=f"child {attempt} {k}")
                    for k in range(2)]
        index = acr.index("multi", f"idx-{attempt}", children=children, created=old)
        ordered = sorted(acr.repos["multi"])
        if ordered.index(index) >= 100 and any(ordered.index(c) < 100 for c in children):
            return index, children
    raise AssertionError("no layout with the index past the first page")


def test_acr_lost_manifests_page_deletes_no_orphaned_children(acr: AcrEmulator,
                                                              tmp_path: Path):
    index, children = _lost_page_acr(acr)
    acr.faults.append(EmulatorFault("GET", r"/acr/v1/multi/_manifests\?last=", status=404,
                                    times=10**6))
    config = acr_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                        'delete: [{untagged: true}]\n')
    out = io.StringIO()
    assert main_cli(["run", "--config", str(config), "--output", "json"], out) == 1
    doc = json.loads(out.getvalue())
    assert doc["actions"] == []
    assert doc["errors"][0]["repository"] == "multi"
    assert all(c in acr.repos["multi"] for c in children) and index in acr.repos["multi"]


def main_cli(args: list[str], out: io.StringIO) -> int:
    from retention.cli import main

    return main(args, stdout=out, stderr=io.StringIO())


# -- 2. paging is bounded -----------------------------------------------------------------


def test_link_back_to_a_page_already_read_fails_the_repository(tmp_path, registry,
                                                               pusher: Pusher, proxy):
    for tag in ("a", "b", "c"):
        pusher.image("app", tag, created=OLD, extra=tag)
    proxy.inject(Fault("GET", r"/tags/list", "rewrite", times=10**6, rewrite=paged_tags(1)))
    # Page 2 links back to page 1.
    proxy.faults.insert(0, Fault("GET", r"/v2/app/tags/list\?last=a", "rewrite", times=10**6,
                                 rewrite=set_link('</v2/app/tags/list?n=1000>; rel="next"')))
    s = RegistrySettings(name="main", url=proxy.url)
    with pytest.raises(RegistryError, match="leads back to a page already read"):
        _run(lambda c: c.tags("app"), s)
    assert proxy.count("GET", r"/v2/app/tags/list") <= 4

    config = write_config(tmp_path, proxy.url)
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1 and doc["errors"][0]["repository"] == "app"
    assert "never end" in doc["errors"][0]["message"]


@pytest.mark.parametrize("link", [
    "<https://xn--reg-example.com/v2/app/tags/list?n=1>",  # punycode that is no IDNA
    "<https://reg.example\\@127.0.0.1/v2/app/tags/list?n=1>",  # a backslash in the host
    "<http://[::1/v2/app/tags/list>",  # an IPv6 address left open
])
def test_a_link_no_url_parser_reads_fails_the_repository_not_the_run(
        tmp_path, registry, pusher: Pusher, proxy, link: str):
    """A registry's Link that yarl cannot read raised ValueError (UnicodeError for the
    punycode) out of the scan: the whole run ended in a traceback, every registry unread.
    It is that repository's unreadable listing."""
    pusher.image("app", "a", created=OLD)
    pusher.image("other", "v1", created=OLD)
    proxy.inject(Fault("GET", r"^/v2/app/tags/list", "rewrite", times=10**6,
                       rewrite=set_link(f'{link}; rel="next"')))
    with pytest.raises(RegistryError, match="Link header"):
        _run(lambda c: c.tags("app"), RegistrySettings(name="main", url=proxy.url))
    config = write_config(tmp_path, proxy.url)
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert "Traceback" not in err
    assert code == 1 and [e["repository"] for e in doc["errors"]] == ["app"], doc
    assert "Link header" in doc["errors"][0]["message"]
    assert pusher.exists("app", "a") and pusher.exists("other", "v1")


def test_endless_link_chain_is_capped(registry, pusher: Pusher, proxy, monkeypatch):
    pusher.image("app", "a")
    counter = {"n": 0}

    def onwards(method, path, status, headers, body):
        counter["n"] += 1
        headers = {**headers, "Link": f'</v2/app/tags/list?last=x{counter["n"]}&n=1>; '
                                      'rel="next"'}
        return status, headers, body

    proxy.inject(Fault("GET", r"/v2/app/tags/list", "rewrite", times=10**6, rewrite=onwards))
    monkeypatch.setattr(client_module, "MAX_PAGES", 25)
    with pytest.raises(RegistryError, match="more than 25 pages"):
        _run(lambda c: c.tags("app"), RegistrySettings(name="main", url=proxy.url))
    assert proxy.count("GET", r"/v2/app/tags/list") == 25


def test_a_listing_of_endless_full_pages_is_capped_by_its_items(registry, pusher: Pusher,
                                                                  proxy):
    """Each page under the cap on one answer (16 MiB), each with a Link to the next: a
    hostile registry's listing grows in memory page after page (a 16 MiB page of short tags
    parses into ~140 MiB), up to MAX_PAGES (10,000). More than MAX_LISTED (a million) names
    in one listing is an endless one: here 20,000 tags a page, cut at the 51st page. (Past
    its 80th page, the registry here fails the listing, which would otherwise go on.)"""
    pusher.image("app", "a")
    served = {"n": 0}

    def full_pages(method, path, status, headers, body):
        served["n"] += 1
        page = served["n"]
        if page > 80:
            return 500, headers, b'{"errors": [{"code": "UNKNOWN"}]}'
        tags = [f"t{page:04d}{i:05d}" for i in range(20_000)]
        headers = {**headers, "Link": f'</v2/app/tags/list?last={tags[-1]}&n=20000>; '
                                      'rel="next"'}
        return status, headers, json.dumps({"name": "app", "tags": tags}).encode()

    proxy.inject(Fault("GET", r"/v2/app/tags/list", "rewrite", times=10**6,
                       rewrite=full_pages))
    with pytest.raises(RegistryError, match="more than 1,000,000 names"):
        _run(lambda c: c.tags("app"), RegistrySettings(name="main", url=proxy.url))
    assert served["n"] == 51


# -- 3. one repository's 403 fails that repository only -----------------------------------


def _token_config(tmp_path: Path, url: str, token_host: str) -> Path:
    config = write_config(tmp_path, url)
    (tmp_path / "pw").write_text(PASSWORD)
    config.write_text(config.read_text().replace(
        f"url: {url}", f"url: {url}\n    username: {USER}\n    password_file: pw\n"
        f"    token_hosts: [\"{token_host}\"]"))
    return config


def _push_with_token(token_server, url: str, repo: str, tag: str) -> str:
    pusher = Pusher(url)
    pusher.client.headers["Authorization"] = \
        f"Bearer {token_server.token(USER, [f'repository:{repo}:pull,push'])}"
    try:
        return pusher.image(repo, tag, created=OLD, extra=repo).digest
    finally:
        pusher.close()


@pytest.mark.parametrize("deny_mode", ["filter", "403"])
def test_refused_scope_on_one_repository_fails_only_that_one(tmp_path, token_registry,
                                                            token_server, deny_mode):
    _push_with_token(token_server, token_registry.url, "open/app", "pr-1")
    secret = _push_with_token(token_server, token_registry.url, "secret/app", "pr-1")
    token_server.denied = {"secret/app"}
    token_server.deny_mode = deny_mode
    config = _token_config(tmp_path, token_registry.url, token_server.netloc)
    code, doc, _err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1, doc
    assert isinstance(doc, dict), doc  # the document is printed
    assert [(a["repository"], a["status"]) for a in doc["actions"]] == [("open/app", "deleted")]
    (error,) = doc["errors"]
    assert error["repository"] == "secret/app"
    assert "permission" in error["message"]
    token_server.denied = set()
    probe = Pusher(token_registry.url)
    probe.client.headers["Authorization"] = \
        f"Bearer {token_server.token(USER, ['repository:secret/app:pull'])}"
    assert probe.exists("secret/app", secret)
    probe.close()


def test_refused_on_every_repository_is_a_registry_wide_error(tmp_path, token_registry,
                                                             token_server):
    _push_with_token(token_server, token_registry.url, "a/app", "pr-1")
    _push_with_token(token_server, token_registry.url, "b/app", "pr-1")
    token_server.denied = {"a/app", "b/app"}
    config = _token_config(tmp_path, token_registry.url, token_server.netloc)
    code, out, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    assert "registry 'main'" in err and "lacks permission" in err
    assert PASSWORD not in str(out) + err


def test_403_on_one_repository_listing_through_the_proxy(tmp_path, registry, pusher: Pusher,
                                                         proxy):
    pusher.image("bad", "pr-1", created=OLD)
    pusher.image("good", "pr-1", created=OLD)
    proxy.inject(Fault("GET", r"/v2/bad/tags/list", "status", times=100, status=403))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url)),
                       "--output", "json")
    assert code == 1 and isinstance(doc, dict), doc
    assert [a["repository"] for a in doc["actions"]] == ["good"]
    assert doc["errors"][0]["repository"] == "bad" and "403" in doc["errors"][0]["message"]
    assert pusher.exists("bad", "pr-1")


# -- 4. one refused manifest fails alone ---------------------------------------------------


def test_acr_manifest_locked_after_planning_fails_alone(acr: AcrEmulator, tmp_path: Path):
    old = NOW - timedelta(days=30)
    digests = [acr.image("app", f"pr-{i}", created=old, seed=str(i)) for i in range(4)]
    locked: list[str] = []

    def lock_another(method: str, path: str) -> None:
        # While the first DELETE is in flight, someone locks another planned manifest.
        target = next(d for d in digests if d not in path and d in acr.repos["app"])
        acr.lock_manifest("app", target)
        locked.append(target)

    acr.faults.append(EmulatorFault("DELETE", r"/v2/app/manifests/", hook=lock_another))
    config = acr_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                        'delete: [{tags: ["pr-*"]}]\n')
    out = io.StringIO()
    assert main_cli(["run", "--config", str(config), "--output", "json"], out) == 1
    doc = json.loads(out.getvalue())
    status = {a["digest"]: a for a in doc["actions"]}
    (target,) = locked
    assert status[target]["status"] == "failed"
    assert "locked" in status[target]["reason"]
    assert "storage.delete.enabled" not in status[target]["reason"]
    assert {d for d, a in status.items() if a["status"] == "deleted"} == set(digests) - {target}
    assert set(acr.repos["app"]) == {target}


def test_403_on_one_manifest_delete_fails_alone(tmp_path, registry, pusher: Pusher, proxy):
    images = {pusher.image("app", f"pr-{i}", created=OLD, extra=str(i)).digest
              for i in range(3)}
    # The first DELETE, whichever manifest it is for, is refused.
    proxy.inject(Fault("DELETE", r"/manifests/", "status", status=403))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url)),
                       "--output", "json")
    assert code == 1
    status = {a["digest"]: a for a in doc["actions"]}
    assert set(status) == images
    (refused,) = [d for d, a in status.items() if a["status"] == "failed"]
    assert "HTTP 403" in status[refused]["reason"]
    assert {d for d, a in status.items() if a["status"] == "deleted"} == images - {refused}
    assert pusher.exists("app", refused)


# -- 5. token requests are retried ----------------------------------------------------------


def test_acr_token_throttled_is_retried(acr: AcrEmulator):
    acr.image("app", "v1", seed="x")
    acr.throttle.append(["GET", r"^/oauth2/token$", 2, 429])
    sleeps: list[float] = []
    s = RegistrySettings(name="acr", url=acr.url, type="acr",
                         credentials=Credentials(acr.admin[0], Secret(acr.admin[1])))
    inventory = _run(lambda c: Scanner(c).scan(), s, sleeps=sleeps)
    assert len(inventory.repositories[0].manifests) == 1
    assert sleeps == [1.0, 1.0]  # ACR's Retry-After, honoured


def test_entra_exchange_and_token_throttled_are_retried(acr: AcrEmulator):
    acr.image("app", "v1", seed="x")
    acr.throttle.append(["POST", r"^/oauth2/exchange$", 1, 429])
    acr.throttle.append(["POST", r"^/oauth2/token$", 2, 503])
    sleeps: list[float] = []
    s = RegistrySettings(name="acr", url=acr.url, type="acr")
    entra = EntraExchange(FakeEntraCredential(acr), registry="acr")
    inventory = _run(lambda c: Scanner(c).scan(), s, sleeps=sleeps, entra=entra)
    assert len(inventory.repositories[0].manifests) == 1
    assert acr.count("POST", r"^/oauth2/exchange$", status=429) == 1
    assert acr.count("POST", r"^/oauth2/token$", status=503) == 2
    assert len(sleeps) == 3


def test_token_realm_throttled_is_retried(token_registry, token_server, tmp_path):
    _push_with_token(token_server, token_registry.url, "tok/app", "v1")
    from tests.servers import FaultProxy

    realm_proxy = FaultProxy(token_server.realm.rsplit("/", 1)[0])
    realm_proxy.url = realm_proxy.start()
    try:
        realm_proxy.inject(Fault("GET", r"/token", "status", times=2, status=429,
                                 headers={"Retry-After": "2"}))
        reg = start_registry(tmp_path / "via-proxy", auth={"token": {
            "realm": realm_proxy.url + "/token", "service": token_server.service,
            "issuer": token_server.issuer, "rootcertbundle": str(token_server.cert_path)}})
        try:
            sleeps: list[float] = []
            s = RegistrySettings(name="main", url=reg.url,
                                 credentials=Credentials(USER, Secret(PASSWORD)),
                                 token_hosts=(realm_proxy.url.split("/")[2],))
            assert _run(lambda c: c.catalog(), s, sleeps=sleeps) == []
            assert sleeps == [2.0, 2.0]
        finally:
            reg.stop()
    finally:
        realm_proxy.stop()


# -- 6. schema 1 ------------------------------------------------------------------------------


def _oci_layout(root: Path, tag: str) -> None:
    """A one-layer image in an OCI image layout, for skopeo to copy."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("legacy.txt")
        info.size = 6
        archive.addfile(info, io.BytesIO(b"legacy"))
    layer = gzip.compress(tar.getvalue(), mtime=0)
    config = put(json.dumps({
        "architecture": "amd64", "os": "linux", "created": OLD, "config": {},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(tar.getvalue()).hexdigest()]},
        "history": [{"created": OLD, "created_by": "test"}]}).encode())
    manifest = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **put(layer)}]}).encode())
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def _skopeo_schema1(tmp_path: Path, host: str, repo: str, tag: str) -> None:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed: ./scripts/setup.sh installs it"
    _oci_layout(tmp_path / "layout", tag)
    policy = tmp_path / "skopeo-policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    subprocess.run([skopeo, "--policy", str(policy), "copy", "--dest-tls-verify=false",
                    "--format", "v2s1", f"oci:{tmp_path / 'layout'}:{tag}",
                    f"docker://{host}/{repo}:{tag}"], check=True, capture_output=True,
                   timeout=120)


def test_schema1_manifest_is_unknown_media_type_and_the_rest_is_planned(tmp_path: Path):
    reg = start_registry(tmp_path / "registry", schema1=True)
    try:
        _skopeo_schema1(tmp_path, reg.host, "mixed", "pr-0")
        pusher = Pusher(reg.url)
        newer = pusher.image("mixed", "pr-1", created=OLD)
        config = write_config(tmp_path, reg.url, policy='name: p\nrepositories: '
                              '{include: ["**"]}\ndelete: [{tags: ["pr-*"]}]\n')
        code, doc, _ = cli("run", "--config", str(config), "--output", "json")
        assert code == 0, doc
        assert deleted_digests(doc) == {newer.digest}
        (kept,) = doc["protected"]
        assert kept["tags"] == ["pr-0"] and kept["reason"] == "unknown-media-type"
        assert pusher.exists("mixed", "pr-0")
        pusher.close()
    finally:
        reg.stop()


def _resign(method, path, status, headers, body):
    return status, headers, body + b" "


def test_digest_mismatch_of_other_media_types_still_fails_the_repository(
        tmp_path, registry, pusher: Pusher, proxy):
    pusher.image("app", "pr-0", created=OLD)
    config = write_config(tmp_path, proxy.url, policy='name: p\nrepositories: '
                          '{include: ["**"]}\ndelete: [{tags: ["pr-1"]}]\n')
    assert cli("run", "--config", str(config), "--output", "json")[0] == 0
    # A repository seen before reads a new tag by HEAD, then its body by digest.
    img = pusher.image("app", "pr-1", created=OLD, layers=(b"new",))
    proxy.inject(Fault("GET", rf"/v2/app/manifests/{img.digest}", "rewrite", times=100,
                       rewrite=_resign))
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1 and doc["actions"] == []
    assert "not the digest asked for" in doc["errors"][0]["message"]


def test_body_read_by_tag_must_match_the_registrys_digest(
        tmp_path, registry, pusher: Pusher, proxy):
    """A new repository is read with one GET per tag: the body must hash to the
    Docker-Content-Digest of that answer, or it would be cached as that digest's facts."""
    pusher.image("app", "pr-1", created=OLD)
    proxy.inject(Fault("GET", r"/v2/app/manifests/pr-1$", "rewrite", times=100,
                       rewrite=_resign))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url)),
                       "--output", "json")
    assert code == 1 and doc["actions"] == []
    assert "but the registry names it" in doc["errors"][0]["message"]
    assert proxy.count("GET", r"/manifests/sha256:") == 0  # nothing read by digest


def test_a_new_repository_is_read_with_one_get_per_tag_and_a_known_one_with_heads(
        tmp_path, registry, pusher: Pusher, proxy):
    for i in range(3):
        pusher.image("app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    config = write_config(tmp_path, proxy.url, policy='name: p\nrepositories: '
                          '{include: ["**"]}\ndelete: [{tags: ["none-*"]}]\n')
    assert cli("plan", "--config", str(config), "--output", "json")[0] == 0
    assert proxy.count("HEAD", r"/manifests/") == 0
    assert proxy.count("GET", r"/manifests/pr-\d$") == 3
    assert proxy.count("GET", r"/manifests/sha256:") == 0
    assert proxy.count("GET", r"/blobs/") == 3
    before = len(proxy.requests)
    assert cli("plan", "--config", str(config), "--output", "json")[0] == 0
    later = proxy.requests[before:]
    assert sorted(m for m, p in later if "/manifests/" in p) == ["HEAD"] * 3
    assert not [p for _, p in later if "/blobs/" in p]


# -- 7. cached facts are used only for digests the registry still serves ------------------


def _inventory(config: Path) -> dict[str, set[str]]:
    code, doc, _ = cli("inventory", "--config", str(config), "--output", "json")
    assert code == 0, doc
    (inventory,) = doc["inventories"]
    return {r["name"]: {m["digest"] for m in r["manifests"]} for r in inventory["repositories"]}


def test_cached_child_or_subject_deleted_by_someone_else_is_gone(tmp_path, registry,
                                                                pusher: Pusher, proxy):
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd",))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm",), arch="arm64")
    index = pusher.index("multi", "v1", [amd, arm])
    subject = pusher.image("signed", "v1", created=OLD)
    sig = pusher.cosign_signature("signed", subject)
    config = write_config(tmp_path, proxy.url)
    first = _inventory(config)
    assert first == {"multi": {amd.digest, arm.digest, index.digest},
                     "signed": {subject.digest, sig.digest}}

    # Someone else deletes a child and the signed image (its tag goes with it, the
    # signature's tag stays).
    assert pusher.client.delete(f"/v2/multi/manifests/{arm.digest}").status_code == 202
    assert pusher.client.delete(f"/v2/signed/manifests/{subject.digest}").status_code == 202
    start = len(proxy.requests)
    second = _inventory(config)
    assert second == {"multi": {amd.digest, index.digest}, "signed": {sig.digest}}
    # Cheap: no manifest or config is fetched again; a HEAD confirms each digest reached
    # through the cache only (the two children, the signature's subject).
    later = proxy.requests[start:]
    assert [r for r in later if r[0] == "GET" and "/manifests/" in r[1]] == []
    heads = sorted(p.rsplit("/", 1)[1] for m, p in later if m == "HEAD")
    assert heads.count(amd.digest) == 1 and heads.count(arm.digest) == 1
    assert heads.count(subject.digest) == 1


# -- 8. ACR: a repository is deleted only when confirmed empty ----------------------------


def test_acr_transient_404_on_the_emptiness_check_deletes_no_repository(acr: AcrEmulator,
                                                                        tmp_path: Path):
    old = NOW - timedelta(days=30)
    planned = acr.image("ephemeral/pr-7", "pr-7", created=old, seed="a")
    pushed: list[str] = []

    def push_meanwhile(method: str, path: str) -> None:
        # During the run someone pushes again, and ACR's next listing answers a transient
        # 404.
        pushed.append(acr.image("ephemeral/pr-7", "fix-1", seed="new"))
        acr.faults.append(EmulatorFault("GET", r"/acr/v1/ephemeral/pr-7/_manifests",
                                        status=404))

    acr.faults.append(EmulatorFault("DELETE", rf"/manifests/{planned}", hook=push_meanwhile))
    policy = ('name: p\nrepositories: {include: ["ephemeral/**"]}\n'
              'delete: [{tags: ["pr-*"]}]\ndelete_empty_repositories: true\n')
    config = acr_config(tmp_path, acr, policy)
    out = io.StringIO()
    main_cli(["run", "--config", str(config), "--output", "json"], out)
    doc = json.loads(out.getvalue())
    assert deleted_digests(doc) == {planned}
    assert acr.count("DELETE", r"^/acr/v1/ephemeral/pr-7$") == 0
    assert set(acr.repos["ephemeral/pr-7"]) == set(pushed)


def test_acr_confirmed_empty(acr: AcrEmulator):
    from retention.registry.acr import AcrApi

    acr.image("full", "v1", seed="x")
    acr.repos["empty"] = {}
    s = RegistrySettings(name="acr", url=acr.url, type="acr",
                         credentials=Credentials(acr.admin[0], Secret(acr.admin[1])))

    async def check(client):
        api = AcrApi(client)
        return [await api.confirmed_empty(r) for r in ("full", "empty", "never-existed")]

    assert _run(check, s) == [False, True, False]


def test_acr_transient_404_on_the_reread_before_deleting_deletes_nothing(acr: AcrEmulator,
                                                                         tmp_path: Path):
    old = NOW - timedelta(days=10)
    first = acr.image("web", "latest", created=old, seed="v1")
    acr.image("web", "latest", created=NOW - timedelta(days=1), seed="v2")

    def retag(method: str, path: str) -> None:
        # Between planning and deleting, someone tags the orphan to roll back to it; ACR's
        # listing answers a transient 404 just then.
        acr.tags["web"]["rollback"] = TagEntry(first)

    # The scan reads _manifests twice (the 401 challenge, then the answer); the executor's
    # re-read before deleting is the third.
    acr.faults.append(EmulatorFault("GET", r"/acr/v1/web/_manifests", skip=2, hook=retag,
                                    fail_after_hook=True))
    config = acr_config(tmp_path, acr, 'name: p\nrepositories: {include: ["**"]}\n'
                        'delete: [{untagged: true}]\n')
    out = io.StringIO()
    assert main_cli(["run", "--config", str(config), "--output", "json"], out) == 1
    doc = json.loads(out.getvalue())
    assert deleted_digests(doc) == set()
    assert first in acr.repos["web"]


def test_json_nested_too_deeply_keeps_its_image_and_the_run_goes_on(
        tmp_path, registry, pusher: Pusher):
    """A config blob is bytes the registry never reads, and distribution accepts a manifest
    nested 3,000 deep (Go reads JSON to 10,000 levels): anyone who can push can write them.
    Such JSON is unreadable, never the end of a run: an image whose config it is is kept
    (unknown time); a manifest that deep is unparsed, and what it references unknown, so
    its repository is kept whole (unparsed-parent), and the rest is planned."""
    deep = b"[" * 3000 + b"]" * 3000
    config = pusher.blob("app", b'{"created": "' + OLD.encode() + b'", "x": ' + deep + b"}")
    pusher.manifest("app", "pr-0", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": []}, OCI_MANIFEST)
    plain = pusher.image("deep", "v1", created=OLD)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": plain.blobs[0][0],
                                  "size": plain.blobs[0][1]},
                       "layers": []}).encode()
    pusher.manifest("deep", "pr-2", body[:-1] + b', "x": ' + deep + b"}", OCI_MANIFEST)
    beside = pusher.image("deep", "pr-4", created=OLD, layers=(b"beside",))
    old = pusher.image("app", "pr-3", created=OLD, layers=(b"other",))
    config_path = write_config(tmp_path, registry.url, policy='name: p\nrepositories: '
                               '{include: ["**"]}\ndelete: [{tags: ["pr-*"], '
                               'older_than: 1d}]\n')
    code, doc, _ = cli("run", "--config", str(config_path), "--output", "json")
    assert code == 0, doc
    assert deleted_digests(doc) == {old.digest}
    assert {p["digest"]: p["reason"] for p in doc["protected"]
            if p["repository"] == "deep"} == {beside.digest: "unparsed-parent"}
    for repo, tag in (("app", "pr-0"), ("deep", "v1"), ("deep", "pr-2"), ("deep", "pr-4")):
        assert pusher.exists(repo, tag)
    assert not pusher.exists("app", "pr-3")
