"""Unattended runs never lie, and the command line behaves as kubectl's and terraform's do.

Each test drives the installed `retention` command as a user would (a subprocess), against a
real registry; the daemon's tests scrape its /metrics over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from retention.daemon import Daemon
from tests.pusher import Pusher
from tests.servers import Fault, free_port
from tests.test_daemon import every_second, metric, wait_for

RETENTION = shutil.which("retention", path=str(Path(sys.executable).parent)) or "retention"
OLD = "2024-01-01T00:00:00Z"
PR_POLICY = ('name: ci\nrepositories: {include: ["ci/**"]}\n'
             'delete: [{tags: ["pr-*"], older_than: 1d}]\n')


def retention(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RETENTION_CONFIG"}
    environment.update(env or {})
    return subprocess.run([RETENTION, *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=timeout, check=False)


def setup_dir(tmp_path: Path, url: str, *, policy: str = PR_POLICY, extra: str = "",
              mode: str = "enforce") -> Path:
    (tmp_path / "policies").mkdir(parents=True, exist_ok=True)
    (tmp_path / "policies" / "ci.yaml").write_text(policy)
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{url}'}}\npolicies: policies\n"
                      f"mode: {mode}\nstate_dir: state\nuntagged_grace: 0s\n{extra}")
    return config


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the daemon on port {port} did not answer /healthz")


def corrupt_state(tmp_path: Path) -> Path:
    db = tmp_path / "state" / "retention.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    return db


# -- 1. a state database that cannot be opened fails the run ---------------------------------

def test_unusable_state_fails_run_and_plan_naming_the_file(tmp_path: Path, registry,
                                                           pusher: Pusher):
    pr = pusher.image("ci/app", "pr-1", created=OLD)
    config = setup_dir(tmp_path, registry.url)
    db = corrupt_state(tmp_path)
    for command in ("run", "plan"):
        result = retention(command, "-c", str(config), "-o", "json")
        no_traceback(result)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        doc = json.loads(result.stdout)
        assert any(str(db) in e["message"] and "moved aside" in e["message"]
                   for e in doc["errors"]), doc["errors"]
    assert pusher.exists("ci/app", pr.digest)
    # Moved aside, the next run works and deletes.
    db.rename(db.with_suffix(".broken"))
    result = retention("run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert not pusher.exists("ci/app", pr.digest)


def test_daemon_on_unusable_state_counts_failures_until_moved_aside(tmp_path: Path, registry,
                                                                   pusher: Pusher):
    pr = pusher.image("ci/app", "pr-1", created=OLD)
    config = setup_dir(tmp_path, registry.url, extra="listen: 127.0.0.1:0\n")
    db = corrupt_state(tmp_path)

    async def scenario():
        daemon = Daemon(config, options=every_second())
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            async def outcome(name: str, at_least: float = 1) -> str | None:
                text = (await http.get("/metrics")).text
                value = metric(text, "retention_runs_total", policy="ci", outcome=name)
                return text if value is not None and value >= at_least else None

            text = await wait_for(lambda: outcome("failure", 2))
            # No success, no last success: the alerts on both see it.
            assert metric(text, "retention_runs_total", policy="ci", outcome="success") == 0
            assert not metric(text, "retention_last_success_timestamp_seconds", policy="ci")
            assert pusher.exists("ci/app", pr.digest)
            db.rename(db.with_suffix(".broken"))
            text = await wait_for(lambda: outcome("success"))
            assert metric(text, "retention_last_success_timestamp_seconds", policy="ci")
        daemon.stopping.set()
        await task

    asyncio.run(scenario())
    assert not pusher.exists("ci/app", pr.digest)


# -- 3. exit codes and summaries that say what happened -----------------------------------

def test_plan_exits_1_when_run_would_abort(tmp_path: Path, registry, pusher: Pusher):
    for i in range(3):
        pusher.image("ci/app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    config = setup_dir(tmp_path, registry.url, extra="max_deletions: 2\n")
    for output in ("table", "json"):
        result = retention("plan", "-c", str(config), "-o", output)
        no_traceback(result)
        assert result.returncode == 1, result.stdout
    table = retention("plan", "-c", str(config)).stdout
    assert "0 to delete, 3 held back" in table and "ABORTED: max_deletions exceeded" in table


def test_enforced_summary_counts_what_happened(tmp_path: Path, registry, pusher: Pusher, proxy):
    for i in range(2):
        pusher.image("ci/app", f"pr-{i}", created=OLD, layers=(f"l{i}".encode(),))
    proxy.inject(Fault("DELETE", r"/manifests/", "status", status=500, times=100))
    config = setup_dir(tmp_path, proxy.url)
    result = retention("run", "-c", str(config))
    assert result.returncode == 1
    assert "total: 0 deleted, 2 failed, 0 skipped, 0 B reclaimed" in result.stdout, result.stdout
    assert "to delete" not in result.stdout.split("\n\n")[-1]
    doc = json.loads(retention("run", "-c", str(config), "-o", "json").stdout)
    assert doc["summary"]["deleted"] == 0 and doc["summary"]["failed"] == 2
    assert doc["summary"]["skipped"] == 0


# -- 4. mistakes that would silently do nothing ------------------------------------------

def test_include_typo_is_warned_by_validate_plan_and_run(tmp_path: Path, registry,
                                                         pusher: Pusher):
    pusher.image("ci/app", "pr-1", created=OLD)
    typo = 'name: ci\nrepositories: {include: ["cl/**"]}\ndelete: [{untagged: true}]\n'
    config = setup_dir(tmp_path, registry.url, policy=typo)
    for command in ("plan", "run"):
        result = retention(command, "-c", str(config))
        assert result.returncode == 0
        assert "policy matches no repository" in result.stderr, result.stderr
    # validate never touches a registry: it warns where the registry's repositories are
    # written in the config.
    listed = config.read_text().replace(f"url: '{registry.url}'",
                                        f"url: '{registry.url}', repositories: [ci/app]")
    config.write_text(listed)
    result = retention("validate", "-c", str(config))
    assert result.returncode == 0
    assert re.search(r"policies/ci\.yaml:1:1: warning: policy ci: repositories match none",
                     result.stderr), result.stderr


def test_policies_in_subfolders_are_read(tmp_path: Path, registry, pusher: Pusher):
    pr = pusher.image("ci/app", "pr-1", created=OLD)
    config = setup_dir(tmp_path, registry.url)
    (tmp_path / "policies" / "ci.yaml").unlink()
    (tmp_path / "policies" / "team-a").mkdir()
    (tmp_path / "policies" / "team-a" / "ci.yml").write_text(PR_POLICY)
    (tmp_path / "policies" / ".git").mkdir()
    (tmp_path / "policies" / ".git" / "junk.yaml").write_text("not: a policy\n")
    assert retention("validate", "-c", str(config)).stdout == "ok: 1 policies valid\n"
    assert retention("run", "-c", str(config)).returncode == 0
    assert not pusher.exists("ci/app", pr.digest)


def test_unknown_allowlist_host_is_warned_by_plan_and_run(tmp_path: Path, registry):
    (tmp_path / "pinned.txt").write_text("other.example.com/app@sha256:" + "a" * 64 + "\n")
    config = setup_dir(tmp_path, registry.url, extra="allowlist: pinned.txt\n")
    for command in ("validate", "plan", "run"):
        result = retention(command, "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "other.example.com" in result.stderr, (command, result.stderr)


# -- 6. one enforcing process per state ---------------------------------------------------

def test_second_enforcing_process_is_refused_or_waits(tmp_path: Path, registry, pusher: Pusher):
    pr = pusher.image("ci/app", "pr-1", created=OLD)
    port = free_port()
    config = setup_dir(tmp_path, registry.url, extra=f"listen: 127.0.0.1:{port}\n"
                       'schedule: "0 0 1 1 *"\n')
    daemon = subprocess.Popen([RETENTION, "serve", "-c", str(config)], text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(port)
        result = retention("run", "-c", str(config))
        assert result.returncode == 1
        no_traceback(result)
        assert re.search(rf"locked by pid {daemon.pid} on \S+ \(serve\) since \d{{4}}-",
                         result.stderr), result.stderr
        assert pusher.exists("ci/app", pr.digest)
        # Read-only commands take no lock.
        assert retention("plan", "-c", str(config)).returncode == 0
        waiting = subprocess.Popen([RETENTION, "run", "--wait", "-c", str(config)], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        assert waiting.poll() is None  # still waiting for the daemon
        assert pusher.exists("ci/app", pr.digest)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "waiting for the lock" in err
        assert not pusher.exists("ci/app", pr.digest)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


# -- 7. finding the config, flags as kubectl has them ----------------------------------------

def test_config_is_found_in_flag_env_and_working_directory(tmp_path: Path, registry):
    config = setup_dir(tmp_path, registry.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert retention("plan", cwd=tmp_path).returncode == 0
    assert retention("plan", cwd=elsewhere,
                     env={"RETENTION_CONFIG": str(config)}).returncode == 0
    assert retention("plan", "-c", str(config), cwd=elsewhere).returncode == 0
    assert retention("inventory", "-o", "json", cwd=tmp_path).returncode == 0
    missing = retention("plan", cwd=elsewhere)
    assert missing.returncode == 2
    assert "give -c FILE, set RETENTION_CONFIG, or run where retention.yaml is" in \
        missing.stderr
    no_traceback(missing)


def test_abbreviated_options_are_refused_and_help_has_example_and_exit_codes(tmp_path: Path):
    result = retention("plan", "--conf", "x.yaml")
    assert result.returncode == 2 and "unrecognized arguments: --conf" in result.stderr
    for command in ("plan", "run", "validate", "inventory", "restore", "serve"):
        text = retention(command, "--help").stdout
        assert "example:\n  retention " + command in text, text
        assert "exit codes:\n  0  success" in text
        assert "-o" in text or command == "serve"


def test_log_level_and_format(tmp_path: Path, registry):
    config = setup_dir(tmp_path, registry.url)
    quiet = retention("run", "-c", str(config), "--log-level", "error")
    assert quiet.returncode == 0 and quiet.stderr == ""
    debug = retention("plan", "-c", str(config), "--log-level", "debug")
    assert debug.returncode == 0 and debug.stderr  # plan logs nothing at its default level


def _on_terminal(args: list[str], env: dict[str, str]) -> str:
    """What the command writes to a terminal (stdout and stderr on one pseudo-terminal)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(RETENTION, [RETENTION, *args], {**os.environ, **env})
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


