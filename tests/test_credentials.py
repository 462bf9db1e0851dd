"""Where credentials go (retention/registry/auth.py, ``credential_refusal``): every credential
of every kind (a password, a docker config entry, a bearer token, the Entra ID access token,
ACR's refresh token) goes only to the registry's own origin (scheme, host and port) or to a
host listed in ``token_hosts``; never over plain http from an https registry; never to a URL
with a user:password of its own.

The registry (distribution with its token server, or the ACR emulator with Entra ID) is
reached through the suite's fault proxy, which forges its 401 to name a realm of the test's
choosing, as anyone able to answer for the registry could. The host that realm names is a
Recorder, which keeps everything it receives: the tests assert it received nothing at all.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import Credentials, RegistrySettings, load_config
from retention.errors import AuthenticationError, RegistryError
from retention.registry.auth import Authenticator, credential_refusal
from retention.registry.client import RegistryClient, RetryPolicy
from retention.runs import Connections, make_client
from retention.secrets import Secret
from tests.acr_emulator import AcrEmulator, FakeEntraCredential
from tests.conftest import PASSWORD, USER
from tests.pusher import Pusher
from tests.servers import Fault, FaultProxy, Recorder, ca_signed, set_realm

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)
KINDS = ("password", "docker_config", "entra")
EVERY = 10**6  # a fault that applies to every matching request


# -- the rule itself ---------------------------------------------------------------------------


def _rule(url: str, registry: str, *token_hosts: str) -> str | None:
    return credential_refusal(url, RegistrySettings(name="r", url=registry,
                                                    token_hosts=token_hosts))


@pytest.mark.parametrize(("url", "registry", "token_hosts"), [
    ("https://reg.example.com/token", "https://reg.example.com", ()),
    ("https://REG.example.com:443/oauth2/token", "https://reg.example.com", ()),
    ("https://reg.example.com/token", "https://reg.example.com:443", ()),
    ("http://10.0.0.5:5000/token", "http://10.0.0.5:5000", ()),
    ("http://[::1]:5000/token", "http://[::1]:5000", ()),
    ("https://auth.docker.io/token", "https://registry-1.docker.io", ("auth.docker.io",)),
    ("https://auth.docker.io:443/token", "https://registry-1.docker.io", ("Auth.Docker.io",)),
    ("https://gitlab.example.com:8443/jwt/auth", "https://reg.example.com",
     ("gitlab.example.com:8443",)),
    # Plain http to a listed host from a plain-http registry: nothing to downgrade.
    ("http://auth.local:5001/token", "http://reg.local:5000", ("auth.local:5001",)),
    ("https://auth.local/token", "http://reg.local:5000", ("auth.local",)),
])
def test_the_rule_allows_the_registry_and_its_listed_token_hosts(url, registry, token_hosts):
    assert _rule(url, registry, *token_hosts) is None


@pytest.mark.parametrize(("url", "registry", "token_hosts", "why"), [
    # Another host, another port (of the same host), another scheme.
    ("https://evil.example/token", "https://reg.example.com", (), "add 'evil.example'"),
    ("https://reg.example.com:8443/token", "https://reg.example.com", (),
     "add 'reg.example.com:8443'"),
    ("http://10.0.0.5:5001/token", "http://10.0.0.5:5000", (), "add '10.0.0.5:5001'"),
    ("https://10.0.0.5:5000/token", "http://10.0.0.5:5000", (), "add '10.0.0.5:5000'"),
    ("http://[::1]:5001/token", "http://[::1]:5000", (), "add '[::1]:5001'"),
    # A listed host on another port than the one listed (or the scheme's own).
    ("https://auth.docker.io:8443/token", "https://reg.example.com", ("auth.docker.io",),
     "add 'auth.docker.io:8443'"),
    ("https://auth.example.com/token", "https://reg.example.com", ("auth.example.com:8443",),
     "add 'auth.example.com'"),
    # https -> http: the registry's own host and port, or a listed host, all the same.
    ("http://reg.example.com:443/token", "https://reg.example.com", (), "plain http"),
    ("http://reg.example.com/token", "https://reg.example.com", (), "plain http"),
    ("http://auth.docker.io/token", "https://registry-1.docker.io", ("auth.docker.io",),
     "plain http"),
    # A user:password in the URL, even on the registry's own origin.
    ("https://x:y@reg.example.com/token", "https://reg.example.com", (), "user name"),
    ("https://x@reg.example.com/token", "https://reg.example.com", (), "user name"),
    ("https://@reg.example.com/token", "https://reg.example.com", (), "user name"),
    # Authorities URL parsers read differently: urllib's host is not the one connected to.
    ("http://evil.example\\@reg.local:5000/token", "http://reg.local:5000", (), "user name"),
    ("http://reg.local:5000\\.evil.example/token", "http://reg.local:5000", (), "cannot be read"),
    ("http://reg%2elocal:5000/token", "http://reg.local:5000", (), "cannot be read"),
    ("http://reg.local:99999/token", "http://reg.local:5000", (), "cannot be read"),
    ("ftp://reg.local:5000/token", "http://reg.local:5000", (), "not an http(s) URL"),
    ("/token", "http://reg.local:5000", (), "not an http(s) URL"),
])
def test_the_rule_refuses_everything_else(url, registry, token_hosts, why):
    reason = _rule(url, registry, *token_hosts)
    assert reason is not None and why in reason, reason


# -- the registry, and a host that is not it ----------------------------------------------------


@dataclass
class Upstream:
    """A registry with token authentication, its token service on another port (listed in
    token_hosts), reached through a fault proxy that can forge its 401."""

    kind: str
    url: str  # the registry itself, behind the proxy
    token_service: str  # host:port of its real token service
    realm_path: str
    tmp: Path
    acr: AcrEmulator | None = None
    credential: FakeEntraCredential | None = None
    proxies: list[FaultProxy] = field(default_factory=list)

    def front(self, *, tls: tuple[Path, Path] | None = None) -> FaultProxy:
        proxy = FaultProxy(self.url)
        proxy.url = proxy.start(tls=tls)
        self.proxies.append(proxy)
        return proxy

    def client(self, url: str, *, token_hosts: tuple[str, ...] | None = None,
               ca_file: Path | None = None) -> RegistryClient:
        """A client of ``url`` with this kind of credential; token_hosts lists the real token
        service unless given."""
        hosts = (self.token_service,) if token_hosts is None else token_hosts
        if self.kind == "password":
            return RegistryClient(RegistrySettings(
                name="main", url=url, credentials=Credentials(USER, Secret(PASSWORD)),
                token_hosts=hosts, ca_file=ca_file), retry=FAST)
        if self.kind == "docker_config":
            return make_client(self._docker_config_settings(url, hosts, ca_file),
                               connections=Connections(retry=FAST))
        return make_client(RegistrySettings(name="main", url=url, type="acr",
                                            token_hosts=hosts, ca_file=ca_file),
                           connections=Connections(retry=FAST,
                                                   azure_credential=self.credential))

    def _docker_config_settings(self, url: str, hosts: tuple[str, ...],
                                ca_file: Path | None) -> RegistrySettings:
        # Through the configuration file, as an operator gives it.
        netloc = url.split("/")[2]
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (self.tmp / "docker.json").write_text(
            f'{{"auths": {{"{netloc}": {{"auth": "{auth}"}}}}}}')
        (self.tmp / "p.yaml").write_text("name: p\nrepositories: {include: ['**']}\n"
                                         "delete: [{untagged: true}]\n")
        hosts_yaml = ", ".join(f'"{h}"' for h in hosts)
        ca = f"\n    ca_file: {ca_file}" if ca_file else ""
        config = self.tmp / "retention.yaml"
        config.write_text(f"registries:\n  main:\n    url: {url}\n"
                          f"    docker_config: docker.json\n    token_hosts: [{hosts_yaml}]{ca}\n"
                          "policies: p.yaml\nstate_dir: state\n")
        return load_config(config).registries["main"]

    def secrets(self) -> list[str]:
        """Every credential a leak would show: the password (and its basic form), the Entra
        tokens, ACR's refresh and access tokens."""
        found = [PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
        if self.acr is not None:
            found += [*self.acr.entra_tokens, *self.acr.refresh_tokens, *self.acr.access_tokens]
        return found


@pytest.fixture(params=KINDS)
def upstream(request, tmp_path: Path) -> Iterator[Upstream]:
    kind = request.param
    if kind == "entra":
        acr = AcrEmulator()
        acr.start()
        acr.image("app", "v1", seed="entra")
        up = Upstream(kind, acr.url, acr.url.split("/")[2], "/oauth2/token", tmp_path,
                      acr=acr, credential=FakeEntraCredential(acr))
    else:
        token_server = request.getfixturevalue("token_server")
        registry = request.getfixturevalue("token_registry")
        pusher = Pusher(registry.url)
        pusher.client.headers["Authorization"] = \
            f"Bearer {token_server.token(USER, ['repository:app:pull,push'])}"
        pusher.image("app", "v1")
        pusher.close()
        up = Upstream(kind, registry.url, token_server.netloc, "/token", tmp_path)
    yield up
    for proxy in up.proxies:
        proxy.stop()
    if up.acr is not None:
        up.acr.stop()


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    started: list[Recorder] = []

    def start(host: str = "127.0.0.1", port: int = 0, **kw) -> Recorder:
        recorder = Recorder(host, port, **kw)
        recorder.start()
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        recorder.stop()


def _run(client: RegistryClient, *steps: Callable[[RegistryClient], Awaitable[object]]):
    async def go():
        async with client:
            for step in steps:
                await step(client)
    asyncio.run(go())


def _ping(client: RegistryClient) -> Awaitable[None]:
    return client.ping()


def _refused(up: Upstream, client: RegistryClient, *steps) -> str:
    with pytest.raises(AuthenticationError) as info:
        _run(client, *steps)
    message = str(info.value)
    assert not [s for s in up.secrets() if s in message], message
    return message


# -- a 401 naming a realm elsewhere ------------------------------------------------------------


@pytest.mark.parametrize("where", ["another host", "another port", "https to http",
                                   "userinfo"])
def test_no_credential_goes_to_a_realm_elsewhere(upstream: Upstream, recorders, where: str):
    """The registry's 401 names a token realm on another host (same port), on another port of
    the same host, over plain http from an https registry (the host listed in token_hosts: only
    the downgrade refuses it), or with a user:password in it (listed too). The host named
    receives nothing at all; the request fails as unauthorised, naming the host and what to
    do."""
    tls = None
    ca_file = None
    if where == "https to http":
        ca_file, cert, key = ca_signed(upstream.tmp / "tls")
        tls = (cert, key)
    proxy = upstream.front(tls=tls)
    port = int(proxy.url.rsplit(":", 1)[1])
    recorder = recorders("127.0.0.2", port) if where == "another host" else recorders()
    listed = recorder.url.split("/")[2]
    realm = {
        "another host": f"{recorder.url}{upstream.realm_path}",
        "another port": f"{recorder.url}{upstream.realm_path}",
        "https to http": f"{recorder.url}{upstream.realm_path}",
        "userinfo": f"http://retention:x@{listed}{upstream.realm_path}",
    }[where]
    proxy.inject(Fault("*", ".", "rewrite", times=EVERY, rewrite=set_realm(realm)))
    token_hosts = (upstream.token_service,) if where in ("another host", "another port") \
        else (upstream.token_service, listed)
    message = _refused(upstream, upstream.client(proxy.url, token_hosts=token_hosts,
                                                 ca_file=ca_file), _ping)
    assert recorder.received == []
    assert listed in message  # the host, so that the operator knows which one
    if where in ("another host", "another port"):
        assert f"add '{listed}' to the registry's token_hosts" in message
    elif where == "https to http":
        assert "plain http while the registry is https" in message
    else:
        assert "user name or password" in message and "retention:x" not in message
    if upstream.credential is not None:
        assert upstream.credential.calls == 0  # no Entra token even asked for


@pytest.mark.parametrize("where", ["another host", "another port"])
def test_token_hosts_lets_a_realm_elsewhere_have_them(upstream: Upstream, where: str):
    """The same realms, listed in token_hosts: the registry's real token service, named by
    another host name ("localhost") or reached on its own port."""
    proxy = upstream.front()
    port = upstream.token_service.rsplit(":", 1)[1]
    listed = f"localhost:{port}" if where == "another host" else upstream.token_service
    proxy.inject(Fault("*", ".", "rewrite", times=EVERY,
                       rewrite=set_realm(f"http://{listed}{upstream.realm_path}")))
    _run(upstream.client(proxy.url, token_hosts=(listed,)), _ping,
         lambda c: c.tags("app"))
    if where == "another host":  # without the listing, refused
        message = _refused(upstream, upstream.client(proxy.url, token_hosts=()), _ping)
        assert f"add '{listed}'" in message


# -- other ways a credential could leave -------------------------------------------------------


def test_a_later_challenge_elsewhere_gets_nothing_from_the_token_cache(upstream: Upstream,
                                                                       recorders):
    """The refresh flow: the first 401 names the real token service (a token is issued and,
    for Entra, ACR's refresh token kept); a later 401, for another scope, names another
    port. Neither the password nor the kept refresh token may go there."""
    proxy = upstream.front()
    recorder = recorders()
    realm = f"{recorder.url}{upstream.realm_path}"

    def forge(client: RegistryClient) -> Awaitable[None]:
        proxy.inject(Fault("*", ".", "rewrite", times=EVERY, rewrite=set_realm(realm)))
        return asyncio.sleep(0)

    _refused(upstream, upstream.client(proxy.url), _ping, forge, lambda c: c.tags("app"))
    if upstream.acr is not None:
        assert upstream.acr.issued[("refresh",)] == 1  # it was there to be leaked
    assert recorder.received == []


def test_a_redirected_token_request_is_not_followed(upstream: Upstream, recorders):
    """The token service (listed) answers its token request with a 307 to another host: a
    307 repeats a POST, body and all (the Entra token, the refresh token). Not followed."""
    proxy = upstream.front()
    recorder = recorders()
    token_proxy = FaultProxy(upstream.url if upstream.acr else
                             f"http://{upstream.token_service}")
    token_proxy.url = token_proxy.start()
    upstream.proxies.append(token_proxy)
    path = r"^/oauth2/exchange" if upstream.acr else r"^/token"
    token_proxy.inject(Fault("*", path, "redirect", times=EVERY,
                             headers={"target": recorder.url}))
    proxy.inject(Fault("*", ".", "rewrite", times=EVERY,
                       rewrite=set_realm(f"{token_proxy.url}{upstream.realm_path}")))
    _refused(upstream, upstream.client(proxy.url, token_hosts=(token_proxy.url.split("/")[2],)),
             _ping)
    assert token_proxy.count("POST" if upstream.acr else "GET", path) >= 1
    assert recorder.received == []


def test_entra_refresh_token_redirected_is_not_followed(recorders, tmp_path: Path):
    """ACR's /oauth2/token (the refresh token in a POST body) answers a 307 elsewhere."""
    acr = AcrEmulator()
    acr.start()
    try:
        up = Upstream("entra", acr.url, acr.url.split("/")[2], "/oauth2/token", tmp_path,
                      acr=acr, credential=FakeEntraCredential(acr))
        proxy = up.front()
        recorder = recorders()
        proxy.inject(Fault("POST", r"^/oauth2/token", "redirect", times=EVERY,
                           headers={"target": recorder.url}))
        proxy.inject(Fault("*", ".", "rewrite", times=EVERY,
                           rewrite=set_realm(f"{proxy.url}/oauth2/token")))
        _refused(up, up.client(proxy.url, token_hosts=()), _ping)
        assert acr.issued[("refresh",)] == 1 and proxy.count("POST", "^/oauth2/token") >= 1
        assert recorder.received == []
    finally:
        for proxy in up.proxies:
            proxy.stop()
        acr.stop()


@pytest.mark.parametrize("where", ["another host", "another port"])
def test_a_401_from_storage_a_redirect_leads_to_gets_nothing(upstream: Upstream, recorders,
                                                            where: str):
    """A blob read, sent with the repository's token (fetched for its tags just before), is
    redirected to "storage" (it goes there without Authorization), which answers 401 with a
    challenge naming its own token realm. retention answers that challenge as the
    registry's: the rule is all that keeps the credentials from it."""
    proxy = upstream.front()
    port = int(proxy.url.rsplit(":", 1)[1])
    recorder = recorders("127.0.0.2", port, challenge=True) if where == "another host" \
        else recorders(challenge=True)
    proxy.inject(Fault("*", r"/blobs/", "redirect", times=EVERY,
                       headers={"target": recorder.url}))
    digest = "sha256:" + "0" * 64
    message = _refused(upstream, upstream.client(proxy.url), lambda c: c.tags("app"),
                       lambda c: c.blob_exists("app", digest))
    assert recorder.url.split("/")[2] in message
    assert [(r.method, r.path.split("?")[0]) for r in recorder.received] == \
        [("HEAD", f"/v2/app/blobs/{digest}")]
    (storage,) = recorder.received
    assert "authorization" not in {k.lower() for k in storage.headers}
    assert not [s for s in upstream.secrets() if s in str(storage)]


def test_a_refused_realm_is_a_clear_error_for_the_run(tmp_path: Path, token_server,
                                                      token_registry, recorders):
    """Through the command line: the error names the registry and the host and says what
    to do; no traceback, no secret."""
    proxy = FaultProxy(token_registry.url)
    proxy.url = proxy.start()
    try:
        recorder = recorders()
        proxy.inject(Fault("*", ".", "rewrite", times=EVERY,
                           rewrite=set_realm(f"{recorder.url}/token")))
        (tmp_path / "pw").write_text(PASSWORD)
        (tmp_path / "p.yaml").write_text("name: p\nrepositories: {include: ['**']}\n"
                                         "delete: [{untagged: true}]\n")
        config = tmp_path / "retention.yaml"
        config.write_text(f"registries:\n  main:\n    url: {proxy.url}\n    username: {USER}\n"
                          "    password_file: pw\npolicies: p.yaml\nstate_dir: state\n")
        out, err = io.StringIO(), io.StringIO()
        code = main(["plan", "--config", str(config)], stdout=out, stderr=err)
        text = out.getvalue() + err.getvalue()
        assert code != 0
        assert "Traceback" not in text and PASSWORD not in text
        assert "registry 'main'" in text
        assert f"add '{recorder.url.split('/')[2]}' to the registry's token_hosts" in text
        assert recorder.received == []
    finally:
        proxy.stop()


def test_a_request_credential_for_another_origin_is_refused():
    """The registry's own requests go through the rule too: a credential for an absolute URL
    elsewhere (a Link the client did not check, say) raises instead of leaving."""
    settings = RegistrySettings(name="main", url="https://reg.example.com",
                                credentials=Credentials(USER, Secret(PASSWORD)))

    async def never(*args, **kwargs):
        raise AssertionError("nothing is sent")

    auth = Authenticator(settings, send=never)
    auth._basic = True  # the registry asked for basic auth
    assert auth.headers("", "/v2/")["Authorization"].startswith("Basic ")
    assert auth.headers("", "https://reg.example.com:443/v2/x/tags/list?n=1")
    with pytest.raises(AuthenticationError, match=r"other\.example"):
        auth.headers("", "https://other.example/v2/")
    with pytest.raises(AuthenticationError, match="plain http"):
        auth.headers("", "http://reg.example.com/v2/")
    with pytest.raises(RegistryError):
        auth.headers("", "https://u:p@reg.example.com/v2/")


def test_a_token_hosts_entry_that_is_not_a_host_is_a_config_error(tmp_path: Path):
    """A URL in token_hosts would never match a realm's host: its credentials would be
    refused with the operator believing them allowed. Said at load, with file:line:col."""
    from retention.errors import ConfigError

    (tmp_path / "p.yaml").write_text("name: p\nrepositories: {include: ['**']}\n"
                                     "delete: [{untagged: true}]\n")
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  main:\n    url: https://reg.example.com\n"
                      "    token_hosts: [auth.example.com:8443, \"https://auth.docker.io\"]\n"
                      "policies: p.yaml\nstate_dir: state\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (4, 42)
    assert "'https://auth.docker.io' is not a host name" in problem.message


def test_insecure_skip_verify_is_the_registrys_own_not_its_token_hosts(
        tmp_path: Path, token_server, token_registry):
    """Issue 30 item 4 (retention/registry/http.py scopes TLS settings to the origin).

    ``insecure_skip_verify: true`` is for the registry's own certificate (a self-signed one
    on a lab registry). The token service listed in token_hosts is another host: its
    certificate is checked as any host's, or whoever answers for it (a man in the middle
    with a certificate of his own) receives the password. Here the token host is such an
    impostor (a TLS proxy with an untrusted self-signed certificate, forwarding to the real
    token service): it must receive nothing, the TLS handshake failing before any request.
    Today the session's one pyreqwest client accepts any certificate from any host, and the
    password goes to it."""
    from tests.servers import self_signed

    front = FaultProxy(token_registry.url)
    front.url = front.start(tls=self_signed(tmp_path / "registry-tls"))
    impostor = FaultProxy(token_server.realm.rsplit("/", 1)[0])
    impostor.url = impostor.start(tls=self_signed(tmp_path / "impostor-tls"))
    try:
        front.inject(Fault("*", ".", "rewrite", times=EVERY,
                           rewrite=set_realm(f"{impostor.url}/token")))
        client = RegistryClient(RegistrySettings(
            name="main", url=front.url, credentials=Credentials(USER, Secret(PASSWORD)),
            insecure_skip_verify=True, token_hosts=(impostor.url.split("/")[2],)),
            retry=FAST)
        with pytest.raises(RegistryError) as info:
            _run(client, _ping)
        assert PASSWORD not in str(info.value)
        assert impostor.requests == []  # not a request: the handshake failed
        assert not any(a.startswith("Basic ") for a in token_server.authorizations_seen)
    finally:
        front.stop()
        impostor.stop()
