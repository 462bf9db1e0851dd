"""The registry client against real registries: paging, auth, deletes and retries."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.config import Credentials, RegistrySettings
from retention.errors import AuthenticationError, DeletionDisabledError, RegistryError
from retention.registry.client import RegistryClient, RetryPolicy
from retention.secrets import Secret
from tests.conftest import PASSWORD, USER
from tests.pusher import Pusher
from tests.servers import Fault, start_registry

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


def settings(url: str, *, user: str | None = None, password: str | None = None,
             **kw) -> RegistrySettings:
    creds = Credentials(user, Secret(password)) if user and password else None
    return RegistrySettings(name="main", url=url, credentials=creds, **kw)


def call(s: RegistrySettings, fn, **client_kw):
    async def go():
        async with RegistryClient(s, **client_kw) as client:
            return await fn(client)
    return asyncio.run(go())


def test_catalog_pages_past_1000(tmp_path: Path, proxy_big):
    proxy, names = proxy_big
    found = call(settings(proxy.url), lambda c: c.catalog())
    assert found == sorted(names)
    assert proxy.count("GET", r"/v2/_catalog") == 2  # 1000 + the rest, never n > 1000
    assert not any("n=1001" in p or "n=2000" in p for _, p in proxy.requests)


def test_explicit_repositories_replace_catalog(registry, pusher: Pusher, proxy):
    pusher.image("a", "v1")
    found = call(settings(proxy.url, repositories=("x/y", "a")), lambda c: c.catalog())
    assert found == ["a", "x/y"]
    assert proxy.count("GET", "_catalog") == 0


def test_tags_and_head(registry, pusher: Pusher):
    img = pusher.image("team/app", "v1")
    pusher.tag("team/app", "latest", img)
    s = settings(registry.url)
    assert call(s, lambda c: c.tags("team/app")) == ["latest", "v1"]
    head = call(s, lambda c: c.head_manifest("team/app", "latest"))
    assert head.digest == img.digest
    assert call(s, lambda c: c.head_manifest("team/app", "nope")) is None
    assert call(s, lambda c: c.tags("does/not-exist")) == []


def test_basic_auth(basic_registry):
    pusher = Pusher(basic_registry.url, auth=(USER, PASSWORD))
    pusher.image("private", "v1")
    s = settings(basic_registry.url, user=USER, password=PASSWORD)
    assert call(s, lambda c: c.catalog()) == ["private"]


def test_basic_auth_wrong_password_names_registry_not_password(basic_registry):
    s = settings(basic_registry.url, user=USER, password="wrong-password-123")
    with pytest.raises(AuthenticationError) as info:
        call(s, lambda c: c.catalog())
    message = str(info.value)
    assert "registry 'main'" in message
    assert "wrong-password-123" not in message


def test_anonymous_against_protected_registry(basic_registry):
    with pytest.raises(AuthenticationError, match="requires credentials"):
        call(settings(basic_registry.url), lambda c: c.ping())


def test_token_auth_and_token_cache(token_registry, token_server):
    # Push through our own client's token flow: a pull+push token from the token server.
    token = token_server.token(USER, ["repository:tok/app:pull,push"])
    pusher = Pusher(token_registry.url)
    pusher.client.headers["Authorization"] = f"Bearer {token}"
    img = pusher.image("tok/app", "v1")
    s = settings(token_registry.url, user=USER, password=PASSWORD,
                 token_hosts=(token_server.netloc,))

    async def work(c: RegistryClient):
        await c.ping()
        first = await c.tags("tok/app")
        second = await c.tags("tok/app")
        head = await c.head_manifest("tok/app", "v1")
        return first, second, head

    first, second, head = call(s, work)
    assert first == second == ["v1"]
    assert head.digest == img.digest
    # One token for the repository scope, reused: not one per request.
    assert token_server.issued[("repository:tok/app:pull",)] == 1


def test_token_auth_wrong_password(token_registry, token_server):
    s = settings(token_registry.url, user=USER, password="not-the-password",
                 token_hosts=(token_server.netloc,))
    with pytest.raises(AuthenticationError) as info:
        call(s, lambda c: c.catalog())
    assert "rejected" in str(info.value)
    assert "not-the-password" not in str(info.value)


def test_token_realm_on_foreign_host_gets_no_credentials(tmp_path, token_server):
    # The realm names "localhost" while the registry is 127.0.0.1: another host as far as
    # a URL goes, so the password must not be sent there unless token_hosts lists it.
    realm = token_server.realm.replace("127.0.0.1", "localhost")
    reg = start_registry(tmp_path / "r", auth={"token": {
        "realm": realm, "service": token_server.service, "issuer": token_server.issuer,
        "rootcertbundle": str(token_server.cert_path)}})
    try:
        s = settings(reg.url, user=USER, password=PASSWORD)
        token_server.authorizations_seen.clear()
        with pytest.raises(AuthenticationError, match="token_hosts"):
            call(s, lambda c: c.catalog())
        assert token_server.authorizations_seen == []  # not even asked anonymously
        allowed = settings(reg.url, user=USER, password=PASSWORD,
                           token_hosts=(realm.split("/")[2],))
        assert call(allowed, lambda c: c.catalog()) == []
    finally:
        reg.stop()


def test_token_renewed_after_expiry(token_registry, token_server):
    token_server.lifetime = 1  # seconds: every token expires almost at once
    s = settings(token_registry.url, user=USER, password=PASSWORD,
                 token_hosts=(token_server.netloc,))

    async def work(c: RegistryClient):
        await c.catalog()
        await asyncio.sleep(1.2)
        return await c.catalog()

    assert call(s, work) == []
    assert token_server.issued[("registry:catalog:*",)] == 2


def test_delete_by_digest_then_404_is_done(registry, pusher: Pusher):
    img = pusher.image("d", "v1")
    s = settings(registry.url)
    assert call(s, lambda c: c.delete_manifest("d", img.digest)) is True
    assert call(s, lambda c: c.delete_manifest("d", img.digest)) is False
    assert not pusher.exists("d", img.digest)


def test_delete_disabled_gives_actionable_message(tmp_path):
    reg = start_registry(tmp_path / "nodelete", delete=False)
    try:
        img = Pusher(reg.url).image("d", "v1")
        with pytest.raises(DeletionDisabledError, match=r"storage\.delete\.enabled"):
            call(settings(reg.url), lambda c: c.delete_manifest("d", img.digest))
    finally:
        reg.stop()


@pytest.mark.parametrize("fault", [
    Fault("GET", r"/tags/list", "status", times=2, status=429, headers={"Retry-After": "1"}),
    Fault("GET", r"/tags/list", "status", times=3, status=503),
    Fault("GET", r"/tags/list", "status", times=1, status=502),
    Fault("GET", r"/tags/list", "reset", times=2),
    Fault("HEAD", r"/manifests/", "reset", times=1),
    Fault("GET", r"/tags/list", "delay", times=1, seconds=0.3),
])
def test_retries_through_faults(registry, pusher: Pusher, proxy, fault: Fault):
    pusher.image("r", "v1")
    proxy.inject(fault)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def work(c):
        return await c.tags("r"), await c.head_manifest("r", "v1")

    tags, head = call(settings(proxy.url), work, retry=FAST, sleep=fake_sleep)
    assert tags == ["v1"] and head is not None
    assert fault.times == 0  # every injected fault was met
    if fault.headers.get("Retry-After"):
        assert sleeps == [1.0, 1.0]  # the registry's Retry-After, not our backoff


def test_retries_give_up_with_clear_error(registry, pusher: Pusher, proxy):
    pusher.image("r", "v1")
    proxy.inject(Fault("GET", r"/tags/list", "status", times=10, status=503))

    async def no_sleep(_s):
        return None

    with pytest.raises(RegistryError, match="HTTP 503"):
        call(settings(proxy.url), lambda c: c.tags("r"), retry=FAST, sleep=no_sleep)
    assert proxy.count("GET", "/tags/list") == FAST.attempts


def test_concurrency_limit_is_respected(registry, pusher: Pusher, proxy):
    for i in range(12):
        pusher.image("many", f"t{i}", extra=str(i))
    proxy.inject(Fault("HEAD", r"/manifests/", "delay", times=100, seconds=0.05))
    import threading

    active = {"now": 0, "max": 0}
    lock = threading.Lock()
    original = proxy._take_fault

    def counting(method, path):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        try:
            return original(method, path)
        finally:
            import time

            time.sleep(0.05)
            with lock:
                active["now"] -= 1

    proxy._take_fault = counting

    async def work(c):
        return await asyncio.gather(*(c.head_manifest("many", f"t{i}") for i in range(12)))

    call(settings(proxy.url, concurrency=3), work)
    assert active["max"] <= 3
    assert active["max"] >= 2


def _catalog(s: RegistrySettings, **client_kw) -> list[str]:
    return call(s, lambda c: c.catalog(), **client_kw)


def test_tls_verification(tmp_path: Path):
    """A self-signed certificate marked as a CA (what ``openssl req -x509`` makes), used as
    the server's own: OpenSSL, Go and curl accept it when it is trusted (rustls refused
    it), so such a registry is verified against ca_file like any other."""
    from tests.servers import self_signed

    cert, key = self_signed(tmp_path / "tls")
    other, _ = self_signed(tmp_path / "other")
    reg = start_registry(tmp_path / "r", tls=(cert, key))
    try:
        assert reg.url.startswith("https://")
        for ca_file in (None, other):
            with pytest.raises(RegistryError, match=r"not trusted.*set ca_file"):
                _catalog(settings(reg.url, ca_file=ca_file), retry=FAST)
        assert _catalog(settings(reg.url, ca_file=cert)) == []
        assert _catalog(settings(reg.url, insecure_skip_verify=True)) == []
    finally:
        reg.stop()


def test_the_ca_file_is_used_as_read_at_the_start(tmp_path: Path):
    """A mounted Secret may be rotated (or removed) while a run goes on: the TLS context,
    made at the first request, uses the bytes read at the start instead of reading the file
    again (a FileNotFoundError ended the whole run)."""
    import shutil

    from tests.servers import self_signed

    cert, key = self_signed(tmp_path / "tls")
    mounted = tmp_path / "secret" / "ca.crt"
    mounted.parent.mkdir()
    shutil.copy(cert, mounted)
    reg = start_registry(tmp_path / "r", tls=(cert, key))

    async def go():
        async with RegistryClient(settings(reg.url, ca_file=mounted), retry=FAST) as client:
            mounted.unlink()
            return await client.catalog()

    try:
        assert asyncio.run(go()) == []
    finally:
        reg.stop()


def test_a_certificate_naming_its_host_in_the_cn_only_is_refused(tmp_path: Path):
    """No subjectAltName: refused, as Go (docker) refuses it; Python's ssl by default would
    take the host from the CN."""
    from tests.servers import self_signed

    cert, key = self_signed(tmp_path / "tls", "localhost", san=False)
    reg = start_registry(tmp_path / "r", tls=(cert, key))
    try:
        url = reg.url.replace("127.0.0.1", "localhost")  # a name: OpenSSL never takes an IP
        with pytest.raises(RegistryError, match="not trusted"):
            call(settings(url, ca_file=cert), lambda c: c.catalog(), retry=FAST)
    finally:
        reg.stop()


def test_tls_with_a_certificate_from_a_private_ca(tmp_path: Path):
    """A server certificate issued by a private CA: trusted through ca_file, refused
    without it and with another CA's file."""
    from tests.servers import ca_signed

    ca, cert, key = ca_signed(tmp_path / "tls")
    other_ca, _, _ = ca_signed(tmp_path / "other")
    reg = start_registry(tmp_path / "r", tls=(cert, key))
    try:
        for ca_file in (None, other_ca):
            with pytest.raises(RegistryError, match=r"not trusted.*set ca_file"):
                call(settings(reg.url, ca_file=ca_file), lambda c: c.catalog(), retry=FAST)
        assert _catalog(settings(reg.url, ca_file=ca)) == []
    finally:
        reg.stop()


