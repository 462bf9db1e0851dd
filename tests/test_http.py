"""The registry client's HTTP layer (retention/registry/http.py, httpx2) where it does
something of its own: credentials stay on the registry's origin across redirects, the
environment's proxies are used (or bypassed), an answer that stalls is retried, answers are
read up to a cap, and ca_file / insecure_skip_verify stay on the registry's own origin."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest

from retention.config import Credentials, RegistrySettings, Secret
from retention.errors import AuthenticationError, RegistryError
from retention.registry.client import RegistryClient, RetryPolicy
from retention.registry.http import HEADERS_READ, HttpSession, TransportError
from retention.scanner import Scanner
from tests.loopback import serving
from tests.pusher import Pusher
from tests.servers import Fault, FaultProxy
from tests.test_client import FAST, PASSWORD, USER


def test_redirect_to_storage_does_not_carry_the_registrys_credentials(basic_registry):
    """A registry sends blob reads to its storage backend (S3, Azure blob): another origin,
    which must not receive the registry's password."""
    pusher = Pusher(basic_registry.url, auth=(USER, PASSWORD))
    pusher.image("app", "v1", created="2024-03-04T05:06:07Z")
    pusher.close()
    storage_saw: list[str | None] = []

    def storage(request: httpx2.Request) -> httpx2.Response:
        storage_saw.append(request.headers.get("authorization"))
        # The backend serves the blob (fetched here from the registry, with credentials).
        return httpx2.get(basic_registry.url + request.url.path, auth=(USER, PASSWORD))

    proxy = FaultProxy(basic_registry.url)
    proxy.url = proxy.start()
    try:
        async def go():
            async with serving(storage) as storage_url:
                proxy.inject(Fault("GET", r"/blobs/", "redirect", times=10,
                                   headers={"target": storage_url}))
                settings = RegistrySettings(name="main", url=proxy.url,
                                            credentials=Credentials(USER, Secret(PASSWORD)))
                async with RegistryClient(settings) as client:
                    return await Scanner(client).scan()

        inventory = asyncio.run(go())
    finally:
        proxy.stop()
    (manifest,) = inventory.repositories[0].manifests
    assert manifest.created is not None and manifest.created.year == 2024  # read there
    assert storage_saw == [None]  # the registry itself needed them (htpasswd) and had them


def test_proxy_from_the_environment_and_no_proxy(monkeypatch):
    """HTTP_PROXY is used for a registry (as curl and httpx do); NO_PROXY bypasses it."""
    forwarded: list[str] = []

    def forward_proxy(request: httpx2.Request) -> httpx2.Response:
        forwarded.append(str(request.url))  # absolute-form: the registry's own URL
        return httpx2.Response(200, json={"repositories": ["through-proxy"]})

    async def catalog(url: str) -> list[str]:
        async with RegistryClient(RegistrySettings(name="main", url=url)) as client:
            return await client.catalog()

    async def go(direct_url: str):
        async with serving(forward_proxy) as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            via_proxy = await catalog("http://registry.invalid:5000")
            direct = await catalog(direct_url)
            return via_proxy, direct

    def registry(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"repositories": ["direct"]})

    async def main():
        async with serving(registry) as direct_url:
            return await go(direct_url)

    via_proxy, direct = asyncio.run(main())
    assert via_proxy == ["through-proxy"]
    assert forwarded == ["http://registry.invalid:5000/v2/_catalog?n=1000"]
    assert direct == ["direct"]  # 127.0.0.1 is in NO_PROXY


def test_an_answer_that_stalls_is_retried(registry, tmp_path: Path):
    """A registry that accepts the request and then says nothing is a connection error
    after the timeout: retried under the retry policy, not waited for forever."""
    pusher = Pusher(registry.url)
    pusher.image("r", "v1")
    pusher.close()
    proxy = FaultProxy(registry.url)
    proxy.url = proxy.start()
    proxy.inject(Fault("GET", r"/tags/list", "delay", times=1, seconds=3.0))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go():
        async with RegistryClient(RegistrySettings(name="main", url=proxy.url), retry=FAST,
                                  sleep=fake_sleep, timeout=0.5) as client:
            return await client.tags("r")

    try:
        assert asyncio.run(go()) == ["v1"]
    finally:
        proxy.stop()
    assert len(sleeps) == 1  # one retry, after the stalled answer timed out
    assert proxy.count("GET", r"/tags/list") == 2


