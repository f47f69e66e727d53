"""A sweep's reports in its output folder: sweep.csv, sweep.md (the table and the ``max_drop`` choice) and
sweep.png."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning_prune.pipeline.evaluate import DenseResult
from lightning_prune.pipeline.sweep import Choice

SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _rows(choice: Choice, metric: str, dense: DenseResult) -> list[dict[str, Any]]:
    targets = any(point.cut.target_speedup is not None for point in choice.points)
    rows = [
        {
            "sparsity": 0.0,
            **({"target_speedup": 1.0, "flop_speedup": 1.0} if targets else {}),
            "parameters": dense.parameters,
            f"{metric}_eval": dense.metrics[metric] if dense.metrics else "",
            f"{metric}_selection": dense.selection_metrics[metric] if dense.selection_metrics else "",
            "within_drop": "",
            "chosen": "dense",
        }
    ]
    for point in choice.points:
        rows.append(
            {
                "sparsity": point.cut.sparsity,
                **(
                    {"target_speedup": point.cut.target_speedup, "flop_speedup": dense.flops / point.flops}  # type: ignore[operator]
                    if targets
                    else {}
                ),
                "parameters": point.parameters,
                f"{metric}_eval": point.metrics[metric],
                f"{metric}_selection": point.selection_metrics[metric] if point.selection_metrics else "",
                "within_drop": "" if point.within_drop is None else point.within_drop,
                "chosen": "yes" if point is choice.chosen else "",
            }
        )
    return rows


def write_sweep_reports(
    folder: Path, choice: Choice, metric: str, dense: DenseResult, max_drop: float | None
) -> str | None:
    """Write sweep.csv, sweep.md and sweep.png into ``folder``; return a note if the plot was skipped."""
    rows = _rows(choice, metric, dense)
    chosen = choice.chosen
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
            + (f"**{chosen.cut.label}**." if chosen else f"none of the swept {swept}s qualifies.")
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
