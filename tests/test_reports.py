"""The report from stored results: exact table cells, the best-case exports, the CLI and the HTML page.

The fixture results are written to a temporary ResultStore and read back, as the plugin and
`python -m reports` do; every expected cell below is worked out by hand from them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cases import Case
from harness.methods import FREE_LUNCH, NAIVE, Method
from harness.plan import make_plan
from harness.result import Result
from harness.store import ResultStore
from reports import paper
from reports.build import summary_table, write_report
from reports.rows import groups

ROOT = Path(__file__).resolve().parents[1]
H100_NAME = "NVIDIA H100 80GB HBM3"
OOM = "OOM at micro-batch 1: 93.1 GiB needed, 79.1 GiB total"
PREDICTED = "predicted: 95.0 GiB of weights, gradients and optimizer states; 79.1 GiB total"
CRASH = "worker crashed: exit code -9"
CKPT = Method(free_lunch=True, activation_checkpointing=True)
ZERO1 = Method(free_lunch=True, sharding="zero1")
ZERO2_OFFLOAD = Method(free_lunch=True, sharding="zero2", offloading=True)
ZERO3_OFFLOAD = Method(free_lunch=True, sharding="zero3", offloading=True)
FSDP_FULL_CKPT = Method(free_lunch=True, sharding="fsdp_full", activation_checkpointing=True)
FSDP_GRAD_OP = Method(free_lunch=True, sharding="fsdp_grad_op")
T0 = 1_790_000_000.0


def make_result(
    model: str,
    gpu_type: str,
    gpus: int,
    method: Method,
    days: float | None = None,
    micro_batch: int | None = None,
    *,
    status: str = "ok",
    reason: str = "",
    created: float = T0,
) -> Result:
    case = Case(model=model, gpu_type=gpu_type, gpus_per_node=gpus, method=method)
    environment = {
        "gpu_name": H100_NAME if gpu_type == "h100" else "cpu",
        "gpu_count": gpus,
        "driver": "560.35",
        "cuda": "12.6",
        "torch": "2.11.0",
        "transformers": "5.17.0",
        "deepspeed": "0.19.8",
        "code_version": "0.1.0-abc",
    }
    if status != "ok":
        return Result(case=case, status=status, reason=reason, environment=environment, created=created)
    plan = make_plan(case, micro_batch)
    step = days * 86400 / 143_000
    return Result(
        case=case,
        status="ok",
        micro_batch_size=micro_batch,
        grad_acc_steps=plan.grad_acc_steps,
        measured_grad_acc_steps=min(plan.grad_acc_steps, 4),
        step_time_s=step,
        step_time_spread_s=step / 50,
        training_days=days,
        tflops_per_gpu=300.0,
        mfu=0.3,
        peak_memory_gib=40.0,
        timing={"step_samples_s": [step] * 5},
        plan=plan.to_dict(),
        created=created,
        # The worker saw the GPU through CUDA: its name wins over the controller's in results.csv.
        environment=environment
        | {"worker": {"gpu_name": environment["gpu_name"] + " (worker)", "torch": "2.11.0+cu126"}},
    )


def fixture_results() -> list[Result]:
    return [
        make_result("pythia-160m", "h100", 1, NAIVE, 14.0, 16),
        make_result("pythia-160m", "h100", 1, FREE_LUNCH, 10.0, 32),
        make_result("pythia-160m", "h100", 1, CKPT, 12.0, 64),
        make_result("pythia-160m", "h100", 1, ZERO2_OFFLOAD, 25.0, 32),
        make_result("pythia-160m", "h100", 2, NAIVE, 8.0, 16),
        make_result("pythia-160m", "h100", 2, FREE_LUNCH, 5.0, 32),
        make_result("pythia-160m", "h100", 2, ZERO1, 4.0, 32),
        make_result("pythia-160m", "h100", 2, FSDP_FULL_CKPT, 6.0, 32),
        make_result("pythia-1b", "h100", 1, NAIVE, status="infeasible", reason=OOM),
        make_result("pythia-1b", "h100", 1, FREE_LUNCH, status="infeasible", reason=OOM),
        make_result("pythia-1b", "h100", 1, CKPT, 40.0, 8),
        make_result("pythia-1b", "h100", 1, ZERO3_OFFLOAD, status="error", reason=CRASH),
        make_result("pythia-1b", "h100", 2, NAIVE, status="infeasible", reason=PREDICTED),
        make_result("pythia-1b", "h100", 2, FREE_LUNCH, status="infeasible", reason=OOM),
        # The CPU type has no price: its cost cells stay empty.
        make_result("pythia-14m", "cpu", 2, FREE_LUNCH, 0.05, 4),
        make_result("pythia-14m", "cpu", 2, FSDP_GRAD_OP, 0.04, 2),
    ]


def fill_store(root: Path) -> ResultStore:
    store = ResultStore(root)
    # An older record of a case: the newer one below must replace it everywhere.
    store.append(make_result("pythia-160m", "h100", 1, FREE_LUNCH, 99.0, 16, created=T0 - 3600))
    for result in fixture_results():
        store.append(result)
    return store


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    fill_store(root)
    return root


@pytest.fixture(scope="module")
def report(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    results = list(ResultStore(store_dir).latest_per_case().values())
    return write_report(results, tmp_path_factory.mktemp("report"))


def md_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    """The Markdown file's tables by their `## title`, each a list of rows keyed by column."""
    tables: dict[str, list[dict[str, str]]] = {}
    title, header = "", None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title, header = line[3:], None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip()[1:-1].split(" | ")]
            if header is None:
                header = cells
                tables[title] = []
            else:
                tables[title].append(dict(zip(header, cells, strict=True)))
    return tables