def test_an_answer_trickled_a_byte_at_a_time_has_a_deadline(registry):
    """A registry (or a proxy, or a storage host) that sends a byte of its answer now and
    then, each within the timeout: the timeout alone never ends it, and 16 MiB trickled so
    would hold the run (and every later run of its policies) for ever. The whole answer
    must have come four timeouts after it was asked for (DEADLINE_TIMEOUTS), or it is a
    connection error."""
    import time

    pusher = Pusher(registry.url)
    pusher.image("r", "v1")
    pusher.close()
    proxy = FaultProxy(registry.url)
    proxy.url = proxy.start()
    # A tags page of ~30 bytes, a byte every 0.3 s: each read well within 0.5 s, the whole
    # over 8 s.
    proxy.inject(Fault("GET", r"/tags/list", "drip", times=1, seconds=0.3))

    async def go():
        async with RegistryClient(RegistrySettings(name="main", url=proxy.url),
                                  retry=RetryPolicy(attempts=1), timeout=0.5) as client:
            return await client.tags("r")

    started = time.monotonic()
    try:
        with pytest.raises(RegistryError, match="no whole answer within 2 s"):
            asyncio.run(go())
    finally:
        proxy.stop()
    assert time.monotonic() - started < 3.5  # 2 s, not the 9 s of the whole answer


