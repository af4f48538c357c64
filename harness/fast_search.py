"""The fast search: predict each case's largest micro-batch, prune what cannot win, time what can.

For the cases of one model on one node:
1. fit: one probe job per activation profile (model x free lunch x checkpointing; sharding and
   offloading move states, not activations) at three small micro-batches, the first a warm-up, gives
   the memory model (harness.memory); a profile whose stored result already holds such points needs
   no job;
2. predict every case's largest micro-batch from the fit and its own model states;
3. prune by the dominance rules of harness.prune (a pruned case is stored as such, with its rule and
   figures);
4. verify each survivor's micro-batch: its timing job proves that it fits, and a probe proves that
   the next size does not, unless the model puts the next size so far over the card
   (memory.CERTAIN_MARGIN) that no probe is needed; a wrong prediction is corrected by the probe;
5. time: every survivor briefly (fewer micro-batches a step), then the fastest few fully (successive
   halving); with no more survivors than that, each is timed fully at once. Naive, the baseline of
   every comparison, is always timed fully.
Jobs that do not depend on each other go to the launcher together (side by side where it may).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

from harness import memory
from harness.cases import Case
from harness.engine import Engine, oom_reason
from harness.prune import _cost, prune
from harness.result import LIMIT_BATCH, LIMIT_NOT_PROBED, LIMIT_PREDICTED, Result
from harness.search import SearchStrategy, fitting, precheck, ramp_probe, time_largest

FIT_LARGEST = 16  # the largest fit point: small enough to fit wherever a model trains at all
BRIEF_GRAD_ACC = 2  # micro-batches a step in a brief timing: one without and one with gradient sync


class Fast(SearchStrategy):
    name = "fast"

    def __init__(self, *, keep: int = 2, within: float = 0.10):
        self.keep = keep  # cases timed fully after the brief round
        self.within = within  # ... and any other within this fraction of the briefly fastest

    def reusable(self, stored: Result) -> bool:
        return stored.status in ("ok", "infeasible", "pruned")

    def search(self, cases: list[Case], engine: Engine, *, known: dict[str, Result]) -> dict[str, Result]:
        groups: dict[tuple, list[Case]] = defaultdict(list)
        for case in cases:
            groups[(case.model, case.gpu_type, case.num_nodes, case.gpus_per_node)].append(case)
        results: dict[str, Result] = {}
        for group in groups.values():
            results |= _Group(self, engine, group, known).run()
        return results


class _Group:
    """One model on one node: the search's state while it runs."""

    def __init__(self, strategy: Fast, engine: Engine, cases: list[Case], known: dict[str, Result]):
        self.strategy, self.engine, self.known = strategy, engine, known
        self.cases = sorted(cases, key=_cost)
        self.results: dict[str, Result] = {}
        self.fits: dict[str, int] = {}  # case id -> largest micro-batch (predicted or verified)
        self.predictions: dict[str, memory.Prediction] = {}
        self.limits: dict[str, str] = {}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.candidates: list[int] = []

    def settle(self, result: Result) -> None:
        self.results[result.case.id] = self.engine.settle(result)

    def jobs_left(self, survivors: int) -> int:
        return 2 * survivors

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
        self.prune(live)
        survivors = [c for c in live if c.id not in self.results]
        self.verify(survivors)
        survivors = [c for c in survivors if c.id not in self.results]
        self.time(survivors)
        return self.results

    # --- 1 and 2: fit and predict ----------------------------------------------------------------
    def largest(self, cases: list[Case]) -> None:
        engine = self.engine
        if not engine.probes_on(cases[0]):
            for case in cases:
                self.fits[case.id] = max(self.candidates)
                self.limits[case.id] = LIMIT_BATCH if len(self.candidates) == 1 else LIMIT_NOT_PROBED
            return
        profiles: dict[tuple, list[Case]] = defaultdict(list)
        for case in cases:
            profiles[memory.profile(case)].append(case)
        models = {}
        pending = []
        for key, members in profiles.items():
            stored = self._stored_fit(key)
            if stored is not None:
                models[key] = stored
            else:
                pending.append((key, members[0]))  # the lightest member: the most likely to fit
        sizes = fit_sizes(self.candidates)
        for _, case in pending:
            engine.phase(
                case, f"probe for the memory model at micro-batches {sizes}", self.jobs_left(len(cases))
            )
        outcomes = engine.run_all([(case, engine.probe_job(case, sizes), "fit") for _, case in pending])
        for (key, case), outcome in zip(pending, outcomes, strict=True):
            events = [e for e in outcome.events if e.get("event") in ("fit", "oom")]
            self.events[case.id] += events
            if not outcome.ok and not outcome.oom_events():
                self.settle(
                    replace(
                        self.engine.base_result(case),
                        probe=events,
                        reason=f"probe failed: {outcome.failure()}",
                        log_tail=outcome.output_tail,
                    )
                )
                continue
            fits = fitting(outcome, case.num_gpus, sizes)
            if outcome.oom_events() and not fits:
                # Not even the smallest fit point fits: probe the sizes below it one by one.
                self._ramp_down(case, [c for c in self.candidates if c < sizes[0]])
                continue
            if outcome.oom_events():  # the fit itself found the largest: verified, no model needed
                self.fits[case.id] = max(fits)
                self.limits[case.id] = "memory"
            if len(fits) >= 3:
                models[key] = _fit(case, events)
        for key, members in profiles.items():
            model = models.get(key)
            for case in members:
                if case.id in self.results or case.id in self.fits:
                    continue
                if model is None:
                    self._ramp_down(case, self.candidates)  # no model: probe as the exhaustive search does
                    continue
                total = _total(self.events, model, self.known)
                if total <= 0:  # no total reported: nothing to predict against
                    self._ramp_down(case, self.candidates)
                    continue
                budget = memory.budget_gib(total, cpu=case.gpu_type == "cpu")
                prediction = memory.predict(model, self.candidates, budget, memory.states_gib(case))
                self.predictions[case.id] = prediction
                if prediction.micro_batch is None:
                    self._ramp_down(case, self.candidates[:1])
                    continue
                self.fits[case.id] = prediction.micro_batch
                self.limits[case.id] = LIMIT_BATCH if prediction.next_size is None else LIMIT_PREDICTED

    def _stored_fit(self, key: tuple) -> memory.MemoryFit | None:
        """A memory model from a stored result of this profile whose probe has enough steady points."""
        for result in self.known.values():
            if memory.profile(result.case) == key and result.probe:
                steady = _steady_points(result.probe, result.case.num_gpus)
                if len(steady) >= 2:
                    return memory.fit(
                        steady, states_gib=memory.states_gib(result.case), source=result.case.id
                    )
        return None

    def _ramp_down(self, case: Case, sizes: list[int]) -> None:
        """Probe `sizes` as the exhaustive search would: for a case the model cannot predict."""
        if not sizes:
            first = self.events[case.id][-1] if self.events[case.id] else None
            reason = oom_reason_from(first) if first else "no micro-batch fits"
            self.settle(
                replace(
                    self.engine.base_result(case),
                    status="infeasible",
                    reason=reason,
                    probe=self.events[case.id],
                )
            )
            return
        outcome, fits, events = ramp_probe(self.engine, case, sizes, name="probe")
        self.events[case.id] += events
        if not outcome.ok and not outcome.oom_events():
            self.settle(
                replace(
                    self.engine.base_result(case),
                    probe=self.events[case.id],
                    reason=f"probe failed: {outcome.failure()}",
                    log_tail=outcome.output_tail,
                )
            )
        elif not fits:
            self.settle(
                replace(
                    self.engine.base_result(case),
                    status="infeasible",
                    reason=oom_reason(outcome),
                    probe=self.events[case.id],
                )
            )
        else:
            self.fits[case.id] = max(fits)
            self.limits[case.id] = "memory" if outcome.oom_events() else LIMIT_BATCH

    # --- 3: prune ---------------------------------------------------------------------------------
    def prune(self, cases: list[Case]) -> None:
        for case_id, why in prune(cases, {c.id: self.fits[c.id] for c in cases}).items():
            case = next(c for c in cases if c.id == case_id)
            figures = self.predictions.get(case_id)
            self.engine.phase(case, f"pruned ({why.rule}): {why.reason}")
            self.settle(
                replace(
                    self.engine.base_result(case),
                    status="pruned",
                    reason=f"pruned ({why.rule}): {why.reason}"
                    + (f"; {figures.describe()}" if figures else ""),
                    rule=why.rule,
                    search=self._record(case) | {"pruned_by": why.by},
                )
            )

    def _record(self, case: Case) -> dict[str, Any]:
        prediction = self.predictions.get(case.id)
        return {
            "strategy": self.strategy.name,
            "micro_batch": self.fits.get(case.id),
            "limit": self.limits.get(case.id),
            "prediction": None if prediction is None else prediction.describe(),
        }

    # --- 4: verify --------------------------------------------------------------------------------
    def verify(self, cases: list[Case]) -> None:
        """Probe where the model is not sure that the next size does not fit."""
        todo = []
        for case in cases:
            prediction = self.predictions.get(case.id)
            if prediction is None or prediction.next_size is None or prediction.next_certainly_too_big:
                continue
            if self.limits.get(case.id) == "memory":
                continue  # its fit job already ran out of memory at the next size
            sizes = [c for c in self.candidates if c >= self.fits[case.id]]
            todo.append((case, sizes))
        for case, sizes in todo:
            self.engine.phase(
                case,
                f"probe micro-batches {sizes[:2]} (close to the card's memory)",
                self.jobs_left(len(cases)),
            )
        outcomes = self.engine.run_all(
            [(case, self.engine.probe_job(case, sizes), "verify") for case, sizes in todo]
        )
        for (case, sizes), outcome in zip(todo, outcomes, strict=True):
            events = [e for e in outcome.events if e.get("event") in ("fit", "oom")]
            self.events[case.id] += events
            if not outcome.ok and not outcome.oom_events():
                self.settle(
                    replace(
                        self.engine.base_result(case),
                        probe=self.events[case.id],
                        reason=f"probe failed: {outcome.failure()}",
                        log_tail=outcome.output_tail,
                    )
                )
                continue
            fits = fitting(outcome, case.num_gpus, sizes)
            if fits:
                self.fits[case.id] = max(fits)
                self.limits[case.id] = "memory" if outcome.oom_events() else LIMIT_BATCH
            else:  # the prediction itself did not fit: probe below it
                self.fits.pop(case.id)
                self._ramp_down(case, [c for c in self.candidates if c < sizes[0]])

    # --- 5: time ----------------------------------------------------------------------------------
    def time(self, cases: list[Case]) -> None:
        baseline = [c for c in cases if not c.method.free_lunch]
        racing = [c for c in cases if c.method.free_lunch]
        full = racing
        if len(racing) > self.strategy.keep:
            brief = self._time(racing, rung="brief")
            ranked = sorted(
                (r.step_time_s, r.case.id) for r in brief.values() if r.feasible and r.step_time_s
            )
            best = ranked[0][0] if ranked else None
            chosen = {cid for t, cid in ranked[: self.strategy.keep]}
            chosen |= {cid for t, cid in ranked if best and t <= best * (1 + self.strategy.within)}
            full = [c for c in racing if c.id in chosen]
            for case in racing:
                if case.id not in chosen:
                    self.settle(brief[case.id])
        for result in self._time([*baseline, *full], rung="full").values():
            self.settle(result)

    def _time(self, cases: list[Case], *, rung: str) -> dict[str, Result]:
        out = {}
        for i, case in enumerate(cases):
            search = self._record(case) | {"rung": rung}
            base = replace(self.engine.base_result(case), probe=self.events[case.id], search=search)
            out[case.id] = time_largest(
                self.engine,
                case,
                [c for c in self.candidates if c <= self.fits[case.id]],
                base,
                max_grad_acc=BRIEF_GRAD_ACC if rung == "brief" else None,
                jobs_left=self.jobs_left(len(cases) - i),
            )
        return out


