"""The fast search on the CPU: its memory model against real probes, the same best setting as the
exhaustive search, and a resumed search that does not repeat the jobs that finished.

CPU jobs count memory as a card's allocator would (harness.cpu_memory) and, under a budget, run out
of it as a card does, so the whole fast path (fit, predict, prune, verify, time) runs here for real.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from harness import memory
from harness.cases import Case
from harness.cpu_memory import BUDGET_ENV
from harness.engine import Engine, EngineOptions
from harness.fast_search import steady_points
from harness.launch import LocalLauncher
from harness.methods import NAIVE, Method
from harness.search import get_strategy
from harness.store import ResultStore

pytestmark = pytest.mark.slow
CKPT = Method(free_lunch=False, activation_checkpointing=True)


def engine(tmp_path: Path, budget_mib: float | None = None, launcher=None, **options) -> Engine:
    opts = EngineOptions(
        work_dir=tmp_path / "jobs",
        timeout_s=300,
        max_measured_grad_acc=2,
        env={BUDGET_ENV: str(budget_mib)} if budget_mib else {},
        **options,
    )
    return Engine(
        store=ResultStore(tmp_path / "store"),
        environment={"gpu_name": "cpu"},
        fingerprint=lambda case: "fast",
        options=opts,
        launcher=launcher or LocalLauncher(),
    )


@pytest.mark.parametrize(("model", "method"), [("pythia-14m", NAIVE), ("tiny-vit", CKPT)], ids=str)
def test_the_memory_model_fitted_at_two_sizes_predicts_the_probe_at_the_largest(tmp_path, model, method):
    case = Case(model=model, gpu_type="cpu", gpus_per_node=1, method=method)
    eng = engine(tmp_path)
    outcome = eng.run(case, eng.probe_job(case, [1, 2, 4, 8]), "probe")
    assert outcome.ok, outcome.failure()
    points = steady_points(outcome.events, 1)
    assert [b for b, _ in points] == [2, 4, 8]  # the first step (no optimizer states yet) is left out
    fit = memory.fit(points[:2], states_gib=memory.states_gib(case), source=case.id, total_gib=0.0)
    measured = dict(points)[8]
    assert fit.peak(8) == pytest.approx(measured, rel=0.05), (fit, points)
    assert fit.per_sample_gib > 0


def test_fast_and_exhaustive_searches_pick_the_same_best_setting(tmp_path):
    """One process under a memory budget (which makes the probes and the memory model run) that both
    methods fit at the whole batch, 8 (naive 6.7 MiB, checkpointing 1.8): the fast search measures
    naive and prunes checkpointing (it does not raise the micro-batch); the exhaustive search probes
    and measures both."""
    cases = [Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=m) for m in (NAIVE, CKPT)]
    budget = 10.0
    exhaustive = engine(tmp_path / "exhaustive", budget).search(cases, get_strategy("exhaustive"))
    fast = engine(tmp_path / "fast", budget).search(cases, get_strategy("fast"))
    assert all(r.status == "ok" for r in exhaustive.values()), {k: r.reason for k, r in exhaustive.items()}
    assert {k: r.status for k, r in fast.items()} == {cases[0].id: "ok", cases[1].id: "pruned"}, {
        k: r.reason for k, r in fast.items()
    }
    assert fast[cases[1].id].rule == "checkpointing"

    def best(results):
        return min((r for r in results.values() if r.feasible), key=lambda r: r.training_days)

    fast_best, exhaustive_best = best(fast), best(exhaustive)
    # The same setting, or one as fast within what timing two processes on two shared cores can tell.
    noise = max(
        r.step_time_spread_s / r.step_time_s for r in (*fast.values(), *exhaustive.values()) if r.feasible
    )
    gap = abs(fast_best.training_days - exhaustive_best.training_days) / exhaustive_best.training_days
    assert fast_best.case == exhaustive_best.case or gap <= 2 * noise + 0.05, (fast_best.case, gap, noise)
    # The measured case's micro-batch is the exhaustive probe's.
    assert fast[cases[0].id].micro_batch_size == exhaustive[cases[0].id].micro_batch_size == 8


class Interrupting(LocalLauncher):
    """Runs `after` jobs, then stops the search as Ctrl-C would."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after
        self.ran = 0

    def run(self, job, job_dir, *, reuse=()):
        if self.ran == self.after:
            raise KeyboardInterrupt("stopped mid-search")
        self.ran += 1
        return super().run(job, job_dir, reuse=reuse)


def test_a_resumed_fast_search_does_not_repeat_finished_jobs(tmp_path):
    cases = [Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=m) for m in (NAIVE, CKPT)]
    budget = 5.0
    first = engine(tmp_path, budget, launcher=Interrupting(after=3))
    with pytest.raises(KeyboardInterrupt):
        first.search(cases, get_strategy("fast"))
    finished = [(j.case_id, j.name) for j in first.jobs]
    assert len(finished) == 3
    again = engine(tmp_path, budget)
    results = again.search(cases, get_strategy("fast"))
    assert all(r.status == "ok" for r in results.values()), {k: r.reason for k, r in results.items()}
    reused = {(j.case_id, j.name) for j in again.jobs if j.reused}
    ran = [(j.case_id, j.name) for j in again.jobs if not j.reused]
    assert set(finished) <= reused, (finished, again.jobs)
    assert not set(finished) & set(ran)
    # The budget bounds naive at micro-batch 4 (8 ran out of memory in its fit: 6.7 MiB of 5),
    # checkpointing not (1.8 MiB at 8).
    assert results[cases[0].id].micro_batch_size == 4 and results[cases[1].id].micro_batch_size == 8
    record = again.store.check_history("search")[-1]
    assert record["jobs_reused"] >= 3 and record["measured"] == 2
    assert statistics.fmean(r.step_time_s for r in results.values()) > 0