@pytest.mark.parametrize("tls", [None, "ca-signed", "self-signed"])
def test_a_delete_whose_connection_drops_is_sent_once(tls: str | None, tmp_path: Path):
    """The registry may have deleted before the connection dropped: what happens next is the
    executor's to decide (check with a HEAD, re-confirm tags), never a silent resend by the
    HTTP library on a new connection. Over plain HTTP and HTTPS, a CA's own self-signed
    certificate included."""
    import ssl

    from tests.servers import ca_signed, self_signed

    deletes: list[bytes] = []
    server_tls, ca_file = None, None
    if tls == "ca-signed":
        ca_file, cert, key = ca_signed(tmp_path)
    elif tls == "self-signed":
        cert, key = self_signed(tmp_path)
        ca_file = cert
    if tls is not None:
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)

    async def registry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"DELETE"):
                deletes.append(head.split(b"\r\n", 1)[0])
                writer.close()  # deleted, perhaps; the answer is lost
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
            await writer.drain()

    async def go():
        server = await asyncio.start_server(registry, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        settings = RegistrySettings(name="main", url=f"{scheme}://127.0.0.1:{port}",
                                    ca_file=ca_file)
        try:
            async with RegistryClient(settings, retry=FAST) as client:
                await client.ping()  # the connection is kept alive, then reused
                with pytest.raises(RegistryError, match="DELETE"):
                    await client.delete_manifest("r", "sha256:" + "a" * 64, retry=False)
        finally:
            server.close()

    asyncio.run(go())
    assert deletes == [b"DELETE /v2/r/manifests/sha256:" + b"a" * 64 + b" HTTP/1.1"]


# -- review of the move to aiohttp ------------------------------------------------------------


async def _no_sleep(_seconds: float) -> None:
    return None


def test_a_signed_storage_url_stays_out_of_errors_and_logs():
    """A blob read is redirected to storage with a signed URL (S3's X-Amz-Signature, Azure's
    sig=): its query is a credential. When storage answers with garbage, the library's error
    names the whole URL; neither the RegistryError nor the retry log may carry it (the log
    redactor knows passwords and Authorization values, not signatures)."""
    import structlog

    signature = "X-Amz-Signature=5ecret5ignature0fTheStorageUrl"

    async def storage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")  # not a status line
        await writer.drain()
        writer.close()

    async def go() -> str:
        server = await asyncio.start_server(storage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def registry(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(307, headers={
                "Location": f"http://127.0.0.1:{port}/blob?X-Amz-Credential=AKIA&{signature}"})

        try:
            async with serving(registry) as url, \
                    RegistryClient(RegistrySettings(name="main", url=url), retry=FAST,
                                   sleep=_no_sleep) as client:
                with pytest.raises(RegistryError) as failed:
                    await client.get_blob("r", "sha256:" + "a" * 64)
                return str(failed.value)
        finally:
            server.close()

    with structlog.testing.capture_logs() as logs:
        message = asyncio.run(go())
    assert "5ecret5ignature" not in message
    assert not [e for e in logs if "5ecret5ignature" in str(e)]


def test_link_paging_when_the_configured_host_is_written_with_capitals():
    """Host names are case-insensitive: a registry configured as https://MyRegistry.example
    that writes a relative Link stays on its own origin (scheme, lowercased host and
    port)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "last" not in request.url.params:
            return httpx2.Response(200, json={"repositories": ["a"]},
                                   headers={"Link": '</v2/_catalog?last=a&n=1000>; rel="next"'})
        return httpx2.Response(200, json={"repositories": ["b"]})

    async def go() -> list[str]:
        async with serving(handler) as url:
            mixed = url.replace("127.0.0.1", "LocalHost")
            async with RegistryClient(RegistrySettings(name="main", url=mixed)) as client:
                return await client.catalog()

    assert asyncio.run(go()) == ["a", "b"]


def test_a_link_naming_the_default_port_stays_on_the_registry():
    """https://registry.example and https://registry.example:443 are one origin."""

    from retention.registry.http import Response

    client = RegistryClient(RegistrySettings(name="main", url="https://registry.example"))
    page = Response(200, sent_to="https://registry.example/v2/_catalog?n=1000")
    url = client.next_page(page, "https://registry.example:443/v2/_catalog?last=a&n=1000")
    assert url.host == "registry.example" and url.path == "/v2/_catalog"


def test_a_redirect_to_storage_uses_the_proxy_the_environment_names_for_it(monkeypatch):
    """NO_PROXY and HTTP(S)_PROXY are per host, as curl reads them: a registry reached
    directly (it is in NO_PROXY) may send blob reads to storage only a proxy reaches."""
    blob = b'{"created": "2024-03-04T05:06:07Z"}'
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    forwarded: list[str] = []

    def forward_proxy(request: httpx2.Request) -> httpx2.Response:
        forwarded.append(str(request.url))
        return httpx2.Response(200, content=blob)

    def registry(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(307, headers={"Location": "http://storage.invalid:9000/blob"})

    async def go() -> bytes | None:
        async with serving(forward_proxy) as proxy_url, serving(registry) as registry_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            settings = RegistrySettings(name="main", url=registry_url)
            async with RegistryClient(settings, retry=FAST, sleep=_no_sleep) as client:
                return await client.get_blob("r", digest)

    assert asyncio.run(go()) == blob
    assert forwarded == ["http://storage.invalid:9000/blob"]


def test_a_connection_not_made_in_10_s_is_a_connection_error():
    """docs/operations.md: "a connection not made in 10 s" is retried as a connection error;
    a connect that hangs must not hang the run, and the daemon with it. The connect is made
    to hang for real: a listener whose accept queue is full, so the kernel drops the SYNs.
    (reqwest's connect timeout bounds its DNS lookup too: the timeout wraps the connector,
    which resolves the name. A resolver that hangs cannot be made here without root.)"""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the accept queue, never accepted
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)

        async def go() -> float:
            settings = RegistrySettings(name="main", url=f"http://127.0.0.1:{port}")
            started = time.monotonic()
            async with RegistryClient(settings, retry=RetryPolicy(attempts=1)) as client:
                with pytest.raises(RegistryError, match="failed after 1 attempts"):
                    await client.ping()
            return time.monotonic() - started

        try:
            took = asyncio.run(asyncio.wait_for(go(), timeout=25))
        finally:
            for filler in fillers:
                filler.close()
    assert 9 < took < 15


def test_a_link_with_credentials_in_it_is_a_registry_error():
    """A Link on the registry's origin with user:password@ in it: credentials of the URL's
    own are never sent (beside ours or instead of them). It must end as a RegistryError for
    the listing, not escape and crash the whole run."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("authorization") is None:
            return httpx2.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        port = request.url.port
        return httpx2.Response(200, json={"repositories": ["a"]}, headers={
            "Link": f'<http://u:p@127.0.0.1:{port}/v2/_catalog?last=a>; rel="next"'})

    async def go() -> None:
        async with serving(handler) as url:
            settings = RegistrySettings(name="main", url=url,
                                        credentials=Credentials(USER, Secret(PASSWORD)))
            async with RegistryClient(settings, retry=FAST, sleep=_no_sleep) as client:
                with pytest.raises(RegistryError):
                    await client.catalog()

    asyncio.run(go())


def test_a_token_realm_with_a_backslash_in_its_authority_is_a_registry_error():
    """A realm urllib reads one way and httpx2 another (a backslash in its authority): it
    must end as this registry's error, not escape and crash the whole run."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(401, headers={
            "WWW-Authenticate": 'Bearer realm="http://127.0.0.1\\\\@x/token",service="r"'})

    async def go() -> None:
        async with serving(handler) as url, \
                RegistryClient(RegistrySettings(name="main", url=url), retry=FAST,
                               sleep=_no_sleep) as client:
            with pytest.raises(RegistryError):
                await client.ping()

    asyncio.run(go())


@pytest.mark.parametrize("host", ["127.0.0.1", "LocalHost"])
def test_a_link_back_to_a_page_already_read_is_caught(host: str):
    """Loop detection compares the URL answered for (response.url) with the next
    Link's target: both must be spelled alike, the first page's ?n= query included."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "last" not in request.url.params:
            return httpx2.Response(200, json={"repositories": ["a"]},
                                   headers={"Link": '</v2/_catalog?last=a&n=1000>; rel="next"'})
        return httpx2.Response(200, json={"repositories": ["b"]},
                               headers={"Link": '</v2/_catalog?n=1000>; rel="next"'})

    async def go() -> None:
        async with serving(handler) as url:
            settings = RegistrySettings(name="main", url=url.replace("127.0.0.1", host))
            async with RegistryClient(settings) as client:
                with pytest.raises(RegistryError, match="leads back to a page already read"):
                    await client.catalog()

    asyncio.run(go())


def test_credentials_dropped_on_leaving_the_origin_stay_dropped():
    """registry -> storage -> back to the registry's host: once a hop has left the
    registry's origin, no later hop carries the Authorization header (where the chain
    leads is the storage's choice, not the registry's)."""
    from retention.registry.http import HttpSession

    seen: list[tuple[str, str | None]] = []
    urls: dict[str, str] = {}

    def registry(request: httpx2.Request) -> httpx2.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v2/r/blobs/x":
            return httpx2.Response(307, headers={"Location": f"{urls['storage']}/x"})
        return httpx2.Response(200, content=b"blob")

    def storage(request: httpx2.Request) -> httpx2.Response:
        seen.append(("storage" + request.url.path, request.headers.get("authorization")))
        return httpx2.Response(302, headers={"Location": f"{urls['registry']}/back"})

    async def go():
        async with serving(registry) as urls["registry"], serving(storage) as urls["storage"]:
            http = HttpSession(urls["registry"], verify=True, timeout=5, connections=2,
                               user_agent="test")
            try:
                return await http.request("GET", "/v2/r/blobs/x",
                                          headers={"Authorization": "Basic c2VjcmV0"},
                                          follow_redirects=True)
            finally:
                await http.aclose()

    answer = asyncio.run(go())
    assert answer.status_code == 200 and answer.content == b"blob"
    assert seen == [("/v2/r/blobs/x", "Basic c2VjcmV0"), ("storage/x", None), ("/back", None)]
    assert answer.request_headers == {"Authorization": "Basic c2VjcmV0"}  # what was asked


def test_a_redirect_loop_is_a_connection_error_not_a_hang():
    def registry(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(302, headers={"Location": "/v2/r/blobs/x"})

    async def go():
        async with serving(registry) as url, \
                RegistryClient(RegistrySettings(name="main", url=url), retry=FAST,
                               sleep=_no_sleep) as client:
            return await client.get_blob("r", "sha256:" + "0" * 64)

    with pytest.raises(RegistryError, match="more than 10 redirects"):
        asyncio.run(go())


# -- review of the move to pyreqwest, kept on httpx2 -------------------------------------------


def test_a_next_link_on_a_header_line_of_its_own_is_followed():
    """rel="prev" and rel="next" as two Link header lines: reading only the first line would
    end the listing after page 1, and what is on the later pages would look absent."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "last" not in request.url.params:
            return httpx2.Response(200, json={"repositories": ["a"]}, headers=[
                ("Link", '</v2/_catalog?n=1000>; rel="prev"'),
                ("Link", '</v2/_catalog?last=a&n=1000>; rel="next"')])
        return httpx2.Response(200, json={"repositories": ["b"]})

    async def go() -> list[str]:
        async with serving(handler) as url, \
                RegistryClient(RegistrySettings(name="main", url=url)) as client:
            return await client.catalog()

    assert asyncio.run(go()) == ["a", "b"]