def test_config_blob_read_through_a_redirect(registry, pusher: Pusher, proxy):
    from retention.scanner import Scanner

    pusher.image("app", "v1", created="2024-03-04T05:06:07Z")
    proxy.inject(Fault("GET", r"/blobs/", "redirect", times=10,
                       headers={"target": registry.url}))

    async def scan(client):
        return await Scanner(client).scan()

    inventory = call(settings(proxy.url), scan)
    (manifest,) = inventory.repositories[0].manifests
    assert manifest.created is not None and manifest.created.year == 2024
    assert proxy.count("GET", r"/blobs/") == 1  # answered with the redirect


def test_link_header_to_another_host_is_refused():
    """A registry (or whoever answers for it) must not steer credentials elsewhere."""
    import httpx2

    from tests.loopback import serving

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "127.0.0.1":
            return httpx2.Response(200, json={"repositories": ["a"]},
                                   headers={"Link": '<https://evil.test/v2/_catalog?n=1>; '
                                                   'rel="next"'})
        raise AssertionError(f"request sent to {request.url}")

    async def go():
        async with serving(handler) as url, \
                RegistryClient(settings(url, user=USER, password=PASSWORD)) as client:
            return await client.catalog()

    with pytest.raises(RegistryError, match="points away from the registry"):
        asyncio.run(go())


