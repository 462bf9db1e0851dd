"""Reviewed deletions on a real registry: `plan --save` then `apply` deletes only what the
saved plan and a fresh plan both delete, and refuses a stale, edited or foreign file
(SPEC "Reviewed deletions: plan, apply, diff")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.planner import only_actions
from retention.reviewed import config_digest
from retention.runs import run_pass
from retention.setup import load_setup
from retention.state import State
from retention.statelock import state_lock
from tests.pusher import Pusher
from tests.test_run_e2e import cli, deleted_digests, write_config

OLD = "2024-01-01T00:00:00Z"
PR = ('name: p\nrepositories: {include: ["**"]}\n'
      'keep: [{tags: ["v*"]}]\n'
      'delete: [{tags: ["pr-*"]}, {untagged: true}]\n')


def save(config: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    saved = tmp_path / "plan.json"
    code, doc, err = cli("plan", "-c", str(config), "--save", str(saved), "-o", "json",
                         *extra)
    assert code == 0, err
    written = json.loads(saved.read_text())
    # The file is the plan as printed, plus its `saved` block.
    assert {k: v for k, v in written.items() if k != "saved"} == doc
    return saved, written


def apply(config: Path, saved: Path, *extra: str) -> tuple[int, dict | str, str]:
    return cli("apply", str(saved), "-c", str(config), "-o", "json", *extra)


def by_digest(doc: dict) -> dict[str, dict]:
    return {a["digest"]: a for a in doc["actions"]}


def test_apply_deletes_exactly_the_saved_plan(tmp_path, registry, pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    two = pusher.image("app", "pr-2", created=OLD, layers=(b"two",))
    release = pusher.image("app", "v1", created=OLD, layers=(b"v1",))
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, doc = save(config, tmp_path)
    assert doc["saved"]["config_digest"] == config_digest(load_setup(config).config).digest
    assert abs(datetime.fromisoformat(doc["saved"]["at"].replace("Z", "+00:00"))
               - datetime.now(UTC)) < timedelta(minutes=1)
    assert {a["digest"] for a in doc["actions"]} == {one.digest, two.digest}
    # Saving deleted nothing.
    assert pusher.exists("app", one.digest) and pusher.exists("app", two.digest)

    code, done, _ = apply(config, saved)
    assert code == 0, done
    assert done["mode"] == "enforce"
    assert deleted_digests(done) == {one.digest, two.digest}
    assert done["summary"]["not_reviewed"] == 0 and done["summary"]["deleted"] == 2
    assert not pusher.exists("app", one.digest) and not pusher.exists("app", two.digest)
    assert pusher.exists("app", release.digest)


def test_apply_in_dry_run_mode_deletes_nothing(tmp_path, registry, pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR, mode="dry-run")
    saved, _ = save(config, tmp_path)
    code, done, _ = apply(config, saved)
    assert code == 0 and done["mode"] == "dry-run"
    assert by_digest(done)[one.digest]["status"] == "planned"
    assert pusher.exists("app", one.digest)
    code, table, _ = cli("apply", str(saved), "-c", str(config))
    assert code == 0 and "1 to delete" in table


@pytest.mark.parametrize("moved_tag", ["v2", "pr-1b"])
def test_a_tag_moved_onto_a_saved_deletion_keeps_it(tmp_path, registry, pusher: Pusher,
                                                     moved_tag):
    """v2: today's policies keep it (no-longer planned, its tags moved: `changed`). pr-1b:
    today's policies would still delete it, but with a tag the reviewer never saw go."""
    one = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    two = pusher.image("app", "pr-2", created=OLD, layers=(b"two",))
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, _ = save(config, tmp_path)
    pusher.tag("app", moved_tag, one)

    code, done, _ = apply(config, saved)
    assert code == 0, done
    action = by_digest(done)[one.digest]
    assert action["status"] == "skipped"
    assert action["reason"].startswith("changed: tags are now ['pr-1', "), action
    assert "the reviewed plan saw ['pr-1']" in action["reason"]
    assert (action["created"], action["time_source"]) == ("2024-01-01T00:00:00Z", "created")
    assert deleted_digests(done) == {two.digest}
    assert pusher.exists("app", moved_tag) and pusher.exists("app", "pr-1")


