"""A sparsity sweep's points, the automatic choice among them, and its reports (CSV, markdown, PNG)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


@dataclass
class SweepPoint:
    """One sparsity: what was kept, its size, and its metrics on the evaluation (and selection) examples."""

    sparsity: float
    kept: list[Tensor]
    parameters: int
    metrics: dict[str, float]
    selection_metrics: dict[str, float] | None = None
    within_drop: bool | None = None
    kept_heads: list[Tensor] | None = None  # head groups kept per attention layer, where heads were pruned
    flops: float | None = None  # of answering the FLOP-count batches (``target_speedup`` runs)

    def achieved_sparsity(self, widths: dict[str, int]) -> float:
        """The share of the FFN neurons (of layers ``widths`` wide) removed: below ``sparsity`` where
        ``min_keep`` kept more."""
        return 1.0 - sum(len(k) for k in self.kept) / sum(widths.values())


def parse_sparsities(sparsity: float | list[float]) -> list[float]:
    """One sparsity or several, sorted and without repeats."""
    return sorted(set(sparsity)) if isinstance(sparsity, list) else [sparsity]


def choose(points: list[SweepPoint], dense_selection: float, metric: str, max_drop: float) -> SweepPoint | None:
    """The highest sparsity whose selection metric is at most ``max_drop`` below the dense model's (marks
    every point's ``within_drop``); None if no point qualifies."""
    chosen = None
    for point in points:
        point.within_drop = dense_selection - point.selection_metrics[metric] <= max_drop + 1e-12
        if point.within_drop:
            chosen = point
    return chosen


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _rows(
    points: list[SweepPoint], metric: str, dense: dict[str, Any], chosen: SweepPoint | None
) -> list[dict[str, Any]]:
    rows = [
        {
            "sparsity": 0.0,
            "parameters": dense["parameters"],
            f"{metric}_eval": dense["metrics"][metric] if dense["metrics"] else "",
            f"{metric}_selection": dense["selection_metrics"][metric] if dense["selection_metrics"] else "",
            "within_drop": "",
            "chosen": "dense",
        }
    ]
    for point in points:
        rows.append(
            {
                "sparsity": point.sparsity,
                "parameters": point.parameters,
                f"{metric}_eval": point.metrics[metric],
                f"{metric}_selection": point.selection_metrics[metric] if point.selection_metrics else "",
                "within_drop": "" if point.within_drop is None else point.within_drop,
                "chosen": "yes" if point is chosen else "",
            }
        )
    return rows


def write_sweep_reports(
    folder: Path,
    points: list[SweepPoint],
    metric: str,
    dense: dict[str, Any],
    chosen: SweepPoint | None,
    max_drop: float | None,
) -> str | None:
    """Write sweep.csv, sweep.md and sweep.png into ``folder``; return a note if the plot was skipped."""
    rows = _rows(points, metric, dense, chosen)
    with (folder / SWEEP_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    header = ["FFN sparsity", "parameters", f"{metric} (evaluation)", f"{metric} (selection)", "chosen"]
    table = [
        [
            "dense" if row["chosen"] == "dense" else f"{row['sparsity']:g}",
            f"{row['parameters']:,}",
            cell(row[f"{metric}_eval"]),
            cell(row[f"{metric}_selection"]),
            "**yes**" if row["chosen"] == "yes" else "",
        ]
        for row in rows
    ]
    lines = [f"# Sparsity sweep: {metric} and parameters vs FFN sparsity", "", *markdown_table(header, table), ""]
    if max_drop is not None:
        lines.append(
            f"Choice: the highest sparsity whose {metric} on the selection examples (held apart from the "
            f"evaluation examples) is at most {max_drop:g} below the dense model's: "
            + (f"**{chosen.sparsity:g}**." if chosen else "none of the swept sparsities qualifies.")
        )
    note = _plot(folder / SWEEP_PNG, rows, metric)
    if note:
        lines.append(note)
    (folder / SWEEP_MD).write_text("\n".join(lines) + "\n")
    return note


def _plot(path: Path, rows: list[dict[str, Any]], metric: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "sweep.png was not drawn: matplotlib is not installed (pip install matplotlib)."
    figure, axis = plt.subplots(figsize=(6, 4))
    for column, label, style in ((f"{metric}_eval", "evaluation", "o-"), (f"{metric}_selection", "selection", "s--")):
        measured = [(row["sparsity"], row[column]) for row in rows if row[column] != ""]  # dense may be skipped
        if measured:
            axis.plot(*zip(*measured, strict=True), style, label=f"{metric} ({label})")
    axis.set_xlabel("FFN sparsity (0 = dense)")
    axis.set_ylabel(metric)
    params = axis.twinx()
    millions = [row["parameters"] / 1e6 for row in rows]
    params.plot([row["sparsity"] for row in rows], millions, "x:", color="gray", label="parameters")
    params.set_ylabel("parameters (millions)")
    handles = axis.get_legend_handles_labels()[0] + params.get_legend_handles_labels()[0]
    axis.legend(handles, [h.get_label() for h in handles], loc="lower left")
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return None
