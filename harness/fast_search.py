"""The fast search: predict each case's largest micro-batch, prune what cannot win, time what can.

For the cases of one model on one node:
1. fit: one probe job per activation profile (model x free lunch x checkpointing; sharding and
   offloading move states, not activations) at three small micro-batches, the first a warm-up, gives
   the memory model (harness.memory); a profile whose stored result recorded its fit needs no job;
2. predict every case's largest micro-batch from the fit and its own model states;
3. prune, tentatively, by the dominance rules of harness.prune;
4. verify each survivor's micro-batch: its timing job proves that it fits, and a probe proves that
   the next size does not, unless the model puts the next size so far over the card
   (memory.CERTAIN_MARGIN) that no probe is needed; a wrong prediction is corrected by the probe;
5. time: every survivor briefly (fewer micro-batches a step), then the fastest few fully (successive
   halving); with no more survivors than that, each is timed fully at once. Naive, the baseline of
   every comparison, is always timed fully;
6. settle the pruned cases: a pruning stands only if the case that dominates it was measured at a
   micro-batch at least as large as the pruned one's; otherwise the pruned case is verified and timed.
Jobs that do not depend on each other go to the launcher together (side by side where it may).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from harness import memory, oom
from harness.cases import Case
from harness.engine import Engine
from harness.prune import Pruned, cost_order, prune
from harness.result import LIMIT_BATCH, LIMIT_CAP, LIMIT_MEMORY, LIMIT_NOT_PROBED, LIMIT_PREDICTED, Result
from harness.search import SearchStrategy, fitting, precheck, probe_failed, ramp_probe, time_largest

FIT_LARGEST = 16  # the largest fit point: small enough to fit wherever a model trains at all
BRIEF_GRAD_ACC = 2  # micro-batches a step in a brief timing: one without and one with gradient sync


@dataclass(frozen=True, kw_only=True, slots=True)
class Fast(SearchStrategy):
    name = "fast"
    keep: int = 2  # cases timed fully after the brief round ...
    within: float = 0.10  # ... and any other within this fraction of the briefly fastest

    def reusable(self, stored: Result) -> bool:
        return stored.status in ("ok", "infeasible", "pruned")

    def search(self, cases: list[Case], engine: Engine, *, known: dict[str, Result]) -> dict[str, Result]:
        groups: dict[str, list[Case]] = defaultdict(list)
        for case in cases:
            groups[case.group_id].append(case)
        results: dict[str, Result] = {}
        for group in groups.values():
            results |= _Group(self, engine, group, known).run()
        return results


class _Group:
    """One model on one node: the search's state while it runs."""

    def __init__(self, strategy: Fast, engine: Engine, cases: list[Case], known: dict[str, Result]):
        self.strategy, self.engine = strategy, engine
        group = cases[0].group_id
        # Stored results of the same model and node: their fits and measured micro-batches count.
        self.known = {k: r for k, r in known.items() if r.case.group_id == group}
        self.cases = sorted(cases, key=cost_order)
        self.results: dict[str, Result] = {}
        self.fits: dict[str, int] = {}  # case id -> largest micro-batch (predicted or verified)
        self.predictions: dict[str, memory.Prediction] = {}
        self.limits: dict[str, str] = {}
        self.models: dict[tuple, memory.MemoryFit] = {}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.candidates: list[int] = []

    def settle(self, result: Result) -> None:
        self.results[result.case.id] = self.engine.settle(result)

    def base(self, case: Case, **search: Any) -> Result:
        """The case's result as far as the search knows it: probe events and how it was settled."""
        record = self.record(case) | search
        return replace(self.engine.base_result(case), probe=self.events[case.id], search=record)

    def record(self, case: Case) -> dict[str, Any]:
        prediction = self.predictions.get(case.id)
        model = self.models.get(memory.profile(case))
        return {
            "strategy": self.strategy.name,
            "micro_batch": self.fits.get(case.id),
            "limit": self.limits.get(case.id),
            "prediction": None if prediction is None else prediction.describe(),
            # What a resumed search predicts from without probing again.
            "fit": None if model is None else model.to_dict(),
        }

    def run(self) -> dict[str, Result]:
        live = []
        for case in self.cases:
            refused, candidates = precheck(self.engine, case)
            if refused is not None:
                self.settle(refused)
            else:
                live.append(case)
                self.candidates = candidates
        if not live:
            return self.results
        self.largest(live)
        live = [c for c in live if c.id not in self.results]
        measured = {k: r.micro_batch_size for k, r in self.known.items() if r.feasible and r.micro_batch_size}
        pruned = {
            k: why
            for k, why in prune([*live, *(r.case for r in self.known.values())], self.fits | measured).items()
            if k in {c.id for c in live}
        }
        survivors = [c for c in live if c.id not in pruned]
        self.verify(survivors)
        self.time([c for c in survivors if c.id not in self.results])
        rescued = [c for c in live if c.id in pruned and not self.confirm(c, pruned)]
        if rescued:
            self.verify(rescued)
            self.time([c for c in rescued if c.id not in self.results], race=False)
        return self.results

    # --- 1 and 2: fit and predict ----------------------------------------------------------------
    def largest(self, cases: list[Case]) -> None:
        engine = self.engine
        if not engine.probes_on(cases[0]):
            for case in cases:
                self.fits[case.id] = max(self.candidates)
                self.limits[case.id] = self.bound(case, max(self.candidates), probed=False)
            return
        profiles: dict[tuple, list[Case]] = defaultdict(list)
        for case in cases:
            profiles[memory.profile(case)].append(case)
        pending = []
        for key, members in profiles.items():
            stored = self._stored_fit(key)
            if stored is not None:
                self.models[key] = stored
            else:
                pending.append((key, members[0]))  # the lightest member: the most likely to fit
        sizes = fit_sizes(self.candidates)
        for _, case in pending:
            engine.phase(case, f"probe for the memory model at micro-batches {sizes}", 2 * len(cases))
        outcomes = engine.run_all([(case, engine.probe_job(case, sizes), "fit") for _, case in pending])
        for (key, case), outcome in zip(pending, outcomes, strict=True):
            self.events[case.id] += outcome.probe_events()
            if not outcome.ok and not outcome.oom_events():
                self.settle(probe_failed(self.base(case), outcome))
                continue
            fits = fitting(outcome, case.num_gpus, sizes)
            if not fits:  # not even the smallest fit point fits: probe the sizes below it
                self._ramp_down(case, [c for c in self.candidates if c < sizes[0]])
                continue
            if outcome.oom_events():  # the fit itself found the largest: verified, no model needed
                self.fits[case.id] = max(fits)
                self.limits[case.id] = LIMIT_MEMORY
            points = steady_points(outcome.probe_events(), case.num_gpus)
            total = min((e["total_gib"] for e in outcome.probe_events() if e.get("total_gib")), default=0.0)
            if len(points) >= 2 and total > 0:
                self.models[key] = memory.fit(
                    points, states_gib=memory.states_gib(case), source=case.id, total_gib=total
                )
        for key, members in profiles.items():
            for case in members:
                if case.id not in self.results and case.id not in self.fits:
                    self._predict(case, self.models.get(key))

    def _predict(self, case: Case, model: memory.MemoryFit | None) -> None:
        if model is None:  # no fit: probe as the exhaustive search does
            self._ramp_down(case, self.candidates)
            return
        budget = memory.budget_gib(model.total_gib, cpu=case.gpu_type == "cpu")
        prediction = memory.predict(model, self.candidates, budget, memory.states_gib(case))
        self.predictions[case.id] = prediction
        self.engine.phase(case, prediction.describe())
        if prediction.micro_batch is None:  # the model says nothing fits: the probe decides
            self._ramp_down(case, self.candidates)
            return
        self.fits[case.id] = prediction.micro_batch
        self.limits[case.id] = (
            self.bound(case, prediction.micro_batch, probed=False)
            if prediction.next_size is None
            else LIMIT_PREDICTED
        )

    def bound(self, case: Case, micro_batch: int, *, probed: bool) -> str:
        """What bounds a micro-batch that is the largest candidate (no larger size was tried)."""
        from harness.plan import per_device_target

        if micro_batch == per_device_target(case):
            return LIMIT_BATCH
        if self.engine.options.max_micro_batch is not None:
            return LIMIT_CAP
        return LIMIT_NOT_PROBED if not probed else LIMIT_BATCH

    def _stored_fit(self, key: tuple) -> memory.MemoryFit | None:
        """The memory model a stored result of this profile recorded (a resumed search)."""
        for result in self.known.values():
            fit = result.search.get("fit")
            if memory.profile(result.case) == key and fit:
                return memory.MemoryFit.from_dict(fit)
        return None

    def _ramp_down(self, case: Case, sizes: list[int]) -> None:
        """Probe `sizes` as the exhaustive search would: for a case the model cannot predict."""
        if not sizes:
            ooms = [e for e in self.events[case.id] if e.get("event") == "oom"]
            reason = oom.reason(ooms[-1]["micro_batch"], ooms[-1]) if ooms else "no micro-batch fits"
            self.settle(replace(self.base(case), status="infeasible", reason=reason))
            return
        outcome, fits, events = ramp_probe(self.engine, case, sizes, name="probe")
        self.events[case.id] += events
        if not outcome.ok and not outcome.oom_events():
            self.settle(probe_failed(self.base(case), outcome))
        elif not fits:
            self._ramp_down(case, [])
        else:
            self.fits[case.id] = max(fits)
            ran_out = any(e.get("event") == "oom" for e in self.events[case.id])
            self.limits[case.id] = LIMIT_MEMORY if ran_out else self.bound(case, max(fits), probed=True)

    # --- 3 and 6: prune, then confirm --------------------------------------------------------------
    def confirm(self, case: Case, pruned: dict[str, Pruned]) -> bool:
        """Settle a pruned case if what dominates it was measured at a micro-batch at least as large."""
        why, by = pruned[case.id], pruned[case.id].by
        while by in pruned:  # a chain of rules ends at a case that was measured
            by = pruned[by].by
        final = self.results.get(by) or self.known.get(by)
        if final is None or not final.feasible or (final.micro_batch_size or 0) < self.fits[case.id]:
            got = "no result" if final is None else f"{final.status} at {final.micro_batch_size}"
            self.engine.phase(case, f"pruning withdrawn: {by} ended with {got}; measuring this case")
            return False
        figures = self.predictions.get(case.id)
        reason = f"pruned ({why.rule}): {why.reason}" + (f"; {figures.describe()}" if figures else "")
        self.engine.phase(case, reason)
        self.settle(replace(self.base(case, pruned_by=why.by), status="pruned", reason=reason, rule=why.rule))
        return True

    # --- 4: verify --------------------------------------------------------------------------------
    def verify(self, cases: list[Case]) -> None:
        """Probe where the model is not sure that the next size does not fit."""
        todo = []
        for case in cases:
            prediction = self.predictions.get(case.id)
            if prediction is None or prediction.next_size is None or prediction.next_certainly_too_big:
                continue
            if self.limits.get(case.id) == LIMIT_MEMORY:
                continue  # a probe of it already ran out of memory at the next size
            todo.append((case, [c for c in self.candidates if c >= self.fits[case.id]]))
        for case, sizes in todo:
            self.engine.phase(case, f"probe micro-batches from {sizes[0]} up (close to the card's memory)")
        jobs = [(case, self.engine.probe_job(case, sizes), "verify") for case, sizes in todo]
        for (case, sizes), outcome in zip(todo, self.engine.run_all(jobs), strict=True):
            self.events[case.id] += outcome.probe_events()
            if not outcome.ok and not outcome.oom_events():
                self.settle(probe_failed(self.base(case), outcome))
                continue
            fits = fitting(outcome, case.num_gpus, sizes)
            if fits:
                self.fits[case.id] = max(fits)
                ran_out = bool(outcome.oom_events())
                self.limits[case.id] = LIMIT_MEMORY if ran_out else self.bound(case, max(fits), probed=True)
            else:  # the prediction itself did not fit: probe below it
                self.fits.pop(case.id)
                self._ramp_down(case, [c for c in self.candidates if c < sizes[0]])

    # --- 5: time ----------------------------------------------------------------------------------
    def time(self, cases: list[Case], *, race: bool = True) -> None:
        racing = [c for c in cases if c.method.free_lunch] if race else []
        full = [c for c in cases if c not in racing]
        if len(racing) <= self.strategy.keep:
            full += racing
        else:
            brief = self._time(racing, rung="brief")
            ranked = sorted(
                (r.step_time_s, r.case.id) for r in brief.values() if r.feasible and r.step_time_s
            )
            best = ranked[0][0] if ranked else None
            chosen = {cid for _, cid in ranked[: self.strategy.keep]}
            chosen |= {cid for t, cid in ranked if best and t <= best * (1 + self.strategy.within)}
            for case in racing:
                result = brief[case.id]
                if case.id in chosen and not self._brief_is_full(result):
                    # Timed fully from the micro-batch the brief round settled on.
                    self.fits[case.id] = result.micro_batch_size or self.fits[case.id]
                    full.append(case)
                elif case.id in chosen:
                    self.settle(replace(result, search=result.search | {"rung": "full"}))
                else:
                    self.settle(result)
        for result in self._time(full, rung="full").values():
            self.settle(result)

    def _brief_is_full(self, result: Result) -> bool:
        """Whether a brief timing already measured what a full one would (accumulation 2 or less)."""
        if not result.feasible:
            return True  # nothing to time fully
        full = self.engine.timing_job(result.case, result.micro_batch_size or 1, result.grad_acc_steps or 1)
        return full.plan["grad_acc_steps"] == result.measured_grad_acc_steps

    def _time(self, cases: list[Case], *, rung: str) -> dict[str, Result]:
        out = {}
        for i, case in enumerate(cases):
            out[case.id] = time_largest(
                self.engine,
                case,
                [c for c in self.candidates if c <= self.fits[case.id]],
                self.base(case, rung=rung),
                max_grad_acc=BRIEF_GRAD_ACC if rung == "brief" else None,
                jobs_left=2 * (len(cases) - i),
            )
        return out


def fit_sizes(candidates: list[int]) -> list[int]:
    """Three ascending sizes up to FIT_LARGEST: a warm-up step, then the two points of the fit."""
    small = [c for c in candidates if c <= FIT_LARGEST]
    return small[-3:] if len(small) >= 3 else small


def steady_points(events: list[dict[str, Any]], world: int) -> list[tuple[int, float]]:
    """(micro-batch, peak GiB) of each size of one probe job after its first step (which lacks the
    optimizer's states), where every rank fitted; the largest rank's peak."""
    fits = [e for e in events if e.get("event") == "fit" and "implied_by" not in e]
    sizes = sorted({e["micro_batch"] for e in fits})
    points = []
    for size in sizes[1:]:
        peaks = [e["peak_reserved_gib"] for e in fits if e["micro_batch"] == size]
        if len(peaks) >= world:
            points.append((size, max(peaks)))
    return points