def test_a_build_pushed_after_the_save_is_not_reviewed(tmp_path, registry, pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD, layers=(b"one",))
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, _ = save(config, tmp_path)
    late = pusher.image("app", "pr-3", created=OLD, layers=(b"late",))
    # Today's policies would delete it: `run` would.
    code, planned, _ = cli("plan", "-c", str(config), "-o", "json")
    assert late.digest in by_digest(planned)

    code, done, _ = apply(config, saved)
    assert code == 0, done  # not reviewed is not a failure
    assert deleted_digests(done) == {one.digest}
    assert done["summary"]["not_reviewed"] == 1
    assert [a["digest"] for a in done["not_reviewed"]] == [late.digest]
    assert late.digest not in by_digest(done)
    assert pusher.exists("app", late.digest)
    code, table, _ = cli("apply", str(saved), "-c", str(config))
    assert "not reviewed: 1 deletion(s)" in table


def test_a_saved_deletion_no_longer_planned_is_skipped(tmp_path, registry, pusher: Pusher):
    """An orphan saved for deletion becomes the child of a release pushed since: today's
    plan protects it; its tags did not move."""
    orphan = pusher.image("app", "latest", created=OLD, layers=(b"orphan",))
    gone = pusher.image("app", "pr-9", created=OLD, layers=(b"nine",))
    config = write_config(tmp_path, registry.url, policy=PR)
    code, _, _ = cli("run", "-c", str(config), "--dry-run")  # app:latest is seen
    pusher.image("app", "latest", created=OLD, layers=(b"re-pushed",))  # an orphan now
    saved, doc = save(config, tmp_path)
    assert {a["digest"] for a in doc["actions"]} == {orphan.digest, gone.digest}
    pusher.index("app", "v2", [orphan])
    assert pusher.client.delete(f"/v2/app/manifests/{gone.digest}").status_code == 202

    code, done, _ = apply(config, saved)
    assert code == 0, done
    assert deleted_digests(done) == set()
    reasons = {d: a["reason"] for d, a in by_digest(done).items()}
    assert reasons[orphan.digest] == "no-longer-planned: today's policies do not delete it"
    assert reasons[gone.digest] == "no-longer-planned: it is no longer in the registry"
    assert {a["status"] for a in done["actions"]} == {"skipped"}
    assert pusher.exists("app", orphan.digest)


def test_a_child_in_both_plans_stays_when_its_index_is_not_applied(tmp_path, registry,
                                                                   pusher: Pusher):
    """The saved plan deletes an index and its children; since, a tag the reviewer did
    not see was added to the index: the index is `changed`, and its children, though in
    both plans, stay with it."""
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd",))
    arm = pusher.image("multi", None, created=OLD, layers=(b"arm",), arch="arm64")
    index = pusher.index("multi", "pr-7", [amd, arm])
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, doc = save(config, tmp_path)
    assert {a["digest"] for a in doc["actions"]} == {index.digest, amd.digest, arm.digest}
    pusher.tag("multi", "pr-7b", index)

    code, done, _ = apply(config, saved)
    assert code == 0, done
    status = by_digest(done)
    assert status[index.digest]["reason"].startswith("changed")
    for child in (amd, arm):
        assert status[child.digest]["status"] == "skipped"
        assert status[child.digest]["reason"].startswith(
            f"sha256:{index.digest[7:19]}, which references it, stays (changed")
        assert pusher.exists("multi", child.digest)
    assert deleted_digests(done) == set()

    # The same in a dry run: nothing is shown as to be deleted.
    code, dry, _ = apply(config, saved, "--dry-run")
    assert code == 0 and {a["status"] for a in dry["actions"]} == {"skipped"}


def test_a_new_index_pushed_after_the_save_holds_a_reviewed_child(tmp_path, registry,
                                                                  pusher: Pusher):
    """A second index pushed since, which today's policies delete too, lists a child of a
    reviewed index: the child is in both plans but one of its parents is not reviewed."""
    child = pusher.image("multi", None, created=OLD, layers=(b"shared",))
    first = pusher.index("multi", "pr-1", [child])
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, _ = save(config, tmp_path)
    second = pusher.index("multi", "pr-2", [child], annotations={"build": "2"})

    code, done, _ = apply(config, saved)
    assert code == 0, done
    assert deleted_digests(done) == {first.digest}
    assert [a["digest"] for a in done["not_reviewed"]] == [second.digest]
    reason = by_digest(done)[child.digest]["reason"]
    assert reason == f"sha256:{second.digest[7:19]}, which references it, stays (not in " \
                     "the reviewed plan)"
    assert pusher.exists("multi", child.digest) and pusher.exists("multi", second.digest)


