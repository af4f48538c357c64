"""Injected faults, so that tests can prove each failure ends in the right verdict.

PRETRAIN_BENCH_FAULT="KIND:rank=R[:mb=M][:step=S]" with KIND one of
  oom   raise torch.OutOfMemoryError on rank R (at micro-batch sizes M and above, as memory grows
        with the batch / at optimizer step S)
  kill  SIGKILL rank R mid-job
  hang  rank R sleeps forever (the job's timeout must end it)
  crash rank R raises a RuntimeError
Unset in real runs; the worker checks it before every micro-batch.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV = "PRETRAIN_BENCH_FAULT"
KINDS = ("oom", "kill", "hang", "crash")


@dataclass(frozen=True, kw_only=True, slots=True)
class Fault:
    kind: str
    rank: int
    micro_batch: int | None = None
    step: int | None = None

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
    unknown = set(values) - {"rank", "mb", "step"}
    if unknown:
        raise ValueError(f"{ENV}: unknown field(s) {', '.join(sorted(unknown))}")
    return Fault(
        kind=kind,
        rank=int(values.get("rank", 0)),
        micro_batch=int(values["mb"]) if "mb" in values else None,
        step=int(values["step"]) if "step" in values else None,
    )


def maybe_inject(fault: Fault | None, *, rank: int, micro_batch: int, step: int) -> None:
    if fault is None or not fault.due(rank=rank, micro_batch=micro_batch, step=step):
        return
    if fault.kind == "oom":
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (injected fault on rank {rank})"
        )
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "hang":
        while True:
            time.sleep(3600)
    raise RuntimeError(f"injected crash on rank {rank}")
