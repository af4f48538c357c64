"""Write the whole report from a list of results: the one entry point of the plugin and of the CLI.

    write_report(results, out_dir, *, validations=(), parities=()) -> {name: path}

Results may repeat a case; the last one given for a case wins (callers put the newest last). The same
holds for the check records (`reports.checks`): validation.csv/.md and parity.csv/.md are written
only where there are records of that kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.result import LIMIT_CAP, Result, micro_batch_limit
from reports import checks, costs, export, html, plots, search
from reports.rows import RESULT_COLUMNS, Group, dedupe, environment_value, groups, result_row
from reports.tables import (
    Table,
    best_settings_table,
    feasibility_table,
    fmt_days,
    fmt_mfu,
    fmt_usd,
    markdown,
    memory_saving_table,
    speedup_table,
    training_days_table,
)

TITLE = "pretrain-bench report"


def results_frame(results: list[Result]) -> pd.DataFrame:
    # object dtype: integer columns with gaps (infeasible rows) stay integers instead of turning to floats
    return pd.DataFrame([result_row(r) for r in dedupe(results)], columns=list(RESULT_COLUMNS), dtype=object)


def _micro_batch(result: Result) -> str:
    cell = f"{result.micro_batch_size} x {result.grad_acc_steps}"
    return f"{cell} (capped)" if micro_batch_limit(result) == LIMIT_CAP else cell


def summary_table(found: list[Group]) -> Table:
    """The best setting per model and node: what the terminal summary prints."""
    rows = []
    for group in found:
        best = group.best
        rows.append(
            {
                "model": group.model,
                "hardware": group.label,
                "method": (best.case.method.slug + (" (unstable timing)" if best.timing_warning else ""))
                if best
                else group.status,
                "micro-batch x acc.": _micro_batch(best) if best else "",
                "days": fmt_days(best.training_days) if best else "",
                "MFU": fmt_mfu(best.mfu) if best else "",
            }
        )
    columns = ["model", "hardware", "method", "micro-batch x acc.", "days", "MFU"]
    return Table(title="Best setting per model and hardware", frame=pd.DataFrame(rows, columns=columns))


def costs_table(rows: list[dict]) -> Table:
    display = [
        {
            "model": r["model"],
            "hardware": r["hardware"],
            "method": r["method"],
            "days": fmt_days(r["training_days"]),
            "GPU price": fmt_usd(r["gpu_price_usd"]),
            "machine without GPUs": fmt_usd(r["machine_base_usd"]),
            "hardware cost": fmt_usd(r["hardware_cost_usd"]),
            "cost per experiment": fmt_usd(r["cost_per_experiment_usd"]),
            "note": r["note"],
        }
        for r in rows
    ]
    columns = [
        "model",
        "hardware",
        "method",
        "days",
        "GPU price",
        "machine without GPUs",
        "hardware cost",
        "cost per experiment",
        "note",
    ]
    sources = sorted({f"{r['price_source']} ({r['price_date']})" for r in rows if r["price_source"]})
    unpriced = sorted({r["gpu_type"] for r in rows if r["gpu_price_usd"] is None})
    notes = [
        f"Hardware cost = GPU price x GPUs + machine without GPUs, per node; cost per experiment = "
        f"hardware cost x days / ({costs.LIFETIME_YEARS} x 365), a {costs.LIFETIME_YEARS}-year life."
    ]
    notes += [f"Prices: {source}." for source in sources]
    if unpriced:
        notes.append(
            f"No price in the hardware registry for: {', '.join(unpriced)}; their cost cells are empty."
        )
    return Table(
        title="Cost per model and hardware option (best setting)",
        frame=pd.DataFrame(display, columns=columns).fillna(""),
        notes=tuple(notes),
    )


def environment_table(results: list[Result]) -> Table:
    keys = ["gpu_name", "driver", "cuda", "torch", "transformers", "deepspeed", "code_version"]
    counts: dict[tuple, int] = {}
    for result in results:
        combo = tuple(str(environment_value(result, k) or "") for k in keys)
        counts[combo] = counts.get(combo, 0) + 1
    rows = [dict(zip(keys, combo, strict=True)) | {"results": str(n)} for combo, n in counts.items()]
    return Table(title="Measured with", frame=pd.DataFrame(rows, columns=[*keys, "results"]))


def check_lines(validations: Sequence[Mapping[str, Any]], parities: Sequence[Mapping[str, Any]]) -> list[str]:
    """The terminal's one line per kind of check that has records."""
    lines = []
    if validations:
        lines.append(checks.validation_line(validations))
    if parities:
        lines.append(checks.parity_line(parities))
    return lines


