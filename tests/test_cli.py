"""The command line: validation messages, exit codes, offline planning, big registries."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retention.cli import main
from tests.pusher import Pusher


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_version_help_and_module():
    assert cli("--version")[0] == 0
    assert cli("--help")[0] == 0
    result = subprocess.run([sys.executable, "-m", "retention", "--version"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("retention ")
    assert cli("frobnicate")[0] == 2
    assert cli("plan")[0] == 2  # --config is required
    assert cli("validate")[0] == 2


def test_validate_reports_every_problem_with_location(tmp_path: Path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "a.yaml").write_text(
        'name: a\nrepositories: {include: ["x"]}\ndelete: [{tags: [1.10]}]\n')
    (tmp_path / "pinned.txt").write_text("# pinned\nsha256:" + "a" * 64 + "\nlatest\n")
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  main: {url: 'http://127.0.0.1:1'}\npolicies: policies\n"
                      "allowlist: pinned.txt\nmode: enforce\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2
    assert f"{tmp_path}/policies/a.yaml:3:18:" in err and "quote it" in err
    assert f"{tmp_path}/pinned.txt:3:1: not a pinned digest: 'latest'" in err
    assert "2 problem(s) found; nothing was changed" in err


def test_config_errors_are_located(tmp_path: Path):
    config = tmp_path / "retention.yaml"
    config.write_text("""registries:
  main:
    url: registry.example.com
    pasword_file: pw
