"""`python -m harness.train`: train with an exported plan folder, as a user runs it from anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cases import Case
from harness.methods import Method
from harness.plan import make_plan

REPO = Path(__file__).resolve().parents[1]


def train(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "harness.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_trains_an_exported_plan_from_a_relative_path(tmp_path):
    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=Method(free_lunch=False))
    plan = make_plan(case, 2, 1, max_steps=3)
    folder = tmp_path / "best" / "x"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))

    # A relative --config must resolve against the user's directory, not the repository where the
    # job itself runs.
    proc = train(tmp_path, "--config", "best/x", "--max-steps", "3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "trained 3 steps" in proc.stdout, proc.stdout
    assert "step time: median" in proc.stdout
    job_dir = folder / "train"
    assert str(job_dir / "output.log") in proc.stdout
    assert (job_dir / "output.log").is_file()
    job = json.loads((job_dir / "job.json").read_text())
    assert job["mode"] == "train" and job["device"] == "cpu"
    args = job["plan"]["training_args"]
    assert args["max_steps"] == 3
    assert args["output_dir"] == str(job_dir / "trainer")  # absolute, under the exported folder
    # Everything else is the exported plan, unchanged.
    exported = plan.to_dict()["training_args"]
    assert {k: v for k, v in args.items() if k != "output_dir"} == {
        k: v for k, v in exported.items() if k != "output_dir"
    }
    result = json.loads((job_dir / "result.json").read_text())
    assert result["steps"] == 3
    assert not (REPO / "best").exists()


def test_a_folder_without_plan_json_is_a_usage_error(tmp_path):
    (tmp_path / "best" / "empty").mkdir(parents=True)
    for config in ("best/missing", "best/empty"):
        proc = train(tmp_path, "--config", config, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "plan.json not found" in proc.stderr
        assert str(tmp_path / config / "plan.json") in proc.stderr  # the resolved path it looked for
        assert "usage: python -m harness.train" in proc.stderr
        assert "Traceback" not in proc.stderr
