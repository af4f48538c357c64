"""Owning the processes of a job: no worker may outlive the job that started it.

torchrun starts every worker in a session of its own (`start_new_session=True`), so a signal to
torchrun's process group never reaches them, and a torchrun killed outright leaves them running
(adopted by init), holding their GPUs and slowing the next jobs. Three layers keep them owned:
1. each worker asks the kernel to SIGKILL it when its parent (torchrun) dies (`PR_SET_PDEATHSIG`),
   and torchrun asks the same of the controller that started it, so whatever ends the controller
   or torchrun, SIGKILL included, ends the workers too;
2. before the launcher kills a job it snapshots torchrun's whole process tree (workers and their
   children, in whatever session), and kills every process of it that is still the one it saw
   (same pid and start time: a pid reused by another process is left alone);
3. a run starts by looking for workers left behind by an earlier controller, and reports them with
   the GPU memory they hold.
Linux only (`/proc`, prctl); elsewhere the first two layers degrade to torchrun's own clean-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WORKER_MODULE = "harness.worker"
AGENT_MODULE = "torch.distributed.run"
SMI_TIMEOUT_S = 20
# Looked up once, here: a child forked from a threaded process (the launcher's) must not load
# libraries between fork and exec, only call what is already resolved.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent exits; False where unsupported.

    Also for `subprocess.Popen(preexec_fn=...)`: it runs in the child before exec, and the setting
    survives exec. The parent is the *thread* that forked, so the caller must wait on the child from
    the thread that started it (the launcher does).
    """
    return _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


@dataclass(frozen=True, slots=True)
class Proc:
    """A process as /proc shows it; `started` (clock ticks since boot) tells a reused pid apart."""

    pid: int
    ppid: int
    started: int
    command: str = ""


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (command) state ppid ... starttime(22nd) ...": the command may hold spaces and parentheses.
    rest = stat.rsplit(")", 1)[1].split()
    return Proc(pid=pid, ppid=int(rest[1]), started=int(rest[19]))


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_processes() -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))) is not None:
            found.append(proc)
    return found


def process_tree(root: int) -> list[Proc]:
    """`root` and all its descendants now alive, parents before children."""
    procs = all_processes()
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    tree = [p for p in procs if p.pid == root]
    for proc in tree:  # grows while iterated: breadth first
        tree.extend(children.get(proc.pid, []))
    return tree


def is_alive(proc: Proc) -> bool:
    """Whether this very process (not a later one with its pid) still runs; a zombie counts as gone."""
    now = read_proc(proc.pid)
    if now is None or now.started != proc.started:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def kill_all(procs: list[Proc], sig: int = signal.SIGKILL) -> list[Proc]:
    """Send `sig` to each process that is still the one recorded; returns those signalled."""
    hit = []
    for proc in procs:
        if proc.pid == os.getpid() or not is_alive(proc):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)
            hit.append(proc)
    return hit


def wait_gone(procs: list[Proc], timeout_s: float) -> list[Proc]:
    """Wait until none of `procs` runs, up to `timeout_s`; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_alive(p)]
    return alive


def end_job(proc: subprocess.Popen, *, grace_s: float = 10.0) -> list[Proc]:
    """End a job started as `proc` (torchrun) with every process under it, whatever their sessions.

    SIGTERM first, to torchrun's group and to each worker, so that workers can flush their logs;
    after `grace_s` SIGKILL to everything of the tree seen before or since. Returns the processes that
    needed SIGKILL.
    """
    seen = {p.pid: p for p in process_tree(proc.pid)}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    kill_all(list(seen.values()), signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    if proc.returncode is None:  # once reaped, torchrun's pid may belong to another process
        seen |= {p.pid: p for p in process_tree(proc.pid)}
    survivors = wait_gone(list(seen.values()), 0.0 if proc.poll() is None else 1.0)
    killed = kill_all(survivors, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    wait_gone(killed, grace_s)
    return killed


@dataclass(frozen=True, slots=True)
class Leftover:
    """A benchmark worker that no running job owns, and the GPU memory it holds."""

    pid: int
    command: str
    gpu_memory_mib: int = 0

    def describe(self) -> str:
        held = f", holding {self.gpu_memory_mib} MiB of GPU memory" if self.gpu_memory_mib else ""
        return f"pid {self.pid} ({self.command[:160]}){held}; end it with: kill -9 {self.pid}"


def leftover_workers() -> list[Leftover]:
    """Benchmark workers running now that no torchrun owns (left by a controller killed before its
    clean-up could run), with the GPU memory NVML says each holds. A worker whose torchrun still runs
    belongs to a live run (on another results folder, with GPUs of its own) and is left alone."""
    mine = {p.pid for p in process_tree(os.getpid())}
    held = gpu_memory_by_pid()
    found = []
    for proc in all_processes():
        if proc.pid in mine:
            continue
        command = _command(proc.pid)
        is_worker = f"-m {WORKER_MODULE} " in f"{command} " or f"{WORKER_MODULE}.py" in command
        if is_worker and AGENT_MODULE not in _command(proc.ppid):
            found.append(Leftover(pid=proc.pid, command=command, gpu_memory_mib=held.get(proc.pid, 0)))
    return found


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory each process holds (summed over GPUs), from nvidia-smi; {} without GPUs."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    held: dict[int, int] = {}
    for line in out.splitlines():
        pid, _, mib = (field.strip() for field in line.partition(","))
        if pid.isdigit() and mib.isdigit():
            held[int(pid)] = held.get(int(pid), 0) + int(mib)
    return held