policies: missing-dir
mode: enforced
max_deletions: ten
untagged_grace: 1 day
listen: 9090
""")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2
    lines = err.strip().splitlines()
    assert any(":3:10: registries.main.url must start with https://" in x for x in lines)
    assert any(":4:5: registries.main: unknown key 'pasword_file'; did you mean "
               "'password_file'?" in x for x in lines)
    assert any(":5:11: policies path" in x and "does not exist" in x for x in lines)
    assert any(":6:7: mode must be dry-run or enforce" in x for x in lines)
    assert any(":7:16: max_deletions must be a whole number" in x for x in lines)
    assert any(":8:17:" in x and "invalid duration '1 day'" in x for x in lines)
    assert any(':9:9: listen must be host:port, like "0.0.0.0:9090", not 9090' in x
               for x in lines)



@pytest.mark.parametrize(("url", "message"), [
    ("https://registry.example:99999", "registries.main.url: the host or port cannot be read"),
    ("https://registry.example:https", "registries.main.url: the host or port cannot be read"),
    ("https://reg\\\\istry.example", "registries.main.url: the host or port cannot be read"),
    ("https://:443", "registries.main.url: no host name in it"),
    ("https://ci:s3cret@registry.example", "registries.main.url must not carry a user or "
     "password"),
])
def test_a_registry_url_that_cannot_be_used_is_a_located_error(tmp_path: Path, url, message):
    """Refused when the configuration is read, naming the line, instead of failing (or, for
    a URL the HTTP layer cannot read, ending the run) at the first request."""
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["x"]}\n'
                                     'delete: [{untagged: true}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main:\n    url: '{url}'\npolicies: p.yaml\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2
    assert f"{config}:3:10: {message}" in err
    assert "s3cret" not in err


def test_secret_files_and_env(tmp_path: Path, monkeypatch):
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["x"]}\n'
                                     'delete: [{untagged: true}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  main:\n    url: https://r.example\n    username_env: U\n"
                      "    password_env: P\npolicies: p.yaml\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2 and "environment variable U is not set" in err
    monkeypatch.setenv("U", "robot")
    monkeypatch.setenv("P", "env-secret-value")
    code, out, err = cli("validate", "--config", str(config))
    assert code == 0, err
    assert "env-secret-value" not in out + err


def test_plan_offline_from_recorded_inventory(tmp_path: Path, registry, pusher: Pusher):
    pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z", layers=(b"1",))
    pusher.image("app", "pr-2", created="2024-01-01T00:00:00Z", layers=(b"2",))
    amd = pusher.image("app", None, created="2024-01-01T00:00:00Z", layers=(b"amd",))
    pusher.index("app", "pr-3", [amd])
    pusher.image("app", "v1", created="2024-01-01T00:00:00Z", layers=(b"v",))
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["**"]}\n'
                                     'keep: [{tags: ["v*"]}]\ndelete: [{tags: ["*"]}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{registry.url}'}}\npolicies: p.yaml\n"
                      "state_dir: state\n")
    code, recorded, _ = cli("inventory", "--config", str(config), "--output", "json")
    assert code == 0
    (tmp_path / "inv.json").write_text(recorded)
    code, online, _ = cli("plan", "--config", str(config), "--output", "json")
    assert code == 0
    registry.stop()  # offline means offline
    code, offline, err = cli("plan", "--config", str(config), "--output", "json",
                             "--inventory", str(tmp_path / "inv.json"))
    assert code == 0, err
    assert json.loads(offline) == json.loads(online)
    doc = json.loads(offline)
    # pr-1 and pr-2; the pr-3 index waits: its child was first seen untagged just now.
    assert len(doc["actions"]) == 2
    assert [p["reason"] for p in doc["protected"]] == ["grace"]
    assert doc["kept"][0]["tags"] == ["v1"]
    code, _, err = cli("plan", "--config", str(config), "--inventory", str(tmp_path / "p.yaml"))
    assert code == 2 and "cannot read inventory" in err


def test_table_output(tmp_path: Path, registry, pusher: Pusher):
    pusher.image("app", "pr-1", created="2024-01-01T00:00:00Z")
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["**"]}\n'
                                     'delete: [{tags: ["pr-*"], older_than: 7d}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{registry.url}'}}\npolicies: p.yaml\n")
    code, out, _ = cli("plan", "--config", str(config))
    assert code == 0
    assert out.startswith("mode: dry-run\nPOLICY")
    assert "delete rule 1: tags pr-*, older than 7d" in out
    assert "p: 1 to delete, 0 protected, 0 kept" in out


def test_inventory_of_a_registry_with_over_1000_repositories(tmp_path: Path, big_registry):
    reg, names = big_registry
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["**"]}\n'
                                     'delete: [{untagged: true}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{reg.url}'}}\npolicies: p.yaml\n")
    code, out, err = cli("inventory", "--config", str(config), "--output", "json")
    assert code == 0, err
    (inventory,) = json.loads(out)["inventories"]
    repos = {r["name"]: r for r in inventory["repositories"]}
    assert sorted(repos) == sorted(names)
    assert all(len(r["manifests"]) == 1 and r["manifests"][0]["tags"] == ["v1"]
               for r in repos.values())
    code, table, _ = cli("inventory", "--config", str(config))
    assert f"{len(names)} repositories, {len(names)} manifests, {len(names)} tags" in table


def test_hostile_regular_expression_cannot_hang_the_planner(tmp_path: Path):
    from tests.factories import inv, make_plan, man

    text = ('name: p\nrepositories: {include: ["**"]}\n'
            'delete: [{tags: ["re:(a+)+$", "re:(a|aa)+b", "*a*a*a*a*a*a*a*a*a*b"]}]\n')
    tag = "a" * 120 + "!"
    started = time.perf_counter()
    p = make_plan(text, inv(*(man(f"m{i}", tag + str(i)) for i in range(50))))
    assert time.perf_counter() - started < 5  # backtracking engines take ages here
    assert p.actions == ()


def test_docker_config_credentials(tmp_path: Path):
    import base64

    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["x"]}\n'
                                     'delete: [{untagged: true}]\n')
    auth = base64.b64encode(b"robot:from-docker-config").decode()
    (tmp_path / "docker.json").write_text(json.dumps({"auths": {
        "registry.example.com:5000": {"auth": auth},
        "other.example.com": {"identitytoken": "opaque-refresh-token"}}}))
    config = tmp_path / "retention.yaml"
    config.write_text("registries:\n  a:\n    url: https://registry.example.com:5000\n"
                      "    docker_config: docker.json\npolicies: p.yaml\n")
    from retention.setup import load_setup

    creds = load_setup(config).config.registries["a"].credentials
    assert creds.username == "robot" and creds.password.reveal() == "from-docker-config"
    config.write_text("registries:\n  a:\n    url: https://other.example.com\n"
                      "    docker_config: docker.json\n  b:\n    url: https://third.example\n"
                      "    docker_config: docker.json\npolicies: p.yaml\n")
    code, _, err = cli("validate", "--config", str(config))
    assert code == 2
    assert "identitytoken, which is not supported" in err
    assert "no usable auths entry for third.example" in err
    assert "opaque-refresh-token" not in err


@pytest.mark.parametrize("text", [
    "plain", "caf\u00e9", "odd\x7fbyte", "\x00\x1b\t\n control",
    json.loads('"bad tag \\udc80"'),  # a lone surrogate, as a registry's error body decodes
])
def test_json_output_is_what_json_dumps_writes(text):
    """The JSON document is written by orjson where it writes the same bytes as json.dumps,
    and by json.dumps where it would not (text beyond ASCII, DEL, a lone surrogate)."""
    from retention.cli import _print

    doc = {"errors": [{"message": text, "n": 2**70}], "empty": [], "none": {}, "ok": True}
    out = io.StringIO()
    _print(doc, out)
    assert out.getvalue() == json.dumps(doc, indent=2) + "\n"
