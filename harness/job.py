"""A `Job`: what one distributed run of the worker trains, typed and frozen.

The engine and the search strategies make jobs; a launcher runs them and returns a `JobOutcome`; the
worker reads the job back from `job.json` and trains exactly what it says. A job is plain data: two
jobs that compare equal train the same thing, which is how a resumed search finds a job that already
finished instead of running it again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MODES = ("probe", "time", "train", "validate")
JOB_FILE = "job.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    mode: str  # probe | time | train | validate
    # Plan.to_dict() with this job's steps in training_args (output_dir is filled in by the launcher).
    plan: dict[str, Any] = field(hash=False)
    nproc: int  # processes (GPUs) per node
    num_nodes: int = 1
    device: str = "cuda"  # "cuda" or "cpu"
    # probe: the micro-batch sizes to try, ascending, one optimizer step each. An `adaptive` probe
    # tries the first sizes, fits the memory model to them and goes on with the sizes it predicts.
    micro_batches: tuple[int, ...] = ()
    adaptive: bool = False
    candidates: tuple[int, ...] = ()  # the sizes an adaptive probe may choose from
    memory_budget_gib: float | None = None  # what an adaptive probe may plan to fill
    # time / validate: warm-up and timed optimizer steps; the accumulation a timing extrapolates to.
    warmup_steps: int = 0
    timed_steps: int = 0
    target_grad_acc_steps: int | None = None
    fingerprint: str = ""  # the environment the job belongs to (a resumed run reuses only its own)
    timeout_s: float = 1800.0
    env: tuple[tuple[str, str], ...] = ()  # extra environment (injected faults in tests)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown job mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.nproc < 1 or self.num_nodes < 1:
            raise ValueError(
                f"a job needs at least one process and node, got {self.nproc} x {self.num_nodes}"
            )
        if self.mode == "probe" and not self.micro_batches:
            raise ValueError("a probe job needs micro-batch sizes to try")
        if self.timeout_s <= 0:
            raise ValueError(f"a job timeout must be positive, got {self.timeout_s}")

    @property
    def case_id(self) -> str:
        return self.plan["case"]["id"]

    @property
    def training_args(self) -> dict[str, Any]:
        return self.plan["training_args"]

    @property
    def compiled(self) -> bool:
        return bool(self.training_args.get("torch_compile"))

    def to_dict(self) -> dict[str, Any]:
        # Through JSON: tuples become lists, as a job read back from job.json has them.
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"job has unknown fields: {', '.join(sorted(unknown))}")
        tuples = {"micro_batches", "candidates"}
        values: dict[str, Any] = {k: (tuple(v) if k in tuples else v) for k, v in data.items()}
        values["env"] = tuple((str(k), str(v)) for k, v in data.get("env", ()))
        return cls(**values)

    def comparable(self) -> dict[str, Any]:
        """This job without what differs between two runs of the same job: the folder it ran in (the
        trainer's output_dir lies inside it) and its time limit."""
        data = self.to_dict()
        args = {k: v for k, v in data["plan"]["training_args"].items() if k != "output_dir"}
        data["plan"] = data["plan"] | {"training_args": args}
        data.pop("timeout_s")
        return data

    def in_folder(self, job_dir: Path) -> Job:
        """The job with the trainer's output folder inside `job_dir`."""
        plan = json.loads(json.dumps(self.plan))
        plan["training_args"]["output_dir"] = str(job_dir / "trainer")
        return replace(self, plan=plan)

    def write(self, job_dir: Path) -> Path:
        path = job_dir / JOB_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def read_job(path: Path) -> Job:
    return Job.from_dict(json.loads(path.read_text()))
