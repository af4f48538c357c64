"""Per best case, the exact settings measured, ready to train with: `best/<case id>/`.

plan.json           result.plan as measured (harness.plan.Plan.to_dict): what `harness.train` reads
training_args.json  the TrainingArguments keywords, with the DeepSpeed dict / FSDP config replaced by
                    the name of their own file (TrainingArguments accepts a path for both)
deepspeed.json      the DeepSpeed config, when the method uses DeepSpeed
fsdp_config.json    the FSDP config, when the method uses FSDP
command.sh          the command that trains the full replication with this setting
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from harness.result import Result

DEEPSPEED_FILE = "deepspeed.json"
FSDP_FILE = "fsdp_config.json"


def _json(data: Any) -> str:
    # The same layout as Plan.to_json, so plan.json is byte for byte what the plan serialises to.
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def training_steps(result: Result) -> int:
    """The replication's optimizer steps: the recipe's; the plan's own for a model since renamed."""
    from models import get_model
    from models.names import UnknownNameError

    try:
        return get_model(result.case.model).recipe.training_steps
    except UnknownNameError:  # a stored result of a model no longer in the registry
        return int(result.plan["training_args"]["max_steps"])


def train_command(result: Result, config_dir: str) -> str:
    return shlex.join(
        ["python", "-m", "harness.train", "--config", config_dir, "--max-steps", str(training_steps(result))]
    )


def export_case(result: Result, best_dir: Path) -> dict[str, Path]:
    """Write the folder for one (feasible) result; returns the files by name."""
    if not result.plan:
        raise ValueError(f"{result.case.id}: the result holds no plan to export")
    folder = best_dir / result.case.id
    folder.mkdir(parents=True, exist_ok=True)
    files = {"plan": folder / "plan.json"}
    files["plan"].write_text(_json(result.plan))

    args = dict(result.plan["training_args"])
    if isinstance(args.get("deepspeed"), dict):
        files["deepspeed"] = folder / DEEPSPEED_FILE
        files["deepspeed"].write_text(_json(args["deepspeed"]))
        args["deepspeed"] = DEEPSPEED_FILE
    if isinstance(args.get("fsdp_config"), dict):
        files["fsdp_config"] = folder / FSDP_FILE
        files["fsdp_config"].write_text(_json(args["fsdp_config"]))
        args["fsdp_config"] = FSDP_FILE
    files["training_args"] = folder / "training_args.json"
    files["training_args"].write_text(_json(args))

    config_dir = f"best/{result.case.id}"
    files["command"] = folder / "command.sh"
    files["command"].write_text(
        "#!/usr/bin/env bash\n"
        f"# {result.case.id}: {result.case.method.slug}, micro-batch {result.micro_batch_size} x "
        f"{result.grad_acc_steps} accumulation, measured {result.training_days:.2f} days.\n"
        "# Run from anywhere: it changes to the report folder, where best/<case id> resolves; the\n"
        "# pretrain-bench packages must be importable (pip install -e <repo>, or PYTHONPATH=<repo>).\n"
        "# harness.train launches torchrun on this node itself.\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")/../.."\n'
        f'{train_command(result, config_dir)} "$@"\n'
    )
    files["command"].chmod(0o755)
    return files


def export_best(results: list[Result], out_dir: Path) -> dict[str, dict[str, Path]]:
    """One folder per given result under out_dir/best; by case id. Folders an earlier report exported
    for cases that are no longer best are removed: a report regenerated into the same place must not
    keep offering a setting that a newer measurement beat."""
    best_dir = out_dir / "best"
    keep = {r.case.id for r in results}
    if best_dir.is_dir():
        for folder in best_dir.iterdir():
            # Only what export_case writes (a folder with a plan.json); anything else is the user's.
            if folder.name not in keep and (folder / "plan.json").is_file():
                shutil.rmtree(folder)
        if not results and not any(best_dir.iterdir()):
            best_dir.rmdir()
    return {r.case.id: export_case(r, best_dir) for r in results}
