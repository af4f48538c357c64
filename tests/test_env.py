"""Which results count as measured on the same stack: the fingerprint and the stored-prediction lookup."""

from __future__ import annotations

from harness.cases import Case
from harness.env import fingerprint_key
from harness.methods import Method
from harness.result import Result
from harness.store import ResultStore

STACK = {
    "gpu_name": "H100",
    "gpu_count": 1,
    "driver": "580",
    "cuda": "13.0",
    "torch": "2.11",
    "code_version": "a",
}
FREE_LUNCH = Case(model="pythia-160m", gpu_type="h100", gpus_per_node=2, method=Method(free_lunch=True))
ZERO1 = Case(
    model="pythia-160m", gpu_type="h100", gpus_per_node=2, method=Method(free_lunch=True, sharding="zero1")
)


def test_installing_deepspeed_changes_only_the_deepspeed_cases_fingerprints():
    with_ds = STACK | {"deepspeed": "0.19.8"}
    assert fingerprint_key(STACK, FREE_LUNCH) == fingerprint_key(with_ds, FREE_LUNCH)
    assert fingerprint_key(STACK, ZERO1) != fingerprint_key(with_ds, ZERO1)
    assert fingerprint_key(STACK, FREE_LUNCH) != fingerprint_key(STACK | {"torch": "2.12"}, FREE_LUNCH)


def test_a_stored_prediction_is_found_after_deepspeed_is_installed_or_the_code_changes(tmp_path):
    store = ResultStore(tmp_path)
    for case in (FREE_LUNCH, ZERO1):
        store.append(
            Result(case=case, status="ok", environment=STACK, fingerprint=fingerprint_key(STACK, case))
        )
    now = STACK | {"deepspeed": "0.19.8", "code_version": "b"}
    found = store.latest_comparable(FREE_LUNCH, now)
    assert found is not None and found.case == FREE_LUNCH
    # ZeRO's speed depends on DeepSpeed's version: that prediction is not this stack's.
    assert store.latest_comparable(ZERO1, now) is None
    assert store.latest_comparable(FREE_LUNCH, now | {"driver": "590"}) is None
