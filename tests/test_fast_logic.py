"""The fast search's decisions against a simulated node: a launcher that answers every job from a
memory and speed model of its own, so that each decision is checked exactly and in milliseconds
(tests/test_fast_search.py runs the same search on real CPU jobs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.cases import Case
from harness.engine import Engine, EngineOptions
from harness.job import Job
from harness.launch import JobOutcome, Launcher
from harness.methods import NAIVE, Method
from harness.search import get_strategy
from harness.store import ResultStore

TOTAL_GIB = 100.0
STATES = {"none": 10.0, "zero1": 6.0, "zero2": 5.0, "zero3": 4.0, "fsdp_grad_op": 5.0, "fsdp_full": 4.0}


@dataclass
class SimulatedNode(Launcher):
    """Memory: states + per-sample activations (checkpointing a quarter of them, naive's eager
    attention three times as many); speed: a fixed cost per step plus a cost per sample. `timing_extra`
    adds memory in timed runs only (compiled graphs that differ from the probe's)."""

    timing_extra: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)  # case id -> seconds per sample
    ran: list[tuple[str, str]] = field(default_factory=list)

    def memory(self, case_id: str, method: Method, micro_batch: int) -> float:
        per_sample = 1.0 if method.free_lunch else 3.0
        if method.activation_checkpointing:
            per_sample /= 4
        states = STATES[method.sharding] - (3.0 if method.offloading else 0.0)
        return 2.0 + states + per_sample * micro_batch

    def run(self, job: Job, job_dir: Path, *, reuse=()) -> JobOutcome:
        case = job.plan["case"]
        method = Method(**case["method"])
        self.ran.append((case["id"], job_dir.name))
        world = job.nproc * job.num_nodes
        events: list[dict] = []
        if job.mode == "probe":
            for size in job.micro_batches:
                need = self.memory(case["id"], method, size)
                if need > TOTAL_GIB:
                    figures = {"needed_gib": need, "total_gib": TOTAL_GIB, "peak_allocated_gib": 0.0}
                    events.append({"event": "oom", "micro_batch": size, "rank": 0, **figures})
                    return self._outcome(job_dir, 75, None, events)
                for rank in range(world):
                    fit = {"peak_reserved_gib": need, "total_gib": TOTAL_GIB, "peak_allocated_gib": need}
                    events.append({"event": "fit", "micro_batch": size, "rank": rank, **fit})
            return self._outcome(job_dir, 0, {"mode": "probe"}, events)
        mb = job.plan["micro_batch_size"]
        need = self.memory(case["id"], method, mb) + self.timing_extra.get(case["id"], 0.0)
        if need > TOTAL_GIB:
            figures = {"needed_gib": need, "total_gib": TOTAL_GIB, "peak_allocated_gib": 0.0}
            events.append({"event": "oom", "micro_batch": mb, "rank": 0, **figures})
            return self._outcome(job_dir, 75, None, events)
        target = job.target_grad_acc_steps or 1
        step = target * (0.05 + self.speed.get(case["id"], 0.01) * mb)
        timing = {
            "step_time_s": step,
            "step_time_spread_s": 0.0,
            "step_samples_s": [step] * 5,
            "measured_grad_acc_steps": job.plan["grad_acc_steps"],
            "peak_memory_gib": need,
            "first_step_overhead_s": 0.0,
            "losses": [1.0] * 8,
        }
        return self._outcome(job_dir, 0, timing, events)

    def _outcome(self, job_dir: Path, code: int, result, events) -> JobOutcome:
        return JobOutcome(
            returncode=code,
            timed_out=False,
            elapsed_s=1.0,
            result=result,
            events=events,
            output_tail="",
            job_dir=job_dir,
        )


def case(
    sharding: str = "none", offloading: bool = False, ckpt: bool = False, free_lunch: bool = True
) -> Case:
    method = Method(
        free_lunch=free_lunch, sharding=sharding, offloading=offloading, activation_checkpointing=ckpt
    )
    return Case(model="pythia-160m", gpu_type="h200", gpus_per_node=2, method=method)


def search(tmp_path: Path, cases: list[Case], node: SimulatedNode, strategy: str = "fast"):
    engine = Engine(
        store=ResultStore(tmp_path / "store"),
        environment={"gpu_name": "simulated"},
        fingerprint=lambda c: "sim",
        options=EngineOptions(work_dir=tmp_path / "jobs"),
        launcher=node,
    )
    return engine.search(cases, get_strategy(strategy)), engine