def test_terminal_output_colours_progress_and_explicit_log_format(tmp_path: Path, registry,
                                                                  pusher: Pusher):
    pusher.image("ci/app", "pr-1", created=OLD)
    config = setup_dir(tmp_path, registry.url, mode="dry-run")
    shown = _on_terminal(["run", "-c", str(config)], {})
    assert "\x1b[" in shown  # console logs, coloured, on a terminal
    assert "main: repositories read 1/1" in shown  # progress
    plain = _on_terminal(["run", "-c", str(config)], {"NO_COLOR": "1"})
    assert "\x1b[" not in plain
    config.write_text(config.read_text() + "log_format: json\n")
    written = _on_terminal(["run", "-c", str(config)], {})
    assert '"event": "deletion planned"' in written or '"event":' in written
    # Piped: no progress, no colours.
    piped = retention("run", "-c", str(config))
    assert "repositories read" not in piped.stderr and "\x1b[" not in piped.stderr


def test_completion_scripts(tmp_path: Path):
    script = tmp_path / "completion.bash"
    script.write_text(retention("completion", "bash").stdout)
    probe = ('source "$1"; COMP_WORDS=(retention pl); COMP_CWORD=1; _retention; '
             'echo "${COMPREPLY[*]}"; COMP_WORDS=(retention plan -o ""); COMP_CWORD=3; '
             '_retention; echo "${COMPREPLY[*]}"')
    result = subprocess.run(["bash", "-c", probe, "bash", str(script)], capture_output=True,
                            text=True, check=True)
    assert result.stdout.splitlines() == ["plan", "table json"]
    zsh = retention("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef retention")
    if shutil.which("zsh"):
        check = subprocess.run(["zsh", "-n", "-c", zsh.stdout], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stderr


def test_scheduler_noise_is_below_info(tmp_path: Path, registry):
    port = free_port()
    config = setup_dir(tmp_path, registry.url, extra=f"listen: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([RETENTION, "serve", "-c", str(config)], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "daemon started" in err
    assert "Adding job" not in err and "apscheduler" not in err


# -- 9. messages that say what to do -------------------------------------------------------

@pytest.mark.parametrize(("policy", "expected"), [
    ('name: a\nrepositories: {include: ["x"]}\ndelete: [{tags: ["a"], older_than: 14}]\n',
     "3:36: policy 'a': delete rule 1: older_than must be a duration with its unit, such as "
     "14d"),
    ('common: &c\n  include: ["x"]\nname: a\nrepositories:\n  <<: *c\n'
     'delete: [{untagged: true}]\n', "5:3: policy 'a': repositories: merge keys (<<) are not "
     "supported"),
    ('name: a\nrepositories:\n\tinclude: ["x"]\ndelete: [{untagged: true}]\n',
     "3:1: invalid YAML: a tab character; YAML indents with spaces only"),
    ('name: a\nrepositories:\n  include:\n  - x\n   - y\ndelete: [{untagged: true}]\n',
     "4:5: policy 'a': repositories.include[0]: an unquoted value that continues on line 5"),
    ('name: a\nrepositories:\n  include:\n  - x\n - y\ndelete: [{untagged: true}]\n',
     "5:2: invalid YAML: a list item ('- ') not in line with the items or keys above it"),
    ('name: a\nrepositories: {include: ["x"]}\nkeep: [{newest: -1}]\n'
     'delete: [{untagged: true}]\n', "3:17: policy 'a': keep rule 1: newest must be at least 0, "
     "not -1"),
])
def test_policy_messages_say_what_to_do(tmp_path: Path, policy: str, expected: str):
    path = tmp_path / "p.yaml"
    path.write_text(policy)
    result = retention("validate", str(path))
    assert result.returncode == 2
    no_traceback(result)
    assert f"{path}:{expected}" in result.stderr, result.stderr
    assert "quote it" not in result.stderr


def test_trailing_document_marker_and_newest_zero(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text('name: a\nrepositories: {include: ["x"]}\nkeep: [{newest: 0}]\n'
                    'delete: [{untagged: true}]\n---\n')
    result = retention("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}:1:1: warning: policy a: keep rule 1: newest: 0 keeps nothing" in \
        result.stderr


def test_config_messages_say_what_to_do(tmp_path: Path):
    (tmp_path / "p.yaml").write_text('name: a\nrepositories: {include: ["x"]}\n'
                                     'delete: [{untagged: true}]\n')
    config = tmp_path / "r.yaml"
    config.write_text('registries:\n  main: {url: "http://x:1", username: u, '
                      'password_file: nope}\npolicies: p.yaml\nlisten: 9192\nmode: false\n')
    result = retention("validate", "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{config}:4:9: listen must be host:port, like \"0.0.0.0:9090\", not 9192" in lines
    assert f"{config}:5:7: mode must be dry-run or enforce, not false" in lines
    # The unreadable password file once, where it is written; not also as "missing".
    assert sum("password_file" in line for line in lines) == 1, lines
    assert not any("quote it" in line for line in lines)


def test_validate_json_for_ci_annotations(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text('name: a\nrepositories: {include: ["x"]}\ndelete: [{tags: [1.10]}]\n')
    result = retention("validate", str(path), "-o", "json")
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    (problem,) = doc["problems"]
    assert problem["severity"] == "error" and problem["file"] == str(path)
    assert (problem["line"], problem["column"]) == (3, 18)
    path.write_text('name: a\nrepositories: {include: ["x"]}\ndelete: [{untagged: true}]\n')
    ok = json.loads(retention("validate", str(path), "-o", "json").stdout)
    assert ok == {"valid": True, "policies": 1, "problems": []}


def test_plan_json_gives_created_and_time_source(tmp_path: Path, registry, pusher: Pusher):
    pusher.image("ci/app", "pr-1", created=OLD)
    config = setup_dir(tmp_path, registry.url)
    doc = json.loads(retention("plan", "-c", str(config), "-o", "json").stdout)
    (action,) = doc["actions"]
    assert action["created"] == OLD and action["time_source"] == "created"


def test_inventory_says_what_untagged_manifests_are(tmp_path: Path, registry, pusher: Pusher):
    amd = pusher.image("app", None, created=OLD, arch="amd64")
    arm = pusher.image("app", None, created=OLD, arch="arm64")
    index = pusher.index("app", "v1", [amd, arm])
    pusher.image("app", "old", created=OLD, layers=(b"orphan",))
    orphan = pusher.image("app", None, created=OLD, layers=(b"orphan2",))
    config = setup_dir(tmp_path, registry.url)
    # The orphan is found through the state: a first run remembers it by its tag.
    pusher.tag("app", "tmp", orphan)
    retention("plan", "-c", str(config))
    pusher.image("app", "tmp", created=OLD, layers=(b"moved",))
    text = retention("inventory", "-c", str(config)).stdout
    assert f"{amd.digest[:19]}  <untagged: child of {index.digest[:19]}>" in text, text
    assert f"{orphan.digest[:19]}  <untagged: orphan>" in text, text


def test_closed_pipe_ends_quietly_with_the_commands_code(tmp_path: Path, registry,
                                                         pusher: Pusher):
    for i in range(30):
        pusher.image(f"ci/app-{i}", "v1", created=OLD, layers=(f"{i}".encode(),))
    config = setup_dir(tmp_path, registry.url)
    result = subprocess.run(["bash", "-c", f'set -o pipefail; "{RETENTION}" inventory -c '
                             f'"{config}" | head -1'], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("registry main")
