"""A sweep's points (sparsities or FLOP targets), the automatic choice among them, and its reports (CSV,
markdown, PNG)."""

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
    """One sparsity (or FLOP target): what was kept, its size, and its metrics on the evaluation (and selection)
    examples."""

    sparsity: float
    kept: list[Tensor]
    parameters: int
    metrics: dict[str, float]
    selection_metrics: dict[str, float] | None = None
    within_drop: bool | None = None
    kept_heads: list[Tensor] | None = None  # head groups kept per attention layer, where heads were pruned
    flops: float | None = None  # of answering the FLOP-count batches (``target_speedup`` runs)
    target_speedup: float | None = None  # the FLOP budget this point was selected for

    @property
    def label(self) -> str:
        """How the point is named: its sparsity, or its FLOP target (``1.6x``)."""
        return f"{self.sparsity:g}" if self.target_speedup is None else f"{self.target_speedup:g}x"

    def achieved_sparsity(self, widths: dict[str, int]) -> float:
        """The share of the FFN neurons (of layers ``widths`` wide) removed: below ``sparsity`` where
        ``min_keep`` kept more."""
        return 1.0 - sum(len(k) for k in self.kept) / sum(widths.values())


def swept_values(value: float | list[float]) -> list[float]:
    """One sparsity (or FLOP target) or several, sorted and without repeats."""
    return sorted(set(value)) if isinstance(value, list) else [value]


def choose(points: list[SweepPoint], dense_selection: float, metric: str, max_drop: float) -> SweepPoint | None:
    """The most pruned point (highest sparsity or FLOP target; ``points`` come lowest first) whose selection
    metric is at most ``max_drop`` below the dense model's (marks every point's ``within_drop``); None if no
    point qualifies."""
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
    targets = any(point.target_speedup is not None for point in points)
    rows = [
        {
            "sparsity": 0.0,
            **({"target_speedup": 1.0, "flop_speedup": 1.0} if targets else {}),
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
                **(
                    {"target_speedup": point.target_speedup, "flop_speedup": dense["flops"] / point.flops}
                    if targets
                    else {}
                ),
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

    targets = "target_speedup" in rows[0]
    header = ["FFN sparsity", "parameters", f"{metric} (evaluation)", f"{metric} (selection)", "chosen"]
    if targets:
        header[:1] = ["target speedup", "FLOP speedup", "FFN sparsity"]
    table = [
        [
            *([f"{row['target_speedup']:g}x", f"{row['flop_speedup']:.2f}x"] if targets else []),
            "dense" if row["chosen"] == "dense" else f"{row['sparsity']:.3f}" if targets else f"{row['sparsity']:g}",
            f"{row['parameters']:,}",
            cell(row[f"{metric}_eval"]),
            cell(row[f"{metric}_selection"]),
            "**yes**" if row["chosen"] == "yes" else "",
        ]
        for row in rows
    ]
    swept = "FLOP target" if targets else "FFN sparsity"
    lines = [f"# Sweep: {metric} and parameters vs {swept}", "", *markdown_table(header, table), ""]
    if max_drop is not None:
        lines.append(
            f"Choice: the highest {swept} whose {metric} on the selection examples (held apart from the "
            f"evaluation examples) is at most {max_drop:g} below the dense model's: "
            + (f"**{chosen.label}**." if chosen else f"none of the swept {swept}s qualifies.")
        )
    note = _plot(folder / SWEEP_PNG, rows, metric, "flop_speedup" if targets else "sparsity")
    if note:
        lines.append(note)
    (folder / SWEEP_MD).write_text("\n".join(lines) + "\n")
    return note


def _plot(path: Path, rows: list[dict[str, Any]], metric: str, x: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "sweep.png was not drawn: matplotlib is not installed (pip install matplotlib)."
    figure, axis = plt.subplots(figsize=(6, 4))
    for column, label, style in ((f"{metric}_eval", "evaluation", "o-"), (f"{metric}_selection", "selection", "s--")):
        measured = [(row[x], row[column]) for row in rows if row[column] != ""]  # dense may be skipped
        if measured:
            axis.plot(*zip(*measured, strict=True), style, label=f"{metric} ({label})")
    axis.set_xlabel("FFN sparsity (0 = dense)" if x == "sparsity" else "fewer FLOPs, counted (1 = dense)")
    axis.set_ylabel(metric)
    params = axis.twinx()
    millions = [row["parameters"] / 1e6 for row in rows]
    params.plot([row[x] for row in rows], millions, "x:", color="gray", label="parameters")
    params.set_ylabel("parameters (millions)")
    handles = axis.get_legend_handles_labels()[0] + params.get_legend_handles_labels()[0]
    axis.legend(handles, [h.get_label() for h in handles], loc="lower left")
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return None