def table(path: Path, prefix: str) -> list[dict[str, str]]:
    found = [rows for title, rows in md_tables(path).items() if title.startswith(prefix)]
    assert len(found) == 1, f"one table titled {prefix!r}* in {path.name}"
    return found[0]


def row_of(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, f"one row {match} in {rows}"
    return found[0]


def test_training_days_matrix_has_our_best_and_the_papers_figure(report):
    rows = table(report["training_days"], "Training days, best")
    assert [r["model"] for r in rows] == ["pythia-160m", "pythia-1b", "pythia-14m"]
    assert list(rows[0]) == ["model", "h100 x1", "h100 x2", "cpu x2"]
    assert rows[0] == {
        "model": "pythia-160m",
        "h100 x1": "10.0 (paper 7)",
        "h100 x2": "4.00 (paper 4)",
        "cpu x2": "not run",
    }
    assert rows[1] == {
        "model": "pythia-1b",
        "h100 x1": "40.0 (paper 34)",
        "h100 x2": "infeasible (paper 16)",
        "cpu x2": "not run",
    }
    assert rows[2] == {"model": "pythia-14m", "h100 x1": "not run", "h100 x2": "not run", "cpu x2": "0.04"}


def test_naive_matrix_against_the_papers_table_4(report):
    rows = table(report["training_days"], "Training days, naive")
    assert row_of(rows, model="pythia-160m") == {
        "model": "pythia-160m",
        "h100 x1": "14.0 (paper 42)",
        "h100 x2": "8.00 (paper 21)",
        "cpu x2": "not run",
    }
    assert row_of(rows, model="pythia-1b")["h100 x1"] == "infeasible (paper 90)"


def test_best_settings_with_the_papers_config_beside(report):
    rows = table(report["optimal_configs"], "Best setting")
    zero1 = row_of(rows, model="pythia-160m", hardware="h100 x2")
    assert [zero1[k] for k in ("method", "sharding", "micro-batch", "accumulation", "days")] == [
        "zero1",
        "zero1",
        "32",
        "16",
        "4.00",
    ]
    assert (zero1["paper method"], zero1["paper micro-batch x acc."], zero1["paper days"]) == (
        "free-lunch",
        "32 x 16",
        "4",
    )
    ckpt = row_of(rows, model="pythia-1b", hardware="h100 x1")
    assert [ckpt[k] for k in ("method", "checkpointing", "days", "MFU")] == ["ckpt", "yes", "40.0", "30.0%"]
    assert ckpt["note"] == "1 of 4 methods ran"
    infeasible = row_of(rows, model="pythia-1b", hardware="h100 x2")
    assert (infeasible["method"], infeasible["note"], infeasible["days"]) == ("infeasible", PREDICTED, "")


def test_naive_vs_best_speedups(report):
    rows = table(report["optimal_configs"], "Naive vs best")
    one = row_of(rows, model="pythia-160m", hardware="h100 x1")
    assert (one["naive days"], one["best days"], one["speedup"], one["paper speedup"]) == (
        "14.0",
        "10.0",
        "1.40x",
        "6.00x",
    )
    assert row_of(rows, model="pythia-160m", hardware="h100 x2")["speedup"] == "2.00x"
    big = row_of(rows, model="pythia-1b", hardware="h100 x1")
    assert (big["naive days"], big["best days"], big["speedup"]) == ("infeasible", "40.0", "")
    assert all(r["model"] != "pythia-14m" for r in rows)  # no naive result there


def test_memory_saving_best_median_worst_relative_to_free_lunch(report):
    rows = table(report["optimal_configs"], "Memory-saving")
    one = row_of(rows, model="pythia-160m", hardware="h100 x1")
    assert one == {
        "model": "pythia-160m",
        "hardware": "h100 x1",
        "free-lunch days": "10.0",
        "options ran": "2 of 2",
        "best days": "12.0",
        "best method": "ckpt",
        "best speedup": "0.83x",
        "median days": "18.5",
        "median speedup": "0.54x",
        "worst days": "25.0",
        "worst method": "zero2-offload",
        "worst speedup": "0.40x",
        "note": "",  # no probe events: not probed, so no cap to name
    }
    two = row_of(rows, model="pythia-160m", hardware="h100 x2")
    assert (two["best speedup"], two["median days"], two["median speedup"], two["worst speedup"]) == (
        "1.25x",
        "5.00",
        "1.00x",
        "0.83x",
    )
    # Free lunch alone is infeasible there: days, but no speedup against it.
    big = row_of(rows, model="pythia-1b", hardware="h100 x1")
    assert (big["free-lunch days"], big["options ran"], big["best days"], big["best speedup"]) == (
        "infeasible",
        "1 of 2",
        "40.0",
        "",
    )


def test_feasibility_matrix_gives_days_or_the_reason(report):
    rows = table(report["optimal_configs"], "Feasibility")
    big = row_of(rows, model="pythia-1b", hardware="h100 x1")
    assert big["naive"] == f"infeasible: {OOM}"
    assert big["ckpt"] == "40.0"
    assert big["zero3-offload"] == f"error: {CRASH}"
    assert big["zero1"] == ""  # not run
    assert row_of(rows, model="pythia-1b", hardware="h100 x2")["naive"] == f"infeasible: {PREDICTED}"


def test_results_csv_has_every_case_once_with_the_workers_view(report):
    with report["results_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    required = [
        "case_id",
        "model",
        "gpu_type",
        "gpu_name",
        "num_nodes",
        "gpus_per_node",
        "method",
        "free_lunch",
        "activation_checkpointing",
        "sharding",
        "offloading",
        "feasible",
        "reason",
        "micro_batch_size",
        "grad_acc_steps",
        "step_time_s",
        "step_time_spread_s",
        "training_days",
        "tflops_per_gpu",
        "mfu",
        "peak_memory_gib",
        "compile_s",
        "torch",
        "transformers",
        "deepspeed",
    ]
    assert set(required) <= set(rows[0])
    assert len(rows) == len(fixture_results()) == len({r["case_id"] for r in rows})
    newest = row_of(rows, case_id="pythia-160m-h100x1-free-lunch")
    assert (newest["training_days"], newest["micro_batch_size"], newest["gpu_name"], newest["torch"]) == (
        "10.0",
        "32",
        f"{H100_NAME} (worker)",
        "2.11.0+cu126",
    )
    oom = row_of(rows, case_id="pythia-1b-h100x1-naive")
    assert (oom["feasible"], oom["status"], oom["reason"], oom["micro_batch_size"], oom["torch"]) == (
        "False",
        "infeasible",
        OOM,
        "",
        "2.11.0",
    )


def test_best_folders_hold_the_exact_plan_and_its_configs(report):
    best = report["best"]
    assert sorted(p.name for p in best.iterdir()) == [
        "pythia-14m-cpux2-fsdp-grad-op",
        "pythia-160m-h100x1-free-lunch",
        "pythia-160m-h100x2-zero1",
        "pythia-1b-h100x1-ckpt",
    ]
    folder = best / "pythia-160m-h100x2-zero1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "command.sh",
        "deepspeed.json",
        "plan.json",
        "training_args.json",
    ]
    plan = make_plan(Case(model="pythia-160m", gpu_type="h100", gpus_per_node=2, method=ZERO1), 32)
    assert (folder / "plan.json").read_text() == plan.to_json() + "\n"  # byte for byte
    assert json.loads((folder / "deepspeed.json").read_text()) == plan.deepspeed
    args = json.loads((folder / "training_args.json").read_text())
    assert args == plan.training_args | {"deepspeed": "deepspeed.json"}
    command = (folder / "command.sh").read_text()
    assert (
        "python -m harness.train --config best/pythia-160m-h100x2-zero1 --max-steps 143000"
        in command.splitlines()[-1]
    )
    assert os.access(folder / "command.sh", os.X_OK)

    fsdp = best / "pythia-14m-cpux2-fsdp-grad-op"
    fsdp_plan = make_plan(Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=2, method=FSDP_GRAD_OP), 2)
    assert json.loads((fsdp / "fsdp_config.json").read_text()) == fsdp_plan.training_args["fsdp_config"]
    assert json.loads((fsdp / "training_args.json").read_text())["fsdp_config"] == "fsdp_config.json"
    assert "--max-steps 1000" in (fsdp / "command.sh").read_text()
    assert not (best / "pythia-160m-h100x1-free-lunch" / "deepspeed.json").exists()


