"""One enforcing process per state: `run`, `apply`, `restore` and `serve` hold an exclusive
lock on ``state_dir`` (SPEC "Embedded state").

Two processes deleting from one state would each plan against a registry the other is
changing and journal into one database; an SRE's `retention run` beside the daemon is the
usual way it happens. The lock is ``flock`` on a file in the state directory: the kernel
releases it when the process ends, however it ends, so a crash never leaves a stale lock.
The file holds who took it (pid, host, since) for the message the second process prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from retention.errors import RetentionError

LOCK_NAME = "retention.lock"


class StateLocked(RetentionError):
    """Another process holds the state's lock."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it did not say which)"


@contextlib.contextmanager
def state_lock(state_dir: Path | None, *, command: str, wait: bool = False,
               on_wait: Callable[[str], None] | None = None,
               poll: float = 0.5) -> Iterator[None]:
    """Hold the lock on ``state_dir`` for the block. Raises StateLocked when another process
    holds it (``wait``: waits for it instead, telling ``on_wait`` once who holds it).

    No state_dir (the state lives in memory) or one that cannot be made: nothing to share,
    nothing locked; the run then fails on the unusable state itself, deleting nothing."""
    if state_dir is None:
        yield
        return
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if not wait:
                    raise StateLocked(
                        f"state_dir {state_dir} is locked by {holder}: one enforcing process "
                        f"per state; wait for it, stop it, or run again with --wait"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for the lock on state_dir {state_dir}, held by {holder}")
                    told = True
                time.sleep(poll)
        since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}) since "
                      f"{since}\n".encode(), 0)
        try:
            yield
        finally:
            # Emptied first: a reader between the truncate and the unlock sees no holder,
            # never a stale one.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
