"""The cost formulas: the paper's worked examples, and monotonicity in days, prices and counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware import get_gpu, machine_base_cost
from reports.costs import LIFETIME_DAYS, cost_per_experiment, hardware_cost

prices = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
days = st.floats(min_value=0.0, max_value=1e5, allow_nan=False)
counts = st.integers(min_value=1, max_value=8)


def machine(gpu: str, count: int) -> float:
    return hardware_cost(get_gpu(gpu).price_usd, count, machine_base_cost(count))


def test_the_papers_machines():
    assert machine("h100", 4) == 4 * 30_000 + 7_500 == 127_500
    assert machine("rtx3090", 2) == 2 * 1_300 + 1_500 == 4_100
    assert machine("a100", 8) == 8 * 19_000 + 10_500


def test_the_papers_cost_per_experiment_for_pythia_1b():
    # Sec. 4.4: "a training run will cost $800 if using A100s, but $600 if using H100s" (8 x A100 in
    # 9 days, 4 x H100 in 8 days; the paper rounds to the hundred).
    assert round(cost_per_experiment(machine("a100", 8), 9), -2) == 800
    assert round(cost_per_experiment(machine("h100", 4), 8), -2) == 600


def test_a_whole_lifetime_costs_the_machine():
    assert LIFETIME_DAYS == 5 * 365
    assert cost_per_experiment(127_500, LIFETIME_DAYS) == pytest.approx(127_500)


@given(price=prices, base=prices, count=counts, d1=days, d2=days)
def test_cost_per_experiment_grows_with_days(price, base, count, d1, d2):
    low, high = sorted((d1, d2))
    machine_usd = hardware_cost(price, count, base)
    assert cost_per_experiment(machine_usd, low) <= cost_per_experiment(machine_usd, high)


@given(p1=prices, p2=prices, base=prices, count=counts, d=days)
def test_costs_grow_with_the_gpu_price(p1, p2, base, count, d):
    low, high = sorted((p1, p2))
    assert hardware_cost(low, count, base) <= hardware_cost(high, count, base)
    assert cost_per_experiment(hardware_cost(low, count, base), d) <= cost_per_experiment(
        hardware_cost(high, count, base), d
    )


@given(price=prices, b1=prices, b2=prices, c1=counts, c2=counts, nodes=st.integers(1, 4))
def test_hardware_cost_grows_with_the_machine_and_the_gpu_count(price, b1, b2, c1, c2, nodes):
    assert hardware_cost(price, min(c1, c2), min(b1, b2)) <= hardware_cost(price, max(c1, c2), max(b1, b2))
    assert hardware_cost(price, c1, b1) <= hardware_cost(price, c1, b1, num_nodes=nodes)


@pytest.mark.parametrize("args", [(-1.0, 1, 0.0), (1.0, 0, 0.0), (1.0, 1, -5.0)])
def test_impossible_hardware_is_refused(args):
    with pytest.raises(ValueError):
        hardware_cost(*args)


def test_negative_days_are_refused():
    with pytest.raises(ValueError):
        cost_per_experiment(1_000.0, -1.0)
