"""The dominance rules of the fast search, on constructed cases and micro-batches."""

from __future__ import annotations

from harness.cases import Case
from harness.methods import NAIVE, Method, memory_saving_options
from harness.prune import prune


def case(sharding: str = "none", offloading: bool = False, ckpt: bool = False, gpus: int = 2) -> Case:
    method = Method(free_lunch=True, sharding=sharding, offloading=offloading, activation_checkpointing=ckpt)
    return Case(model="pythia-160m", gpu_type="h200", gpus_per_node=gpus, method=method)


def test_offloading_is_pruned_where_an_unoffloaded_method_fits_as_much():
    ddp, off = case(), case("zero2", offloading=True)
    pruned = prune([ddp, off], {ddp.id: 64, off.id: 64})
    assert set(pruned) == {off.id}
    why = pruned[off.id]
    assert why.rule == "offload" and why.by == ddp.id
    assert "free-lunch fits micro-batch 64 without offloading" in why.reason
    # Offloading that raises the micro-batch stays.
    assert prune([ddp, off], {ddp.id: 32, off.id: 64}) == {}


def test_heavier_sharding_of_one_engine_is_pruned_at_the_same_micro_batch():
    z1, z2, z3 = case("zero1"), case("zero2"), case("zero3")
    pruned = prune([z3, z2, z1], {z1.id: 64, z2.id: 64, z3.id: 128})
    assert set(pruned) == {z2.id}
    assert pruned[z2.id].rule == "sharding" and pruned[z2.id].by == z1.id
    assert "zero2 shards more" in pruned[z2.id].reason
    full, grad_op = case("fsdp_full"), case("fsdp_grad_op")
    assert set(prune([full, grad_op], {full.id: 64, grad_op.id: 64})) == {full.id}


def test_engines_are_not_compared_with_each_other():
    ddp, z1, fsdp = case(), case("zero1"), case("fsdp_grad_op")
    assert prune([ddp, z1, fsdp], {ddp.id: 64, z1.id: 64, fsdp.id: 64}) == {}


def test_checkpointing_is_pruned_unless_it_raises_the_micro_batch():
    plain, ckpt = case(), case(ckpt=True)
    pruned = prune([plain, ckpt], {plain.id: 64, ckpt.id: 64})
    assert pruned[ckpt.id].rule == "checkpointing" and pruned[ckpt.id].by == plain.id
    assert prune([plain, ckpt], {plain.id: 64, ckpt.id: 256}) == {}


def test_naive_is_never_pruned_and_never_prunes():
    naive = Case(model="pythia-160m", gpu_type="h200", gpus_per_node=2, method=NAIVE)
    plain = case()
    assert prune([naive, plain], {naive.id: 16, plain.id: 64}) == {}
    assert prune([naive, plain], {naive.id: 64, plain.id: 16}) == {}


def test_a_case_is_pruned_only_by_a_survivor_and_cases_without_a_size_are_left_alone():
    cases = [
        case(),
        *(case(m.sharding, m.offloading, m.activation_checkpointing) for m in memory_saving_options(2)),
    ]
    cases = list({c.id: c for c in cases}.values())
    fits = {c.id: 64 for c in cases}
    pruned = prune(cases, fits)
    survivors = [c for c in cases if c.id not in pruned]
    # One lightest method per engine survives: DDP (free lunch), ZeRO-1 and FSDP shard-grad-op.
    assert sorted(c.method.slug for c in survivors) == ["free-lunch", "fsdp-grad-op", "zero1"]
    # Every chain of rules ends at a survivor.
    for why in pruned.values():
        by = why.by
        while by in pruned:
            by = pruned[by].by
        assert by in {s.id for s in survivors}
    unknown = case("zero3")
    assert unknown.id not in prune(cases, {k: v for k, v in fits.items() if k != unknown.id})


def test_rules_compare_only_cases_with_the_same_free_lunch_setting():
    eager, off = case(), case("zero2", offloading=True)
    eager = Case(model="pythia-160m", gpu_type="h200", gpus_per_node=2, method=NAIVE)
    # Naive eager fits more here, yet cannot stand for a free-lunch method.
    assert prune([eager, off], {eager.id: 128, off.id: 64}) == {}
    eager_z1 = Case(
        model="pythia-160m",
        gpu_type="h200",
        gpus_per_node=2,
        method=Method(free_lunch=False, sharding="zero1"),
    )
    assert prune([eager_z1, case("zero3")], {eager_z1.id: 64, case("zero3").id: 64}) == {}
