"""The engine end to end on the CPU: real torchrun jobs (gloo, 1 and 2 processes), faults injected."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from harness.cases import Case
from harness.engine import EngineOptions
from harness.methods import Method
from harness.result import micro_batch_limit
from harness.search import measure_case
from harness.store import ResultStore

pytestmark = pytest.mark.slow
NAIVE = Method(free_lunch=False)


def run(tmp_path: Path, case: Case, **options) -> object:
    store = ResultStore(tmp_path / "store")
    opts = EngineOptions(work_dir=tmp_path / "jobs", timeout_s=options.pop("timeout_s", 240), **options)
    return measure_case(case, store=store, environment={"gpu_name": "cpu"}, fingerprint="test", options=opts)


def test_ddp_two_processes_timed_through_the_trainer(tmp_path):
    from models import get_model

    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=2, method=NAIVE)
    result = run(tmp_path, case, max_micro_batch=2, max_measured_grad_acc=2)
    assert result.status == "ok", result.reason
    assert result.micro_batch_size == 2 and result.grad_acc_steps == 2 and result.measured_grad_acc_steps == 2
    timing = result.timing
    assert len(timing["step_samples_s"]) >= 5
    assert (
        timing["distributed_type"].endswith("MULTI_CPU")
        and timing["wrapped_model"] == "DistributedDataParallel"
    )
    assert len(timing["micro_samples_s"]) == len(timing["step_samples_s"])  # one no_sync micro-batch per step
    assert all(x > 0 for x in timing["micro_samples_s"])
    # The recipe's hyper-parameters reached the optimizer the Trainer built.
    recipe = get_model("pythia-14m").recipe
    assert result.optimizer["class"] == "AdamW" and result.optimizer["decoupled_weight_decay"] is True
    group = result.optimizer["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(recipe.lr)
    assert tuple(group["betas"]) == pytest.approx(recipe.betas) and group["eps"] == pytest.approx(recipe.eps)
    assert {g["weight_decay"] for g in result.optimizer["param_groups"]} == {recipe.weight_decay, 0.0}
    # The exported plan is the full replication's.
    assert result.plan["training_args"]["max_steps"] == recipe.training_steps
    assert result.plan["training_args"]["gradient_accumulation_steps"] == 2
    assert result.training_days == pytest.approx(recipe.training_steps * result.step_time_s / 86400)
    assert micro_batch_limit(result) == "not probed"  # the CPU takes the largest candidate


@pytest.mark.parametrize(
    ("method", "why"),
    [
        (Method(free_lunch=False, sharding="zero2"), "DeepSpeed needs CUDA GPUs"),
        (Method(free_lunch=False, sharding="fsdp_full", offloading=True), "offloading to the CPU"),
    ],
    ids=["zero2", "fsdp-offload"],
)
def test_cases_the_cpu_cannot_run_are_refused_with_a_reason_not_faked(tmp_path, method, why):
    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=2, method=method)
    result = run(tmp_path, case, max_micro_batch=2)
    assert result.status == "infeasible"
    assert why in result.reason


@pytest.mark.parametrize("sharding", ["fsdp_full", "fsdp_grad_op"])
def test_fsdp_two_processes_probed_and_timed_through_the_trainer(tmp_path, sharding):
    case = Case(
        model="pythia-14m",
        gpu_type="cpu",
        gpus_per_node=2,
        method=Method(free_lunch=False, sharding=sharding),
    )
    result = run(tmp_path, case, max_micro_batch=2, max_measured_grad_acc=2, probe="always")
    assert result.status == "ok", result.reason
    timing = result.timing
    # The Trainer wrapped the model with accelerate's FSDP2, layer by layer, over gloo.
    assert timing["distributed_type"] == "DistributedType.FSDP" and timing["fsdp"] is True
    assert timing["wrapped_model"].startswith("FSDP")
    assert {"FSDPGPTNeoXLayer", "FSDPEmbedding"} <= set(timing["sharded_modules"])
    assert result.plan["training_args"]["fsdp_config"]["reshard_after_forward"] is (sharding == "fsdp_full")
    assert result.measured_grad_acc_steps == 2 and len(timing["step_samples_s"]) >= 5


def test_oom_on_one_rank_only_is_agreed_and_the_probe_steps_down(tmp_path):
    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=2, method=NAIVE)
    result = run(tmp_path, case, probe="always", env={"PRETRAIN_BENCH_FAULT": "oom:rank=1:mb=2"})
    assert result.status == "ok", result.reason
    assert result.micro_batch_size == 1
    ooms = [e for e in result.probe if e["event"] == "oom"]
    assert [(e["rank"], e["micro_batch"]) for e in ooms] == [(1, 2)]
    # Micro-batch 1 is tried on its own only because 2 did not fit.
    fits = [(e["rank"], e["micro_batch"]) for e in result.probe if e["event"] == "fit"]
    assert sorted(fits) == [(0, 1), (1, 1)]
    assert micro_batch_limit(result) == "memory"
    attempt = next((tmp_path / "jobs" / case.id).iterdir())
    assert sorted(p.name for p in attempt.iterdir()) == ["probe", "probe-mb1", "time-mb1"]


@pytest.mark.slow
def test_a_compiled_probe_compiles_one_graph_for_every_size(tmp_path):
    from harness.engine import Engine
    from harness.methods import FREE_LUNCH

    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH)
    engine = Engine(
        store=ResultStore(tmp_path / "store"),
        environment={},
        fingerprint=lambda c: "test",
        options=EngineOptions(work_dir=tmp_path / "jobs", timeout_s=240),
    )
    outcome = engine.run(case, engine.probe_job(case, [2, 4]), "probe")  # the probe alone: no timing
    assert outcome.ok, outcome.failure()
    assert outcome.result["fits"] == [2, 4]
    assert outcome.result["compiled_graphs"] == 1  # no recompilation when the size changed from 2 to 4
    # Each fit says how many graphs were compiled by then: where a recompilation happened.
    fits = [e for e in outcome.probe_events() if e["event"] == "fit"]
    assert [e["compiled_graphs"] for e in fits] == [1, 1]


def test_micro_batch_1_is_implied_when_2_fits(tmp_path):
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    result = run(tmp_path, case, probe="always", max_micro_batch=4)
    assert result.status == "ok", result.reason
    assert result.micro_batch_size == 4
    tried = [e["micro_batch"] for e in result.probe if e["event"] == "fit" and "implied_by" not in e]
    assert tried == [2, 4]
    implied = [e for e in result.probe if "implied_by" in e]
    assert implied == [{"event": "fit", "micro_batch": 1, "implied_by": 2}]
    assert micro_batch_limit(result) == "cap"  # 4 fitted, and 8 was never tried


def test_accumulation_model_against_the_full_accumulation(tmp_path):
    """step(G) = G*load + (G-1)*t_micro + t_final, checked inside a run at the full accumulation.

    Each step of an 8-micro-batch run is predicted from its own parts (load, its 7 no_sync
    micro-batches' median, final micro-batch + optimizer step) and compared with its own synchronized
    wall time, so that a shared CPU's noise between steps and runs cannot fake or hide a wrong model
    (dropping the accumulation term is off by ~4x here). Step by step, not medians of the run against
    the median wall: with other jobs on a 2-core machine, five steps' walls ranged from 3.1 to 13.2 s
    around parts whose run-wide medians gave 4.8 s. The run with 2 micro-batches must extrapolate to
    the same accumulation; the tight cross-run comparison is the GPU's
    (reports/results/h100x1/accum-check: 0.06% apart).
    """
    case = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    full = run(tmp_path / "b", case, max_micro_batch=1, full_accumulation=True)
    assert full.status == "ok", full.reason
    assert full.grad_acc_steps == full.measured_grad_acc_steps == 8
    timing = full.timing
    walls, finals, loads = timing["measured_step_wall_s"], timing["final_samples_s"], timing["load_samples_s"]
    micro = timing["micro_samples_s"]
    assert len(micro) == 7 * len(walls)  # 7 no_sync micro-batches per step, then the final one
    steps = [micro[7 * i : 7 * i + 7] for i in range(len(walls))]
    # The marks cover the step: what they miss (barrier, end-of-step bookkeeping) is small.
    covered = [
        (load + sum(parts) + final) / wall
        for load, parts, final, wall in zip(loads, steps, finals, walls, strict=True)
    ]
    assert statistics.median(covered) > 0.9, covered
    # The model, from one typical micro-batch of each step, against that step's wall: within 35%.
    ratios = [
        (load + 7 * statistics.median(parts) + final) / wall
        for load, parts, final, wall in zip(loads, steps, finals, walls, strict=True)
    ]
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.35), (ratios, walls, micro, finals, loads)
    extrapolated = run(tmp_path / "a", case, max_micro_batch=1, max_measured_grad_acc=2)
    assert extrapolated.status == "ok", extrapolated.reason
    assert extrapolated.measured_grad_acc_steps == 2 and extrapolated.grad_acc_steps == 8
    # The 6 micro-batches it did not run are in: each step's extrapolation against that step's own
    # wall (about 2x here; 1x without the accumulation term). Per step, because one slow final
    # micro-batch on shared cores (1.7 s against 0.33 s per micro-batch) put a run-wide bound off.
    t = extrapolated.timing
    grown = [p / w for p, w in zip(t["step_samples_s"], t["measured_step_wall_s"], strict=True)]
    assert statistics.median(grown) > 1.3, grown


def test_store_resumes_skips_corrupt_and_forces(tmp_path):
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    first = run(tmp_path, case, max_micro_batch=2)
    assert first.status == "ok", first.reason
    (tmp_path / "store" / case.id / "test-broken.json").write_text("{not json")
    with pytest.warns(UserWarning, match="corrupt"):
        again = run(tmp_path, case, max_micro_batch=2)
    assert again.created == first.created  # resumed: not measured again
    forced = run(tmp_path, case, max_micro_batch=2, force=True)  # no lookup, so no warning
    assert forced.created > first.created
    records = list((tmp_path / "store" / case.id).glob("*.json"))
    assert len(records) == 3 and all(json.loads(p.read_text()) for p in records if "broken" not in p.name)


def test_loader_workers_feed_the_timed_steps_and_key_the_stored_result(tmp_path):
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    default = run(tmp_path, case, max_micro_batch=2)
    assert default.status == "ok", default.reason
    assert default.timing["loader_workers"] == 0  # read back from the Trainer's own loader
    workers = run(tmp_path, case, max_micro_batch=2, loader_workers=2)
    assert workers.status == "ok", workers.reason
    # Not the stored result of the default loader: measured again, with two processes feeding it.
    assert workers.created > default.created
    assert workers.timing["loader_workers"] == 2
    assert workers.plan["training_args"]["dataloader_num_workers"] == 2
    assert run(tmp_path, case, max_micro_batch=2, loader_workers=2).created == workers.created  # resumed


def test_jobs_that_finished_before_an_interruption_are_not_run_again(tmp_path):
    case = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
    opts = EngineOptions(work_dir=tmp_path / "jobs", timeout_s=240, max_micro_batch=2)

    def measure(store: str, fingerprint: str):
        return measure_case(
            case, store=ResultStore(tmp_path / store), environment={}, fingerprint=fingerprint, options=opts
        )

    first = measure("a", "fp1")
    assert first.status == "ok", first.reason
    attempts = sorted((tmp_path / "jobs" / case.id).iterdir())
    assert [p.name for p in sorted(attempts[0].iterdir())] == ["time-mb2"]
    # The controller was stopped after the jobs ended and before it stored the result: a new store,
    # the same job folders. Both jobs' outcomes stand; nothing runs.
    again = measure("b", "fp1")
    assert again.status == "ok" and again.timing == first.timing
    assert sorted((tmp_path / "jobs" / case.id).iterdir()) == attempts
    # Another environment's jobs are not this one's.
    time.sleep(1.1)  # attempt folders are named to the second
    other = measure("c", "fp2")
    assert other.status == "ok" and other.timing != first.timing
    assert len(list((tmp_path / "jobs" / case.id).iterdir())) == len(attempts) + 1
    # An attempt that stored an error (a sanity gate, say) made it with its jobs: measured afresh.
    from harness.result import Result

    ResultStore(tmp_path / "d").append(
        Result(case=case, status="error", environment={}, fingerprint="fp1", reason="sanity gate: MFU 1.2")
    )
    time.sleep(1.1)
    fresh = measure("d", "fp1")
    assert fresh.status == "ok" and fresh.timing != first.timing
    assert len(list((tmp_path / "jobs" / case.id).iterdir())) == len(attempts) + 2


def test_parameter_table_matches_the_models():
    from harness.param_counts import PARAMETERS
    from models import MODELS

    for name, spec in MODELS.items():
        assert PARAMETERS.get(name) == spec.num_parameters(), name
