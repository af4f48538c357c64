"""The results store and the run lock: records of the wrong shape are skipped by every reader, a store
that cannot be written is found before measuring and never loses a record, and two runs never share
one results folder."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from report_plugin_runs import run

from harness import store as store_module
from harness.cases import Case
from harness.lock import LockHeldError, RunLock, describe, holder
from harness.methods import FREE_LUNCH, NAIVE
from harness.result import Result
from harness.store import ResultStore, StoreNotWritableError, StoreWriteError

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000.0
STACK = {"gpu_name": "cpu", "gpu_count": 1, "driver": "", "cuda": "", "torch": "2.13", "code_version": "a"}
CASE = Case(model="pythia-14m", gpu_type="cpu", gpus_per_node=1, method=NAIVE)
OTHER = Case(model="tiny-vit", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH)


def result(case: Case = CASE, *, days: float = 0.5, created: float = T0) -> Result:
    return Result(
        case=case,
        status="ok",
        micro_batch_size=4,
        grad_acc_steps=2,
        step_time_s=days * 86400 / 1000,
        training_days=days,
        environment=STACK,
        fingerprint="fp",
        created=created,
    )


def record(**fields: object) -> dict:
    """A stored result's JSON with these fields replaced; `case_` fields replace the case's own."""
    data = {"case": result().to_dict()["case"], "status": "ok"}
    data["case"] |= {k.removeprefix("case_"): v for k, v in fields.items() if k.startswith("case_")}
    return data | {k: v for k, v in fields.items() if not k.startswith("case_")}


# Valid JSON, wrong shape, and the reason given: each must be skipped, never crash a reader.
MALFORMED = {
    "a list": ([], "the record is list, not an object"),
    "a number": (3, "the record is int, not an object"),
    "null": (None, "the record is null, not an object"),
    "no case": ({"status": "ok"}, "no 'case'"),
    "case not an object": (record(case="pythia-14m"), "case is str, not an object"),
    "case without method": ({"case": {"model": "pythia-14m", "gpu_type": "cpu"}}, "no 'case.method'"),
    "method a list": (record(case_method=[]), "case.method is list, not an object"),
    "unknown case field": (record(case_colour="red"), "TypeError: Case.__init__() got an unexpected"),
    "invalid method": (record(case_method={"free_lunch": True, "sharding": "z9"}), "unknown sharding 'z9'"),
    "a name no id can hold": (record(case_model="Pythia 14M"), "ValueError: case id 'pythia 14m-cpux1"),
    "days a string": (record(training_days="ten"), "training_days is 'ten', not a number or null"),
    "created a string": (record(created="today"), "created is 'today', not a number"),
    "a bool for a number": (
        record(micro_batch_size=True),
        "micro_batch_size is True, not an integer or null",
    ),
    "environment a list": (record(environment=[]), "environment is [], not an object"),
}


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    store = ResultStore(tmp_path / "results")
    store.append(result())
    store.append(result(OTHER, created=T0 + 1))
    return store


@pytest.mark.parametrize("bad", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_record_of_the_wrong_shape_is_skipped_by_every_reader(store, bad):
    data, why = bad
    # Named after the fingerprint, newer than the good one: every lookup of the case reads it first.
    path = store.root / CASE.id / "fp-29990101T000000.json"
    path.write_text(json.dumps(data))
    readers = {
        "records": lambda: [r["case"]["id"] for r in store.records()],
        "results": lambda: [r.case.id for r in store.results()],
        "latest": lambda: store.latest(CASE.id).case.id,
        "latest fingerprint": lambda: store.latest(CASE.id, "fp").case.id,
        "latest_comparable": lambda: store.latest_comparable(CASE, STACK).case.id,
        "latest_per_case": lambda: sorted(store.latest_per_case()),
    }
    expected = {
        "records": [CASE.id, OTHER.id],
        "results": [CASE.id, OTHER.id],
        "latest": CASE.id,
        "latest fingerprint": CASE.id,
        "latest_comparable": CASE.id,
        "latest_per_case": sorted([CASE.id, OTHER.id]),
    }
    for name, read in readers.items():
        with pytest.warns(UserWarning, match="skipping malformed record") as caught:
            assert read() == expected[name], name
        message = str(caught[0].message)
        assert f"skipping malformed record {path}: " in message and why in message, (name, message)


def test_a_corrupt_record_is_still_called_corrupt(store):
    (store.root / CASE.id / "fp-broken.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"skipping corrupt record .*fp-broken\.json"):
        assert store.latest(CASE.id, "fp") == result()


CHECK = {"case_id": CASE.id, "created": T0, "passed": True}
MALFORMED_CHECKS = {
    "a list": [],
    "a number": 7,
    "a result's shape": {"status": "ok"},
    "no created": {"case_id": CASE.id},
    "created a string": {"case_id": CASE.id, "created": "yesterday"},
    "created a bool": {"case_id": CASE.id, "created": True},
    "an empty case id": {"case_id": "", "created": T0},
    "a numeric case id": {"case_id": 3, "created": T0},
}


def test_a_check_without_a_case_id_and_a_time_is_skipped(store):
    store.append_check("parity", dict(CHECK))
    store.append_check("parity", CHECK | {"case_id": OTHER.id, "created": T0 + 1})
    folder = store.root / "_parity"
    for n, data in enumerate(MALFORMED_CHECKS.values()):
        (folder / f"bad-{n}.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="skipping malformed record") as caught:
        history = store.check_history("parity")
    assert [r["case_id"] for r in history] == [CASE.id, OTHER.id]
    assert sorted(str(w.message).split(":")[0] for w in caught) == sorted(
        f"skipping malformed record {folder / f'bad-{n}.json'}" for n in range(len(MALFORMED_CHECKS))
    )
    with pytest.warns(UserWarning, match="skipping malformed record"):
        assert store.checks("parity") == [CHECK, CHECK | {"case_id": OTHER.id, "created": T0 + 1}]


def add_junk(root: Path) -> None:
    """`[]` and `{"status": "ok"}` beside good records, as results and as checks."""
    for folder in (root / CASE.id, root / "_validation"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "junk-list.json").write_text("[]")
        (folder / "junk-status.json").write_text(json.dumps({"status": "ok"}))


def test_the_cli_reports_the_well_formed_records_of_a_store_with_junk(store, tmp_path):
    store.append_check("validation", {"case_id": CASE.id, "predicted_step_s": 1.0, "measured_step_s": 1.0})
    add_junk(store.root)
    out = tmp_path / "report"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "reports", "--results-dir", str(store.root), "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with (out / "results.csv").open(newline="") as f:
        assert sorted(r["case_id"] for r in csv.DictReader(f)) == sorted([CASE.id, OTHER.id])
    with (out / "validation.csv").open(newline="") as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == [CASE.id]
    for name in ("junk-list.json", "junk-status.json"):
        assert f"skipping malformed record {store.root / CASE.id / name}" in done.stderr
        assert f"skipping malformed record {store.root / '_validation' / name}" in done.stderr


SESSION_TEST = """
from harness.cases import Case
from harness.methods import FREE_LUNCH
from harness.result import Result


