"""Why a job failed, in one line that names the first failing rank and its own error.

When one rank fails, its peers fail after it with errors that only say a peer went away (gloo's
"Connection closed by peer", NCCL's remote errors, torchrun's SIGTERM): reporting those blames the
wrong rank. The worker records its own exception as an `error` event (rank, time, type, message)
before it re-raises; torchrun's summary names the ranks that died by a signal. The cause is, in
order: the earliest error that is not a consequence of a peer's failure; a rank killed by a signal
torchrun did not send; the earliest error of any kind; an exception line found anywhere in the log
(a compile error's traceback can be far above the tail).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Errors a rank raises because a peer failed or vanished, not because of anything of its own.
PEER_FAILURE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|remote process exited|"
    r"NCCL communicator was aborted|ProcessGroupNCCL.*(?:aborted|watchdog)|"
    r"DistNetworkError|recvBytes|Socket closed|heartbeat monitor",
    re.IGNORECASE,
)
# torchrun's failure summary: "rank : 1 (local_rank: 1)" then "exitcode : -9 (pid: 123)".
_SUMMARY_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)")
_SUMMARY_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_EXCEPTION = re.compile(r"(?:^|[\s:])([A-Za-z_][\w.]*(?:Error|Exception|Interrupt): .*)$")
_SIGNAL = re.compile(r"(Signal \d+ \(\w+\).*|Killed.*)$")
SIGNAL_NAMES = {6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}
SIGTERM = 15


def signalled_ranks(log: str) -> dict[int, int]:
    """Ranks that torchrun's summary reports dead by a signal: {rank: signal number}."""
    found: dict[int, int] = {}
    rank = None
    for line in log.splitlines():
        if (match := _SUMMARY_RANK.match(line)) is not None:
            rank = int(match.group(1))
        elif rank is not None and (match := _SUMMARY_EXIT.match(line)) is not None:
            code = int(match.group(1))
            if code < 0:
                found[rank] = -code
            rank = None
    return found


def last_exception(log: str) -> str:
    """The last exception line in `log` ('ValueError: ...'), else the last signal line, else ""."""
    lines = [line.strip() for line in log.splitlines()]
    for pattern in (_EXCEPTION, _SIGNAL):
        for line in reversed(lines):
            match = pattern.search(line)
            if match and "ChildFailedError" not in match.group(1):
                return match.group(1)[:300]
    return ""


def _describe(event: dict[str, Any]) -> str:
    message = " ".join(str(event.get("message", "")).split())
    return f"rank {event['rank']}: {event.get('type', 'error')}: {message}"[:400]


def first_failure(events: list[dict[str, Any]], log: str) -> str:
    """The cause of a failed job (see the module docstring), or "" when nothing says."""
    errors = sorted((e for e in events if e.get("event") == "error"), key=lambda e: e.get("time", 0.0))
    own = [e for e in errors if not PEER_FAILURE.search(f"{e.get('type', '')}: {e.get('message', '')}")]
    if own:
        return _describe(own[0])
    killed = {rank: sig for rank, sig in signalled_ranks(log).items() if sig != SIGTERM}
    if killed:
        rank = min(killed)
        name = SIGNAL_NAMES.get(killed[rank], f"signal {killed[rank]}")
        return f"rank {rank} was killed by {name}" + (" (out of host memory?)" if killed[rank] == 9 else "")
    if errors:
        return _describe(errors[0])
    return last_exception(log)


def read_log(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""
