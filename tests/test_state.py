"""The embedded state: what it remembers, and that losing it means deleting less."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.cli import main
from retention.inventory import Blob, Inventory, Manifest, Repository
from retention.scanner import ManifestFacts
from retention.state import State
from tests.pusher import Pusher

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def inventory(*manifests: Manifest, error: str | None = None) -> Inventory:
    return Inventory("main", "h", (Repository("app", manifests, error),), T0)


def test_untagged_since_is_remembered_and_cleared(tmp_path: Path):
    state = State.open(tmp_path)
    m_tagged = Manifest("sha256:a", "x", 1, tags=("v1",))
    m_untagged = Manifest("sha256:a", "x", 1)
    first = state.observe(inventory(m_untagged), T0)
    assert first.repositories[0].manifests[0].untagged_since == T0
    later = state.observe(inventory(m_untagged), T0 + timedelta(days=2))
    assert later.repositories[0].manifests[0].untagged_since == T0  # not reset
    state.observe(inventory(m_tagged), T0 + timedelta(days=3))  # tagged again
    again = state.observe(inventory(m_untagged), T0 + timedelta(days=4))
    assert again.repositories[0].manifests[0].untagged_since == T0 + timedelta(days=4)
    state.close()
    reopened = State.open(tmp_path)
    assert reopened.known_digests("main", "app") == ["sha256:a"]


def test_failed_repository_leaves_its_record_alone(tmp_path: Path):
    state = State.open(tmp_path)
    state.observe(inventory(Manifest("sha256:a", "x", 1)), T0)
    state.observe(inventory(error="boom"), T0 + timedelta(days=1))
    assert state.known_digests("main", "app") == ["sha256:a"]


def test_facts_round_trip(tmp_path: Path):
    state = State.open(tmp_path)
    facts = ManifestFacts("sha256:a", "application/vnd.oci.image.index.v1+json", 10,
                          children=("sha256:b",), subject="sha256:c", created=T0,
                          config_read=False)
    state.put_facts(facts)
    assert state.get_facts("sha256:a") == facts  # before it is written
    state.close()  # facts are written in batches, at the latest when the state closes
    assert State.open(tmp_path).get_facts("sha256:a") == facts


def test_facts_with_a_size_beyond_64_bits_are_read_again_not_miscounted(tmp_path: Path):
    """Written by json (orjson cannot), read back by orjson as a float: not cached, so the
    manifest is read again, never counted with a size that is not its own."""
    state = State.open(tmp_path)
    huge = ManifestFacts("sha256:a", "application/vnd.oci.image.manifest.v1+json", 10,
                         blobs=(Blob("sha256:b", 2**64),))
    fine = ManifestFacts("sha256:c", "application/vnd.oci.image.manifest.v1+json", 10,
                         blobs=(Blob("sha256:d", 2**63 - 1),))
    state.put_facts(huge)
    state.put_facts(fine)
    assert state.get_facts("sha256:a") is None
    assert state.get_facts("sha256:c") == fine
    state.close()

def test_facts_are_written_in_batches_before_the_state_closes(tmp_path: Path):
    """A long scan does not hold every fact in memory until it ends: each FACTS_BATCH are
    written in one transaction, readable by another connection (a crash loses at most one
    batch of cache, which the next run reads again)."""
    from retention.state import FACTS_BATCH

    state = State.open(tmp_path)
    for i in range(FACTS_BATCH + 1):
        state.put_facts(ManifestFacts(f"sha256:{i:04x}", "x", i))
    other = State.open(tmp_path)
    assert other.get_facts("sha256:0000") == ManifestFacts("sha256:0000", "x", 0)
    assert other.get_facts(f"sha256:{FACTS_BATCH:04x}") is None  # still pending
    assert state.get_facts(f"sha256:{FACTS_BATCH:04x}") is not None


def _orphan_after_second_run(tmp_path: Path, registry, pusher: Pusher, repo: str, *,
                             corrupt: bool) -> tuple[dict, str]:
    """Pushes repo:latest, runs once (the state remembers latest -> first), re-pushes
    latest (first becomes an orphan distribution cannot list), optionally corrupts the
    database, runs again. ``untagged_grace: 0s``: only the state decides the orphan's fate."""
    first = pusher.image(repo, "latest", created="2024-01-01T00:00:00Z", layers=(repo.encode(),))
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "p.yaml").write_text(f'name: p\nrepositories: {{include: ["{repo}"]}}\n'
                                     'delete: [{untagged: true}]\n')
    config = tmp_path / "retention.yaml"
    config.write_text(f"registries:\n  main: {{url: '{registry.url}'}}\npolicies: p.yaml\n"
                      "state_dir: state\nmode: enforce\nuntagged_grace: 0s\n")

    def run(expected: int = 0) -> dict:
        out, err = io.StringIO(), io.StringIO()
        assert main(["run", "--config", str(config), "--output", "json"], stdout=out,
                    stderr=err) == expected, err.getvalue()
        return json.loads(out.getvalue()) | {"stderr": err.getvalue()}

    assert run()["actions"] == []  # remembers latest -> first
    pusher.image(repo, "latest", created="2024-02-01T00:00:00Z", layers=(b"2" + repo.encode(),))
    if corrupt:
        db = tmp_path / "state" / "retention.sqlite3"
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        db.write_bytes(b"this is not a database" * 100)
    # A run on an unusable state deletes nothing and fails (exit 1): never a success that
    # no alert sees while the registry fills (SPEC "Embedded state").
    return run(1 if corrupt else 0), first.digest