def test_the_executor_alone_keeps_a_child_whose_parent_is_filtered_out(tmp_path, registry,
                                                                       pusher: Pusher):
    """The executor's own gate, under a filter that (wrongly) keeps a child and drops its
    index: the child is not deleted, because the index stays."""
    amd = pusher.image("multi", None, created=OLD, layers=(b"amd",))
    index = pusher.index("multi", "pr-1", [amd])
    config = write_config(tmp_path, registry.url, policy=PR)
    setup = load_setup(config)

    def without_index(plan, inventories):
        return only_actions(plan, lambda a: a.digest != index.digest, inventories)

    async def go():
        state = State.memory()
        try:
            return await run_pass(setup, setup.policies, dry_run=False, state=state,
                                  select=without_index)
        finally:
            state.close()

    result = asyncio.run(go())
    outcome = result.report.outcomes[("main", "multi", amd.digest)]
    assert outcome.status == "skipped"
    assert outcome.reason.startswith(f"sha256:{index.digest[7:19]}, which references it, "
                                     "stays (not deleted by this run)")
    assert pusher.exists("multi", amd.digest) and pusher.exists("multi", index.digest)


def _edit_policy(tmp_path: Path) -> None:
    path = tmp_path / "policies" / "p.yaml"
    path.write_text(path.read_text() + "# reviewed? no\n")


def _add_policy(tmp_path: Path) -> None:
    (tmp_path / "policies" / "more.yaml").write_text(
        'name: more\nrepositories: {include: ["other/**"]}\ndelete: [{untagged: true}]\n')


def _edit_config(tmp_path: Path) -> None:
    path = tmp_path / "retention.yaml"
    path.write_text(path.read_text().replace("max_deletions: 100", "max_deletions: 101"))


def _edit_allowlist(tmp_path: Path) -> None:
    (tmp_path / "pinned.txt").write_text("sha256:" + "ab" * 32 + "\n")


@pytest.mark.parametrize(("edit", "named"), [
    (_edit_policy, "policies/p.yaml (edited)"),
    (_add_policy, "policies/more.yaml (added)"),
    (_edit_config, "retention.yaml (edited)"),
    (_edit_allowlist, "pinned.txt (edited)"),
])
def test_a_file_edited_after_the_save_refuses_the_plan(tmp_path, registry, pusher: Pusher,
                                                       edit, named):
    one = pusher.image("app", "pr-1", created=OLD)
    (tmp_path / "pinned.txt").write_text("# nothing pinned\n")
    config = write_config(tmp_path, registry.url, policy=PR,
                          extra="allowlist: pinned.txt\nmax_deletions: 100")
    saved, _ = save(config, tmp_path)
    edit(tmp_path)
    code, out, err = apply(config, saved)
    assert code == 2, (out, err)
    assert "made with other config, policy or allowlist files" in err and named in err
    assert out == ""
    assert pusher.exists("app", one.digest)


@pytest.mark.parametrize("how", ["old", "max-age", "future"])
def test_a_stale_file_is_refused(tmp_path, registry, pusher: Pusher, how):
    one = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, doc = save(config, tmp_path)
    extra: tuple[str, ...] = ()
    if how == "max-age":
        extra = ("--max-age", "0s")
    else:
        shift = timedelta(hours=-25) if how == "old" else timedelta(hours=2)
        doc["saved"]["at"] = (datetime.now(UTC) + shift).strftime("%Y-%m-%dT%H:%M:%SZ")
        saved.write_text(json.dumps(doc))
    code, out, err = apply(config, saved, *extra)
    assert code == 2, (out, err)
    assert ("more than --max-age" in err) if how != "future" else ("in the future" in err)
    assert pusher.exists("app", one.digest)
    # With a max age that covers it, the same (unaltered) file is applied.
    if how == "old":
        code, done, _ = apply(config, saved, "--max-age", "2d")
        assert code == 0 and deleted_digests(done) == {one.digest}


