"""confirm_window on a real registry: the tag read that confirms a manifest's tags is the last
check before its DELETE, and the DELETE is not sent later than the window after that read
began, whatever delays it (a Retry-After, a slow check, a token fetched first): past it,
the tags are read again.

Each scenario moves a tag onto a planned manifest at the worst moment (a hook in the fault
proxy, run just before the proxy forwards or answers a request) and checks it survives.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from retention.errors import NotSentError
from retention.runs import open_clients
from retention.setup import load_setup
from tests.conftest import PASSWORD, USER
from tests.pusher import Pushed, Pusher
from tests.servers import Fault, FaultProxy, TokenServer, start_registry
from tests.test_executor import OLD, PR, on_request, on_request_after_scan
from tests.test_run_e2e import cli, deleted_digests, write_config


def test_confirm_window_0s_sees_a_rollback_between_two_deletes(tmp_path, registry, pusher,
                                                               proxy):
    """`latest` moves onto the second build while the first one's DELETE is in flight: with
    confirm_window 0s the second DELETE's own read sees it."""
    first = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    second = pusher.image("app", "pr-2", created=OLD, layers=(b"two",))
    early, late = sorted([first, second], key=lambda p: p.digest)  # the order of deletion
    on_request(proxy, "DELETE", early.digest, lambda: pusher.tag("app", "latest", late))
    config = write_config(tmp_path, proxy.url, policy=PR, extra="confirm_window: 0s")
    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    status = {a["digest"]: a for a in doc["actions"]}
    assert status[early.digest]["status"] == "deleted"
    assert status[late.digest]["status"] == "skipped"
    assert status[late.digest]["reason"].startswith("changed: tags are now ['latest', 'pr-")
    assert pusher.exists("app", "latest")


def test_a_throttled_delete_waits_then_reads_the_tags_again(tmp_path, registry, pusher,
                                                            proxy):
    """The DELETE is answered 429 with a Retry-After longer than the window; `latest` moves
    onto it meanwhile. The read made before the wait is not reused."""
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
    proxy.inject(Fault("DELETE", doomed.digest, "status", status=429,
                       headers={"Retry-After": "3"}))
    on_request(proxy, "DELETE", doomed.digest, lambda: pusher.tag("app", "latest", doomed))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    assert code == 0, doc
    status = {a["digest"]: a for a in doc["actions"]}
    assert status[doomed.digest]["status"] == "skipped", status[doomed.digest]
    assert "latest" in status[doomed.digest]["reason"]
    assert pusher.exists("app", "latest") and pusher.exists("app", doomed.digest)
    assert proxy.count("DELETE", doomed.digest) == 1  # the throttled one only


def test_a_slow_check_comes_before_the_tag_read_not_after(tmp_path, registry, pusher, proxy):
    """A manifest pushed since the plan is read before the DELETE (does it reference the
    doomed one?), and that read is throttled (429, Retry-After longer than the window).
    `latest` moves onto the doomed build during the wait: the tag read comes after that
    check, so it sees the move."""
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
    newcomer: list[Pushed] = []

    def push_unrelated() -> None:
        newcomer.append(pusher.image("app", "v2", created=OLD, layers=(b"unrelated",)))
        path = f"/v2/app/manifests/{newcomer[0].digest}"
        proxy.inject(Fault("GET", path, "status", status=429, headers={"Retry-After": "3"}))
        on_request(proxy, "GET", path, lambda: pusher.tag("app", "latest", doomed))

    on_request_after_scan(proxy, push_unrelated)
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    assert code == 0 and newcomer, doc
    (action,) = doc["actions"]
    assert action["status"] == "skipped", action
    assert "latest" in action["reason"]
    assert pusher.exists("app", "latest") and pusher.exists("app", doomed.digest)


def test_delete_held_back_by_a_throttled_token_is_not_sent_on_a_stale_read(tmp_path):
    """The first DELETE in a repository needs a token with the delete scope; the token
    service answers 429 with Retry-After longer than the window, and `latest` moves onto the
    doomed build meanwhile. The DELETE is not sent on the read made before: it is read
    again, and kept."""
    token_server = TokenServer(users={USER: PASSWORD}, workdir=tmp_path / "token")
    token_proxy = FaultProxy(token_server.start().removesuffix("/token"))
    token_proxy.url = token_proxy.start()
    registry = start_registry(tmp_path / "registry", auth={"token": {
        "realm": f"{token_proxy.url}/token", "service": token_server.service,
        "issuer": token_server.issuer, "rootcertbundle": str(token_server.cert_path)}})
    pusher = Pusher(registry.url)
    pusher.client.headers["Authorization"] = \
        f"Bearer {token_server.token(USER, ['repository:app:pull,push'])}"
    try:
        doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
        # The query as httpx2 sends it, colons percent-encoded.
        delete_scope = "scope=repository%3Aapp%3Adelete"
        token_proxy.inject(Fault("GET", delete_scope, "status", status=429,
                                 headers={"Retry-After": "3"}))
        on_request(token_proxy, "GET", delete_scope,
                   lambda: pusher.tag("app", "latest", doomed))
        config = write_config(tmp_path, registry.url, policy=PR)
        (tmp_path / "pw").write_text(PASSWORD)
        config.write_text(config.read_text().replace(
            f"url: {registry.url}", f"url: {registry.url}\n    username: {USER}\n"
                                    "    password_file: pw\n"
                                    f"    token_hosts: ['{token_proxy.url.split('//')[1]}']"))
        code, doc, err = cli("run", "--config", str(config), "--output", "json")
        assert code == 0 and isinstance(doc, dict), err
        (action,) = doc["actions"]
        assert action["status"] == "skipped", action
        assert "latest" in action["reason"]
        assert pusher.exists("app", "latest") and pusher.exists("app", doomed.digest)
    finally:
        pusher.close()
        registry.stop()
        token_proxy.stop()
        token_server.stop()