def test_corrupt_state_fails_the_run_and_deletes_less(tmp_path: Path, registry,
                                                             pusher: Pusher):
    healthy, healthy_orphan = _orphan_after_second_run(tmp_path / "healthy", registry, pusher,
                                                       "healthy", corrupt=False)
    # With its state, the run finds the orphan by its remembered digest and deletes it ...
    assert [a["digest"] for a in healthy["actions"]] == [healthy_orphan]
    assert healthy["actions"][0]["status"] == "deleted"
    assert not pusher.exists("healthy", healthy_orphan)
    assert "state unusable" not in healthy["stderr"]

    doc, orphan = _orphan_after_second_run(tmp_path / "corrupt", registry, pusher, "app",
                                           corrupt=True)
    assert "state unusable, running without it" in doc["stderr"]
    # ... without it, the same orphan is unknown: nothing is deleted, and the run says which
    # file to fix.
    assert doc["actions"] == []
    assert pusher.exists("app", orphan)
    db = tmp_path / "corrupt" / "state" / "retention.sqlite3"
    assert [e["message"] for e in doc["errors"]] == [
        f"the state database {db} is unusable (file is not a database): nothing is deleted "
        "until it is fixed or moved aside (a new one is then made)"]


def test_state_dir_that_is_a_file(tmp_path: Path):
    (tmp_path / "state").write_text("oops")
    state = State.open(tmp_path / "state")
    assert state.path is None  # in memory
    state.put_facts(ManifestFacts("sha256:a", "x", 1))
    assert state.get_facts("sha256:a") is not None


def test_journal_records_deletions(tmp_path: Path):
    state = State.open(tmp_path)
    state.observe(inventory(Manifest("sha256:a", "x", 1)), T0)
    state.record_deletion(at=T0, registry="main", repository="app", digest="sha256:a",
                          tags=["pr-1"], bytes=10, policy="p", reason="r", status="deleted")
    (entry,) = state.journal()
    assert entry["digest"] == "sha256:a" and json.loads(entry["tags"]) == ["pr-1"]
    assert state.known_digests("main", "app") == []  # deleted: no longer expected


