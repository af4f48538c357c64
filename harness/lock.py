"""One run at a time per results folder: two runs measuring on one node at once slow each other down
and both store wrong timings, and two runs appending to one store race on the same cases.

    with RunLock(results_dir) as lock:
        if lock.took_over:
            print(f"took over the stale lock of pid {lock.took_over['pid']}")
        ...  # measure

The lock is `fcntl.flock` on `<root>/.lock`, held through a file descriptor kept open for the run: the
kernel drops it when the holder exits, however it dies, so a crashed run never blocks the next one
(its file, still naming it, is taken over and reported). The file's content names the holder (pid,
host, start time, command line) only so that a refused run can say who is in the way; the lock
itself is the flock, never the file's existence.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_NAME = ".lock"


class LockHeldError(RuntimeError):
    """Another live process holds the results folder's lock; `holder` is what its lock file says.
    A RuntimeError, not an OSError: nothing failed, the folder is busy."""

    def __init__(self, root: Path, holder: dict[str, Any] | None) -> None:
        who = describe(holder) if holder else "a process that has not written its name yet"
        super().__init__(
            f"results folder {root} is in use by another run: {who}; "
            "wait for it to finish or pass another --results-dir"
        )
        self.root, self.holder = root, holder


def describe(holder: dict[str, Any]) -> str:
    """`pid 1234 on host h since 2026-11-30 15:00:00 (pytest bench -m h200)`, from a lock file's record."""
    started = holder.get("started")
    since = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, int | float) and not isinstance(started, bool)
        else str(started)
    )
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since} ({holder.get('command', '')})"


def holder(root: Path | str) -> dict[str, Any] | None:
    """What `<root>/.lock` says about its holder; None without a readable one. The file outlives a
    holder that died, so this may name a process that is gone: only `RunLock.acquire` can tell."""
    try:
        return _parse(Path(root, LOCK_NAME).read_bytes())
    except OSError:
        return None


def _parse(content: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):  # empty: its writer had not written it yet
        return None
    return found if isinstance(found, dict) else None


class RunLock:
    """The lock of one results folder for one run: `acquire()` (or `with`), then `release()`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.took_over: dict[str, Any] | None = None  # the dead holder whose lock file this one took
        self._fd: int | None = None
        self._record: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise LockHeldError naming its holder; never waits."""
        if self._fd is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        fd = self._lock()
        try:
            self.took_over = _parse(_read_all(fd))  # the flock was free: whoever the file names is gone
            self._record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.time(),
                "command": " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._record).encode(), 0)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock(self) -> int:
        """A descriptor of the file at the path, flocked."""
        while True:
            # Not inherited by child processes (Python's default, said here because it matters): a
            # job left running by a dead controller must not keep its folder locked.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found = _parse(_read_all(fd))
                os.close(fd)
                raise LockHeldError(self.root, found) from None
            except OSError:
                os.close(fd)
                raise
            # The holder we were refused by may have removed the file between our open and our lock:
            # then this lock is on a file nobody else can find, and the one now at the path counts.
            if _same_file(fd, self.path):
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file if it still names this holder, then unlock. Removing before unlocking
        means a run that opened the file meanwhile finds it gone once it gets the lock (see acquire)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _parse(_read_all(fd)) == self._record and _same_file(fd, self.path):
                self.path.unlink()
        finally:
            # Unlocked explicitly, not just closed: a forked child sharing the descriptor would keep it.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