def test_case(record_property):
    case = Case(model="tiny-roberta", gpu_type="cpu", gpus_per_node=1, method=FREE_LUNCH)
    record_property("pretrain_bench_result", Result(case=case, status="ok", training_days=0.25).to_dict())
"""


def test_the_plugin_reports_the_well_formed_records_of_a_store_with_junk(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocess imports harness, models, reports
    pytester.makepyfile(test_session=SESSION_TEST)
    ResultStore(pytester.path / "results").append(result())
    add_junk(pytester.path / "results")
    outcome = run(pytester)
    outcome.assert_outcomes(passed=1)
    (run_dir,) = (pytester.path / "report").iterdir()
    with (run_dir / "results.csv").open(newline="") as f:
        ids = sorted(r["case_id"] for r in csv.DictReader(f))
    assert ids == sorted([CASE.id, "tiny-roberta-cpux1-free-lunch"])
    outcome.stdout.fnmatch_lines(["*skipping malformed record*junk-list.json*", "page: *index.html"])


# -- a store that cannot be written ---------------------------------------------------------------------


def failing_writes(monkeypatch: pytest.MonkeyPatch, under: Path, code: int = errno.ENOSPC) -> None:
    """Every write under `under` fails as a full (or read-only) disk does: after part of the file."""
    real = store_module._write_synced

    def write(path: Path, text: str) -> None:
        if not path.is_relative_to(under):
            return real(path, text)
        if code == errno.ENOSPC:
            path.write_text(text[: len(text) // 2])  # what a full disk takes before it refuses
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(store_module, "_write_synced", write)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp dir, moved into the test's own folder (where unsaved records go)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_writable_store_is_created_and_left_as_it_was(tmp_path):
    store = ResultStore(tmp_path / "new" / "results")
    store.check_writable()
    assert store.root.is_dir() and list(store.root.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode: chmod cannot refuse it")
def test_a_read_only_folder_is_refused_before_measuring(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.root.mkdir()
    store.root.chmod(0o500)
    try:
        with pytest.raises(StoreNotWritableError, match=r"is not writable: \[Errno 13\] Permission denied"):
            store.check_writable()
    finally:
        store.root.chmod(0o700)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_an_unwritable_store_is_refused_before_measuring(tmp_path, monkeypatch, code):
    store = ResultStore(tmp_path / "results")
    failing_writes(monkeypatch, store.root, code)
    with pytest.raises(StoreNotWritableError) as caught:
        store.check_writable()
    assert str(caught.value).startswith(
        f"results folder {store.root} is not writable: [Errno {code}] {os.strerror(code)}: "
    )
    assert str(caught.value).endswith("; nothing was measured")
    assert isinstance(caught.value, OSError)
    assert files_under(tmp_path) == []  # no probe left behind


def test_a_result_the_store_cannot_take_is_kept_in_the_temp_dir(tmp_path, monkeypatch, temp_dir):
    store = ResultStore(tmp_path / "results")
    failing_writes(monkeypatch, store.root)
    measured = result()
    with pytest.raises(StoreWriteError) as caught:
        store.append(measured)
    error = caught.value
    name = f"fp-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(T0))}.000000.json"
    assert error.path == store.root / CASE.id / name
    assert error.kept == temp_dir / "pretrain-bench-unsaved" / CASE.id / name
    assert str(error).startswith(
        f"could not write the record to {error.path} ([Errno 28] No space left on device: "
    )
    assert f"; kept it at {error.kept} instead" in str(error)
    assert files_under(store.root) == []  # the half-written temporary file is gone
    assert files_under(temp_dir) == [error.kept]
    assert Result.from_dict(json.loads(error.kept.read_text())) == measured
    # Copied back once the disk has room, it is the store's again.
    monkeypatch.undo()
    shutil.copytree(temp_dir / "pretrain-bench-unsaved", store.root, dirs_exist_ok=True)
    assert store.latest(CASE.id, "fp") == measured


def test_a_check_the_store_cannot_take_is_kept_under_its_kind(tmp_path, monkeypatch, temp_dir):
    store = ResultStore(tmp_path / "results")
    failing_writes(monkeypatch, store.root, errno.EROFS)
    with pytest.raises(StoreWriteError, match=r"\[Errno 30\] Read-only file system") as caught:
        store.append_check("validation", dict(CHECK))
    name = f"{CASE.id}-{T0:.6f}.json"
    assert caught.value.kept == temp_dir / "pretrain-bench-unsaved" / "_validation" / name
    assert json.loads(caught.value.kept.read_text()) == CHECK


def test_a_record_nowhere_writable_is_reported_lost_and_leaves_nothing(tmp_path, monkeypatch, temp_dir):
    store = ResultStore(tmp_path / "results")
    failing_writes(monkeypatch, tmp_path)  # the temp dir is inside it too
    with pytest.raises(StoreWriteError) as caught:
        store.append(result())
    error = caught.value
    fallback = temp_dir / "pretrain-bench-unsaved" / CASE.id / error.path.name
    assert error.kept is None and error.record == result().to_dict()
    assert f"could not write the record to {error.path} ([Errno 28]" in str(error)
    assert f"; it could not be kept at {fallback} either ([Errno 28]" in str(error)
    assert str(error).endswith("so it is not saved")
    assert files_under(tmp_path) == []


# -- one run per results folder -------------------------------------------------------------------------


def test_a_second_lock_on_a_folder_is_refused_naming_the_first(tmp_path):
    root = tmp_path / "results"
    with RunLock(root) as first:
        assert first.held and first.took_over is None
        found = holder(root)
        assert found is not None and found["pid"] == os.getpid() and found["command"] == " ".join(sys.argv)
        with pytest.raises(LockHeldError) as caught:
            RunLock(root).acquire()
        assert str(caught.value) == (
            f"results folder {root} is in use by another run: {describe(found)}; "
            "wait for it to finish or pass another --results-dir"
        )
        assert f"pid {os.getpid()} on host " in str(caught.value)
        assert caught.value.holder == found
    assert not (root / ".lock").exists() and holder(root) is None
    assert RunLock(root).acquire().took_over is None  # released: free for the next run


def test_a_holder_is_described_with_its_start_time_and_command():
    started = time.mktime((2026, 11, 30, 15, 0, 0, 0, 0, -1))
    found = {"pid": 1234, "host": "h", "started": started, "command": "pytest bench -m h200"}
    assert describe(found) == "pid 1234 on host h since 2026-11-30 15:00:00 (pytest bench -m h200)"


def test_release_leaves_a_lock_file_that_names_another_holder(tmp_path):
    lock = RunLock(tmp_path).acquire()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    lock.release()
    assert holder(tmp_path) == {"pid": 1, "host": "elsewhere"}


CHILD = """
import sys, time
from harness.lock import RunLock

RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_holder_refuses_and_a_killed_ones_lock_is_taken_over(tmp_path):
    root = tmp_path / "results"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(LockHeldError, match=f"in use by another run: pid {child.pid} on host "):
            RunLock(root).acquire()
        child.kill()  # SIGKILL: no clean-up ran, the lock file still names it
        child.wait(timeout=30)
        assert holder(root)["pid"] == child.pid
        lock = RunLock(root).acquire()
        assert lock.took_over is not None and lock.took_over["pid"] == child.pid
        assert holder(root)["pid"] == os.getpid()
        lock.release()
        assert not (root / ".lock").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
