"""Checks of results: step-time validation (predicted vs measured) and loss parity (method vs naive).

The engine stores the records with `ResultStore.append_check(kind, record)` (kind "validation" or
"parity") and the bench tests record them as user properties (`reports.plugin.CHECK_PROPERTIES`);
here they become validation.csv/.md and parity.csv/.md, the tables of index.html and one summary
line each for the terminal.

    validation record: case_id, predicted_step_s, measured_step_s, error_pct (signed, percent),
                       steps, warmup_steps, machine, micro_batch_size, grad_acc_steps, created,
                       predicted_by (the predicting code version), same_instance (True/False:
                       whether it trained on the boot that predicted; None: not recorded; a False
                       one is listed, not judged against the targets)
    parity record:     case_id, reference_case_id, method, precision, steps, losses,
                       reference_losses, max_rel_diff, tolerance, passed, machine, created
                       (and skipped_reason where the check did not run)
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reports.tables import Table, markdown, short_reason

# validation.csv / parity.csv: these columns first, in this order, then any other keys a record has.
VALIDATION_COLUMNS: tuple[str, ...] = (
    "case_id",
    "predicted_step_s",
    "measured_step_s",
    "error_pct",
    "steps",
    "machine",
    "warmup_steps",
    "micro_batch_size",
    "grad_acc_steps",
    "same_instance",
    "predicted_by",
    "created",
)
PARITY_COLUMNS: tuple[str, ...] = (
    "case_id",
    "reference_case_id",
    "method",
    "precision",
    "steps",
    "max_rel_diff",
    "tolerance",
    "passed",
    "skipped_reason",
    "machine",
    "losses",
    "reference_losses",
    "created",
)

# The step-time model's accuracy targets, in percent of the measured step time.
MEDIAN_TARGET_PCT = 3.0
MAX_TARGET_PCT = 6.0

Record = Mapping[str, Any]


def merge(stored: Iterable[Record], session: Iterable[Record]) -> list[dict[str, Any]]:
    """One record per case id, the later one winning (stored first, this session's after), by case id."""
    merged: dict[str, dict[str, Any]] = {}
    for record in [*stored, *session]:
        merged[str(record["case_id"])] = dict(record)
    return [merged[k] for k in sorted(merged)]


def unreadable(record: object) -> str | None:
    """Why a record cannot be reported (None when it can): it needs to be a mapping with a case id."""
    if not isinstance(record, Mapping):
        return f"not a mapping but {type(record).__name__}"
    if not isinstance(record.get("case_id"), str) or not record["case_id"]:
        return "no case_id"
    return None


# -- numbers ------------------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def error_pct(record: Record) -> float | None:
    """The signed error in percent: the record's own, else worked out from its two step times."""
    error = _number(record.get("error_pct"))
    if error is not None:
        return error
    predicted, measured = _number(record.get("predicted_step_s")), _number(record.get("measured_step_s"))
    if predicted is None or not measured:
        return None
    return 100 * (predicted - measured) / measured


def abs_errors(records: Sequence[Record]) -> list[float]:
    return [abs(e) for e in (error_pct(r) for r in records) if e is not None]


def passed(record: Record) -> bool:
    return bool(record.get("passed")) and not record.get("skipped_reason")


def skipped(record: Record) -> bool:
    return bool(record.get("skipped_reason"))


# -- formatting ---------------------------------------------------------------------------------------------


def _fmt(value: object, spec: str) -> str:
    number = _number(value)
    return "" if number is None else format(number, spec)


def _fmt_int(value: object) -> str:
    return "" if value is None else str(value)


def _met(value: float, target: float) -> str:
    return "met" if value <= target else "not met"


# -- validation ---------------------------------------------------------------------------------------------


def judged(records: Sequence[Record]) -> list[Record]:
    """The validations the targets judge: those not known to have run on another machine instance than
    their prediction (two instances of one kind can differ in host speed; see harness.env.host_identity)."""
    return [r for r in records if r.get("same_instance") is not False]


def _elsewhere_note(records: Sequence[Record]) -> str:
    elsewhere = len(records) - len(judged(records))
    return (
        f" ({elsewhere} more ran on another instance than their prediction: listed, not judged)"
        if elsewhere
        else ""
    )


def validation_summary(records: Sequence[Record]) -> str:
    """`median |error| 1.20% (target <= 3%: met); max |error| 4.50% (target <= 6%: met)`, over N cases."""
    counted = judged(records)
    errors = abs_errors(counted)
    if not errors:
        return f"{len(counted)} cases, none with an error to summarise{_elsewhere_note(records)}."
    median, largest = statistics.median(errors), max(errors)
    return (
        f"{len(counted)} cases{_elsewhere_note(records)}: median |error| {median:.2f}% "
        f"(target <= {MEDIAN_TARGET_PCT:g}%: {_met(median, MEDIAN_TARGET_PCT)}); "
        f"max |error| {largest:.2f}% (target <= {MAX_TARGET_PCT:g}%: {_met(largest, MAX_TARGET_PCT)})."
    )


def validation_line(records: Sequence[Record]) -> str:
    """The terminal's line."""
    counted = judged(records)
    errors = abs_errors(counted)
    if not errors:
        return f"validation: {len(counted)} cases, no error to summarise{_elsewhere_note(records)}"
    return (
        f"validation: {len(counted)} cases, median |error| {statistics.median(errors):.2f}%, "
        f"max {max(errors):.2f}%{_elsewhere_note(records)}"
    )


def validation_table(records: Sequence[Record]) -> Table:
    columns = [
        "case",
        "machine",
        "predicted step (s)",
        "measured step (s)",
        "error",
        "steps",
        "warmup steps",
        "micro-batch x acc.",
        "predicted on",
    ]
    rows = []
    for r in records:
        error = error_pct(r)
        same = r.get("same_instance")
        mb, acc = r.get("micro_batch_size"), r.get("grad_acc_steps")
        rows.append(
            {
                "case": r["case_id"],
                "machine": str(r.get("machine", "")),
                "predicted step (s)": _fmt(r.get("predicted_step_s"), ".4g"),
                "measured step (s)": _fmt(r.get("measured_step_s"), ".4g"),
                "error": "" if error is None else f"{error:+.2f}%",
                "steps": _fmt_int(r.get("steps")),
                "warmup steps": _fmt_int(r.get("warmup_steps")),
                "micro-batch x acc.": f"{mb} x {acc}" if mb is not None and acc is not None else "",
                # None: the prediction (or the whole record) predates the record of the instance.
                "predicted on": "not recorded"
                if same is None
                else ("this instance" if same else "another instance"),
            }
        )
    return Table(
        title="Step time: predicted vs measured",
        frame=pd.DataFrame(rows, columns=columns, dtype=object).fillna(""),
        notes=(
            validation_summary(records),
            "Error = (predicted - measured) / measured; measured over `steps` optimizer steps at the "
            "full accumulation, after the warmup steps.",
        ),
    )


# -- parity -------------------------------------------------------------------------------------------------


def parity_outcome(record: Record) -> str:
    if skipped(record):
        return f"skipped: {short_reason(str(record['skipped_reason']))}"
    return "PASS" if passed(record) else "FAIL"


def parity_summary(records: Sequence[Record]) -> str:
    n_pass = sum(passed(r) for r in records)
    n_skip = sum(skipped(r) for r in records)
    return (
        f"{n_pass} of {len(records)} pass, {len(records) - n_pass - n_skip} fail, {n_skip} skipped "
        "(max relative difference of the per-step losses against the naive eager reference, "
        "within the tolerance for the precision)."
    )


def parity_line(records: Sequence[Record]) -> str:
    """The terminal's line."""
    n_skip = sum(skipped(r) for r in records)
    line = f"loss parity: {sum(passed(r) for r in records)} of {len(records)} pass"
    return f"{line} ({n_skip} skipped)" if n_skip else line


def parity_table(records: Sequence[Record]) -> Table:
    columns = ["case", "reference", "precision", "steps", "max relative difference", "tolerance", "result"]
    rows = [
        {
            "case": r["case_id"],
            "reference": str(r.get("reference_case_id", "")),
            "precision": str(r.get("precision", "")),
            "steps": _fmt_int(r.get("steps")),
            "max relative difference": "" if skipped(r) else _fmt(r.get("max_rel_diff"), ".3g"),
            "tolerance": _fmt(r.get("tolerance"), ".3g"),
            "result": parity_outcome(r),
        }
        for r in records
    ]
    return Table(
        title="Loss parity against the naive eager reference",
        frame=pd.DataFrame(rows, columns=columns, dtype=object).fillna(""),
        notes=(parity_summary(records),),
    )


def tolerance_table(records: Sequence[Record]) -> Table:
    """The distinct (precision, tolerance) pairs the records were judged by, with how many used each."""
    counts: dict[tuple[str, float], int] = {}
    for r in records:
        tolerance = _number(r.get("tolerance"))
        if tolerance is not None:
            key = (str(r.get("precision", "")), tolerance)
            counts[key] = counts.get(key, 0) + 1
    rows = [
        {"precision": precision, "tolerance": f"{tolerance:.3g}", "cases": str(n)}
        for (precision, tolerance), n in sorted(counts.items())
    ]
    return Table(
        title="Tolerance per precision",
        frame=pd.DataFrame(rows, columns=["precision", "tolerance", "cases"], dtype=object),
        notes=("Taken from the records: a case passes when its max relative difference <= its tolerance.",),
    )


# -- files --------------------------------------------------------------------------------------------------


def check_frame(records: Sequence[Record], first: Sequence[str]) -> pd.DataFrame:
    """The records as csv rows: `first` columns in order, then any other keys in first-seen order."""
    extra = [k for k in dict.fromkeys(k for r in records for k in r) if k not in first]
    rows = [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in records]
    return pd.DataFrame(rows, columns=[*first, *extra], dtype=object)


def write_validation(records: Sequence[Record], out_dir: Path) -> tuple[dict[str, Path], list[Table]]:
    if not records:
        return {}, []
    files = {"validation_csv": out_dir / "validation.csv", "validation": out_dir / "validation.md"}
    check_frame(records, VALIDATION_COLUMNS).to_csv(files["validation_csv"], index=False)
    tables = [validation_table(records)]
    files["validation"].write_text(markdown(tables, "Step-time validation"))
    return files, tables


def write_parity(records: Sequence[Record], out_dir: Path) -> tuple[dict[str, Path], list[Table]]:
    if not records:
        return {}, []
    files = {"parity_csv": out_dir / "parity.csv", "parity": out_dir / "parity.md"}
    check_frame(records, PARITY_COLUMNS).to_csv(files["parity_csv"], index=False)
    tables = [parity_table(records), tolerance_table(records)]
    files["parity"].write_text(markdown(tables, "Loss parity"))
    return files, tables