@pytest.mark.parametrize(("links", "expected"), [
    (['</a>; rel="prev", </b?last=x&n=2>; rel="next"'], "/b?last=x&n=2"),
    (['</a>; rel="prev"', '</b>; rel="next"'], "/b"),
    (['</b?last=a,b&n=2>; rel="next"'], "/b?last=a,b&n=2"),
    (['</b>; rel="next prev"'], "/b"),  # rel is a list of relation types
    (['</b>; rel="prev next"'], "/b"),
    (['</b>; title="x, y"; rel="next"'], "/b"),  # a comma inside a quoted value
    (['</b>; title="x; y"; rel="next"'], "/b"),
    (['</b>; REL=Next'], "/b"),
    (["</b>; rel*=UTF-8''next"], "/b"),
    (['</b>;\trel="next"'], "/b"),
    (['</a>; title="rel=next"; rel="prev"'], None),
    ([], None),
])
def test_next_link_reads_every_shape_rfc_8288_allows(links: list[str], expected: str | None):
    """A rel="next" missed ends a listing after its first page, and what is on the later
    pages looks absent (untagged, deletable)."""
    from retention.registry.client import next_link
    from retention.registry.http import AnswerHeaders

    assert next_link(AnswerHeaders.of([("Link", v) for v in links])) == expected


