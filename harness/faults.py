"""Injected faults, so that tests can prove each failure ends in the right verdict.

PRETRAIN_BENCH_FAULT="KIND:rank=R[:mb=M][:step=S][:pg_timeout=T]" with KIND one of
  oom          raise torch.OutOfMemoryError on rank R (at micro-batch sizes M and above, as memory
               grows with the batch / at optimizer step S)
  kill         SIGKILL rank R mid-job
  hang         rank R sleeps forever (the job's timeout must end it)
  stubborn     rank R ignores SIGTERM, then sleeps forever (only SIGKILL ends it)
  crash        rank R raises a RuntimeError
  exit0        rank R exits with code 0 at once, before any result is written
  compile      inductor finds no C++ compiler on every rank: a compiled CPU plan's compile error
`pg_timeout=T` sets the process group's timeout to T seconds (a `hang` on one rank then ends in the
peers' own collective timeout rather than the job's). Unset in real runs; the worker checks it before
every micro-batch.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV = "PRETRAIN_BENCH_FAULT"
KINDS = ("oom", "kill", "hang", "stubborn", "crash", "exit0", "compile")
MISSING_COMPILER = ("/nonexistent/pretrain-bench-cxx",)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fault:
    kind: str
    rank: int
    micro_batch: int | None = None
    step: int | None = None
    pg_timeout_s: int | None = None

    def due(self, *, rank: int, micro_batch: int, step: int) -> bool:
        if self.micro_batch is None:
            size_matches = True
        elif self.kind == "oom":
            size_matches = micro_batch >= self.micro_batch
        else:
            size_matches = micro_batch == self.micro_batch
        return rank == self.rank and size_matches and self.step in (None, step)


def parse(text: str | None) -> Fault | None:
    if not text:
        return None
    kind, *fields = text.split(":")
    if kind not in KINDS:
        raise ValueError(f"{ENV}: unknown fault {kind!r}; choose from {', '.join(KINDS)}")
    values = dict(f.split("=", 1) for f in fields)
    unknown = set(values) - {"rank", "mb", "step", "pg_timeout"}
    if unknown:
        raise ValueError(f"{ENV}: unknown field(s) {', '.join(sorted(unknown))}")
    return Fault(
        kind=kind,
        rank=int(values.get("rank", 0)),
        micro_batch=int(values["mb"]) if "mb" in values else None,
        step=int(values["step"]) if "step" in values else None,
        pg_timeout_s=int(values["pg_timeout"]) if "pg_timeout" in values else None,
    )


def training_overrides(fault: Fault | None, *, cpu: bool) -> dict[str, object]:
    """TrainingArguments a fault changes before the Trainer is built."""
    if fault is None:
        return {}
    overrides: dict[str, object] = {}
    if fault.pg_timeout_s is not None:
        overrides["ddp_timeout"] = fault.pg_timeout_s
        if cpu:
            # transformers passes ddp_timeout to the process group on accelerators only (5.x): on the
            # CPU the group is made here, with the timeout, and accelerate takes it as it finds it.
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=fault.pg_timeout_s))
    if fault.kind == "compile":
        import torch._inductor.config as inductor

        # A real InductorError from inductor's own code generation; no cached graph may hide it.
        inductor.cpp.cxx = MISSING_COMPILER  # type: ignore[assignment]
        inductor.force_disable_caches = True
    return overrides


def maybe_inject(fault: Fault | None, *, rank: int, micro_batch: int, step: int) -> None:
    if (
        fault is None
        or fault.kind == "compile"
        or not fault.due(rank=rank, micro_batch=micro_batch, step=step)
    ):
        return
    if fault.kind == "oom":
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (injected fault on rank {rank})"
        )
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "exit0":
        os._exit(0)
    if fault.kind == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if fault.kind in ("hang", "stubborn"):
        while True:
            time.sleep(3600)
    raise RuntimeError(f"injected crash on rank {rank}")