def test_a_report_regenerated_in_place_drops_the_settings_no_longer_best(tmp_path):
    out = tmp_path / "report"
    write_report(fixture_results(), out)
    (out / "best" / "notes.txt").write_text("mine")
    (out / "best" / "scratch").mkdir()
    # A newer free-lunch measurement on two GPUs beats ZeRO-1, which was best before.
    faster = make_result("pythia-160m", "h100", 2, FREE_LUNCH, 3.0, 64, created=T0 + 60)
    results = [r for r in fixture_results() if r.case.id != faster.case.id] + [faster]
    files = write_report(results, out)
    assert sorted(p.name for p in files["best"].iterdir()) == [
        "notes.txt",  # not an export: left alone
        "pythia-14m-cpux2-fsdp-grad-op",
        "pythia-160m-h100x1-free-lunch",
        "pythia-160m-h100x2-free-lunch",
        "pythia-1b-h100x1-ckpt",
        "scratch",
    ]
    (out / "best" / "notes.txt").unlink()
    (out / "best" / "scratch").rmdir()
    files = write_report([r for r in results if not r.feasible], out)
    assert "best" not in files and not (out / "best").exists()


def test_a_micro_batch_a_cap_bounded_is_named_wherever_it_is_compared(tmp_path):
    def probed(result: Result, *, oom: bool) -> Result:
        events = [{"event": "fit", "micro_batch": result.micro_batch_size}]
        return replace(
            result, probe=events + [{"event": "oom", "micro_batch": 2 * result.micro_batch_size}] * oom
        )

    results = [
        probed(make_result("pythia-160m", "h100", 2, FREE_LUNCH, 5.0, 32), oom=True),
        probed(make_result("pythia-160m", "h100", 2, ZERO1, 4.0, 8), oom=False),
        probed(make_result("pythia-160m", "h100", 2, FSDP_FULL_CKPT, 6.0, 8), oom=False),
    ]
    files = write_report(results, tmp_path)
    with files["results_csv"].open(newline="") as f:
        limits = {r["case_id"]: r["micro_batch_limit"] for r in csv.DictReader(f)}
    assert limits == {
        "pythia-160m-h100x2-free-lunch": "memory",
        "pythia-160m-h100x2-zero1": "cap",
        "pythia-160m-h100x2-fsdp-full-ckpt": "cap",
    }
    best = row_of(table(files["optimal_configs"], "Best setting per model"), model="pythia-160m")
    assert best["method"] == "zero1"
    assert best["note"] == "3 of 3 methods ran; micro-batch capped (larger not tried): zero1 at 8"
    saving = row_of(table(files["optimal_configs"], "Memory-saving options"), model="pythia-160m")
    assert saving["note"] == "micro-batch capped (larger not tried): zero1 at 8, fsdp-full-ckpt at 8"
    summary = summary_table(groups(results)).frame.iloc[0]
    assert (summary["method"], summary["micro-batch x acc."]) == ("zero1", "8 x 64 (capped)")
    # Nothing capped, nothing said.
    files = write_report([probed(r, oom=True) for r in results], tmp_path / "uncapped")
    assert row_of(table(files["optimal_configs"], "Memory-saving options"), model="pythia-160m")["note"] == ""