def test_a_link_header_that_cannot_be_read_fails_the_listing():
    """Whether it names a next page is unknown: the listing is not taken as complete."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"tags": ["v1"], "name": "r"},
                               headers={"Link": '</v2/r/tags/list?last=v1>; rel="next" junk'})

    async def go() -> None:
        async with serving(handler) as url, \
                RegistryClient(RegistrySettings(name="main", url=url)) as client:
            with pytest.raises(RegistryError, match="a Link header that cannot be read"):
                await client.tags("r")

    asyncio.run(go())



def test_a_registry_url_with_credentials_in_it_sends_nothing():
    """A path on the registry is joined to its URL as text, without reading that URL each
    time: a user:password@ in the registry's own URL must still keep every request from
    leaving (those credentials beside ours, or instead of them)."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.path)
        return httpx2.Response(200, json={"repositories": ["a"]})

    async def go() -> None:
        async with serving(handler) as url:
            session = HttpSession(url.replace("http://", "http://u:p@"), timeout=5,
                                  connections=2, user_agent="test")
            try:
                with pytest.raises(TransportError, match="user or password"):
                    await session.request("GET", "/v2/_catalog")
                # The same URL, without them, is answered: the refusal was theirs.
                plain = HttpSession(url, timeout=5, connections=2, user_agent="test")
                assert (await plain.request("GET", "/v2/_catalog")).status_code == 200
                await plain.aclose()
            finally:
                await session.aclose()

    asyncio.run(go())
    assert seen == ["/v2/_catalog"]


def test_every_header_the_client_reads_is_kept():
    """An answer keeps only HEADERS_READ: a header read anywhere else in retention would
    silently never be there."""
    names = set()
    for source in (Path(__file__).parent.parent / "retention").rglob("*.py"):
        text = source.read_text()
        # An answer's headers: response.headers, or headers handed on (next_link's); not
        # the request_headers an answer carries.
        names |= set(re.findall(
            r"(?<![\w.])(?:response\.)?headers\.(?:get|get_list)\(\s*\"([^\"]+)\"", text))
    names = {n.lower() for n in names}
    assert {"docker-content-digest", "link", "www-authenticate"} <= names  # the scan works
    assert names <= set(HEADERS_READ)


