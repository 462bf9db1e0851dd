"""Logs: structured events, and no secret ever reaches them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import structlog

from retention import logs
from retention.cli import main
from retention.secrets import Secret
from tests.conftest import PASSWORD, USER
from tests.pusher import Pusher


def test_redactor_removes_secrets_everywhere():
    stream = io.StringIO()
    logs.configure(fmt="json", stream=stream, secrets=[Secret("topsecret-value")])
    log = structlog.get_logger("t")
    log.error("request failed", error="401 for topsecret-value", password="pw-field-value",
              headers={"Authorization": "Basic cm9ib3Q6c2VjcmV0"},
              detail="Authorization: Bearer eyJhbGciOi.abc.def", secret=Secret("x" * 8))
    line = stream.getvalue()
    event = json.loads(line)
    assert "topsecret-value" not in line
    assert "pw-field-value" not in line
    assert "cm9ib3Q6c2VjcmV0" not in line
    assert "eyJhbGciOi" not in line
    assert event["event"] == "request failed"
    assert event["level"] == "error"


def test_secret_does_not_print():
    s = Secret("hunter2")
    assert "hunter2" not in f"{s} {s!r} {[s]}"
    assert s.reveal() == "hunter2"


def test_no_credential_in_logs_of_a_real_run(tmp_path: Path, basic_registry):
    Pusher(basic_registry.url, auth=(USER, PASSWORD)).image("app", "pr-1",
                                                            created="2024-01-01T00:00:00Z")
    (tmp_path / "pw").write_text(PASSWORD)
    (tmp_path / "p.yaml").write_text('name: p\nrepositories: {include: ["**"]}\n'
                                     'delete: [{tags: ["pr-*"]}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"""
registries:
  main: {{url: "{basic_registry.url}", username: {USER}, password_file: pw}}
policies: p.yaml
mode: enforce
state_dir: state
""")
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "--config", str(config), "--output", "json"], stdout=out,
                stderr=err) == 0
    everything = out.getvalue() + err.getvalue()
    assert json.loads(out.getvalue())["summary"]["deleted"] == 1
    assert '"event": "manifest deleted"' in err.getvalue()  # the audit event is there...
    assert PASSWORD not in everything  # ...and the password nowhere, nor its encodings
    import base64

    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in everything
