"""The method space and case ids: the paper's validity rules, counts, and ids usable with -k."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from harness.cases import ID_PATTERN, Case
from harness.methods import SHARDINGS, Method, memory_saving_options, method_set


def test_exactly_12_options_on_one_gpu_and_22_on_more():
    assert len(memory_saving_options(1)) == 12
    for n in (2, 4, 8, 16):
        assert len(memory_saving_options(n)) == 22
    assert len(set(memory_saving_options(2))) == 22


@given(st.integers(min_value=1, max_value=64))
def test_options_obey_the_rules(num_gpus):
    for m in memory_saving_options(num_gpus):
        assert m.free_lunch
        assert not (m.offloading and m.sharding == "none"), "offloading needs sharding"
        if num_gpus == 1:
            assert m.sharding == "none" or m.offloading, "one GPU: sharding without offloading is left out"


@given(st.booleans(), st.booleans(), st.sampled_from(SHARDINGS), st.booleans())
def test_method_construction_enforces_offload_rule(free_lunch, ckpt, sharding, offload):
    if offload and sharding == "none":
        with pytest.raises(ValueError, match="offloading needs sharding"):
            Method(
                free_lunch=free_lunch, activation_checkpointing=ckpt, sharding=sharding, offloading=offload
            )
    else:
        Method(free_lunch=free_lunch, activation_checkpointing=ckpt, sharding=sharding, offloading=offload)


def test_named_sets():
    assert method_set("naive", 4) == [Method(free_lunch=False)]
    assert method_set("free-lunch", 1) == [Method(free_lunch=True)]
    assert len(method_set("all", 1)) == 13 and len(method_set("all", 2)) == 23
    with pytest.raises(ValueError, match="unknown method set"):
        method_set("everything", 1)


def all_cases() -> list[Case]:
    from hardware import GPUS
    from models import MODELS

    cases = []
    for model in MODELS:
        for gpu in GPUS:
            for nodes in (1, 2):
                for count in (1, 2, 4, 8):
                    for m in [Method(free_lunch=False), *memory_saving_options(nodes * count)]:
                        cases.append(
                            Case(model=model, gpu_type=gpu, num_nodes=nodes, gpus_per_node=count, method=m)
                        )
    return cases


def test_ids_unique_and_valid_over_the_whole_matrix():
    cases = all_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "two cases share an id"
    for ident in ids:
        assert ID_PATTERN.match(ident)
        # pytest -k takes whole ids as expressions: no spaces, brackets or keywords inside
        assert not re.search(r"\b(and|or|not)\b", ident)


@given(st.sampled_from(SHARDINGS), st.booleans(), st.booleans(), st.integers(1, 8), st.integers(1, 4))
def test_id_is_a_function_of_the_case(sharding, ckpt, offload, count, nodes):
    assume(not (offload and sharding == "none"))
    m = Method(free_lunch=True, activation_checkpointing=ckpt, sharding=sharding, offloading=offload)
    assume(m.is_valid_for(count * nodes))
    case = Case(model="pythia-1b", gpu_type="h100", num_nodes=nodes, gpus_per_node=count, method=m)
    assert (
        case.id == Case(model="pythia-1b", gpu_type="h100", num_nodes=nodes, gpus_per_node=count, method=m).id
    )
    assert case.id.startswith(f"pythia-1b-h100x{count}")
    assert ("ckpt" in case.id) == ckpt and ("offload" in case.id) == offload


def test_id_examples():
    m = Method(free_lunch=True, sharding="zero1", activation_checkpointing=True)
    assert (
        Case(model="pythia-1b", gpu_type="h100", gpus_per_node=4, method=m).id
        == "pythia-1b-h100x4-zero1-ckpt"
    )
    assert (
        Case(
            model="pythia-1b", gpu_type="h100", num_nodes=2, gpus_per_node=8, method=Method(free_lunch=False)
        ).id
        == "pythia-1b-h100x8-2nodes-naive"
    )


def test_invalid_case_is_rejected():
    with pytest.raises(ValueError, match="not valid on 1 GPU"):
        Case(
            model="pythia-1b",
            gpu_type="h100",
            gpus_per_node=1,
            method=Method(free_lunch=True, sharding="zero1"),
        )
