"""`retention diff` on a real registry's inventory, checked against two real plans of that
inventory: the changes are the difference of their deletion sets, computed here
independently, and the head side's totals are what `plan` reports (SPEC "Reviewed
deletions: plan, apply, diff")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.pusher import Pusher
from tests.test_run_e2e import cli, write_config

OLD = "2024-01-01T00:00:00Z"

BASE = """
name: ci
repositories: {include: ["**"], exclude: ["legacy/**"]}
keep: [{tags: ["v*"]}]
delete: [{tags: ["pr-*"], older_than: 1d}]
---
name: legacy
repositories: {include: ["legacy/**"]}
delete: [{tags: ["*"]}]
"""

# ci: pr-1* is kept now, feature-* goes too; legacy is removed; orphans is added.
HEAD = """
name: ci
repositories: {include: ["**"], exclude: ["legacy/**"]}
keep: [{tags: ["v*"]}, {tags: ["pr-1*"]}]
delete: [{tags: ["pr-*", "feature-*"], older_than: 1d}]
---
name: orphans
repositories: {include: ["**"], exclude: ["legacy/**"]}
delete: [{untagged: true}]
"""


@pytest.fixture
def seeded(tmp_path, registry, pusher: Pusher):
    """A registry, the head config (HEAD in policies/), BASE in base/policies/, a config
    planning BASE, and the inventory recorded from the registry."""
    pusher.image("app", "pr-10", created=OLD, layers=(b"pr-10",))        # no longer deleted
    pusher.image("app", "pr-2", created=OLD, layers=(b"pr-2",))          # deleted by both
    pusher.image("app", "feature-x", created=OLD, layers=(b"feat",))     # newly deleted
    pusher.image("app", "v1", created=OLD, layers=(b"v1",))              # kept by both
    pinned = pusher.image("app", "pr-15", created=OLD, layers=(b"pin",))  # pinned, then kept
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd",))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm",), arch="arm64")
    pusher.index("multi", "feature-m", [amd, arm])                       # newly, with children
    pusher.image("legacy/tool", "t1", created=OLD, layers=(b"t1",))      # removed policy
    pusher.image("app", "latest", created=OLD, layers=(b"first latest",))
    (tmp_path / "pinned.txt").write_text(f"app@{pinned.digest}\n")
    config = write_config(tmp_path, registry.url, policy=HEAD, extra="allowlist: pinned.txt")
    (tmp_path / "base" / "policies").mkdir(parents=True)
    (tmp_path / "base" / "policies" / "p.yaml").write_text(BASE)
    base_config = tmp_path / "base.yaml"
    base_config.write_text(config.read_text().replace("policies: policies",
                                                      "policies: base/policies"))
    code, _, _ = cli("inventory", "-c", str(config), "-o", "json")  # app:latest is seen
    assert code == 0
    pusher.image("app", "latest", created=OLD, layers=(b"second latest",))  # an orphan now
    code, inventory, _ = cli("inventory", "-c", str(config), "-o", "json")
    assert code == 0
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    return config, base_config, path


def planned(config: Path, inventory: Path) -> dict:
    code, doc, err = cli("plan", "-c", str(config), "--inventory", str(inventory), "-o",
                         "json")
    assert code == 0, err
    return doc


def deletions(doc: dict) -> dict[tuple[str, str, str, str], int]:
    return {(a["policy"], a["registry"], a["repository"], a["digest"]): a["bytes"]
            for a in doc["actions"] if a["status"] == "planned"}


def changed(doc: dict, change: str) -> set[tuple[str, str, str, str]]:
    return {(c["policy"], c["registry"], c["repository"], c["digest"])
            for c in doc["changes"] if c["change"] == change}


def test_diff_is_the_difference_of_two_real_plans(tmp_path, seeded):
    config, base_config, inventory = seeded
    head = deletions(planned(config, inventory))
    base = deletions(planned(base_config, inventory))
    newly = set(head) - set(base)
    gone = set(base) - set(head)
    # The fixture makes each kind of change: not a vacuous comparison.
    assert {k[0] for k in newly} == {"ci", "orphans"} and {k[0] for k in gone} == {"ci",
                                                                                  "legacy"}

    code, doc, err = cli("diff", "-c", str(config), "--base", str(tmp_path / "base" /
                         "policies"), "--inventory", str(inventory), "-o", "json")
    assert code == 0, err
    assert changed(doc, "newly-deleted") == newly
    assert changed(doc, "no-longer-deleted") == gone
    summary = doc["summary"]
    assert summary["added_deletions"] == len(newly)
    assert summary["added_bytes"] == sum(head[k] for k in newly) > 0
    assert summary["removed_deletions"] == len(gone)
    assert summary["removed_bytes"] == sum(base[k] for k in gone) > 0
    for c in doc["changes"]:
        key = (c["policy"], c["registry"], c["repository"], c["digest"])
        if c["change"] == "newly-deleted":
            assert c["bytes"] == head[key] and c["head"]["decision"] == "delete"
        elif c["change"] == "no-longer-deleted":
            assert c["bytes"] == base[key] and c["base"]["decision"] == "delete"
    # Both sides' reasons: the removed policy says so; pr-10 is kept by the new keep rule.
    legacy = next(c for c in doc["changes"] if c["policy"] == "legacy")
    assert legacy["head"] == {"decision": "none",
                              "reason": "the policy does not exist on this side"}
    pr10 = next(c for c in doc["changes"] if c["tags"] == ["pr-10"])
    assert pr10["base"]["reason"] == "delete rule 1: tags pr-*, older than 1d"
    assert pr10["head"]["decision"] == "keep" and "pr-1*" in pr10["head"]["reason"]
    # The pinned pr-15: protected (pinned) before, kept by a keep rule now.
    pinned = [c for c in doc["changes"] if c["change"] == "protected-differently"]
    assert [c["tags"] for c in pinned] == [["pr-15"]]
    assert pinned[0]["base"]["decision"] == "protected"
    assert pinned[0]["base"]["reason"].startswith("pinned:")
    assert pinned[0]["head"]["decision"] == "keep"


def test_the_head_totals_are_what_plan_reports(tmp_path, seeded):
    config, base_config, inventory = seeded
    code, doc, _ = cli("diff", "-c", str(config), "--base", str(tmp_path / "base"),
                       "--inventory", str(inventory), "-o", "json")
    assert code == 0
    for side, cfg in (("head", config), ("base", base_config)):
        plan = planned(cfg, inventory)
        assert doc["summary"][side] == {
            "deletions": sum(1 for a in plan["actions"] if a["status"] == "planned"),
            "bytes": plan["summary"]["reclaimable_bytes"]}
    assert doc["summary"]["head"]["deletions"] > 0


def test_a_live_diff_is_the_diff_of_the_recorded_inventory(tmp_path, seeded):
    config, _, inventory = seeded
    base = str(tmp_path / "base" / "policies")
    code, offline, _ = cli("diff", "-c", str(config), "--base", base, "--inventory",
                           str(inventory), "-o", "json")
    code, live, err = cli("diff", "-c", str(config), "--base", base, "-o", "json")
    assert code == 0, err
    assert live["changes"] == offline["changes"] and live["summary"] == offline["summary"]


def test_the_table_and_the_markdown(tmp_path, seeded, monkeypatch):
    config, _, inventory = seeded
    args = ("diff", "-c", str(config), "--base", str(tmp_path / "base" / "policies"),
            "--inventory", str(inventory))
    code, doc, _ = cli(*args, "-o", "json")
    n = len(doc["changes"])
    added, removed = doc["summary"]["added_deletions"], doc["summary"]["removed_deletions"]
    code, table, _ = cli(*args)
    assert code == 0
    assert re.search(rf"^total: \+{added} deletions, \+[\d.]+ (B|KiB); -{removed} "
                     rf"deletions, -[\d.]+ (B|KiB); 1 protected differently$", table, re.M)

    monkeypatch.setattr("retention.diff.MARKDOWN_ROWS", 3)
    code, markdown, _ = cli(*args, "-o", "markdown")
    assert code == 0
    head, _, rest = markdown.partition("<details>")
    # A short summary first: the totals, one line per policy, no manifest.
    assert f"### retention: +{added} deletions" in head
    assert "| `legacy` | +0 (0 B) | -1 " in head
    assert "sha256" not in head and "feature-x" not in head
    # Patterns are not read as emphasis, tags not as HTML.
    assert "tags pr-\\*, feature-\\*, older than 1d" in rest and "&lt;none&gt;" in rest
    # Then the manifests, folded, capped, with a count of the rest.
    assert rest.startswith(f"<summary>{n} manifest(s) whose decision changes</summary>")
    rows = [line for line in rest.splitlines() if line.startswith("| **")
            or line.startswith("| protected")]
    assert len(rows) == 3
    assert f"… and {n - 3} more" in rest and rest.rstrip().endswith("</details>")


def test_no_change_says_so(tmp_path, seeded):
    config, _, inventory = seeded
    code, markdown, _ = cli("diff", "-c", str(config), "--base", str(tmp_path / "policies"),
                            "--inventory", str(inventory), "-o", "markdown")
    assert code == 0
    assert "no manifest's decision changes" in markdown and "<details>" not in markdown


def test_invalid_input_on_either_side_is_exit_2(tmp_path, seeded):
    config, _, inventory = seeded
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.yaml").write_text("name: ci\nrepositories: {include: []}\ndelete: [{}]\n"
                                "surprise: 1\n")
    code, out, err = cli("diff", "-c", str(config), "--base", str(bad), "--inventory",
                         str(inventory))
    assert code == 2 and out == ""
    assert re.search(rf"^{re.escape(str(bad / 'p.yaml'))}:\d+:\d+: ", err, re.M), err
    code, out, err = cli("diff", "-c", str(config), "--base", str(tmp_path / "missing"),
                         "--inventory", str(inventory))
    assert code == 2 and "Traceback" not in err
    (tmp_path / "policies" / "p.yaml").write_text(HEAD + "\nfoo: bar\n")
    code, out, err = cli("diff", "-c", str(config), "--base", str(bad), "--inventory",
                         str(inventory))
    assert code == 2 and "policies/p.yaml" in err
