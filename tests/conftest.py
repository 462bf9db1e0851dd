"""Fixtures: real registries (CNCF distribution) started on free loopback ports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from tests.pusher import Pusher, seed_many
from tests.servers import FaultProxy, Registry, TokenServer, start_registry, write_htpasswd

USER, PASSWORD = "robot", "s3cret-Pa55word-for-tests"

# retention runs every command on uvloop (retention/eventloop.py); the tests' own
# asyncio.run() calls, which drive the client, scanner and executor directly, run on it too.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An empty registry of our own, with deletion enabled. Fails loudly if it cannot start."""
    reg = start_registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def pusher(registry: Registry) -> Iterator[Pusher]:
    p = Pusher(registry.url)
    yield p
    p.close()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[Registry]:
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, {USER: PASSWORD})
    reg = start_registry(tmp_path / "registry-basic",
                         auth={"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}})
    yield reg
    reg.stop()


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    server = TokenServer(users={USER: PASSWORD}, workdir=tmp_path / "token")
    server.realm = server.start()
    # host:port: another port than the registry's, so token_hosts must name it.
    server.netloc = server.realm.split("/")[2]
    yield server
    server.stop()


@pytest.fixture
def token_registry(tmp_path: Path, token_server: TokenServer) -> Iterator[Registry]:
    reg = start_registry(tmp_path / "registry-token", auth={"token": {
        "realm": token_server.realm,
        "service": token_server.service,
        "issuer": token_server.issuer,
        "rootcertbundle": str(token_server.cert_path),
    }})
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.url)
    p.url = p.start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def big_registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("big") / "registry")
    names = [f"team-{i // 100:02d}/svc-{i:04d}" for i in range(1105)]
    seed_many(reg.url, names)
    yield reg, names
    reg.stop()


@pytest.fixture
def proxy_big(big_registry):

    reg, names = big_registry
    p = FaultProxy(reg.url)
    p.url = p.start()
    yield p, names
    p.stop()
