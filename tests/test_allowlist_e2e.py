"""Allowlist entries as people write them protect on a real registry (issue 10, item 4)."""

from __future__ import annotations

from tests.pusher import Pusher
from tests.test_run_e2e import cli, deleted_digests, write_config

POLICY = """
name: prs
repositories: {include: ["**"]}
delete:
  - tags: ["pr-*"]
"""


def test_pin_with_tag_alias_case_and_default_port_survives_run(tmp_path, registry,
                                                               pusher: Pusher):
    pinned = pusher.image("ci/web", "pr-1", created="2024-01-01T00:00:00Z", layers=(b"p",))
    doomed = pusher.image("ci/web", "pr-2", created="2024-01-01T00:00:00Z", layers=(b"d",))
    (tmp_path / "pinned.txt").write_text(
        "# what `docker inspect` printed, through the public name of the registry\n"
        f"Registry.Example.com:443/ci/web:v1@{pinned.digest}\n")
    config = write_config(tmp_path, registry.url, policy=POLICY, extra="allowlist: pinned.txt")
    text = config.read_text().replace(f"    url: {registry.url}\n",
                                      f"    url: {registry.url}\n"
                                      "    aliases: [registry.example.com]\n")
    config.write_text(text)

    code, doc, err = cli("run", "--config", str(config), "--output", "json")
    assert code == 0, err
    assert deleted_digests(doc) == {doomed.digest}
    assert [(p["digest"], p["reason"]) for p in doc["protected"]] == [(pinned.digest, "pinned")]
    assert pusher.exists("ci/web", pinned.digest)
    assert not pusher.exists("ci/web", doomed.digest)


def test_validate_warns_about_a_host_no_registry_has(tmp_path, registry):
    digest = "sha256:" + "b" * 64
    (tmp_path / "pinned.txt").write_text(f"{digest}\nelsewhere.test/ci/web@{digest}\n")
    config = write_config(tmp_path, registry.url, policy=POLICY, extra="allowlist: pinned.txt")
    code, out, err = cli("validate", "--config", str(config))
    assert code == 0 and "ok: 1 policies valid" in out
    assert err == (f"{tmp_path}/pinned.txt:2:1: warning: allowlist entry for host "
                   "elsewhere.test, which no configured registry has (url or aliases): it "
                   "protects nothing\n")
