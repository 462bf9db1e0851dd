"""Embedded state: one SQLite database in ``state_dir``.

It holds immutable manifest facts cached by digest (so a second scan fetches only what
changed), the tag-to-digest map and the digests last seen per repository (so manifests that
lost their last tag are still found on registries that cannot list untagged manifests), when
each manifest was first seen (the time of images without a usable one of their own) and first
seen untagged (for ``untagged_grace`` and ``untagged_for``), and a journal of deletions.

Losing the state is safe: without it nothing is known to have been untagged for long, so the
grace period protects every untagged manifest, and orphans are found again from then on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from retention import jsoncodec
from retention.inuse import Sighting
from retention.inventory import Blob, Inventory
from retention.scanner import ManifestFacts, SeenManifest, SeenTimes

log = structlog.get_logger("retention.state")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facts (digest TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    registry TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
    digest TEXT NOT NULL, PRIMARY KEY (registry, repository, tag));
CREATE TABLE IF NOT EXISTS manifests (
    registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, untagged_since TEXT,
    PRIMARY KEY (registry, repository, digest));
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, registry TEXT NOT NULL,
    repository TEXT NOT NULL, digest TEXT NOT NULL, tags TEXT NOT NULL, bytes INTEGER NOT NULL,
    policy TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_by_digest ON journal (digest);
CREATE INDEX IF NOT EXISTS journal_by_time ON journal (at);
CREATE TABLE IF NOT EXISTS journal_bodies (
    journal_id INTEGER PRIMARY KEY, media_type TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, journal_id INTEGER NOT NULL,
    registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
    status TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS restores_by_journal ON restores (journal_id);
CREATE TABLE IF NOT EXISTS restored (
    registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (registry, repository, digest));
"""


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _facts_to_json(f: ManifestFacts) -> str:
    return jsoncodec.dumps({
        "media_type": f.media_type, "size": f.size,
        "blobs": [[b.digest, b.size] for b in f.blobs], "children": list(f.children),
        "subject": f.subject, "artifact_type": f.artifact_type,
        "created": _ts(f.created) if f.created else None, "parsed": f.parsed,
        "config_read": f.config_read,
        "annotated": _ts(f.annotated) if f.annotated else None,
        "attestations": list(f.attestations),
        # Unparsed facts written since a schema 1 manifest's layers are read (see below).
        **({} if f.parsed else {"layers_read": True}),
        # Written since a foreign layer's size is the 0 bytes the registry stores (below).
        "stored_sizes": True,
        "schema1": f.schema1,
        "read_as_go": True,  # see below
    })


def _facts_from_json(digest: str, text: str) -> ManifestFacts | None:
    d = jsoncodec.loads(text)
    if "read_as_go" not in d:
        # Read before manifests were read as the registry reads them (keys in another case,
        # a key twice, null or missing fields, invalid UTF-8): an index may list children
        # that reading did not see. Read every manifest again, once.
        return None
    if not all(type(size) is int for _, size in d["blobs"]) or type(d["size"]) is not int:
        # A size beyond 64 bits, which orjson reads as a float (jsoncodec): read the
        # manifest again rather than count it wrong.
        return None
    if d["children"] and "attestations" not in d:
        # Cached before attestations were told apart: read the index again, once, or its
        # BuildKit attestation would keep it undated forever.
        return None
    if not d["parsed"] and not d["blobs"] and "layers_read" not in d:
        # Unparsed, cached before a schema 1 manifest's layers were read: read it again,
        # once, or its references stay unknown and keep every config and layer in the
        # registry from being counted as freed. (Any unparsed type: a schema 1 body may have
        # been served under another content type.)
        return None
    if d["parsed"] and d["blobs"] and "stored_sizes" not in d:
        # An image cached while a foreign layer (Windows; `urls`) counted its full size,
        # which the registry does not store: read it again, once, or those bytes are
        # reported as freed.
        return None
    return ManifestFacts(
        digest=digest, media_type=d["media_type"], size=d["size"],
        blobs=tuple(Blob(x, s) for x, s in d["blobs"]), children=tuple(d["children"]),
        subject=d["subject"], artifact_type=d["artifact_type"], created=_dt(d["created"]),
        parsed=d["parsed"], schema1=d.get("schema1", False),
        config_read=d.get("config_read", True),
        annotated=_dt(d.get("annotated")), attestations=tuple(d.get("attestations", ())),
    )


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A journaled deletion with the deleted manifest's exact bytes: what restore puts back."""

    id: int
    at: datetime
    registry: str
    repository: str
    digest: str
    tags: tuple[str, ...]  # every tag it carried, referrer tags included
    policy: str
    status: str  # deleted, or deleting: the process died between journaling and the answer
    media_type: str
    body: bytes


