"""Where benchmark results go: ``benchmarks/results/<name>.csv`` (rows), ``<name>.md`` (a report), ``<name>.png``."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_prune.io import atomic_path
from lightning_prune.sweep import markdown_table  # noqa: F401 (the benchmarks' table helper)

RESULTS = Path(__file__).parent / "results"


def write_csv(name: str, rows: list[dict]) -> None:
    with atomic_path(RESULTS / f"{name}.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(name: str, lines: list[str]) -> None:
    with atomic_path(RESULTS / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_figure(name: str, figure) -> None:
    """Save a matplotlib figure as ``<name>.png`` (and close it)."""
    import matplotlib.pyplot as plt

    with atomic_path(RESULTS / f"{name}.png") as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