# -- odd answers: each one either read correctly or refused, never guessed ------------------


def _rewrite(status: int | None = None, headers: dict | None = None, drop=(),
             body: bytes | None = None):
    def rewrite(method, path, s, h, b):
        h = {k: v for k, v in h.items() if k.lower() not in drop}
        return (status or s), {**h, **(headers or {})}, (b if body is None else body)
    return rewrite


def test_head_without_digest_reads_the_body(registry, pusher: Pusher, proxy):
    img = pusher.image("app", "v1")
    proxy.inject(Fault("HEAD", r"/manifests/v1", "rewrite", times=10,
                       rewrite=_rewrite(drop=("docker-content-digest",))))
    head = call(settings(proxy.url), lambda c: c.head_manifest("app", "v1"))
    assert head is not None and head.digest == img.digest
    assert proxy.count("GET", r"/manifests/v1") == 1  # the body, hashed here
    # ...and a manifest gone between that HEAD and the GET is gone, not an error.
    proxy.inject(Fault("GET", r"/manifests/v1", "status", status=404, times=10))
    assert call(settings(proxy.url), lambda c: c.head_manifest("app", "v1")) is None
    proxy.faults.clear()
    proxy.inject(Fault("HEAD", r"/manifests/v1", "status", status=500, times=10))
    with pytest.raises(RegistryError):
        call(settings(proxy.url), lambda c: c.head_manifest("app", "v1"), retry=FAST)