def write_report(
    results: list[Result],
    out_dir: Path,
    *,
    validations: Sequence[Mapping[str, Any]] = (),
    parities: Sequence[Mapping[str, Any]] = (),
    searches: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Every report file under out_dir; returns them by name (plots and checks only where there was data)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dedupe(results)
    found = groups(results)
    files: dict[str, Path] = {}
    validations = checks.merge([], validations)  # one per case, the last given winning
    parities = checks.merge([], parities)
    validation_files, validation_tables = checks.write_validation(validations, out_dir)
    parity_files, parity_tables = checks.write_parity(parities, out_dir)

    files["results_csv"] = out_dir / "results.csv"
    results_frame(results).to_csv(files["results_csv"], index=False)

    days_tables = [training_days_table(found, "optimal")]
    if any(g.naive is not None for g in found):
        days_tables.append(training_days_table(found, "naive"))
    files["training_days"] = out_dir / "training_days.md"
    files["training_days"].write_text(markdown(days_tables, "Training days"))

    config_tables = [
        best_settings_table(found),
        speedup_table(found),
        memory_saving_table(found),
        feasibility_table(found),
    ]
    files["optimal_configs"] = out_dir / "optimal_configs.md"
    files["optimal_configs"].write_text(markdown(config_tables, "Optimal configurations"))

    best = [g.best for g in found if g.best is not None]
    # A feasible result always carries its plan when the engine made it; a hand-made or older
    # record may not, and then there is nothing exact to export (the page says so).
    exportable = [r for r in best if r.plan]
    export.export_best(exportable, out_dir)
    if exportable:
        files["best"] = out_dir / "best"

    cost_rows = costs.cost_rows(found)
    files["costs_csv"] = out_dir / "costs.csv"
    pd.DataFrame(cost_rows, columns=list(costs.COST_COLUMNS)).to_csv(files["costs_csv"], index=False)
    cost_table = costs_table(cost_rows)
    files["costs"] = out_dir / "costs.md"
    files["costs"].write_text(markdown([cost_table], "Costs"))

    figures: dict[str, tuple[Path, str]] = {}
    for name, caption, written in (
        (
            "hardware_cost",
            "Hardware cost vs training days",
            plots.hardware_cost_plot(cost_rows, out_dir / "hardware_cost_vs_days.png"),
        ),
        (
            "cost_per_experiment",
            "Cost per experiment vs training days",
            plots.cost_per_experiment_plot(cost_rows, out_dir / "cost_per_experiment_vs_days.png"),
        ),
        (
            "speedups",
            "Speedup of the best setting over naive",
            plots.speedup_plot(found, out_dir / "speedups.png"),
        ),
    ):
        if written is not None:
            files[f"plot_{name}"] = written
            figures[name] = (written, caption)

    commands = [
        f"{r.case.id}: {export.train_command(r, f'best/{r.case.id}')}"
        if r.plan
        else f"{r.case.id}: no plan stored with the result, nothing exported"
        for r in best
    ]
    sections: list[tuple[str, Sequence[html.Item]]] = [
        (
            "Summary",
            [
                f"{len(results)} results, {sum(r.feasible for r in results)} feasible, "
                f"over {len(found)} model and hardware combinations.",
                *check_lines(validations, parities),
                summary_table(found),
                environment_table(results),
            ],
        ),
        ("Training days", days_tables),
        ("Optimal configurations", config_tables),
        (
            "Costs",
            [cost_table, *(figures[k] for k in ("hardware_cost", "cost_per_experiment") if k in figures)],
        ),
        (
            "Speedups",
            [figures["speedups"]]
            if "speedups" in figures
            else ["No model and hardware has both a naive and a best result."],
        ),
        ("Train with a best setting", [*commands] or ["No feasible result."]),
    ]
    if searches:
        search_table = search.search_table(searches)
        files["search"] = out_dir / "search.md"
        files["search"].write_text(markdown([search_table], "Search"))
        search_table.frame.to_csv(out_dir / "search.csv", index=False)
        sections.append(("Search", [search_table]))
    if validation_tables:
        sections.append(("Step-time validation", validation_tables))
    if parity_tables:
        sections.append(("Loss parity", parity_tables))
    sections.append(("All results", [Table(title="results.csv", frame=results_frame(results).fillna(""))]))
    files |= validation_files | parity_files
    files["index"] = out_dir / "index.html"
    files["index"].write_text(html.page(sections, TITLE))
    return files
