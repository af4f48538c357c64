"""Launchers: run one `Job` as a real distributed job and return its outcome with every rank's events.

`Launcher` is the interface the engine and the search strategies use; `LocalLauncher` runs torchrun
on this node (one node: a c10d rendezvous on a free local port, so parallel controllers never
collide; several nodes: the same command on every node, meeting at MASTER_ADDR/MASTER_PORT as SLURM
job steps set them). Each job leases its GPUs from the node's pool and sees only those; it runs in
a session of its own under a timeout, and the launcher owns every process it starts
(harness.processes): whatever ends the job, no worker outlives it. Output goes to the job folder;
the outcome says how the job ended and, for a failure, which rank failed first and why.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import processes
from harness.env import ROOT
from harness.failure import first_failure, read_log
from harness.gpu_pool import GpuPool
from harness.job import JOB_FILE, Job

# NVLink multicast (NVLS) can take a shared host's GPUs out of service; the suite never needs it.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TAIL_CHARS = 4000
# Sent to every worker before a timed-out job is killed; the worker's faulthandler prints all stacks.
STACK_DUMP_SIGNAL = signal.SIGUSR1
STACK_DUMP_GRACE_S = 3.0
OUTCOME_FILE = "outcome.json"  # how the job ended, written by the launcher once it has
RESULT_FILE = "result.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    returncode: int | None
    timed_out: bool
    elapsed_s: float
    result: dict[str, Any] | None
    events: list[dict[str, Any]] = field(hash=False)
    output_tail: str
    job_dir: Path
    devices: tuple[str, ...] = ()  # the GPUs the job ran on
    reused: bool = False  # the outcome of an earlier attempt's job, not run again
    leftovers_killed: int = 0  # workers still alive after torchrun ended, killed by the launcher

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None

    def oom_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "oom"]

    def probe_events(self) -> list[dict[str, Any]]:
        """What a probe found: each rank's fit and out-of-memory events."""
        return [e for e in self.events if e.get("event") in ("fit", "oom")]

    def failure(self) -> str:
        """Why the job did not produce a result, in one line: how it ended, what it was doing, and the
        first failing rank's own error."""
        if self.timed_out:
            head = f"job timed out after {self.elapsed_s:.0f} s and was killed"
        elif self.returncode is not None and self.returncode < 0:
            head = f"job killed by signal {-self.returncode}"
        elif self.returncode == 0:
            head = f"job exited with code 0 without a result (rank 0 wrote no {RESULT_FILE})"
        else:
            head = f"job exited with code {self.returncode}"
        cause = first_failure(self.events, read_log(self.job_dir / "output.log") or self.output_tail)
        doing = self.unfinished_try()
        doing_text = f" while trying micro-batch {doing}" if doing is not None else ""
        return f"{head}{doing_text}{': ' + cause if cause else ''} (log: {self.job_dir / 'output.log'})"

    def unfinished_try(self) -> int | None:
        """The probe micro-batch some rank started and did not finish, if the job ended mid-try."""
        started: dict[int, int] = {}
        for event in self.events:
            if event.get("event") == "try":
                started[event["rank"]] = event["micro_batch"]
            elif event.get("event") in ("fit", "oom") and started.get(event["rank"]) == event["micro_batch"]:
                del started[event["rank"]]
        return max(started.values()) if started else None


class Launcher:
    """Runs jobs. `run` one job in `job_dir` (or takes the finished outcome of the same job from one
    of the `reuse` folders); `run_all` several independent jobs, at the same time where it can."""

    name = "launcher"
    parallel = False

    def run(self, job: Job, job_dir: Path, *, reuse: Sequence[Path] = ()) -> JobOutcome:
        raise NotImplementedError

    def run_all(self, jobs: Sequence[tuple[Job, Path, Sequence[Path]]]) -> list[JobOutcome]:
        return [self.run(job, job_dir, reuse=reuse) for job, job_dir, reuse in jobs]


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


