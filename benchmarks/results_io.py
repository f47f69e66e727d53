"""Where benchmark results go: ``benchmarks/results/<name>.csv`` (rows) and ``<name>.md`` (a report)."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_prune.io import atomic_path

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