def fit_sizes(candidates: list[int]) -> list[int]:
    """Three ascending sizes up to FIT_LARGEST: a warm-up step, then the two points of the fit."""
    small = [c for c in candidates if c <= FIT_LARGEST]
    return small[-3:] if len(small) >= 3 else small


def _steady_points(events: list[dict[str, Any]], world: int) -> list[tuple[int, float]]:
    """(micro-batch, peak GiB) of every fit after the first step, the largest rank's peak."""
    fits = [e for e in events if e.get("event") == "fit" and "implied_by" not in e]
    sizes = sorted({e["micro_batch"] for e in fits})
    points = []
    for size in sizes[1:]:
        peaks = [e["peak_reserved_gib"] for e in fits if e["micro_batch"] == size]
        if len(peaks) >= world:
            points.append((size, max(peaks)))
    return points


def _fit(case: Case, events: list[dict[str, Any]]) -> memory.MemoryFit:
    return memory.fit(
        _steady_points(events, case.num_gpus), states_gib=memory.states_gib(case), source=case.id
    )


def _total(
    events: dict[str, list[dict[str, Any]]], model: memory.MemoryFit, known: dict[str, Result]
) -> float:
    """The card's total memory as the fit's probe reported it."""
    for source in (events.get(model.source, []), known[model.source].probe if model.source in known else []):
        totals = [e["total_gib"] for e in source if e.get("total_gib")]
        if totals:
            return min(totals)
    return 0.0


def oom_reason_from(event: dict[str, Any]) -> str:
    from harness import oom

    return oom.reason(event["micro_batch"], event)
