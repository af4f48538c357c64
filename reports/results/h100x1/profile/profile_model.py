"""Where one micro-batch of a model spends its GPU time: forward+backward under several settings, timed
with the GPU synchronized, then a kernel table of the Trainer's free-lunch setting run eagerly.

usage, from the repository root:
    PYTHONPATH=. python reports/results/h100x1/profile/profile_model.py MODEL MICRO_BATCH OUT_DIR
(convnext-profile.md came from MODEL convnext, MICRO_BATCH 32)
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from models import get_model

WARMUP, TIMED = 3, 7


def step_time(model, batch, *, autocast: bool) -> float:
    times = []
    for i in range(WARMUP + TIMED):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext():
            loss = model(**batch).loss
        loss.backward()
        torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    name, micro, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    spec = get_model(name)
    flops = spec.flops_per_sample() * micro
    variants = [
        # label, tf32, channels_last, compile, bf16 autocast, cudnn.benchmark
        ("fp32 eager (naive)", False, False, False, False, False),
        ("tf32 eager", True, False, False, False, False),
        ("tf32 eager cudnn.benchmark", True, False, False, False, True),
        ("tf32 eager channels_last", True, True, False, False, False),
        ("tf32 eager channels_last cudnn.benchmark", True, True, False, False, True),
        ("tf32 compiled (free lunch)", True, False, True, False, False),
        ("tf32 compiled cudnn.benchmark", True, False, True, False, True),
        ("bf16 autocast eager", True, False, False, True, False),
        ("bf16 autocast compiled", True, False, True, True, False),
    ]
    rows = []
    for label, tf32, channels_last, compiled, bf16, bench in variants:
        torch.manual_seed(0)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = bench
        torch._dynamo.reset()
        model = spec.build_model().cuda().train()
        batch = spec.make_batch(micro, device="cuda")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        runner = torch.compile(model) if compiled else model
        seconds = step_time(runner, batch, autocast=bf16)
        rows.append((label, seconds, flops / seconds / 1e12))
        print(f"{label:45s} {seconds * 1e3:9.1f} ms  {flops / seconds / 1e12:6.1f} TFLOP/s", flush=True)
        del model, runner, batch
        torch.cuda.empty_cache()

    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = spec.build_model().cuda().train()
    batch = spec.make_batch(micro, device="cuda")
    step_time(model, batch, autocast=False)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=90)

    gpu = torch.cuda.get_device_name()
    lines = [
        f"# {name}: one micro-batch of {micro}, forward + backward, on {gpu}",
        f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
        f"median of {TIMED} synchronized steps after {WARMUP} warm-up; "
        f"{flops / 1e12:.2f} TFLOP per micro-batch",
        "",
        "| setting | ms | TFLOP/s |",
        "|---|---|---|",
        *(f"| {label} | {s * 1e3:.1f} | {tf:.1f} |" for label, s, tf in rows),
        "",
        "## Kernels of 3 micro-batches, TF32 eager (the free-lunch numerics without compile)",
        "```",
        table,
        "```",
    ]
    (out / f"{name}-profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 14 + len(rows)]))


if __name__ == "__main__":
    main()
