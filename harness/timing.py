"""Step timing inside Trainer.train(), with the device synchronized and ranks barriered at boundaries.

At the end of every optimizer step (on_step_end) all ranks synchronize their device and meet at a
barrier, then the host clock is read: the step's wall time is the time between two such points, so it
covers data loading, every micro-batch, gradient sync, clipping and the optimizer. Inside a step,
device events (recorded in stream order, never stalling the host) split it into: loading (up to the
first micro-batch), each non-final micro-batch (forward + backward under no_sync), and the final
micro-batch plus the optimizer step. Then a step at any accumulation G is
    step(G) = G * load_per_micro + (G - 1) * t_micro + t_final
which the accumulation check validates against a run at the full G.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class Clock:
    """Marks points in the device's stream (CUDA events) or on the host (CPU jobs are synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(kw_only=True, slots=True)
class StepSample:
    wall_s: float
    load_s: float
    micro_s: list[float]
    final_s: float
    loss: float
    micro_batches: int

    @property
    def residual_s(self) -> float:
        """Host-side time the device marks do not cover (the barrier wait, end-of-step bookkeeping)."""
        return max(0.0, self.wall_s - self.load_s - sum(self.micro_s) - self.final_s)

    def predict(self, grad_acc_steps: int) -> float:
        """This step's time extrapolated to `grad_acc_steps` micro-batches (see the module docstring)."""
        per_micro_load = self.load_s / self.micro_batches
        t_micro = statistics.fmean(self.micro_s) if self.micro_s else 0.0
        if grad_acc_steps > 1 and not self.micro_s:
            raise ValueError("cannot extrapolate: this step had no non-final micro-batch")
        return (
            grad_acc_steps * per_micro_load + (grad_acc_steps - 1) * t_micro + self.final_s + self.residual_s
        )


@dataclass(kw_only=True, slots=True)
class StepRecorder(TrainerCallback):
    """Trainer callback + the measured trainer's hook: collects one StepSample per optimizer step."""

    device: torch.device
    samples: list[StepSample] = field(default_factory=list)
    clock: Clock = field(init=False)
    _origin: Any = None
    _host: float = 0.0
    _micro_marks: list[Any] = field(default_factory=list)
    last_loss: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.clock = Clock(self.device)

    def _restart(self) -> None:
        self.clock.synchronize()
        barrier()
        self._host = time.perf_counter()
        self._origin = self.clock.mark()
        self._micro_marks = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._restart()

    def micro_batch_begins(self) -> None:
        self._micro_marks.append(self.clock.mark())

    def on_step_end(self, args, state, control, **kwargs):
        end = self.clock.mark()
        self.clock.synchronize()
        barrier()
        wall = time.perf_counter() - self._host
        marks = self._micro_marks
        starts = [self.clock.seconds(self._origin, m) for m in marks]
        total = self.clock.seconds(self._origin, end)
        bounds = [*starts, total]
        self.samples.append(
            StepSample(
                wall_s=wall,
                load_s=starts[0],
                micro_s=[bounds[i + 1] - bounds[i] for i in range(len(marks) - 1)],
                final_s=total - starts[-1],
                loss=float(self.last_loss) if self.last_loss is not None else float("nan"),
                micro_batches=len(marks),
            )
        )
        self._restart()


def summarize(samples: list[StepSample], *, warmup: int, grad_acc_steps: int) -> dict[str, Any]:
    """Median and spread of the timed (post-warm-up) steps, each extrapolated to `grad_acc_steps`."""
    timed = samples[warmup:]
    if len(timed) < 1:
        raise ValueError(f"no timed steps: {len(samples)} steps ran, {warmup} of them warm-up")
    predicted = [s.predict(grad_acc_steps) for s in timed]
    walls = [s.wall_s for s in timed]
    micro = [m for s in timed for m in s.micro_s]
    quartiles = statistics.quantiles(predicted, n=4) if len(predicted) > 1 else [predicted[0]] * 3
    first = samples[0].wall_s
    return {
        "step_time_s": statistics.median(predicted),
        "step_time_spread_s": quartiles[2] - quartiles[0],
        "step_samples_s": predicted,
        "measured_step_wall_s": walls,
        "measured_step_wall_median_s": statistics.median(walls),
        "t_micro_s": statistics.median(micro) if micro else None,
        "t_final_s": statistics.median(s.final_s for s in timed),
        "t_load_per_micro_s": statistics.median(s.load_s / s.micro_batches for s in timed),
        "t_residual_s": statistics.median(s.residual_s for s in timed),
        "micro_samples_s": micro,
        "final_samples_s": [s.final_s for s in timed],
        "load_samples_s": [s.load_s for s in timed],
        # The first step carries compilation, autotuning and allocator growth.
        "first_step_s": first,
        "first_step_overhead_s": max(0.0, first - statistics.median(walls)),
        "losses": [s.loss for s in samples],
    }