def test_costs_follow_the_papers_formula_and_leave_unpriced_types_empty(report):
    with report["costs_csv"].open(newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {
        "pythia-160m-h100x1-free-lunch",
        "pythia-160m-h100x2-zero1",
        "pythia-1b-h100x1-ckpt",
        "pythia-14m-cpux2-fsdp-grad-op",
    }
    two = rows["pythia-160m-h100x2-zero1"]
    assert float(two["hardware_cost_usd"]) == 2 * 30_000 + 1_500
    assert float(two["cost_per_experiment_usd"]) == pytest.approx(61_500 * 4.0 / 1825)
    cpu = rows["pythia-14m-cpux2-fsdp-grad-op"]
    assert cpu["hardware_cost_usd"] == cpu["cost_per_experiment_usd"] == ""
    assert "no price for cpu" in cpu["note"]
    md = table(report["costs"], "Cost per model")
    assert row_of(md, model="pythia-1b")["hardware cost"] == "$31,000"
    assert row_of(md, model="pythia-1b")["cost per experiment"] == "$679"  # 31,000 x 40 / 1,825
    assert "No price in the hardware registry for: cpu" in report["costs"].read_text()


def test_plots_are_written_and_the_page_is_self_contained(report):
    for name in ("plot_hardware_cost", "plot_cost_per_experiment", "plot_speedups"):
        assert report[name].read_bytes().startswith(b"\x89PNG")
    page = report["index"].read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    for title in (
        "Training days, best setting",
        "Best setting per model",
        "Memory-saving options",
        "Feasibility",
        "Cost per model",
        "results.csv",
    ):
        assert title in page
    assert "infeasible (paper 16)" in page
    assert "python -m harness.train --config best/pythia-1b-h100x1-ckpt" in page


def test_empty_and_all_infeasible_inputs_write_tables_without_plots(tmp_path):
    files = write_report([], tmp_path / "empty")
    assert not any(name.startswith("plot_") for name in files) and "best" not in files
    assert files["index"].is_file() and files["results_csv"].read_text().startswith("case_id,")
    infeasible = [r for r in fixture_results() if not r.feasible]
    files = write_report(infeasible, tmp_path / "infeasible")
    assert not any(name.startswith("plot_") for name in files) and "best" not in files
    assert "infeasible (paper 16)" in files["training_days"].read_text()


def test_paper_sharding_names_map_to_ours():
    assert paper.normalize_sharding("fsdp_shard_grad_op") == "fsdp_grad_op"
    assert paper.normalize_sharding("fsdp_full_shard") == "fsdp_full"
    assert paper.normalize_sharding("zero_1") == "zero1"
    with pytest.raises(ValueError, match="unknown sharding 'zero4'"):
        paper.normalize_sharding("zero4")
    configs = paper.optimal_configs()
    assert len(configs) == 140  # every Appendix-J row parses into a valid Method
    config = configs[("pythia-6.9b", "rtx3090", 2)]
    assert (config.method.slug, config.micro_batch_size, config.grad_acc_steps) == (
        "fsdp-full-offload",
        1,
        512,
    )
    assert math.isnan(paper.paper_days("pythia-6.9b", "h100", 1, 1, "optimal"))  # the paper's "—"
    assert paper.paper_days("pythia-1b", "h100", 2, 4, "optimal") is None  # the paper ran one node


def test_cli_regenerates_the_report_from_the_store(store_dir, report, tmp_path):
    out = tmp_path / "regenerated"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "reports", "--results-dir", str(store_dir), "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The same store gives the same report, file for file (the page differs only in its time stamp).
    for name, key in (
        ("training_days.md", "training_days"),
        ("optimal_configs.md", "optimal_configs"),
        ("costs.md", "costs"),
        ("results.csv", "results_csv"),
        ("costs.csv", "costs_csv"),
    ):
        assert (out / name).read_text() == report[key].read_text(), name
    assert (out / "best" / "pythia-160m-h100x2-zero1" / "deepspeed.json").is_file()
    assert "pythia-160m  h100 x2   zero1" in done.stdout

    empty = subprocess.run(
        [sys.executable, "-m", "reports", "--results-dir", str(tmp_path), "--out", str(tmp_path / "none")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert empty.returncode == 1 and "nothing to report" in empty.stderr
    assert not (tmp_path / "none").exists()


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_the_page_renders_in_a_headless_browser(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine: the page cannot be rendered headless here")
    from matplotlib.image import imread

    shot = tmp_path / "page.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            report["index"].as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # Text, table rules and plots: far from a blank page of one colour.
    assert pixels[..., :3].std() > 0.05
    assert (pixels[..., :3].mean(axis=2) < 0.5).mean() > 0.005  # some dark (text) pixels