async def _catalog_answered_with(answer: bytes) -> list[str]:
    """The catalog from a registry that answers every request with these exact bytes."""

    async def registry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(registry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RegistryClient(RegistrySettings(name="main", url=f"http://127.0.0.1:{port}"),
                                  retry=FAST, sleep=_no_sleep) as client:
            return await client.catalog()
    finally:
        server.close()


def test_a_header_beyond_ascii_that_nothing_reads_is_left_out():
    """A proxy's own note in UTF-8 does not make every answer unreadable."""
    answer = (b'HTTP/1.1 200 OK\r\nContent-Length: 23\r\nX-Note: caf\xc3\xa9\r\n'
              b'\r\n{"repositories": ["a"]}')
    assert asyncio.run(_catalog_answered_with(answer)) == ["a"]


def test_an_answer_with_a_header_beyond_ascii_is_a_registry_error():
    """A Link (or Location, or digest) beyond ASCII is not guessed at: it ends as this
    registry's error (the repository unread), not a ValueError that ends the whole run."""
    answer = (b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\nLink: </v2/\xc3\xa9>; rel="next"'
              b'\r\n\r\n{"repositories": []}')
    with pytest.raises(RegistryError, match=r"(?i)link header is not text"):
        asyncio.run(_catalog_answered_with(answer))


def test_a_cancelled_request_holds_its_slot_until_it_ends():
    """A write (a DELETE) goes on when its caller is cancelled (a shutdown's cancellation)
    and the caller's slot is given back at once: the connection pool's own limit must hold
    the next request until it ends, so that never more than `concurrency` requests are on
    their way."""
    events: list[str] = []

    async def registry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            line = head.split(b" ", 2)[0].decode()
            events.append(f"{line} in")
            if line == "DELETE":
                await asyncio.sleep(1.0)
            events.append(f"{line} out")
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def go() -> None:
        server = await asyncio.start_server(registry, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = RegistrySettings(name="main", url=f"http://127.0.0.1:{port}",
                                    concurrency=1)
        try:
            async with RegistryClient(settings, retry=FAST) as client:
                deleting = asyncio.create_task(
                    client.delete_manifest("r", "sha256:" + "a" * 64, retry=False))
                await asyncio.sleep(0.3)  # on its way: the registry holds it for 1 s
                deleting.cancel()
                reading = asyncio.create_task(client.request("GET", "/v2/", scope=""))
                with pytest.raises(asyncio.CancelledError):
                    await deleting
                await reading
        finally:
            server.close()

    asyncio.run(go())
    assert events == ["DELETE in", "DELETE out", "GET in", "GET out"]


def test_bodies_and_lengths_come_as_sent():
    """No Accept-Encoding is sent and nothing is decoded: a manifest is hashed as the
    registry sent it, and a HEAD keeps its Content-Length."""
    seen: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("accept-encoding"))
        return httpx2.Response(200, content=b"{}", headers={"Content-Length": "2"})

    async def go():
        async with serving(handler) as url:
            http = HttpSession(url, timeout=5, connections=2, user_agent="test")
            try:
                return (await http.request("GET", "/x"), await http.request("HEAD", "/x"))
            finally:
                await http.aclose()

    got, head = asyncio.run(go())
    assert seen == [None, None]
    assert got.content == b"{}" and head.headers.get("content-length") == "2"


# -- caps on what is read of an answer (issue 30) ---------------------------------------------

HUGE = 256 * 1024 * 1024
_CONFIG = "sha256:" + "c" * 64


def _manifest_naming_a_config() -> bytes:
    return json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": _CONFIG, "size": HUGE},
                       "layers": []}).encode()


