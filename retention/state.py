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
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from retention.inuse import Sighting
from retention.inventory import Blob, Inventory, Repository
from retention.scanner import ManifestFacts

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
"""


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _facts_to_json(f: ManifestFacts) -> str:
    return json.dumps({
        "media_type": f.media_type, "size": f.size,
        "blobs": [[b.digest, b.size] for b in f.blobs], "children": list(f.children),
        "subject": f.subject, "artifact_type": f.artifact_type,
        "created": _ts(f.created) if f.created else None, "parsed": f.parsed,
        "config_read": f.config_read,
        "annotated": _ts(f.annotated) if f.annotated else None,
        "attestations": list(f.attestations),
    }, separators=(",", ":"))


def _facts_from_json(digest: str, text: str) -> ManifestFacts | None:
    d = json.loads(text)
    if d["children"] and "attestations" not in d:
        # Cached before attestations were told apart: read the index again, once, or its
        # BuildKit attestation would keep it undated forever.
        return None
    return ManifestFacts(
        digest=digest, media_type=d["media_type"], size=d["size"],
        blobs=tuple(Blob(x, s) for x, s in d["blobs"]), children=tuple(d["children"]),
        subject=d["subject"], artifact_type=d["artifact_type"], created=_dt(d["created"]),
        parsed=d["parsed"], config_read=d.get("config_read", True),
        annotated=_dt(d.get("annotated")), attestations=tuple(d.get("attestations", ())),
    )


class State:
    """The state database. Thread-safe; one connection guarded by a lock."""

    def __init__(self, connection: sqlite3.Connection, *, path: Path | None):
        self._db = connection
        self._lock = threading.Lock()
        self.path = path  # None: in memory, nothing survives the process

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
                      consequence="untagged manifests are all within their grace period and "
                                  "orphans found before are forgotten: this run deletes less")
            return cls.memory()
        return cls(db, path=path)

    @classmethod
    def memory(cls) -> State:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.executescript(_SCHEMA)
        return cls(db, path=None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- facts cache (the scanner's FactsCache protocol) -------------------------------------

    def get_facts(self, digest: str) -> ManifestFacts | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM facts WHERE digest=?", (digest,)).fetchone()
        return _facts_from_json(digest, row[0]) if row else None

    def put_facts(self, facts: ManifestFacts) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?)",
                             (facts.digest, _facts_to_json(facts)))

    # -- what was seen ----------------------------------------------------------------------

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
        as they were recorded.
        """
        stamp = _ts(now)
        repos = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for repo in inventory.repositories:
                    if repo.error is not None:
                        repos.append(repo)
                        continue
                    repos.append(self._observe_repository(inventory.registry, repo, stamp))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return replace(inventory, repositories=tuple(repos))

    def _observe_repository(self, registry: str, repo: Repository, stamp: str) -> Repository:
        db = self._db
        previous = {d: (first, since) for d, first, since in db.execute(
            "SELECT digest, first_seen, untagged_since FROM manifests WHERE registry=? AND "
            "repository=?", (registry, repo.name))}
        db.execute("DELETE FROM manifests WHERE registry=? AND repository=?",
                   (registry, repo.name))
        db.execute("DELETE FROM tags WHERE registry=? AND repository=?", (registry, repo.name))
        manifests = []
        for m in repo.manifests:
            known = m.digest in previous
            first, since = previous.get(m.digest, (stamp, None))
            since = None if m.tags else (since or stamp)
            db.execute("INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?)",
                       (registry, repo.name, m.digest, first, stamp, since))
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                           [(registry, repo.name, t, m.digest)
                            for t in (*m.tags, *m.referrer_tags)])
            # First seen in this very run: not known to be older than this run (None), so
            # it never matches older_than (SPEC "Time of a manifest").
            manifests.append(replace(m, untagged_since=_dt(since),
                                     first_seen=_dt(first) if known else None))
        return replace(repo, manifests=tuple(manifests))

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
