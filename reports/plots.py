"""PNG plots: hardware cost vs days and cost per experiment vs days (the paper's Fig. 7), speedups.

Figures are drawn on the Agg canvas directly, without pyplot: no display is needed (GPU nodes, CI),
and the process-wide backend of whoever imported the report (a notebook, pytest) is left alone.
Every function returns the path it wrote, or None when there is nothing to plot (no feasible or no
priced rows), never an empty figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from reports.rows import Group, naive_speedup

DPI = 110


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _usd(value: float, _position: Any) -> str:
    # Thousands with one decimal where needed: close ticks ($30.5k, $31k) must not read alike.
    return f"${value / 1000:,.1f}k".replace(".0k", "k") if value >= 1000 else f"${value:,.0f}"


def _scatter(rows: list[dict[str, Any]], y_key: str, y_label: str, title: str, path: Path) -> Path | None:
    """One point per hardware option per model, labelled with the hardware (Fig. 7 style)."""
    points = [r for r in rows if r.get(y_key) is not None and r.get("training_days") is not None]
    if not points:
        return None
    fig, ax = _figure(8, 5.5)
    for model in dict.fromkeys(r["model"] for r in points):
        mine = [r for r in points if r["model"] == model]
        ax.scatter([r["training_days"] for r in mine], [r[y_key] for r in mine], label=model, s=36)
        for r in mine:
            ax.annotate(
                r["hardware"],
                (r["training_days"], r[y_key]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    days = [r["training_days"] for r in points]
    # Days span orders of magnitude across GPU types (1 to 1,500 in the paper): log scale then.
    if min(days) > 0 and max(days) / min(days) > 50:
        ax.set_xscale("log")
    ax.set_xlabel("training days (best setting)")
    ax.set_ylabel(y_label)
    ax.yaxis.set_major_formatter(FuncFormatter(_usd))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def hardware_cost_plot(cost_rows: list[dict[str, Any]], path: Path) -> Path | None:
    return _scatter(
        cost_rows, "hardware_cost_usd", "hardware cost (USD)", "Hardware cost vs pre-training time", path
    )


def cost_per_experiment_plot(cost_rows: list[dict[str, Any]], path: Path) -> Path | None:
    return _scatter(
        cost_rows,
        "cost_per_experiment_usd",
        "cost per experiment (USD, 5-year life)",
        "Cost per experiment vs pre-training time",
        path,
    )


def speedup_plot(groups: list[Group], path: Path) -> Path | None:
    """Naive days / best days per model and hardware, where both were measured."""
    bars = [(f"{g.model}\n{g.label}", s) for g in groups if (s := naive_speedup(g)) is not None]
    if not bars:
        return None
    fig, ax = _figure(max(5.0, 0.7 * len(bars) + 2), 4.5)
    drawn = ax.bar(range(len(bars)), [s for _, s in bars], color="tab:blue")
    ax.bar_label(drawn, labels=[f"{s:.2f}x" for _, s in bars], fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("speedup (naive days / best days)")
    ax.set_title("Best setting vs naive")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