class LocalLauncher(Launcher):
    """torchrun on this node. GPU jobs lease their GPUs from `pool`; with `parallel`, `run_all` runs
    independent jobs side by side on disjoint GPUs (off unless a check showed that a case timed beside
    others agrees with the same case timed alone)."""

    name = "local"

    def __init__(
        self,
        *,
        pool: GpuPool | None = None,
        env: dict[str, str] | None = None,
        parallel: bool = False,
        waiting: Callable[[str], None] | None = None,
    ):
        self.pool = pool
        self.env = dict(env or {})
        self.parallel = parallel
        self.waiting = waiting
        self._live: set[subprocess.Popen] = set()  # jobs running now, for an interrupt to end
        self._guard = threading.Lock()

    def run(self, job: Job, job_dir: Path, *, reuse: Sequence[Path] = ()) -> JobOutcome:
        for earlier in reuse:
            if (done := finished_outcome(job, earlier)) is not None:
                return done
        job_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*job_dir.glob("events-rank*.jsonl"), job_dir / RESULT_FILE, job_dir / OUTCOME_FILE]:
            stale.unlink(missing_ok=True)
        job_file = job.in_folder(job_dir).write(job_dir)
        if job.device == "cuda" and self.pool is not None and self.pool.devices:
            told = self._waiting_note(job) if self.waiting else None
            with self.pool.lease(job.nproc, holder=str(job_dir), waiting=told) as devices:
                return self._start(job, job_file, devices)
        return self._start(job, job_file, ())

    def _waiting_note(self, job: Job) -> Callable[[dict], None]:
        def note(held: dict) -> None:
            busy = ", ".join(f"GPU {d} ({(h or {}).get('job', 'another run')})" for d, h in held.items())
            assert self.waiting is not None
            self.waiting(f"[{job.case_id}] waiting for {job.nproc} free GPU(s): {busy or 'all in use'}")

        return note

    def run_all(self, jobs: Sequence[tuple[Job, Path, Sequence[Path]]]) -> list[JobOutcome]:
        if not self.parallel or len(jobs) < 2:
            return super().run_all(jobs)
        width = max(1, len(self.pool.devices) // max(job.nproc for job, _, _ in jobs)) if self.pool else 1
        threads = ThreadPoolExecutor(max_workers=width)
        # Each thread leases its own GPUs; the pool keeps their sets disjoint.
        futures = [threads.submit(self.run, job, job_dir, reuse=reuse) for job, job_dir, reuse in jobs]
        try:
            outcomes = [f.result() for f in futures]
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or a job's launch failed: start nothing more, and end the
            # jobs the other threads are running (the signal reached this thread only).
            threads.shutdown(wait=False, cancel_futures=True)
            with self._guard:
                running = list(self._live)
            for proc in running:
                processes.end_job(proc)
            raise
        threads.shutdown()
        return outcomes

    def _start(self, job: Job, job_file: Path, devices: tuple[str, ...]) -> JobOutcome:
        job_dir = job_file.parent
        cmd = torchrun_command(job.nproc, job_file, num_nodes=job.num_nodes)
        env = {
            **os.environ,
            **SAFE_ENV,
            "PYTHONPATH": _pythonpath(),
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **dict(job.env),
        }
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        if job.device == "cpu":
            # CPU jobs share the cores this process may use: one share of them per rank keeps ranks
            # from fighting.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            env.setdefault("OMP_NUM_THREADS", str(max(1, cores // job.nproc)))
        log_path = job_dir / "output.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            log.write((" ".join(cmd) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                # torchrun dies with this thread of the controller, and its workers with it (each
                # asks for the same of torchrun): a controller killed outright leaves nothing running.
                preexec_fn=processes.die_with_parent,
            )
            with self._guard:
                self._live.add(proc)
            timed_out = False
            try:
                proc.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _dump_stacks(job_dir, proc)
                processes.end_job(proc)
            except BaseException:
                # Interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the suite): no outcome
                # is recorded, the job did not end by itself.
                processes.end_job(proc)
                raise
            finally:
                with self._guard:
                    self._live.discard(proc)
                # torchrun has ended; a worker that outlived it (it ignored torchrun's SIGTERM and
                # torchrun was killed before its own SIGKILL, or was adopted before the tree was
                # seen) is ended here, however the job ended.
                leftovers = processes.kill_all(_workers(job_dir))
        elapsed = time.monotonic() - started
        ended = {
            "returncode": proc.returncode,
            "timed_out": timed_out,
            "elapsed_s": elapsed,
            "devices": list(devices),
            "leftovers_killed": len(leftovers),
        }
        (job_dir / OUTCOME_FILE).write_text(json.dumps(ended))
        return _load_outcome(job_dir, ended)


def _workers(job_dir: Path) -> list[processes.Proc]:
    """The workers of this host that announced themselves in the job's events."""
    host = socket.gethostname()
    return [
        processes.Proc(pid=e["pid"], ppid=0, started=e["started"])
        for e in _read_events(job_dir)
        if e.get("event") == "start" and e.get("host") == host and "started" in e
    ]


def finished_outcome(job: Job, job_dir: Path) -> JobOutcome | None:
    """The outcome of `job` if `job_dir` holds the same job, ended with a verdict: a result, or an
    out-of-memory event. Crashes and timeouts say nothing about the case and are run again.

    A job whose launcher was stopped after rank 0 wrote its result (renamed into place whole, once
    every rank has trained) finished too, though no outcome was recorded: its result stands if it was
    written before this controller started. A later one comes from a job orphaned by a controller
    killed outright, which may have trained beside this controller's jobs: it is run again."""
    try:
        earlier = Job.from_dict(json.loads((job_dir / JOB_FILE).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError, ValueError, KeyError):
        return None
    if earlier.comparable() != job.comparable():
        return None
    try:
        ended = json.loads((job_dir / OUTCOME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        if not _written_before_this_controller(job_dir / RESULT_FILE):
            return None
        ended = {"returncode": 0, "timed_out": False, "elapsed_s": math.nan}
    if ended["timed_out"]:
        return None
    outcome = _load_outcome(job_dir, ended, reused=True)
    return outcome if outcome.ok or outcome.oom_events() else None


# When this controller started (harness.launch is imported before any job runs).
CONTROLLER_STARTED = time.time()


def _written_before_this_controller(path: Path) -> bool:
    try:
        return path.stat().st_mtime < CONTROLLER_STARTED
    except FileNotFoundError:
        return False


def _load_outcome(job_dir: Path, ended: dict[str, Any], *, reused: bool = False) -> JobOutcome:
    result_file = job_dir / RESULT_FILE
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
        devices=tuple(ended.get("devices", ())),
        reused=reused,
        leftovers_killed=ended.get("leftovers_killed", 0),
    )


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{existing}" if existing else str(ROOT)


def _dump_stacks(job_dir: Path, proc: subprocess.Popen) -> None:
    """Ask each worker of this job to print its Python stacks into the log, then wait briefly."""
    workers = [w for w in _workers(job_dir) if processes.is_alive(w)]
    # Only processes of this job's tree: the signal (terminating by default) must reach no other.
    tree = {p.pid for p in processes.process_tree(proc.pid)}
    signalled = processes.kill_all([w for w in workers if w.pid in tree], STACK_DUMP_SIGNAL)
    if signalled:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STACK_DUMP_GRACE_S)


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
