"""What a worker does with its job, by mode:
  probe     one optimizer step per micro-batch size, ascending, until one runs out of memory;
  time      warm-up then timed optimizer steps through Trainer.train(), recorded by harness.timing;
  train     plain training with the plan (loss parity, exported settings);
  validate  warm-up then a window of steps timed with one synchronization at each end.
A rank that runs out of memory records it and exits at once with OOM_EXIT: its peers may be blocked in
a collective it will never join, and torchrun then stops them, so the job ends instead of hanging.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from harness import oom
from harness.job import Job
from harness.timing import Clock, StepRecorder, barrier, summarize
from harness.trainer import (
    MeasuredTrainer,
    ProbeCallback,
    build_trainer,
    compile_figures,
    compiled_graphs,
    current_device,
    max_over_ranks,
    memory_figures,
    reset_peak,
    what_ran,
    write_event,
)

OOM_EXIT = 75  # EX_TEMPFAIL: the launcher reads the OOM event rather than the exit code


def events_file(out: Path, rank: int) -> Path:
    return out / f"events-rank{rank}.jsonl"


def run_probe(job: Job, out: Path, rank: int) -> dict[str, Any]:
    ramp = list(job.micro_batches)
    if job.compiled:
        # Each recompilation costs about a minute on a GPU: say in output.log what triggered it.
        torch._logging.set_logs(recompiles=True)
    probe_cb = ProbeCallback(ramp, events_file(out, rank))
    trainer = build_trainer(job, recorder=None, ramp=ramp, extra_callbacks=[probe_cb])
    trainer.args.max_steps = len(ramp)
    train_or_record_oom(trainer, out, rank, probe=probe_cb)
    return {"mode": "probe", "fits": ramp, "compiled_graphs": compiled_graphs(), "compile": compile_figures()}


def run_timing(job: Job, out: Path, rank: int) -> dict[str, Any]:
    recorder = StepRecorder(device=current_device())
    trainer = build_trainer(job, recorder=recorder, ramp=None)
    reset_peak(trainer)
    train_or_record_oom(trainer, out, rank)
    peak = memory_figures(trainer)
    peak_all = max_over_ranks(peak["peak_reserved_gib"])
    stats = summarize(
        recorder.samples, warmup=job.warmup_steps, grad_acc_steps=job.target_grad_acc_steps or 1
    )
    return {
        "mode": "time",
        **stats,
        "warmup_steps": job.warmup_steps,
        "timed_steps": len(recorder.samples) - job.warmup_steps,
        "measured_grad_acc_steps": trainer.args.gradient_accumulation_steps,
        "peak_memory_gib": peak_all,
        "memory_total_gib": peak["total_gib"],
        **what_ran(trainer),
    }


def train_or_record_oom(trainer: Trainer, out: Path, rank: int, probe: ProbeCallback | None = None) -> None:
    """trainer.train(); out of memory becomes an event the launcher reads (the verdict names the
    micro-batch and the memory asked for) and the OOM exit. The micro-batch is the probe's current
    size, else the plan's."""
    try:
        trainer.train()
    except BaseException as error:
        if not oom.is_oom(error):
            raise
        micro_batch = probe.current if probe is not None else trainer.args.per_device_train_batch_size
        measured = trainer if isinstance(trainer, MeasuredTrainer) else None
        figures = oom.describe(error, memory_figures(measured) if measured is not None else None)
        write_event(events_file(out, rank), {"event": "oom", "micro_batch": micro_batch, **figures})
        exit_now(OOM_EXIT)


def run_train(job: Job, out: Path, rank: int) -> dict[str, Any]:
    recorder = StepRecorder(device=current_device())
    trainer = build_trainer(job, recorder=recorder, ramp=None)
    started = time.perf_counter()
    train_or_record_oom(trainer, out, rank)
    return {
        "mode": "train",
        "steps": trainer.state.global_step,
        "elapsed_s": time.perf_counter() - started,
        "step_wall_s": [s.wall_s for s in recorder.samples],
        "losses": [s.loss for s in recorder.samples],
        # Parity compares losses; these say which optimizer and code path produced them.
        **what_ran(trainer),
    }


class WindowTimer(TrainerCallback):
    """Times `steps` optimizer steps after `warmup` with one synchronization at each end of the window:
    steady-state throughput with the host free to run ahead of the device, as in real training."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0
        self.clock = Clock(current_device())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.warmup + self.steps):
            self.clock.synchronize()
            barrier()
            now = time.perf_counter()
            if state.global_step == self.warmup:
                self.start = now
            else:
                self.end = now


def run_validation(job: Job, out: Path, rank: int) -> dict[str, Any]:
    timer = WindowTimer(job.warmup_steps, job.timed_steps)
    trainer = build_trainer(job, recorder=None, ramp=None, extra_callbacks=[timer])
    train_or_record_oom(trainer, out, rank)
    return {
        "mode": "validate",
        "window_step_s": (timer.end - timer.start) / timer.steps,
        "timed_steps": timer.steps,
        "warmup_steps": timer.warmup,
        "grad_acc_steps": trainer.args.gradient_accumulation_steps,
        **what_ran(trainer),
    }


def exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


MODES = {"probe": run_probe, "time": run_timing, "train": run_train, "validate": run_validation}
