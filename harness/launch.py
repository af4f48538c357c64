"""Launch: every probe and timing is a real distributed job in fresh processes, through torchrun.

One node: `python -m torch.distributed.run --standalone`-style with a free port per job (parallel
pytest workers never collide). Several nodes: the same command on every node with a c10d rendezvous
(MASTER_ADDR/MASTER_PORT, NNODES, NODE_RANK from the environment, as SLURM job steps set them).
A timeout bounds every job; the whole process group is killed when it expires. stdout/stderr go to
the job folder and their tail comes back with the outcome.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.env import ROOT

# NVLink multicast (NVLS) can take a shared host's GPUs out of service; the suite never needs it.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TAIL_CHARS = 4000
# Sent to every worker before a timed-out job is killed; the worker's faulthandler prints all stacks.
STACK_DUMP_SIGNAL = signal.SIGUSR1
STACK_DUMP_GRACE_S = 3.0
OUTCOME_FILE = "outcome.json"  # how the job ended, written by the launcher once it has


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    returncode: int | None
    timed_out: bool
    elapsed_s: float
    result: dict[str, Any] | None
    events: list[dict[str, Any]] = field(hash=False)
    output_tail: str
    job_dir: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None

    def oom_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "oom"]

    def failure(self) -> str:
        """Why the job did not produce a result, in one line: how it ended and its last error."""
        if self.timed_out:
            head = f"job timed out after {self.elapsed_s:.0f} s and was killed"
        elif self.returncode is not None and self.returncode < 0:
            head = f"job killed by signal {-self.returncode}"
        else:
            head = f"job exited with code {self.returncode}"
        error = last_error(self.output_tail)
        doing = self.unfinished_try()
        doing_text = f" while trying micro-batch {doing}" if doing is not None else ""
        return f"{head}{doing_text}{': ' + error if error else ''} (log: {self.job_dir / 'output.log'})"

    def unfinished_try(self) -> int | None:
        """The probe micro-batch some rank started and did not finish, if the job ended mid-try."""
        started: dict[int, int] = {}
        for event in self.events:
            if event.get("event") == "try":
                started[event["rank"]] = event["micro_batch"]
            elif event.get("event") in ("fit", "oom") and started.get(event["rank"]) == event["micro_batch"]:
                del started[event["rank"]]
        return max(started.values()) if started else None


_EXCEPTION = re.compile(r"(?:^|[\s:])([A-Za-z_][\w.]*(?:Error|Exception): .*)$")
_SIGNAL = re.compile(r"(Signal \d+ \(\w+\).*|Killed.*)$")


def last_error(output: str) -> str:
    """The last exception line in a job's output ('ValueError: ...'), else the last signal line.

    A rank's own exception says more than the SIGTERM torchrun then sends its peers.
    """
    lines = [line.strip() for line in output.splitlines()]
    for pattern in (_EXCEPTION, _SIGNAL):
        for line in reversed(lines):
            match = pattern.search(line)
            if match and "ChildFailedError" not in match.group(1):
                return match.group(1)[:300]
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, job_file: Path, *, num_nodes: int = 1) -> list[str]:
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    if num_nodes == 1:
        rdzv = ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    else:
        endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
        rdzv = [
            f"--nnodes={num_nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={os.environ.get('SLURM_JOB_ID', 'pretrain-bench')}",
        ]
    return [*base, *rdzv, "-m", "harness.worker", str(job_file)]


def run_job(
    job: dict[str, Any],
    *,
    nproc: int,
    job_dir: Path,
    timeout_s: float,
    num_nodes: int = 1,
    env: dict[str, str] | None = None,
    reuse: list[Path] | tuple[Path, ...] = (),
) -> JobOutcome:
    """Run `job` in `job_dir`, or return the outcome of the same job that already finished in one of
    the `reuse` folders (a run interrupted after the job ended loses nothing)."""
    for earlier in reuse:
        if (done := finished_outcome(job, earlier)) is not None:
            return done
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*job_dir.glob("events-rank*.jsonl"), job_dir / "result.json", job_dir / OUTCOME_FILE]:
        stale.unlink(missing_ok=True)
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    cmd = torchrun_command(nproc, job_file, num_nodes=num_nodes)
    full_env = {**os.environ, **SAFE_ENV, "PYTHONPATH": _pythonpath(), "PYTHONUNBUFFERED": "1", **(env or {})}
    if "cuda" not in job.get("device", "cuda"):
        # CPU jobs share the host's cores: one thread per rank keeps ranks from fighting.
        full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log_path = job_dir / "output.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        log.write((" ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _dump_stacks(job_dir, proc)
            _kill_group(proc)
        except BaseException:
            # Interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the suite): the job runs
            # in its own session and would train on, unseen, beside whatever runs next. No outcome is
            # recorded: the job did not end by itself.
            _kill_group(proc)
            raise
    elapsed = time.monotonic() - started
    ended = {"returncode": proc.returncode, "timed_out": timed_out, "elapsed_s": elapsed}
    (job_dir / OUTCOME_FILE).write_text(json.dumps(ended))
    return _load_outcome(job_dir, ended)


def finished_outcome(job: dict[str, Any], job_dir: Path) -> JobOutcome | None:
    """The outcome of `job` if `job_dir` holds the same job, ended with a verdict: a result, or an
    out-of-memory event. Crashes and timeouts say nothing about the case and are run again.

    A job whose launcher was stopped after rank 0 wrote its result (renamed into place whole, once
    every rank has trained) finished too, though no outcome was recorded: its result stands if it was
    written before this controller started. A later one comes from a job orphaned by a controller
    killed outright, which may have trained beside this controller's jobs: it is run again."""
    try:
        earlier = json.loads((job_dir / "job.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if _comparable(earlier) != _comparable(job):
        return None
    try:
        ended = json.loads((job_dir / OUTCOME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        if not _written_before_this_controller(job_dir / "result.json"):
            return None
        ended = {"returncode": 0, "timed_out": False, "elapsed_s": math.nan}
    if ended["timed_out"]:
        return None
    outcome = _load_outcome(job_dir, ended)
    return outcome if outcome.ok or outcome.oom_events() else None


# When this controller started (harness.launch is imported before any job runs).
CONTROLLER_STARTED = time.time()


def _written_before_this_controller(path: Path) -> bool:
    try:
        return path.stat().st_mtime < CONTROLLER_STARTED
    except FileNotFoundError:
        return False


def _comparable(job: dict[str, Any]) -> dict[str, Any]:
    """A job without the folder it ran in (the trainer's output_dir lies inside it), as JSON reads it
    back (tuples become lists), so that a job and its job.json compare equal."""
    job = json.loads(json.dumps(job))
    plan = job.get("plan", {})
    args = {k: v for k, v in plan.get("training_args", {}).items() if k != "output_dir"}
    return job | {"plan": plan | {"training_args": args}}


def _load_outcome(job_dir: Path, ended: dict[str, Any]) -> JobOutcome:
    result_file = job_dir / "result.json"
    timed_out = ended["timed_out"]
    result = json.loads(result_file.read_text()) if result_file.exists() and not timed_out else None
    return JobOutcome(
        returncode=ended["returncode"],
        timed_out=timed_out,
        elapsed_s=ended["elapsed_s"],
        result=result,
        events=_read_events(job_dir),
        output_tail=_tail(job_dir / "output.log"),
        job_dir=job_dir,
    )


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{existing}" if existing else str(ROOT)


def _dump_stacks(job_dir: Path, proc: subprocess.Popen) -> None:
    """Ask each worker of this host that announced itself to print its Python stacks into the log,
    then wait briefly. (Other nodes' pids name other processes here: they are left alone.)"""
    host = socket.gethostname()
    starts = [e for e in _read_events(job_dir) if e.get("event") == "start"]
    announced = {e["pid"] for e in starts if e.get("host") == host}
    # Only torchrun's own children: a worker that already exited may have left its pid to another
    # process, which the signal (terminating by default) must not reach.
    pids = [pid for pid in announced if _parent_pid(pid) == proc.pid]
    for pid in pids:
        with contextlib.suppress(OSError):  # it may exit between the check and the signal
            os.kill(pid, STACK_DUMP_SIGNAL)
    if pids:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STACK_DUMP_GRACE_S)


def _parent_pid(pid: int) -> int | None:
    """The parent of a live process (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (command) state ppid ...": the command may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the job's whole process group (torchrun and its workers), SIGKILL what outlives 10 s."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_events(job_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted(job_dir.glob("events-rank*.jsonl")):
        rank = int(path.stem.removeprefix("events-rank"))
        for line in path.read_text().splitlines():
            if line.strip():  # a rank killed mid-write leaves at most one partial last line
                try:
                    events.append(json.loads(line) | {"rank": rank})
                except json.JSONDecodeError:
                    continue
    return events


def _tail(path: Path) -> str:
    data = path.read_bytes()[-TAIL_CHARS:]
    return data.decode(errors="replace")