def test_the_fast_search_prunes_with_figures_and_finds_the_exhaustive_best(tmp_path):
    cases = [
        Case(model="pythia-160m", gpu_type="h200", gpus_per_node=2, method=NAIVE),
        case(),
        case("fsdp_grad_op"),
        case("fsdp_full"),
        case("fsdp_grad_op", offloading=True),
        case(ckpt=True),
    ]
    speed = {cases[2].id: 0.009}  # shard-grad-op a little faster per sample than DDP
    fast, engine = search(tmp_path / "fast", cases, SimulatedNode(speed=speed))
    exhaustive, _ = search(tmp_path / "exhaustive", cases, SimulatedNode(speed=speed), "exhaustive")
    status = {c.method.slug: fast[c.id].status for c in cases}
    # Every free-lunch method without checkpointing fits 64 (128 needs 140 GiB of 100); full-shard
    # shards more than shard-grad-op there, the offloading one gains nothing over DDP; checkpointing
    # fits 256 and stays. Naive's prediction (16, with 32 within 15% of the card) was probed.
    assert status == {
        "naive": "ok",
        "free-lunch": "ok",
        "fsdp-grad-op": "ok",
        "fsdp-full": "pruned",
        "fsdp-grad-op-offload": "pruned",
        "ckpt": "ok",
    }
    why = fast[cases[3].id]
    assert why.rule == "sharding" and "fsdp-grad-op fits micro-batch 64" in why.reason
    assert "predicted: micro-batch 64 needs" in why.reason
    assert fast[cases[4].id].rule == "offload"
    assert fast[cases[0].id].micro_batch_size == 16 and (cases[0].id, "verify") in node_jobs(engine)
    assert (cases[1].id, "verify") not in node_jobs(engine)  # 128 would need 140 GiB: no probe needed
    # Three free-lunch survivors, two kept: all timed briefly, shard-grad-op and checkpointing (within
    # 10% of it) fully, DDP (10.2% slower) only briefly.
    rungs = {c.method.slug: fast[c.id].search.get("rung") for c in cases if fast[c.id].status == "ok"}
    assert rungs == {"naive": "full", "free-lunch": "brief", "fsdp-grad-op": "full", "ckpt": "full"}

    def best(results):
        return min((r for r in results.values() if r.feasible), key=lambda r: r.training_days)

    assert best(fast).case == best(exhaustive).case == cases[2]
    assert best(fast).micro_batch_size == best(exhaustive).micro_batch_size
    record = engine.store.check_history("search")[-1]
    assert record["strategy"] == "fast" and record["pruned"] == 2 and record["cases"] == len(cases)


def test_a_pruning_whose_dominator_did_not_reach_the_size_is_withdrawn(tmp_path):
    ddp, grad_op, full = case(), case("fsdp_grad_op"), case("fsdp_full")
    # Shard-grad-op's timed run needs 30 GiB more than its probe: it steps down below full-shard's size.
    node = SimulatedNode(timing_extra={grad_op.id: 30.0})
    results, _ = search(tmp_path, [ddp, grad_op, full], node)
    assert results[grad_op.id].status == "ok" and results[grad_op.id].micro_batch_size < 64
    # Full-shard was pruned by shard-grad-op at the predicted size, which shard-grad-op did not
    # reach: the pruning is withdrawn and full-shard measured.
    assert results[full.id].status == "ok", results[full.id].reason
    assert any(name.startswith("time-mb") for cid, name in node.ran if cid == full.id)


def node_jobs(engine: Engine) -> list[tuple[str, str]]:
    return [(j.case_id, j.name) for j in engine.jobs]


def test_a_resumed_search_takes_its_fit_from_the_store_and_probes_nothing(tmp_path):
    cases = [case(), case("fsdp_full"), case("fsdp_grad_op")]
    node = SimulatedNode()
    first, _ = search(tmp_path, cases[:1], node)
    assert [n for _, n in node.ran] == ["fit", "time-mb64"]
    node.ran.clear()
    again, _ = search(tmp_path, cases, node)
    # The stored DDP result carries its memory fit: the other profiles' members need no fit job.
    assert "fit" not in {n for _, n in node.ran}, node.ran
    assert again[cases[0].id].created == first[cases[0].id].created