def test_what_is_not_a_saved_plan_is_refused(tmp_path, registry, pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR)
    printed = tmp_path / "printed.json"
    code, doc, _ = cli("plan", "-c", str(config), "-o", "json")
    printed.write_text(json.dumps(doc))  # the plan as printed: no `saved` block
    inventory = tmp_path / "inventory.json"
    code, inv, _ = cli("inventory", "-c", str(config), "-o", "json")
    inventory.write_text(json.dumps(inv))
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"actions": [\n  {"digest": }\n]}')
    for path, message in ((printed, "a plan without its `saved` block"),
                          (inventory, "no plan document"),
                          (garbage, f"{garbage}:2:14: not a saved plan: not JSON"),
                          (tmp_path / "missing.json", "cannot read the saved plan")):
        code, out, err = apply(config, path)
        assert code == 2, (path, out, err)
        assert message in err, err
        assert "Traceback" not in err
    assert pusher.exists("app", one.digest)


def test_apply_holds_the_state_lock(tmp_path, registry, pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, _ = save(config, tmp_path)
    with state_lock(tmp_path / "state", command="serve"):
        code, _, err = apply(config, saved)
    assert code == 1 and "locked by pid" in err
    assert pusher.exists("app", one.digest)


def test_config_digest_covers_every_file_in_a_defined_order(tmp_path):
    (tmp_path / "policies" / "b").mkdir(parents=True)
    (tmp_path / "policies" / "a.yaml").write_text(PR)
    (tmp_path / "policies" / "b" / "c.yaml").write_text(PR.replace("name: p", "name: q"))
    (tmp_path / "pinned.txt").write_text("\n")
    config = tmp_path / "retention.yaml"
    config.write_text("registries: {main: {url: 'http://127.0.0.1:1'}}\npolicies: policies\n"
                      "allowlist: pinned.txt\n")
    first = config_digest(load_setup(config).config)
    assert list(first.files) == ["retention.yaml", "policies/a.yaml", "policies/b/c.yaml",
                                 "pinned.txt"]
    # The same files elsewhere (another checkout) give the same digest.
    other = tmp_path / "elsewhere"
    other.mkdir()
    for name in ("retention.yaml", "pinned.txt"):
        (other / name).write_bytes((tmp_path / name).read_bytes())
    (other / "policies" / "b").mkdir(parents=True)
    for name in ("a.yaml", "b/c.yaml"):
        (other / "policies" / name).write_bytes((tmp_path / "policies" / name).read_bytes())
    assert config_digest(load_setup(other / "retention.yaml").config) == first
    # Bytes moved from the end of one file to the start of the next change it: the
    # concatenation is the same, the lengths are not.
    (other / "policies" / "a.yaml").write_text(PR + "#\n")
    moved = config_digest(load_setup(other / "retention.yaml").config)
    (other / "policies" / "a.yaml").write_text(PR)
    (other / "policies" / "b" / "c.yaml").write_text("#\n" + PR.replace("name: p", "name: q"))
    assert config_digest(load_setup(other / "retention.yaml").config).digest not in (
        moved.digest, first.digest)


def test_a_plan_saved_from_an_inventory_is_as_old_as_the_inventory(tmp_path, registry,
                                                                    pusher: Pusher):
    one = pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR)
    code, inventory, _ = cli("inventory", "-c", str(config), "-o", "json")
    recorded = inventory["inventories"][0]["collected_at"]
    inventory["inventories"][0]["collected_at"] = "2020-01-01T00:00:00.000000Z"
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    saved, doc = save(config, tmp_path, "--inventory", str(path))
    assert recorded != doc["saved"]["at"] == "2020-01-01T00:00:00Z"
    code, _, err = apply(config, saved)
    assert code == 2 and "more than --max-age 1d" in err
    assert pusher.exists("app", one.digest)


def test_a_bad_max_age_is_a_usage_error(tmp_path, registry, pusher: Pusher):
    pusher.image("app", "pr-1", created=OLD)
    config = write_config(tmp_path, registry.url, policy=PR)
    saved, _ = save(config, tmp_path)
    code, _, err = apply(config, saved, "--max-age", "a day")
    assert code == 2 and "--max-age: invalid duration 'a day'" in err
