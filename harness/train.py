"""Train with an exported setting: `python -m harness.train --config runs/report/<run>/best/<case id>`.

Reads the folder's plan.json (the exact plan the benchmark measured), and launches real training
through torchrun on this node with the same worker code the benchmark timed, for --max-steps
optimizer steps (default: the plan's, i.e. the whole replication). The synthetic data stands in for
a dataset: swap `harness.worker.SyntheticDataset` for yours to train for real.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.job import Job
from harness.launch import LocalLauncher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="an exported folder holding plan.json")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the plan's)")
    parser.add_argument("--output-dir", type=Path, default=None, help="job folder (default: <config>/train)")
    parser.add_argument("--timeout", type=float, default=7 * 86400.0, help="seconds before the job is killed")
    args = parser.parse_args(argv)
    # Jobs run with the repository as their working directory: make the user's paths absolute.
    args.config = args.config.resolve()
    args.output_dir = args.output_dir.resolve() if args.output_dir else None

    plan_file = args.config / "plan.json"
    if not plan_file.is_file():
        parser.error(
            f"{plan_file} not found: --config takes a folder exported by the report (best/<case id>)"
        )
    plan = json.loads(plan_file.read_text())
    job_dir = args.output_dir or args.config / "train"
    if args.max_steps is not None:
        plan["training_args"]["max_steps"] = args.max_steps
    case = plan["case"]
    job = Job(
        mode="train",
        plan=plan,
        nproc=case["gpus_per_node"],
        num_nodes=case["num_nodes"],
        device="cpu" if case["gpu_type"] == "cpu" else "cuda",
        timeout_s=args.timeout,
    )
    outcome = LocalLauncher().run(job, job_dir)
    if not outcome.ok:
        print(outcome.failure(), file=sys.stderr)
        return 1
    result = outcome.result or {}
    walls = result.get("step_wall_s", [])
    print(
        f"trained {result.get('steps')} steps in {result.get('elapsed_s', 0.0):.1f} s "
        f"(last loss {result.get('losses', [float('nan')])[-1]:.4f}); log: {job_dir / 'output.log'}"
    )
    if walls:
        print(f"step time: median {sorted(walls)[len(walls) // 2]:.4f} s over {len(walls)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
