"""The report's tables, as data frames of display strings, and their Markdown form.

One function per table; each reads `rows.Group`s only. The same `Table` renders to Markdown here and
to HTML in `reports.html`, so the two never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.result import LIMIT_CAP, Result, micro_batch_limit
from reports import paper
from reports.rows import (
    Group,
    gpu_key,
    memory_saving_stats,
    method_rank,
    naive_speedup,
)

NOT_RUN = "not run"
PAPER_INFEASIBLE = "—"  # what the paper prints for an infeasible case


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    title: str
    frame: pd.DataFrame = field(hash=False)
    notes: tuple[str, ...] = ()


# -- formatting ---------------------------------------------------------------------------------------


def fmt_days(days: float | None) -> str:
    """Days at a precision that suits their size: 1,515 / 36.4 / 8.21 / 0.0034; NaN is the paper's '—'."""
    if days is None:
        return ""
    if math.isnan(days):
        return PAPER_INFEASIBLE
    if days >= 100:
        return f"{days:,.0f}"
    if days >= 10:
        return f"{days:.1f}"
    if days >= 0.1:
        return f"{days:.2f}"
    return f"{days:.2g}"


def fmt_paper(days: float | None) -> str:
    """The paper's figures as it printed them: whole days (and '—' where infeasible)."""
    if days is not None and not math.isnan(days) and days == int(days):
        return f"{int(days):,}"
    return fmt_days(days)


def fmt_ratio(ratio: float | None) -> str:
    return "" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x"


def fmt_mfu(mfu: float | None) -> str:
    return "" if mfu is None else f"{mfu * 100:.1f}%"


def fmt_usd(usd: float | None) -> str:
    return "" if usd is None else f"${usd:,.0f}"


def with_paper(ours: str, paper_days: float | None) -> str:
    """`8.21 (paper 8)`; the paper's figure only where it has one for this model and hardware."""
    return ours if paper_days is None else f"{ours} (paper {fmt_paper(paper_days)})"


def outcome(result: Result | None) -> str:
    """A result's days, or why it has none."""
    if result is None:
        return NOT_RUN
    if result.feasible and result.training_days is not None:
        return fmt_days(result.training_days)
    return result.status  # infeasible | error


def group_outcome(group: Group) -> str:
    best = group.best
    return fmt_days(best.training_days) if best is not None else group.status


def short_reason(reason: str, limit: int = 240) -> str:
    """A reason fit for a table cell: its first line (older results carried the whole log tail)."""
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def group_reason(group: Group) -> str:
    """Why nothing in the group ran: the simplest option's reason (the others mostly repeat it)."""
    return next((short_reason(r.reason) for r in group.results if r.reason), "")