async def _scan_a_registry_with_a_huge(what: str, *, declared: bool) -> tuple[Any, int]:
    """A scan of one repository, "big", whose ``what`` (manifest, tags page, config blob) is a
    HUGE answer made as it is sent (never held anywhere): with a Content-Length, or chunked.
    Returns the repository and how many of the HUGE bytes the server got to send."""
    huge_path = {"manifest": "/v2/big/manifests/v1", "tags": "/v2/big/tags/list",
                 "config": f"/v2/big/blobs/{_CONFIG}"}[what]
    manifest = _manifest_naming_a_config()
    small = {"/v2/": b"{}", "/v2/big/tags/list": b'{"name": "big", "tags": ["v1"]}',
             "/v2/big/manifests/v1": manifest,
             f"/v2/big/manifests/sha256:{hashlib.sha256(manifest).hexdigest()}": manifest}
    sent = [0]

    async def registry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.split(b" ", 2)[:2]
                path = target.decode().partition("?")[0]
                kind = b"manifest.v1" if "/manifests/" in path else b"json"
                content_type = b"Content-Type: application/vnd.oci.image." + kind + b"+json"
                if path != huge_path:
                    body = small.get(path, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
                    status = b"200 OK" if path in small else b"404 Not Found"
                    writer.write(b"HTTP/1.1 %s\r\n%s\r\nContent-Length: %d\r\n\r\n%s" % (
                        status, content_type, len(body), b"" if method == b"HEAD" else body))
                    await writer.drain()
                    continue
                framing = b"Content-Length: %d" % HUGE if declared else \
                    b"Transfer-Encoding: chunked"
                writer.write(b"HTTP/1.1 200 OK\r\n%s\r\n%s\r\n\r\n" % (content_type, framing))
                chunk = b" " * 65536
                frame = chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                while sent[0] < HUGE:
                    writer.write(frame)
                    await writer.drain()
                    sent[0] += len(chunk)
                writer.write(b"" if declared else b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    server = await asyncio.start_server(registry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = RegistrySettings(name="main", url=f"http://127.0.0.1:{port}",
                                repositories=("big",))
    try:
        async with RegistryClient(settings, retry=FAST, sleep=_no_sleep) as client:
            inventory = await Scanner(client).scan()
    finally:
        server.close()
    return inventory.repositories[0], sent[0]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("what", "cap"), [("manifest", 4), ("tags", 16), ("config", 8)])
def test_a_huge_answer_is_not_read_past_its_cap(what: str, cap: int, declared: bool):
    """A hostile or broken registry (or storage) answers with 256 MiB: it is read up to its
    cap (a manifest 4 MiB, a config 8 MiB, a tags page 16 MiB) and no further, so memory
    stays bounded; a manifest or tags page over the cap makes the repository unreadable
    (kept, reported), a config over it leaves the image's created time unknown. Never a
    crash, and never retried (the same answer would be as long)."""
    import tracemalloc

    tracemalloc.start()
    try:
        repository, sent = asyncio.run(_scan_a_registry_with_a_huge(what, declared=declared))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (cap + 8) * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    assert sent < 64 * 1024 * 1024  # the server was cut off, not read to the end
    if what == "config":
        assert repository.error is None
        (manifest,) = repository.manifests
        assert manifest.created is None and manifest.tags == ("v1",)
    else:
        assert repository.error is not None and "over the cap" in repository.error
        assert "failed after" not in repository.error  # not retried


# -- ca_file and insecure_skip_verify are the registry's own origin's (issue 30) --------------


def _bearer_registry(realm: str, seen: list[str]):
    """A registry that asks for a token from ``realm`` and takes any."""

    def registry(request: httpx2.Request) -> httpx2.Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return httpx2.Response(401, headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="registry"'})
        seen.append(request.url.path)
        return httpx2.Response(200, json={"repositories": ["a"]})

    return registry


def _token_service(seen: list[str | None]):
    def token(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        return httpx2.Response(200, json={"token": "t0ken", "expires_in": 300})

    return token


@pytest.mark.parametrize("trust", ["ca_file", "insecure_skip_verify"])
def test_the_registrys_tls_settings_do_not_reach_its_token_service(trust: str, tmp_path: Path):
    """The token service on another port is another origin: verified against the system's
    store, neither by the registry's ca_file nor not at all. An insecure registry's password
    must not go to a token host nobody verified (127.0.0.1 is the registry's own host name,
    so the password would be sent there)."""
    from tests.servers import ca_signed, self_signed

    if trust == "ca_file":
        ca, cert, key = ca_signed(tmp_path / "tls")
    else:
        cert, key = self_signed(tmp_path / "tls")
    token_saw: list[str | None] = []
    registry_saw: list[str] = []

    async def go() -> None:
        async with serving(_token_service(token_saw), tls=(cert, key)) as token_url, \
                serving(_bearer_registry(f"{token_url}/token", registry_saw),
                        tls=(cert, key)) as registry_url:
            # The token service is the registry's own (listed in token_hosts): only its
            # certificate, verified against the system's store, stops the password.
            settings = RegistrySettings(
                name="main", url=registry_url, credentials=Credentials(USER, Secret(PASSWORD)),
                token_hosts=(token_url.split("//", 1)[1],),
                **({"ca_file": ca} if trust == "ca_file" else {"insecure_skip_verify": True}))
            async with RegistryClient(settings, retry=FAST, sleep=_no_sleep) as client:
                with pytest.raises(AuthenticationError, match=(
                        r"token service 127\.0\.0\.1:\d+ unreachable: .*TLS certificate of "
                        r"127\.0\.0\.1:\d+ \(not the registry's own")):
                    await client.catalog()

    asyncio.run(go())
    assert token_saw == []  # not a request, not a password
    assert registry_saw == []


def test_the_registrys_ca_file_does_not_reach_its_storage(tmp_path: Path):
    """A blob read redirected to storage on another origin: its certificate is verified
    against the system's store, not against the registry's private CA."""
    from tests.servers import ca_signed

    ca, cert, key = ca_signed(tmp_path / "tls")
    blob = b'{"created": "2024-03-04T05:06:07Z"}'
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    storage_saw: list[str] = []

    def storage(request: httpx2.Request) -> httpx2.Response:
        storage_saw.append(request.url.path)
        return httpx2.Response(200, content=blob)

    async def go(storage_tls: bool) -> None:
        async with serving(storage, tls=(cert, key) if storage_tls else None) as storage_url:
            def registry(request: httpx2.Request) -> httpx2.Response:
                return httpx2.Response(307, headers={"Location": f"{storage_url}/blob"})

            async with serving(registry, tls=(cert, key)) as registry_url:
                settings = RegistrySettings(name="main", url=registry_url, ca_file=ca)
                async with RegistryClient(settings, retry=FAST, sleep=_no_sleep) as client:
                    return await client.get_blob("r", digest)

    with pytest.raises(RegistryError, match=r"TLS certificate of 127\.0\.0\.1:\d+ \(not the"):
        asyncio.run(go(storage_tls=True))
    assert storage_saw == []
    # The same registry (its own origin verified by ca_file) and plain-HTTP storage: read.
    assert asyncio.run(go(storage_tls=False)) == blob


@pytest.mark.parametrize("repository", ["a/..", "a/../b", "./a", "a/./b"])
def test_a_path_with_dot_segments_is_never_sent(repository: str):
    """httpx2 resolves "." and ".." in a URL's path: /v2/a/../b/manifests/x would go out as
    /v2/b/manifests/x, a DELETE in another repository than the one the plan names. A name
    from a catalog is not trusted to be free of them: such a path is refused, not sent."""
    seen: list[str] = []

    def registry(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.path)
        return httpx2.Response(202)

    async def go() -> None:
        async with serving(registry) as url, \
                RegistryClient(RegistrySettings(name="main", url=url), retry=FAST,
                               sleep=_no_sleep) as client:
            # Refused by the names' grammar first (RegistryClient.path), and by the HTTP
            # session's own check of every path below it: either way nothing is sent.
            with pytest.raises(RegistryError, match=r"\. or \.\. segment|not a canonical"):
                await client.delete_manifest(repository, "sha256:" + "a" * 64, retry=False)
            http = HttpSession(url, timeout=5, connections=1, user_agent="test")
            try:
                with pytest.raises(TransportError, match=r"\. or \.\. segment"):
                    await http.request("DELETE", f"/v2/{repository}/manifests/sha256:{'a' * 64}")
            finally:
                await http.aclose()

    asyncio.run(go())
    assert seen == []