def test_blob_whose_body_does_not_match_its_digest_is_an_error(registry, pusher: Pusher,
                                                                 proxy):
    digest, _ = pusher.blob("app", b'{"config": 1}')
    proxy.inject(Fault("GET", rf"/blobs/{digest}", "rewrite", times=10,
                       rewrite=_rewrite(body=b'{"config": 2}')))
    with pytest.raises(RegistryError, match="does not match its digest"):
        call(settings(proxy.url), lambda c: c.get_blob("app", digest), retry=FAST)
    # Too large to be a config: not read (None), whatever it is.
    assert call(settings(registry.url), lambda c: c.get_blob("app", digest, max_bytes=4)) \
        is None
    proxy.faults.clear()
    proxy.inject(Fault("GET", rf"/blobs/{digest}", "status", status=500, times=10))
    with pytest.raises(RegistryError, match="500"):
        call(settings(proxy.url), lambda c: c.get_blob("app", digest), retry=FAST)


def test_retry_after_as_an_http_date(registry, pusher: Pusher, proxy):
    from email.utils import format_datetime

    pusher.image("app", "v1")
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True)
    proxy.inject(Fault("GET", r"/tags/list", "status", status=503, times=1,
                       headers={"Retry-After": soon}))
    proxy.inject(Fault("GET", r"/tags/list", "status", status=503, times=1,
                       headers={"Retry-After": "not a date"}))
    started = time.monotonic()
    assert call(settings(proxy.url), lambda c: c.tags("app"),
                retry=RetryPolicy(attempts=4, base=0.01, cap=0.05)) == ["v1"]
    assert 0.0 <= time.monotonic() - started < 5  # waited for the date, not for ever
    assert proxy.count("GET", r"/tags/list") == 3


