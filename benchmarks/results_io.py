"""Where benchmark results go: ``benchmarks/results/<name>.csv`` (rows), ``<name>.md`` (a report), ``<name>.png``."""

from __future__ import annotations

import csv
import fcntl
from pathlib import Path

from lightning_prune.io import atomic_path
from lightning_prune.pipeline.report import markdown_table  # noqa: F401 (the benchmarks' table helper)

RESULTS = Path(__file__).parent / "results"


def write_csv(name: str, rows: list[dict]) -> None:
    with atomic_path(RESULTS / f"{name}.csv") as tmp, tmp.open("w", newline="") as handle:
        columns = list(dict.fromkeys(key for row in rows for key in row))  # rows may lack some (left empty)
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(name: str, texts: tuple[str, ...]) -> list[dict]:
    """The rows of ``<name>.csv`` (none if it does not exist), every column but ``texts`` parsed as a number
    (``True``/``False`` as booleans)."""
    path = RESULTS / f"{name}.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        rows = list(csv.DictReader(handle))

    def parse(key: str, value: str) -> str | bool | int | float | None:
        if key in texts:
            return value
        if value in ("True", "False"):
            return value == "True"
        if value == "":  # a column that rows written by an earlier version of the experiment lack
            return None
        return float(value) if "." in value or value in ("nan", "inf", "-inf") else int(value)

    return [{key: parse(key, value) for key, value in row.items()} for row in rows]


def add_rows(
    name: str, texts: tuple[str, ...], columns: tuple[str, ...], again: set[tuple], rows: list[dict]
) -> list[dict]:
    """``<name>.csv`` rewritten as its rows whose ``columns`` are not among ``again`` followed by ``rows``, read and
    written under a lock: runs in parts (``--add``) keep each other's rows even when several processes write at
    once. Returns the rows written."""
    with (RESULTS / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        written = [r for r in read_csv(name, texts) if tuple(r[c] for c in columns) not in again] + rows
        write_csv(name, written)
    return written


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


def groups(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """``rows`` grouped by their values of ``keys``, groups and rows in the order they first appear."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[k] for k in keys), []).append(row)
    return grouped