def _frame(rows: list[dict[str, str]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype=object).fillna("")


def _hardware_columns(groups: list[Group]) -> dict[str, tuple[str, int, int]]:
    """Hardware labels in column order, each with its (GPU type, nodes, GPUs per node)."""
    keyed = {(gpu_key(g.gpu_type), g.num_nodes, g.gpus_per_node): g for g in groups}
    ordered = [keyed[k] for k in sorted(keyed)]
    return {g.label: (g.gpu_type, g.num_nodes, g.gpus_per_node) for g in ordered}


# -- Table 1 / Table 4 ----------------------------------------------------------------------------------


def training_days_table(groups: list[Group], methods: str = "optimal") -> Table:
    """Table-1 style: models x hardware, our days with the paper's beside them.

    `methods="optimal"`: our best over the methods measured vs the paper's Table 1;
    `methods="naive"`: our naive days vs the paper's Table 4.
    """
    columns = _hardware_columns(groups)
    found = {(g.model, g.label): g for g in groups}
    rows = []
    for model in dict.fromkeys(g.model for g in groups):
        row = {"model": model}
        for label, (gpu_type, nodes, per_node) in columns.items():
            group = found.get((model, label))
            if group is None:  # not measured here; the paper's figure still tells what to expect
                row[label] = with_paper(NOT_RUN, paper.paper_days(model, gpu_type, nodes, per_node, methods))
            else:
                ours = group_outcome(group) if methods == "optimal" else outcome(group.naive)
                row[label] = with_paper(ours, group.paper_days(methods))
        rows.append(row)
    frame = _frame(rows, ["model", *columns])
    notes: tuple[str, ...]
    if methods == "optimal":
        title = "Training days, best setting measured (paper's Table 1 in parentheses)"
        notes = (
            "Each cell: the fewest days over the methods measured for that model and hardware.",
            "infeasible: every measured method ran out of memory (or could not split the batch); "
            f"error: no usable measurement; {PAPER_INFEASIBLE}: infeasible in the paper.",
        )
    else:
        title = "Training days, naive setting (paper's Table 4 in parentheses)"
        notes = ("Naive: no free-lunch and no memory-saving methods.",)
    return Table(title=title, frame=frame, notes=notes)


# -- Appendix J --------------------------------------------------------------------------------------------


def best_settings_table(groups: list[Group]) -> Table:
    columns = [
        "model",
        "hardware",
        "method",
        "free lunch",
        "checkpointing",
        "sharding",
        "offloading",
        "micro-batch",
        "accumulation",
        "days",
        "MFU",
        "paper method",
        "paper micro-batch x acc.",
        "paper days",
        "note",
    ]
    rows = []
    for group in groups:
        row = {
            "model": group.model,
            "hardware": group.label,
            "paper days": fmt_paper(group.paper_days("optimal")),
        }
        best = group.best
        if best is None:
            row |= {"method": group.status, "note": group_reason(group)}
        else:
            method = best.case.method
            row |= {
                "method": method.slug,
                "free lunch": _yes(method.free_lunch),
                "checkpointing": _yes(method.activation_checkpointing),
                "sharding": method.sharding,
                "offloading": _yes(method.offloading),
                "micro-batch": str(best.micro_batch_size),
                "accumulation": str(best.grad_acc_steps),
                "days": fmt_days(best.training_days),
                "MFU": fmt_mfu(best.mfu),
                "note": "; ".join(
                    filter(
                        None, [f"{len(group.feasible)} of {len(group.results)} methods ran", capped([best])]
                    )
                ),
            }
        config = group.paper_config
        if config is not None:
            row |= {
                "paper method": config.method.slug,
                "paper micro-batch x acc.": f"{config.micro_batch_size} x {config.grad_acc_steps}",
            }
        rows.append(row)
    return Table(
        title="Best setting per model and hardware (paper's Appendix J beside it)",
        frame=_frame(rows, columns),
    )


def speedup_table(groups: list[Group]) -> Table:
    """Naive vs best, ours and the paper's, for every group where naive was measured."""
    columns = [
        "model",
        "hardware",
        "naive days",
        "best days",
        "best method",
        "speedup",
        "paper naive",
        "paper best",
        "paper speedup",
    ]
    rows = []
    for group in groups:
        if group.naive is None:
            continue
        best = group.best
        paper_naive, paper_best = group.paper_days("naive"), group.paper_days("optimal")
        paper_ratio = (
            paper_naive / paper_best
            if paper_naive is not None
            and paper_best is not None
            and not math.isnan(paper_naive)
            and not math.isnan(paper_best)
            else None
        )
        rows.append(
            {
                "model": group.model,
                "hardware": group.label,
                "naive days": outcome(group.naive),
                "best days": group_outcome(group),
                "best method": best.case.method.slug if best else "",
                "speedup": fmt_ratio(naive_speedup(group)),
                "paper naive": fmt_paper(paper_naive),
                "paper best": fmt_paper(paper_best),
                "paper speedup": fmt_ratio(paper_ratio),
            }
        )
    return Table(
        title="Naive vs best: speedup (naive days / best days)",
        frame=_frame(rows, columns),
        notes=("Above 1: the best setting trains faster than the naive one.",),
    )


def memory_saving_table(groups: list[Group]) -> Table:
    """The paper's Fig. 4/5 in numbers: memory-saving options against free lunch alone."""
    columns = [
        "model",
        "hardware",
        "free-lunch days",
        "options ran",
        "best days",
        "best method",
        "best speedup",
        "median days",
        "median speedup",
        "worst days",
        "worst method",
        "worst speedup",
        "note",
    ]
    rows = []
    for group in groups:
        stats = memory_saving_stats(group)
        if not stats.tried:
            continue
        row = {
            "model": group.model,
            "hardware": group.label,
            "free-lunch days": outcome(group.free_lunch),
            "options ran": f"{stats.feasible} of {stats.tried}",
            "median days": fmt_days(stats.median_days),
            "median speedup": fmt_ratio(stats.speedup(stats.median_days)),
            "note": capped([r for r in (group.free_lunch, *group.memory_saving) if r is not None]),
        }
        for name, result in (("best", stats.best), ("worst", stats.worst)):
            if result is not None:
                row |= {
                    f"{name} days": fmt_days(result.training_days),
                    f"{name} method": result.case.method.slug,
                    f"{name} speedup": fmt_ratio(stats.speedup(result.training_days)),
                }
        rows.append(row)
    return Table(
        title="Memory-saving options vs free lunch alone",
        frame=_frame(rows, columns),
        notes=(
            "Memory-saving: free lunch plus activation checkpointing and/or sharding (with or without "
            "offloading). Speedup = free-lunch days / option days: above 1 is faster, below 1 slower; "
            "empty where free lunch alone is infeasible or was not run.",
        ),
    )


def capped(results: list[Result]) -> str:
    """A note naming the results whose micro-batch a cap bounded: their days are not the method's best,
    and comparisons with them are not at each method's largest micro-batch."""
    slugs = [
        f"{r.case.method.slug} at {r.micro_batch_size}" for r in results if micro_batch_limit(r) == LIMIT_CAP
    ]
    return f"micro-batch capped (larger not tried): {', '.join(slugs)}" if slugs else ""


def feasibility_table(groups: list[Group]) -> Table:
    """Every case: model/hardware x method, the days or the reason it has none."""
    methods = sorted({r.case.method for g in groups for r in g.results}, key=method_rank)
    slugs = [m.slug for m in methods]
    rows = []
    for group in groups:
        row = {"model": group.model, "hardware": group.label}
        for result in group.results:
            text = outcome(result)
            if result.reason and not result.feasible:
                text = f"{text}: {short_reason(result.reason)}"
            row[result.case.method.slug] = text
        rows.append(row)
    frame = _frame(rows, ["model", "hardware", *slugs])
    return Table(
        title="Feasibility: days per method, or why a method did not run",
        frame=frame,
        notes=("Empty: not run.",),
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# -- Markdown -------------------------------------------------------------------------------------------


def _md_cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_No rows._\n"
    header = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def markdown(tables: list[Table], heading: str) -> str:
    parts = [f"# {heading}\n"]
    for table in tables:
        parts.append(f"## {table.title}\n")
        parts.extend(f"{note}\n" for note in table.notes)
        parts.append(markdown_table(table.frame))
    return "\n".join(parts)


def text_table(frame: pd.DataFrame) -> list[str]:
    """Fixed-width lines for a terminal."""
    header = [str(c) for c in frame.columns]
    body = [[str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *body]
    ]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]
