"""Unsupervised: attribution to the model's own predictions (pseudo-labels) vs to the gold labels.

Same draws, budgets, seeds and pipeline as ``exp_low_resource.py`` (``runner.TaskBench``).
With the default ``abs_sum`` aggregate, a two-class task gets the same scores from either label source up
to float rounding: p(wrong) = 1 - p(right), so the attributions only change sign. The default tasks are
therefore MNLI (3 classes) and STS-B (regression: the predicted score becomes the target), where the label
source can matter, and SST-2 as the two-class check. Also reported: how often the pseudo-labels agree
with the gold ones on the scoring examples, and the overlap of the neurons kept at 50% sparsity.

Writes ``benchmarks/results/unsupervised.{csv,md,png}``. Re-run:

    python benchmarks/exp_unsupervised.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from exp_low_resource import plot, settings_words, sweep, sweep_arguments, table
from experiments import ATTRIBUTION, jaccard, model_name
from results_io import write_csv, write_report
from runner import TaskBench, glue_data

from lightning_prune.modules import TaskModel
from lightning_prune.pruning import keep_neurons

EXPERIMENT = "unsupervised"


def agreement(model_path: Path, task: str, seeds: int, count: int) -> tuple[float, float]:
    """(pseudo-label accuracy on the scoring examples, Jaccard overlap of the neurons kept at 50%), seed-averaged."""
    model = TaskModel(task=task, path=str(model_path))
    accuracies, overlaps = [], []
    for seed in range(seeds):
        bench = TaskBench(EXPERIMENT, model, glue_data(task, num_examples=count, batch_size=16, seed=seed))
        with torch.inference_mode():
            batch = model.net.collate(bench.datamodule.score_examples())
            predicted = model.net.predict(batch)
        if model.spec.is_regression:  # "agreement" of a score: within 0.5 of the gold score
            accuracies.append(float(((predicted - batch["labels"]).abs() <= 0.5).float().mean()))
        else:
            accuracies.append(float((predicted == batch["labels"]).float().mean()))
        kept = {
            labels: keep_neurons(bench.scores("attribution", scorer_options=dict(ATTRIBUTION), labels=labels), 0.5)
            for labels in ("gold", "pseudo")
        }
        overlaps.append(jaccard(kept["gold"], kept["pseudo"]))
    return sum(accuracies) / seeds, sum(overlaps) / seeds


def main() -> None:
    args = sweep_arguments(__doc__, ["sst2", "stsb", "mnli"], [8, 16, 32, 64])
    start = time.perf_counter()
    settings = (args.model, args.tasks, args.budgets, args.seeds, args.sparsities, args.eval_limit)
    rows = sweep(EXPERIMENT, *settings, ["gold", "pseudo"])
    write_csv("unsupervised", rows)
    lines = [
        "# Unsupervised: pseudo-labels (the model's own predictions) vs gold labels",
        "",
        f"Model `{model_name(args.model)}`; attribution (m = {ATTRIBUTION['steps']}) with n seeded scoring "
        f"examples, mean (min–max) over {args.seeds} seeds. {settings_words(args)} `random` is the same in both "
        "tables.",
        "",
        f"| task | pseudo-labels agreeing with gold ({max(args.budgets)} scoring examples) | neurons kept at 50% by "
        "both (Jaccard) |",
        "|---|---|---|",
    ]
    for task in args.tasks:
        accuracy, overlap = agreement(args.model, task, args.seeds, max(args.budgets))
        kind = " (within 0.5)" if task == "stsb" else ""
        lines.append(f"| {task} | {accuracy:.3f}{kind} | {overlap:.3f} |")
    for sparsity in args.sparsities:
        for labels in ("gold", "pseudo"):
            lines += ["", f"## {labels} labels, {sparsity:.0%} FFN sparsity", ""]
            lines += table([r for r in rows if r["labels"] == labels], sparsity)
    lines += ["", f"Wall time {(time.perf_counter() - start) / 60:.1f} min on this 2-core CPU."]
    write_report("unsupervised", lines)
    plot(rows, args.sparsities, "unsupervised", "Gold (solid) vs pseudo (dotted) labels (bars: min–max over seeds)")


if __name__ == "__main__":
    main()