def test_schema_version_mismatch_falls_back_to_memory(tmp_path: Path):
    import sqlite3

    import structlog

    state = State.open(tmp_path)
    state.observe(inventory(Manifest("sha256:a", "x", 1, tags=("v1",))), T0)
    state.close()
    db = sqlite3.connect(tmp_path / "retention.sqlite3")
    db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    db.commit()
    db.close()
    with structlog.testing.capture_logs() as logs:
        reopened = State.open(tmp_path)
    assert reopened.path is None  # a newer (or older) layout is not guessed at
    assert reopened.known_digests("main", "app") == []
    (event,) = [e for e in logs if e["event"] == "state unusable, running without it"]
    assert "schema version 999" in event["error"]


def _fail_inserts(state: State, table: str, when: str) -> None:
    """A real SQLite failure in the middle of a transaction (as a full disk would give)."""
    state._db.execute(f"CREATE TEMP TRIGGER fail BEFORE INSERT ON {table} WHEN {when} "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")


def test_observe_is_all_or_nothing(tmp_path: Path):
    import sqlite3

    import pytest

    state = State.open(tmp_path)
    two = Inventory("main", "h", (Repository("a", (Manifest("sha256:a", "x", 1, tags=("v1",)),)),
                                  Repository("b", (Manifest("sha256:b", "x", 1),))), T0)
    _fail_inserts(state, "manifests", "NEW.repository = 'b'")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        state.observe(two, T0)
    # Repository a's rows were rolled back with b's: no half-observed scan.
    assert state.known_digests("main", "a") == []
    state._db.execute("DROP TRIGGER fail")
    state.observe(two, T0)  # and the connection is usable again (no transaction left open)
    assert state.known_digests("main", "a") == ["sha256:a"]


def test_journal_begin_is_all_or_nothing(tmp_path: Path):
    import sqlite3

    import pytest

    state = State.open(tmp_path)
    _fail_inserts(state, "journal_bodies", "1")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        state.journal_begin(at=T0, registry="main", repository="app", digest="sha256:a",
                            tags=["pr-1"], policy="p", reason="r", media_type="x", body=b"{}")
    assert state.journal() == []  # no row without the body it promises


def test_journal_end_is_all_or_nothing(tmp_path: Path):
    import sqlite3

    import pytest

    state = State.open(tmp_path)
    state.observe(inventory(Manifest("sha256:a", "x", 1, tags=("pr-1",))), T0)
    entry = state.journal_begin(at=T0, registry="main", repository="app", digest="sha256:a",
                                tags=["pr-1"], policy="p", reason="r", media_type="x",
                                body=b"{}")
    state._db.execute("CREATE TEMP TRIGGER fail BEFORE DELETE ON manifests "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        state.journal_end(entry, status="deleted", bytes=10)
    # Not "deleted" in the journal while the manifest's rows say it is still there.
    assert [r["status"] for r in state.journal()] == ["deleting"]
    assert state.known_digests("main", "app") == ["sha256:a"]
    state._db.execute("DROP TRIGGER fail")
    state._db.execute("CREATE TEMP TRIGGER fail BEFORE DELETE ON journal "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        state.prune_journal(T0 + timedelta(days=1))
    assert len(state.journal()) == 1  # its body was not pruned without it


def _journaled(state: State, digest: str, *, repository: str, policy: str) -> None:
    entry = state.journal_begin(at=T0, registry="main", repository=repository, digest=digest,
                                tags=["pr-1"], policy=policy, reason="r", media_type="x",
                                body=b"{}")
    state.journal_end(entry, status="deleted", bytes=1)


def test_restore_selection_by_repository_and_policy_and_a_failed_restore(tmp_path: Path):
    state = State.open(tmp_path)
    _journaled(state, "sha256:a", repository="app", policy="p")
    _journaled(state, "sha256:b", repository="app", policy="q")
    _journaled(state, "sha256:c", repository="web", policy="p")
    assert state.deletions_to_restore() == []  # nothing asked for: nothing selected
    chosen = state.deletions_to_restore(repositories=[("main", "app")], policies=["p"])
    assert [e.digest for e in chosen] == ["sha256:a"]
    # A restore is held from before its push, and one that failed stays held (what it
    # pushed, or may have pushed with its answer lost, is not deleted behind its back).
    restore = state.restore_begin(chosen[0], at=T0)
    assert state.restored_since(T0) == {("main", "app", "sha256:a"): T0}
    state.restore_end(restore, status="failed", detail="blobs gone", at=T0 + timedelta(1))
    assert state.restored_since(T0) == {("main", "app", "sha256:a"): T0}
    # Read again and again, a hold lasts; once it has ended it is forgotten.
    assert state.restored_since(T0) == {("main", "app", "sha256:a"): T0}
    assert state.restored_since(T0 + timedelta(seconds=1)) == {}
    assert state.restored_since(T0) == {}
    assert [e.digest for e in state.deletions_to_restore(digests=["sha256:a"])] == ["sha256:a"]


def test_facts_cached_before_attestations_are_read_again(tmp_path: Path):
    state = State.open(tmp_path)
    index = ManifestFacts("sha256:i", "application/vnd.oci.image.index.v1+json", 1,
                          children=("sha256:c",))
    state.put_facts(index)
    state.close()
    state = State.open(tmp_path)
    assert state.get_facts("sha256:i") is not None
    old = json.loads(state._db.execute("SELECT data FROM facts").fetchone()[0])
    del old["attestations"]  # the layout of an older version
    state._db.execute("UPDATE facts SET data=?", (json.dumps(old),))
    assert state.get_facts("sha256:i") is None  # fetched again, not trusted undated


def test_unparsed_facts_cached_before_schema1_layers_are_read_again(tmp_path: Path):
    """An unparsed manifest cached without blobs before a schema 1 manifest's layers were
    read: read again, once, or it keeps every config and layer of its registry unclaimed.
    One cached since (layers read or not) is trusted."""
    state = State.open(tmp_path)
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    state.put_facts(ManifestFacts("sha256:s", schema1, 1, parsed=False))
    state.close()
    state = State.open(tmp_path)
    assert state.get_facts("sha256:s") == ManifestFacts("sha256:s", schema1, 1, parsed=False)
    old = json.loads(state._db.execute("SELECT data FROM facts").fetchone()[0])
    del old["layers_read"]  # the layout of an older version
    state._db.execute("UPDATE facts SET data=?", (json.dumps(old),))
    assert state.get_facts("sha256:s") is None


def test_facts_cached_before_manifests_were_read_as_go_reads_them_are_read_again(
        tmp_path: Path):
    """An index cached by the reading before (``"Manifests"`` not seen, a null subject
    unparsed) may list children that reading missed: read again, once."""
    state = State.open(tmp_path)
    index = ManifestFacts("sha256:i", "application/vnd.oci.image.index.v1+json", 1)
    state.put_facts(index)
    state.close()
    state = State.open(tmp_path)
    assert state.get_facts("sha256:i") == index
    old = json.loads(state._db.execute("SELECT data FROM facts").fetchone()[0])
    del old["read_as_go"]  # the layout of an older version
    state._db.execute("UPDATE facts SET data=?", (json.dumps(old),))
    assert state.get_facts("sha256:i") is None


def test_closing_when_the_pending_facts_cannot_be_written_does_not_fail(tmp_path: Path):
    """Facts are a cache: when the last batch cannot be written as the state closes (another
    process holds the database, the disk is full), closing must not raise. The CLI closes the
    state in a ``finally`` after a run: an exception there replaces the run's result, so the
    report of what was just deleted would never be printed."""
    import sqlite3

    state = State.open(tmp_path)
    state.put_facts(ManifestFacts("sha256:a", "x", 1))
    other = sqlite3.connect(tmp_path / "retention.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer, for longer than the busy timeout
    try:
        state.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