def _referrers_api(pages: dict[str, tuple[list[str], str | None]]):
    """distribution 2.8 has no referrers API: answer it as a registry with one would, one
    page per request, with a Link to the next."""
    def rewrite(method, path, status, headers, body):
        page = "2" if "page=2" in path else "1"
        digests, link = pages[page]
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": d, "size": 1} for d in digests]}
        out = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
        if link:
            out["Link"] = f'<{link}>; rel="next"'
        return 200, out, json.dumps(doc).encode()
    return rewrite


def test_referrers_api_pages_and_errors(registry, pusher: Pusher, proxy):
    img = pusher.image("app", "v1")
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    proxy.inject(Fault("GET", r"/referrers/", "rewrite", times=2, rewrite=_referrers_api({
        "1": ([a], f"/v2/app/referrers/{img.digest}?page=2"), "2": ([b], None)})))
    assert call(settings(proxy.url), lambda c: c.referrers("app", img.digest)) == [a, b]

    proxy.inject(Fault("GET", r"/referrers/", "rewrite", times=1, rewrite=_rewrite(
        status=200, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
        body=b"[1, 2]")))
    with pytest.raises(RegistryError, match="not an OCI index"):
        call(settings(proxy.url), lambda c: c.referrers("app", img.digest))

    proxy.inject(Fault("GET", r"/referrers/", "status", status=500, times=10))
    with pytest.raises(RegistryError):
        call(settings(proxy.url), lambda c: c.referrers("app", img.digest), retry=FAST)


@pytest.mark.parametrize("link", ["back", "onwards"])
def test_a_referrers_listing_that_never_ends_is_not_followed_for_ever(
        registry, pusher: Pusher, proxy, monkeypatch, link: str):
    """The referrers API's pages are a listing like tags/list: a Link back to a page already
    read, or on and on, is a registry error, not requests (and referrers gathered in memory)
    without end. Here the registry's listing would end after 300 pages."""
    from retention.registry import client as client_module

    img = pusher.image("app", "v1")
    a = "sha256:" + "a" * 64
    served = {"n": 0}

    def pages(method, path, status, headers, body):
        served["n"] += 1
        following = 1 if link == "back" else served["n"] + 1
        return _referrers_api({"1": ([a], f"/v2/app/referrers/{img.digest}?page=x{following}")}
                              )(method, path, status, headers, body)

    proxy.inject(Fault("GET", r"/referrers/", "rewrite", times=300, rewrite=pages))
    monkeypatch.setattr(client_module, "MAX_PAGES", 25)
    with pytest.raises(RegistryError, match="already read" if link == "back" else
                       "more than 25 pages"):
        call(settings(proxy.url), lambda c: c.referrers("app", img.digest))
    assert served["n"] == (2 if link == "back" else 25)


def test_ping_refused_is_an_error(registry, proxy):
    proxy.inject(Fault("GET", r"^/v2/$", "status", status=500, times=10))
    with pytest.raises(RegistryError):
        call(settings(proxy.url), lambda c: c.ping(), retry=FAST)


def test_null_tags_list_is_empty(registry, pusher: Pusher, proxy):
    pusher.image("app", "v1")
    proxy.inject(Fault("GET", r"/tags/list", "rewrite", times=1,
                       rewrite=_rewrite(body=b'{"name": "app", "tags": null}')))
    assert call(settings(proxy.url), lambda c: c.tags("app")) == []
