"""What each search cost: wall time, cases measured / pruned / infeasible, the share spent compiling;
and the fault matrix's last count.

The engine stores one record per search under the store's `_search/` (harness.engine); the report
shows the newest per model and node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reports.tables import Table

FAULTS_DIR = Path(__file__).resolve().parent.parent / "runs" / "faults"


def newest_per_group(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    newest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for record in records:
        key = (record["case_id"], record.get("strategy", ""))
        if record.get("created", 0.0) >= newest.get(key, {}).get("created", 0.0):
            newest[key] = record
    return sorted(newest.values(), key=lambda r: (r["case_id"], r.get("strategy", "")))


def compile_share(record: Mapping[str, Any]) -> str:
    """The share of a search's wall time its jobs spent compiling, as '16%'; '' without a wall time."""
    wall = float(record.get("wall_s", 0.0))
    return f"{100 * float(record.get('compile_s', 0.0)) / wall:.0f}%" if wall > 0 else ""


def search_table(records: Sequence[Mapping[str, Any]]) -> Table:
    rows = []
    for r in newest_per_group(records):
        wall = float(r.get("wall_s", 0.0))
        rows.append(
            {
                "model and node": r["case_id"],
                "search": r.get("strategy", ""),
                "wall time": f"{wall / 60:.1f} min",
                "cases": r.get("cases", 0),
                "measured": r.get("measured", 0),
                "pruned": r.get("pruned", 0),
                "infeasible": r.get("infeasible", 0),
                "errors": r.get("errors", 0),
                "from store": r.get("from_store", 0),
                "jobs (reused)": f"{r.get('jobs', 0)} ({r.get('jobs_reused', 0)})",
                "compiling": compile_share(r),
                "GPU": r.get("gpu_name") or "",
            }
        )
    columns = [
        "model and node",
        "search",
        "wall time",
        "cases",
        "measured",
        "pruned",
        "infeasible",
        "errors",
        "from store",
        "jobs (reused)",
        "compiling",
        "GPU",
    ]
    return Table(title="Search time", frame=pd.DataFrame(rows, columns=columns))


def search_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One terminal line per search."""
    lines = []
    for r in newest_per_group(records):
        wall = float(r.get("wall_s", 0.0))
        share = f", {compile_share(r)} compiling" if wall > 0 else ""
        lines.append(
            f"search {r['case_id']} ({r.get('strategy')}): {wall / 60:.1f} min, "
            f"{r.get('measured', 0)} measured, {r.get('pruned', 0)} pruned, "
            f"{r.get('infeasible', 0)} infeasible{share}"
        )
    return lines


def faults_line(folder: Path = FAULTS_DIR, since: float = 0.0) -> str | None:
    """'faults survived: N of M' from the fault matrix's records written since `since`, or None."""
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("time", 0.0) >= since:
            records.append(record)
    if not records:
        return None
    survived = sum(bool(r.get("survived")) for r in records)
    failed = [r.get("fault", "?") for r in records if not r.get("survived")]
    tail = f" (not: {', '.join(failed)})" if failed else ""
    return f"faults survived: {survived} of {len(records)} (tests/test_faults.py){tail}"