# Restore outcomes after which the manifest is back in the registry.
RESTORED_STATUSES = ("restored", "tag-moved")
# The latest deletion of each digest whose DELETE may have been sent ("deleting": the process
# died before the registry's answer was recorded, so possibly deleted), with its body, not
# restored since. Only placeholders are formatted into it: every value is a parameter.
_TO_RESTORE = (
    "SELECT j.id, j.at, j.registry, j.repository, j.digest, j.tags, j.policy, j.status,"
    " b.media_type, b.body FROM journal j JOIN journal_bodies b ON b.journal_id = j.id"
    " WHERE j.status IN ('deleting', 'deleted') AND ({where})"
    " AND j.id = (SELECT max(k.id) FROM journal k JOIN journal_bodies c"
    " ON c.journal_id = k.id WHERE k.registry = j.registry AND"
    " k.repository = j.repository AND k.digest = j.digest"
    " AND k.status IN ('deleting', 'deleted'))"
    " AND NOT EXISTS (SELECT 1 FROM restores r WHERE r.journal_id = j.id AND"
    " r.status IN ('restored', 'tag-moved'))")


FACTS_BATCH = 1000  # facts kept in memory before they are written


class State:
    """The state database. Thread-safe; one connection guarded by a lock."""

    def __init__(self, connection: sqlite3.Connection, *, path: Path | None):
        self._db = connection
        self._lock = threading.Lock()
        self.path = path  # None: in memory, nothing survives the process
        # Why the configured database could not be used (then this one is in memory): with
        # no durable journal, nothing could be restored, so nothing is deleted.
        self.unusable: str | None = None
        # Facts made by a scan, written in one transaction (at the latest when the scan is
        # observed): a transaction per manifest was a tenth of a cold plan's CPU.
        self._pending_facts: dict[str, str] = {}

    @classmethod
    def open(cls, state_dir: Path | None) -> State:
        """Open (or create) the database; fall back to memory, loudly, when it cannot be
        used: the run then deletes less, never more."""
        if state_dir is None:
            return cls.memory()
        path = state_dir / "retention.sqlite3"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=5, check_same_thread=False,
                                 isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {row[0]}, expected "
                                            f"{SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM facts").fetchone()
        except (OSError, sqlite3.Error) as exc:
            log.error("state unusable, running without it", path=str(path), error=str(exc),
                      consequence="nothing is deleted: deletions could not be journaled "
                                  "(for restore), orphans found before are forgotten and "
                                  "in-use history is lost")
            state = cls.memory()
            state.unusable = f"the state database {path} is unusable ({exc})"
            return state
        return cls(db, path=path)

    @classmethod
    def memory(cls) -> State:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        return cls(db, path=None)

    @contextmanager
    def _transaction(self, *, immediate: bool = False) -> Iterator[None]:
        """One transaction (the lock held): committed when the block ends, rolled back when
        it raises. ``immediate``: take the write lock at the start, so that another writer
        makes it wait there rather than fail halfway, upgrading a read lock."""
        self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_facts()
            except sqlite3.Error as exc:
                # Facts are a cache (the next run reads them again); the caller closes in a
                # `finally`, where an exception would replace the report of what the run did.
                log.warning("manifest facts not cached", count=len(self._pending_facts),
                            error=str(exc))
            finally:
                self._db.close()

    # -- facts cache (the scanner's FactsCache protocol) -------------------------------------

    def get_facts(self, digest: str) -> ManifestFacts | None:
        with self._lock:
            data = self._pending_facts.get(digest)
            if data is None:
                row = self._db.execute("SELECT data FROM facts WHERE digest=?",
                                       (digest,)).fetchone()
                data = row[0] if row else None
        return _facts_from_json(digest, data) if data is not None else None

    def put_facts(self, facts: ManifestFacts) -> None:
        with self._lock:
            self._pending_facts[facts.digest] = _facts_to_json(facts)
            if len(self._pending_facts) >= FACTS_BATCH:
                self._flush_facts()

    def _flush_facts(self) -> None:
        """Write the pending facts in a transaction of their own (the lock held)."""
        if not self._pending_facts:
            return
        with self._transaction():
            self._write_facts()

    def _write_facts(self) -> None:
        """Write the pending facts (the lock held, inside a transaction)."""
        if self._pending_facts:
            self._db.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?)",
                                 self._pending_facts.items())
            self._pending_facts.clear()

    # -- what was seen ----------------------------------------------------------------------

    def last_tags(self, registry: str, repository: str) -> dict[str, str]:
        """tag -> digest as the last complete read of the repository saw them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tag, digest FROM tags WHERE registry=? AND repository=?",
                (registry, repository)).fetchall()
        return dict(rows)

    def known_repositories(self, registry: str) -> list[str]:
        """The repositories of ``registry`` where some manifest was seen."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT repository FROM manifests WHERE registry=?",
                (registry,)).fetchall()
        return [r[0] for r in rows]

    def known_digests(self, registry: str, repository: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT digest FROM manifests WHERE registry=? AND repository=?",
                (registry, repository)).fetchall()
        return [r[0] for r in rows]

    def observe(self, inventory: Inventory, now: datetime) -> Inventory:
        """Record what a scan saw; return the inventory with ``untagged_since`` filled in.

        A manifest seen without ordinary tags for the first time is untagged since ``now``;
        one that regains a tag loses its mark. Repositories that could not be read are left
        as they were recorded. (The scanner records each repository as it reads it, with
        ``observe_repository``; this records a whole inventory at once.)
        """
        stamp = _ts(now)
        repos = []
        with self._lock, self._transaction():
            self._write_facts()
            for repo in inventory.repositories:
                if repo.error is not None:
                    repos.append(repo)
                    continue
                times = self._record_read(inventory.registry, repo.name,
                                          ((m.digest, m.tags, m.referrer_tags)
                                           for m in repo.manifests), stamp)
                repos.append(replace(repo, manifests=tuple(
                    replace(m, untagged_since=times[m.digest][0] or (None if m.tags else now),
                            first_seen=times[m.digest][1])
                    for m in repo.manifests)))
        return replace(inventory, repositories=tuple(repos))

    def observe_repository(self, registry: str, repository: str, seen: Iterable[SeenManifest],
                           now: datetime) -> dict[str, SeenTimes]:
        """Record one complete read of a repository: each manifest there as (digest,
        ordinary tags, referrer tags). Returns each digest's (untagged since, first seen),
        as ``observe`` fills them in, except that a manifest marked untagged by this very
        read has None: the scanner dates it when the whole scan ends (see Scanner.scan).
        The facts made so far are written in the same transaction, so that no manifest is
        recorded before the facts it was read with."""
        stamp = _ts(now)
        # IMMEDIATE: a transaction per repository, on the event loop; a deferred one fails
        # at once (SQLITE_BUSY) when another process commits between its read and its write.
        with self._lock, self._transaction(immediate=True):
            self._write_facts()
            return self._record_read(registry, repository, seen, stamp)

    def _record_read(self, registry: str, repository: str, seen: Iterable[SeenManifest],
                     stamp: str) -> dict[str, SeenTimes]:
        db = self._db
        previous = {d: (first, since) for d, first, since in db.execute(
            "SELECT digest, first_seen, untagged_since FROM manifests WHERE registry=? AND "
            "repository=?", (registry, repository))}
        db.execute("DELETE FROM manifests WHERE registry=? AND repository=?",
                   (registry, repository))
        db.execute("DELETE FROM tags WHERE registry=? AND repository=?", (registry, repository))
        times: dict[str, SeenTimes] = {}
        manifest_rows, tag_rows = [], []
        for digest, tags, referrer_tags in seen:
            known = digest in previous
            first, since = previous.get(digest, (stamp, None))
            marked = not tags and since is None  # untagged, first seen so in this read
            since = None if tags else (since or stamp)
            manifest_rows.append((registry, repository, digest, first, stamp, since))
            tag_rows.extend((registry, repository, t, digest) for t in (*tags, *referrer_tags))
            # First seen in this very run: not known to be older than this run (None), so
            # it never matches older_than (SPEC "Time of a manifest").
            times[digest] = (None if marked else _dt(since), _dt(first) if known else None)
        db.executemany("INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?)", manifest_rows)
        db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)", tag_rows)
        return times

    # -- the journal --------------------------------------------------------------------------

    def record_deletion(self, *, at: datetime, registry: str, repository: str, digest: str,
                        tags: Iterable[str], bytes: int, policy: str, reason: str,
                        status: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO journal (at, registry, repository, digest, tags, bytes, policy,"
                " reason, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_ts(at), registry, repository, digest, json.dumps(list(tags)), bytes, policy,
                 reason, status))
            if status == "deleted":
                self._db.execute("DELETE FROM manifests WHERE registry=? AND repository=? "
                                 "AND digest=?", (registry, repository, digest))
                self._db.execute("DELETE FROM tags WHERE registry=? AND repository=? AND "
                                 "digest=?", (registry, repository, digest))

    def journal(self) -> list[dict[str, object]]:
        with self._lock:
            cursor = self._db.execute("SELECT at, registry, repository, digest, tags, bytes, "
                                      "policy, reason, status FROM journal ORDER BY id")
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- in use on Kubernetes (issue 13) ------------------------------------------------------

    _IN_USE_TABLE = (
        "CREATE TABLE IF NOT EXISTS in_use (registry TEXT NOT NULL, repository TEXT NOT NULL, "
        "digest TEXT NOT NULL, used_by TEXT NOT NULL, last_seen TEXT NOT NULL, "
        "PRIMARY KEY (registry, repository, digest))")

    def record_in_use(self, sightings: Iterable[Sighting]) -> None:
        """Remember when each digest was last seen in use (and by whom), for keep_for."""
        with self._lock:
            self._db.execute(self._IN_USE_TABLE)
            self._db.executemany(
                "INSERT INTO in_use VALUES (?, ?, ?, ?, ?) ON CONFLICT (registry, repository, "
                "digest) DO UPDATE SET used_by=excluded.used_by, last_seen=excluded.last_seen "
                "WHERE excluded.last_seen >= in_use.last_seen",
                [(s.registry, s.repository, s.digest, s.used_by, _ts(s.last_seen))
                 for s in sightings])

    def in_use_since(self, since: datetime) -> list[Sighting]:
        """Digests seen in use at ``since`` or later; older rows are forgotten."""
        with self._lock:
            self._db.execute(self._IN_USE_TABLE)
            self._db.execute("DELETE FROM in_use WHERE last_seen < ?", (_ts(since),))
            rows = self._db.execute("SELECT registry, repository, digest, used_by, last_seen "
                                    "FROM in_use ORDER BY registry, repository, digest")
            return [Sighting(r, repo, d, by, datetime.fromisoformat(at))
                    for r, repo, d, by, at in rows.fetchall()]

    # -- the journal's bodies, restores, and manifests restored ------------------------------
    # (Tables added without a schema version bump: CREATE TABLE IF NOT EXISTS gives them to
    # existing databases, whose journal rows simply have no body.)

    def journal_begin(self, *, at: datetime, registry: str, repository: str, digest: str,
                      tags: Iterable[str], policy: str, reason: str, media_type: str,
                      body: bytes) -> int:
        """Journal a DELETE about to be sent: the row (status ``deleting``) and the manifest's
        exact bytes, in one transaction, committed before the DELETE leaves. Returns its id."""
        with self._lock, self._transaction(immediate=True):
            cursor = self._db.execute(
                "INSERT INTO journal (at, registry, repository, digest, tags, bytes, policy,"
                " reason, status) VALUES (?, ?, ?, ?, ?, 0, ?, ?, 'deleting')",
                (_ts(at), registry, repository, digest, json.dumps(list(tags)), policy,
                 reason))
            entry = int(cursor.lastrowid or 0)
            self._db.execute("INSERT INTO journal_bodies VALUES (?, ?, ?)",
                             (entry, media_type, body))
        return entry

    def journal_end(self, entry: int, *, status: str, reason: str | None = None,
                    bytes: int = 0) -> None:
        """The registry's answer to a journaled DELETE (deleted, failed or skipped), with
        the bytes that deletion freed."""
        with self._lock, self._transaction(immediate=True):
            row = self._db.execute("SELECT registry, repository, digest FROM journal "
                                   "WHERE id=?", (entry,)).fetchone()
            if reason is None:
                self._db.execute("UPDATE journal SET status=?, bytes=? WHERE id=?",
                                 (status, bytes, entry))
            else:
                self._db.execute("UPDATE journal SET status=?, reason=?, bytes=? WHERE id=?",
                                 (status, reason, bytes, entry))
            if status == "deleted" and row is not None:
                for table in ("manifests", "tags", "restored"):
                    self._db.execute(f"DELETE FROM {table} WHERE registry=? AND "  # noqa: S608
                                     "repository=? AND digest=?", row)

    def journal_bytes(self, freed: Mapping[int, int]) -> None:
        """The bytes journaled deletions freed (journal row -> bytes), known once a run's
        deletions are over."""
        if not freed:
            return
        with self._lock, self._transaction(immediate=True):
            self._db.executemany("UPDATE journal SET bytes=? WHERE id=?",
                                 [(size, entry) for entry, size in freed.items()])

    def prune_journal(self, before: datetime) -> int:
        """Forget deletions (with their bodies) and restores older than ``before``
        (journal_keep); returns how many deletions were forgotten."""
        stamp = _ts(before)
        with self._lock, self._transaction(immediate=True):
            self._db.execute("DELETE FROM journal_bodies WHERE journal_id IN "
                             "(SELECT id FROM journal WHERE at < ?)", (stamp,))
            pruned = self._db.execute("DELETE FROM journal WHERE at < ?", (stamp,)).rowcount
            self._db.execute("DELETE FROM restores WHERE at < ?", (stamp,))
        return pruned

    def deletions_to_restore(self, *, since: datetime | None = None,
                             digests: Iterable[str] = (), policies: Iterable[str] = (),
                             repositories: Iterable[tuple[str, str]] = ()
                             ) -> list[JournalEntry]:
        """The latest journaled deletion of each registry/repository/digest, with its body,
        not restored since, that was deleted at or after ``since`` or is one of
        ``digests`` (or, with ``repositories``, every such deletion in those
        (registry, repository) pairs); only ``policies``' deletions when given."""
        where, args = [], []
        digests, policies, repositories = list(digests), list(policies), list(repositories)
        if since is not None:
            where.append("j.at >= ?")
            args.append(_ts(since))
        if digests:
            where.append(f"j.digest IN ({', '.join('?' * len(digests))})")
            args.extend(digests)
        for registry, repository in repositories:
            where.append("(j.registry = ? AND j.repository = ?)")
            args.extend((registry, repository))
        if not where:
            return []
        query = _TO_RESTORE.format(where=" OR ".join(where))
        if policies:
            query += f" AND j.policy IN ({', '.join('?' * len(policies))})"
            args.extend(policies)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY j.id", args).fetchall()
        return [JournalEntry(id=r[0], at=datetime.fromisoformat(r[1]), registry=r[2],
                             repository=r[3], digest=r[4], tags=tuple(json.loads(r[5])),
                             policy=r[6], status=r[7], media_type=r[8], body=bytes(r[9]))
                for r in rows]

    def restore_begin(self, entry: JournalEntry, *, at: datetime) -> int:
        """Journal a restore about to push: status ``restoring`` until its outcome. The
        manifest is marked ``restored`` before its push, so that a run reading the registry
        while the restore puts it back finds it held, not a fresh orphan."""
        with self._lock, self._transaction(immediate=True):
            cursor = self._db.execute(
                "INSERT INTO restores (at, journal_id, registry, repository, digest, status,"
                " detail) VALUES (?, ?, ?, ?, ?, 'restoring', '')",
                (_ts(at), entry.id, entry.registry, entry.repository, entry.digest))
            self._hold(entry.registry, entry.repository, entry.digest, at)
        return int(cursor.lastrowid or 0)

    def restore_end(self, restore: int, *, status: str, detail: str, at: datetime) -> None:
        """A restore's outcome; a manifest back in the registry is held (``restored``) from
        now for restored_hold, in every plan, before any run may delete it again. One that did
        not come back keeps the mark its push was begun with: what a failed restore pushed
        is held too."""
        with self._lock, self._transaction(immediate=True):
            self._db.execute("UPDATE restores SET status=?, detail=? WHERE id=?",
                             (status, detail, restore))
            row = self._db.execute("SELECT registry, repository, digest FROM restores "
                                   "WHERE id=?", (restore,)).fetchone()
            if status in RESTORED_STATUSES and row is not None:
                self._hold(*row, at)

    def _hold(self, registry: str, repository: str, digest: str, at: datetime) -> None:
        """Mark a manifest restored at ``at`` (the lock held, inside a transaction)."""
        self._db.execute("INSERT OR REPLACE INTO restored VALUES (?, ?, ?, ?)",
                         (registry, repository, digest, _ts(at)))

    def restores(self) -> list[dict[str, object]]:
        with self._lock:
            cursor = self._db.execute("SELECT at, journal_id, registry, repository, digest, "
                                      "status, detail FROM restores ORDER BY id")
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def restored_since(self, since: datetime) -> dict[tuple[str, str, str], datetime]:
        """(registry, repository, digest) -> when it was restored, for the manifests
        restored at ``since`` or later (now - restored_hold): those still held. Holds that
        ended are forgotten. Reading a hold never ends it: plans and dry runs use none up."""
        stamp = _ts(since)
        with self._lock, self._transaction(immediate=True):
            self._db.execute("DELETE FROM restored WHERE at < ?", (stamp,))
            rows = self._db.execute("SELECT registry, repository, digest, at FROM restored")
            return {(r[0], r[1], r[2]): datetime.fromisoformat(r[3]) for r in rows.fetchall()}

    def journaled_digests(self, prefix: str) -> list[str]:
        """The digests the journal holds that start with ``prefix`` (``sha256:`` and hex
        digits), each once."""
        # Every character of a sha256 digest after the prefix sorts below "g": a range scan
        # of the digest index, with no pattern syntax to escape.
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT digest FROM journal WHERE digest >= ? "
                                    "AND digest < ? ORDER BY digest", (prefix, prefix + "g"))
            return [r[0] for r in rows.fetchall()]

    def journal_policies(self) -> set[str]:
        """The policies the journal names (those that deleted something it still holds)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT policy FROM journal")}
