"""Image references and allowlist entries: one parser, hosts compared as runtimes do."""

from __future__ import annotations

from dataclasses import replace

import pytest

from retention.allowlist import Allowlist, load_allowlist, parse_entry, unknown_host_pins
from retention.errors import ConfigError
from retention.planner import Options, plan
from retention.references import Hosts, Reference, normalize_host, parse_reference
from tests.factories import NOW, deleted, dg, inv, man, policy, protected

SIMPLE_POLICY = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["pr-*"]
    older_than: 14d
"""
HEX = "a" * 64
D = f"sha256:{HEX}"


@pytest.mark.parametrize(("text", "expected"), [
    ("nginx", Reference("docker.io", "library/nginx")),
    ("nginx:1.25", Reference("docker.io", "library/nginx", "1.25")),
    ("bitnami/redis:7", Reference("docker.io", "bitnami/redis", "7")),
    ("index.docker.io/nginx@" + D, Reference("docker.io", "library/nginx", None, D)),
    ("registry-1.docker.io/library/nginx:1@" + D,
     Reference("docker.io", "library/nginx", "1", D)),
    ("Registry.Example.com:443/ci/web:v1@" + D,
     Reference("registry.example.com", "ci/web", "v1", D)),
    ("registry.example.com:80/ci/web", Reference("registry.example.com", "ci/web")),
    ("registry.example.com:5000/ci/web", Reference("registry.example.com:5000", "ci/web")),
    ("localhost/app:dev", Reference("localhost", "app", "dev")),
    ("docker-pullable://reg.test/a/b@" + D, Reference("reg.test", "a/b", None, D)),
    ("[::1]:5000/app@" + D, Reference("[::1]:5000", "app", None, D)),
])
def test_parse_reference(text, expected):
    assert parse_reference(text) == expected


def test_parse_reference_without_default_host():
    assert parse_reference("ci/web@" + D, default_host=None) == Reference(None, "ci/web",
                                                                          None, D)


@pytest.mark.parametrize("text", [
    "", "reg.test/Repo", "reg.test/app@sha256:short", "app:", "app:-bad",
    "reg.test//app", "app@", "reg_test:x/app",
])
def test_parse_reference_refuses(text):
    assert parse_reference(text) is None


def test_normalize_host():
    assert normalize_host("Index.Docker.IO:443") == "docker.io"
    assert normalize_host("REG.test:5000") == "reg.test:5000"


def plan_with(text, inventory, allowlist):
    return plan(inventory, policy(text), now=NOW, options=Options(allowlist=allowlist))


def hosts() -> Hosts:
    return Hosts.of([("main", "Registry.Example.com:443", ["pull.example.com"]),
                     ("hub", "registry-1.docker.io", [])])


def test_allowlist_entry_forms():
    h = hosts()
    assert parse_entry(f"Registry.Example.com:443/ci/web:v1@{D}", hosts=h) == \
        parse_entry(f"registry.example.com/ci/web@{D}", hosts=h)
    # An alias is resolved to the registry's own host.
    assert parse_entry(f"PULL.example.com:443/ci/web@{D}", hosts=h).host == \
        "registry.example.com"
    assert parse_entry(f"docker.io/nginx@{D}", hosts=h).repository == "library/nginx"
    assert parse_entry(f"ci/web:v1@{D}", hosts=h).host is None
    for bad in ("latest", f"ci/web:v1@sha256:{'a' * 10}", f"sha512:{HEX}", "reg.test/ci/web"):
        assert parse_entry(bad, hosts=h) is None, bad


def test_pinned_matches_hosts_as_runtimes_do():
    h = hosts()
    allow = Allowlist.of([parse_entry(f"index.docker.io/nginx@{D}", hosts=h),
                          parse_entry(f"redis@{D}", hosts=h)])
    assert allow.pinned(D, repository="library/nginx", host="docker.io")
    assert not allow.pinned(D, repository="library/nginx", host="registry.example.com")
    # A hostless one-segment pin means library/redis on Docker Hub, redis elsewhere.
    assert allow.pinned(D, repository="library/redis", host="registry-1.docker.io")
    assert allow.pinned(D, repository="redis", host="registry.example.com")


def test_pin_with_tag_case_and_default_port_protects_in_a_plan():
    # Issue 10 item 4: the tag form was refused, the host compared verbatim.
    victim = man("a", "pr-1", days=30)
    inventory = replace(inv(victim), host="registry.example.com")
    pin = parse_entry(f"Registry.Example.com:443/ci/web:v1@{dg('a')}")
    assert pin is not None
    p = plan_with(SIMPLE_POLICY, inventory, Allowlist.of([pin]))
    assert protected(p) == {"a": "pinned"} and deleted(p) == set()
    # The same digest pinned for another host protects nothing here.
    other = parse_entry(f"elsewhere.example.com/ci/web@{dg('a')}")
    assert deleted(plan_with(SIMPLE_POLICY, inventory, Allowlist.of([other]))) == {"a"}


def test_pin_by_alias_protects_in_a_plan():
    victim = man("a", "pr-1", days=30)
    inventory = replace(inv(victim), host="registry.internal:5000")
    h = Hosts.of([("main", "registry.internal:5000", ["Registry.Example.com"])])
    pin = parse_entry(f"registry.example.com:443/ci/web@{dg('a')}", hosts=h)
    assert protected(plan_with(SIMPLE_POLICY, inventory, Allowlist.of([pin]))) == \
        {"a": "pinned"}


def test_unknown_hosts_are_reported_with_their_line(tmp_path):
    f = tmp_path / "pins.txt"
    f.write_text(f"# pins\nregistry.example.com/ci/web@{D}\nnowhere.test/x@{D}\n{D}\n")
    allow = load_allowlist(f, hosts=hosts())
    unknown = unknown_host_pins(allow, hosts())
    assert [(p.host, p.source) for p in unknown] == [("nowhere.test", f"{f}:3")]


def test_bad_lines_name_file_and_line(tmp_path):
    f = tmp_path / "pins.txt"
    f.write_text(f"{D}\n  reg.test/app:v1\n")
    with pytest.raises(ConfigError) as exc:
        load_allowlist(f)
    assert str(exc.value.problems[0]).startswith(f"{f}:2:3: not a pinned digest")
