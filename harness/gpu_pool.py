"""A pool of this node's GPUs that hands disjoint GPUs to concurrent jobs.

Every job leases the GPUs it runs on, and its workers see only those (CUDA_VISIBLE_DEVICES). A lease
is an exclusive `flock` on one file per GPU in a folder shared by every controller of the node, so
that jobs of one search running side by side, pytest-xdist workers and two runs on other results
folders never time one GPU twice. The kernel drops a dead holder's locks, so a killed run frees its
GPUs at once. A GPU is named by what CUDA_VISIBLE_DEVICES takes (an index or a `GPU-<uuid>`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

POLL_S = 0.2


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"pretrain-bench-gpus-{os.getuid()}"


class GpuPool:
    def __init__(self, devices: Sequence[str], lock_dir: Path | None = None):
        self.devices = tuple(devices)
        self.lock_dir = lock_dir or default_lock_dir()
        self._freed = threading.Condition()

    def _path(self, device: str) -> Path:
        return self.lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9.-]', '_', device)}.lock"

    def _try(self, device: str, holder: str) -> IO[str] | None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        handle = self._path(device).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "job": holder, "since": time.time()}))
        handle.flush()
        return handle

    def holder(self, device: str) -> dict | None:
        """Who holds `device` now, as its lock file says (None when free or unreadable)."""
        path = self._path(device)
        try:
            with path.open() as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # nobody holds it: the shared lock was granted
        except BlockingIOError:
            with contextlib.suppress(OSError, json.JSONDecodeError):
                return json.loads(path.read_text())
            return {}
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def lease(
        self, count: int, *, holder: str = "", timeout_s: float | None = None, waiting=None
    ) -> Iterator[tuple[str, ...]]:
        """`count` GPUs no other job holds, for the `with` block; waits for them (`waiting(devices held
        by others)` is called once while it waits). Raises TimeoutError after `timeout_s`."""
        if count > len(self.devices):
            raise ValueError(f"a job needs {count} GPU(s); this node has {len(self.devices)}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            handles: dict[str, IO[str]] = {}
            for device in self.devices:
                if (handle := self._try(device, holder)) is not None:
                    handles[device] = handle
                    if len(handles) == count:
                        break
            if len(handles) == count:
                break
            for handle in handles.values():
                handle.close()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no {count} free GPU(s) within {timeout_s:.0f} s")
            if waiting is not None and not told:
                waiting({d: self.holder(d) for d in self.devices if d not in handles})
                told = True
            with self._freed:
                self._freed.wait(POLL_S)  # woken at once by a lease of this process ending
        try:
            yield tuple(handles)
        finally:
            for handle in handles.values():
                handle.close()  # closing the file drops its lock
            with self._freed:
                self._freed.notify_all()


def visible_devices(node_count: int) -> list[str]:
    """The GPUs this controller may use, as CUDA_VISIBLE_DEVICES names them for its children."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(node_count)]
    tokens = [t.strip() for t in visible.split(",")]
    return tokens[:node_count]