def test_a_delete_past_its_moment_is_not_sent(tmp_path, registry, pusher, proxy):
    """The client's last check: a DELETE allowed until a moment already past never reaches
    the registry."""
    doomed = pusher.image("app", "pr-1", created=OLD, layers=(b"doomed",))
    setup = load_setup(write_config(tmp_path, proxy.url, policy=PR))

    async def go() -> None:
        async with open_clients(setup, ["main"]) as clients:
            await clients["main"].delete_manifest("app", doomed.digest, retry=False,
                                                  not_after=time.monotonic() - 0.001)

    try:
        asyncio.run(go())
    except NotSentError as exc:
        assert "not sent" in str(exc)
    else:
        raise AssertionError("sent after its moment")
    assert proxy.count("DELETE", ".") == 0
    assert pusher.exists("app", doomed.digest)


def test_repositories_are_deleted_from_in_parallel(tmp_path, registry, pusher, proxy):
    """A slow DELETE in one repository does not hold back another repository's."""
    slow = pusher.image("a-slow", "pr-1", created=OLD, layers=(b"slow",))
    quick = pusher.image("b-quick", "pr-1", created=OLD, layers=(b"quick",))
    proxy.inject(Fault("DELETE", slow.digest, "delay", seconds=3.0))
    arrived: dict[str, float] = {}
    on_request(proxy, "DELETE", slow.digest, lambda: arrived.setdefault("slow", time.time()))
    on_request(proxy, "DELETE", quick.digest, lambda: arrived.setdefault("quick", time.time()))
    code, doc, _ = cli("run", "--config", str(write_config(tmp_path, proxy.url, policy=PR)),
                       "--output", "json")
    assert code == 0 and deleted_digests(doc) == {slow.digest, quick.digest}
    assert arrived["quick"] - arrived["slow"] < 2.0, arrived


def test_confirm_window_is_validated_with_its_location(tmp_path: Path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(PR)
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  main: {url: 'http://127.0.0.1:1'}\npolicies: policies\n"
                      "confirm_window: 2 seconds\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2
    assert f"{config}:4:17: confirm_window: invalid duration '2 seconds'" in err
    config.write_text("registries:\n  main: {url: 'http://127.0.0.1:1'}\npolicies: policies\n"
                      "confirm_window: [2s]\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2 and f"{config}:4:17:" in err and "confirm_window" in err
    config.write_text("registries:\n  main: {url: 'http://127.0.0.1:1'}\npolicies: policies\n"
                      "confirm_window: 0s\n")
    assert cli("validate", "--config", str(config))[0] == 0
    assert load_setup(config).config.confirm_window.total_seconds() == 0


def test_a_repository_slower_to_read_than_the_window_is_kept(tmp_path, registry, pusher,
                                                             proxy):
    """Every read of the repository's tags takes longer than the window (a slow HEAD): no
    DELETE can be sent in time, so nothing there is deleted, the run says how to fix it,
    and the repository's other manifests are not read for in vain."""
    for i in range(2):
        pusher.image("app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    proxy.inject(Fault("HEAD", r"/v2/app/manifests/pr-", "delay", seconds=1.3, times=100))
    config = write_config(tmp_path, proxy.url, policy=PR, extra="confirm_window: 1s")
    code, doc, _ = cli("run", "--config", str(config), "--output", "json")
    assert code == 1
    assert [a["status"] for a in doc["actions"]] == ["skipped", "skipped"]
    assert all("raise confirm_window" in a["reason"] for a in doc["actions"])
    assert any("raise confirm_window" in e["message"] for e in doc["errors"])
    assert proxy.count("DELETE", ".") == 0 and len(pusher.tags("app")) == 2
    assert proxy.count("GET", r"/v2/app/tags/list") == 1 + 5  # the plan's, then 5 in vain
