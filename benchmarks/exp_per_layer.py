"""Per-layer picture: where each task's important neurons are, and how task-specific they are.

From each task's attribution scores (the main table's: seed 0, ``--examples`` examples):
1. kept fraction per layer when the lowest-scored neurons of the whole model go (``scope=global``);
2. overlap (Jaccard) of the neuron sets two tasks keep at ``--sparsity`` (layer scope); the diagonal
   compares the sets kept for the same task from two disjoint halves of its scoring examples, the noise
   floor of "the same neurons"; two random sets overlap by (1 - s) / (1 + s) in expectation;
3. cross-task pruning: task B's metric when the model keeps task A's neurons, relative to keeping B's own.
Also: the metric of global-scope pruning next to layer scope.

Writes ``benchmarks/results/per_layer.{csv,md,png}``. Re-run:

    python benchmarks/exp_per_layer.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import ATTRIBUTION, MODEL, TASK_NAMES, jaccard, model_name
from results_io import markdown_table, write_csv, write_figure, write_report
from runner import TaskBench, glue_data

from lightning_prune.modules import TaskModel
from lightning_prune.pruning import keep_neurons


def heat_map(axis, matrix: list[list[float]], rows: list[str], columns: list[str], title: str, fmt: str) -> None:
    image = axis.imshow(matrix, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=30, fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color="white")
    axis.set_title(title, fontsize=10)
    plt.colorbar(image, ax=axis, fraction=0.046)


def labelled(matrix: list[list[float]], names: list[str], fmt: str) -> list[list[str]]:
    return [[name, *(format(v, fmt) for v in row)] for name, row in zip(names, matrix, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--eval-limit", type=int, default=300)
    args = parser.parse_args()
    start = time.perf_counter()
    tasks, sparsity = args.tasks, args.sparsity

    def bench(task: str, examples: int, model: TaskModel | None = None) -> TaskBench:
        data = glue_data(task, num_examples=examples, batch_size=16, eval_examples=args.eval_limit, eval_seed=0)
        return TaskBench("per_layer", model or TaskModel(task=task, path=str(args.model)), data)

    # (task, 0): the main table's draw; (task, "a"): its first half (a seeded draw of n/2 is the first half of
    # the draw of n); (task, "b"): the other half — two disjoint draws. Repairs: fit-free's default (bias
    # compensation from the scoring task's calibration examples; the encoder is shared, so any head gets them).
    benches = {t: bench(t, args.examples) for t in tasks}
    options = {"scorer_options": dict(ATTRIBUTION)}
    scores, repairs = {}, {}
    for t in tasks:
        scores[t, 0] = benches[t].scores("attribution", **options)
        repairs[t] = benches[t].repair("attribution", **options)
        scores[t, "a"] = bench(t, args.examples // 2, benches[t].model).scores("attribution", **options)
        scores[t, "b"] = [whole - half for whole, half in zip(scores[t, 0], scores[t, "a"], strict=True)]
    layers = [str(index) for index in range(len(scores[tasks[0], 0]))]
    kept_global = {t: keep_neurons(scores[t, 0], sparsity, "global") for t in tasks}
    fraction = [[len(k) / s.numel() for k, s in zip(kept_global[t], scores[t, 0], strict=True)] for t in tasks]
    kept = {key: keep_neurons(value, sparsity) for key, value in scores.items()}
    overlap = [
        [jaccard(kept[a, "a"], kept[a, "b"]) if a == b else jaccard(kept[a, 0], kept[b, 0]) for b in tasks]
        for a in tasks
    ]
    cross, scope_rows = [], []
    for b in tasks:
        metric = benches[b].model.spec.primary_metric

        def pruned(kept_for: str, b: str = b, metric: str = metric) -> float:
            return benches[b].pruned_metrics(kept[kept_for, 0], repairs[kept_for])[metric]

        own = pruned(b)
        row = [1.0 if a == b else pruned(a) / own for a in tasks]
        cross.append(row)
        glob = benches[b].pruned_metrics(kept_global[b], repairs[b])[metric]
        scope_rows.append((b, metric, own, glob))
        print(b, row, glob, flush=True)

    found = PerLayer(tasks, layers, fraction, overlap, cross, scope_rows)
    write_results(found, args, time.perf_counter() - start)


@dataclass(frozen=True)
class PerLayer:
    """What the experiment measured: kept fractions per layer (global), overlaps, cross-task metrics, scopes."""

    tasks: list[str]
    layers: list[str]
    fraction: list[list[float]]
    overlap: list[list[float]]
    cross: list[list[float]]
    scope_rows: list[tuple[str, str, float, float]]


def write_results(found: PerLayer, args: argparse.Namespace, elapsed: float) -> None:
    """benchmarks/results/per_layer.{csv,md,png}."""
    tasks, sparsity = found.tasks, args.sparsity
    fraction, overlap, cross, layers = found.fraction, found.overlap, found.cross, found.layers
    chance = (1 - sparsity) / (1 + sparsity)

    def cells(table: str, matrix: list[list[float]], columns: list[str]) -> list[dict]:
        return [
            {"table": table, "row": t, "column": c, "value": round(v, 5)}
            for t, values in zip(tasks, matrix, strict=True)
            for c, v in zip(columns, values, strict=True)
        ]

    rows = cells("kept_fraction_global", fraction, layers) + cells("overlap_jaccard", overlap, tasks)
    rows += cells("cross_task_relative", cross, tasks)  # row: evaluated task, column: task whose neurons are kept
    rows += cells("scope", [[own, glob] for _, _, own, glob in found.scope_rows], ["layer", "global"])
    write_csv("per_layer", rows)
    write_report("per_layer", report_lines(found, args, elapsed))
    figure, axes = plt.subplots(1, 3, figsize=(19, 5))
    heat_map(axes[0], fraction, tasks, layers, f"kept fraction per layer (global scope, {sparsity:.0%})", ".2f")
    heat_map(axes[1], overlap, tasks, tasks, f"Jaccard of kept sets (chance {chance:.2f}; diagonal: 2 halves)", ".2f")
    heat_map(axes[2], cross, tasks, tasks, "row task's metric with column task's neurons / own", ".2f")
    write_figure("per_layer", figure)


def report_lines(found: PerLayer, args: argparse.Namespace, elapsed: float) -> list[str]:
    tasks, sparsity = found.tasks, args.sparsity
    fraction, overlap, cross, layers = found.fraction, found.overlap, found.cross, found.layers
    chance = (1 - sparsity) / (1 + sparsity)
    return [
        "# Per-layer picture: task-specific neurons",
        "",
        f"Model `{model_name(args.model)}`; attribution scores (m = {ATTRIBUTION['steps']}, {args.examples} "
        f"seeded examples per task, gold labels, `example_weight: {ATTRIBUTION['example_weight']}`) at "
        f"{sparsity:.0%} FFN sparsity, through fit-free's scoring and repair (`runner.TaskBench`): bias "
        "compensation from the scoring task's 1,024 calibration examples; evaluation on "
        f"{args.eval_limit} seeded examples per task.",
        "",
        "## Kept fraction per layer when the lowest scores of the whole model go (global scope)",
        "",
        *markdown_table(["task", *(f"layer {x}" for x in layers)], labelled(fraction, tasks, ".2f")),
        "",
        f"## Overlap (Jaccard) of the neurons two tasks keep (layer scope); random sets: {chance:.3f}",
        "",
        f"Diagonal: the same task scored on two disjoint halves of its examples ({args.examples // 2} each).",
        "",
        *markdown_table(["", *tasks], labelled(overlap, tasks, ".3f")),
        "",
        "## Cross-task pruning: metric of the row's task with the column task's kept neurons, relative to its own",
        "",
        *markdown_table(["evaluated \\ kept for", *tasks], labelled(cross, tasks, ".3f")),
        "",
        "## Layer vs global scope (metric of the pruned model)",
        "",
        *markdown_table(
            ["task", "metric", "layer scope", "global scope"],
            [[t, metric, f"{own:.4f}", f"{glob:.4f}"] for t, metric, own, glob in found.scope_rows],
        ),
        "",
        f"Wall time {elapsed / 60:.1f} min on this 2-core CPU.",
    ]


if __name__ == "__main__":
    main()
