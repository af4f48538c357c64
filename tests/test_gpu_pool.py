"""The GPU pool hands disjoint GPUs to concurrent jobs, across threads and processes (fake devices)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.gpu_pool import GpuPool, visible_devices

REPO = Path(__file__).resolve().parents[1]


def test_concurrent_leases_never_share_a_gpu(tmp_path):
    pool = GpuPool(["0", "1", "2", "3"], tmp_path)
    held: dict[str, int] = {}
    lock = threading.Lock()
    overlaps: list[str] = []
    leases: list[tuple[str, ...]] = []

    def job(n: int) -> None:
        rng = random.Random(n)
        for _ in range(5):
            with pool.lease(rng.choice([1, 2, 4]), holder=f"job{n}") as devices:
                with lock:
                    for d in devices:
                        if held.get(d):
                            overlaps.append(d)
                        held[d] = n
                    leases.append(devices)
                time.sleep(rng.uniform(0.001, 0.02))
                with lock:
                    for d in devices:
                        held[d] = 0

    threads = [threading.Thread(target=job, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not overlaps
    assert len(leases) == 40 and all(len(set(d)) == len(d) for d in leases)


def test_another_process_holding_a_gpu_is_waited_for_and_named(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from harness.gpu_pool import GpuPool\n"
        f"with GpuPool(['0', '1'], Path({str(tmp_path)!r})).lease(1, holder='other run') as d:\n"
        "    print(d[0], flush=True); time.sleep(3)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    taken = other.stdout.readline().strip()
    pool = GpuPool(["0", "1"], tmp_path)
    assert pool.holder(taken)["job"] == "other run"
    with pool.lease(1) as first:
        assert first != (taken,)  # the free one, at once
        told: list[dict] = []
        started = time.monotonic()
        with pool.lease(1, waiting=told.append) as second:  # waits for the other process to let go
            assert second == (taken,) and time.monotonic() - started > 0.5
        assert told and told[0][taken]["job"] == "other run"
    other.wait(timeout=10)


def test_a_killed_holder_frees_its_gpus(tmp_path):
    code = (
        "import time; from pathlib import Path; from harness.gpu_pool import GpuPool\n"
        f"with GpuPool(['0'], Path({str(tmp_path)!r})).lease(1) as d:\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    other.kill()
    other.wait(timeout=10)
    with GpuPool(["0"], tmp_path).lease(1, timeout_s=5) as devices:
        assert devices == ("0",)


def test_too_many_gpus_and_a_timeout_are_refused(tmp_path):
    pool = GpuPool(["0"], tmp_path)
    with pytest.raises(ValueError, match="needs 2 GPU"), pool.lease(2):
        pass
    with pool.lease(1), pytest.raises(TimeoutError), pool.lease(1, timeout_s=0.3):
        pass


def test_visible_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert visible_devices(2) == ["3", "1"]
