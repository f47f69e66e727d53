"""Unsupervised: attribution to the model's own predictions (pseudo-labels) vs to the gold labels.

Same draws, budgets and seeds as ``exp_low_resource.py`` (gold scores come from the shared score cache).
With the default ``abs_sum`` aggregate, a two-class task gets the same scores from either label source up
to float rounding: p(wrong) = 1 - p(right), so the attributions only change sign. The default tasks are
therefore MNLI (3 classes) and STS-B (regression: the predicted score becomes the target), where the label
source can matter, and SST-2 as the two-class check. Also reported: how often the pseudo-labels agree
with the gold ones on the scoring examples, and the overlap of the neurons kept at 50% sparsity.

Writes ``benchmarks/results/unsupervised.{csv,md,png}``. Re-run:

    python benchmarks/exp_unsupervised.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from exp_low_resource import compensation_words, plot, sweep, sweep_arguments, table
from experiments import ATTRIBUTION, Clock, data_scores, dense_model, jaccard, model_name, score_pool
from results_io import write_csv, write_report

from lightning_prune.pruning import select_neurons
from lightning_prune.tasks import TASKS


def agreement(model_path: Path, task: str, seeds: int, count: int) -> tuple[float, float]:
    """(pseudo-label accuracy on the scoring examples, Jaccard overlap of the neurons kept at 50%), seed-averaged."""
    spec = TASKS[task]
    model = dense_model(spec, model_path)
    accuracies, overlaps = [], []
    for seed in range(seeds):
        pool = score_pool(spec, seed)[:count]
        with torch.inference_mode():
            batch = model.collate(pool)
            predicted = model.predict(batch)
        if spec.is_regression:  # "agreement" of a score: within 0.5 of the gold score
            accuracies.append(float(((predicted - batch["labels"]).abs() <= 0.5).float().mean()))
        else:
            accuracies.append(float((predicted == batch["labels"]).float().mean()))
        kept = {
            labels: select_neurons(data_scores(model, "attribution", ATTRIBUTION, pool, count, labels), 0.5)
            for labels in ("gold", "pseudo")
        }
        overlaps.append(jaccard(kept["gold"], kept["pseudo"]))
    return sum(accuracies) / seeds, sum(overlaps) / seeds


def main() -> None:
    args = sweep_arguments(__doc__, ["sst2", "stsb", "mnli"], [8, 16, 32, 64])
    clock = Clock()
    settings = (args.model, args.tasks, args.budgets, args.seeds, tuple(args.sparsities), args.eval_limit)
    rows = sweep(*settings, "gold", args.compensate, clock) + sweep(*settings, "pseudo", args.compensate, clock)
    write_csv("unsupervised", rows)
    lines = [
        "# Unsupervised: pseudo-labels (the model's own predictions) vs gold labels",
        "",
        f"Model `{model_name(args.model)}`; attribution (m = {ATTRIBUTION['steps']}) with n seeded scoring "
        f"examples, mean (min–max) over {args.seeds} seeds. {compensation_words(args.compensate)} Evaluation on at "
        f"most {args.eval_limit} dev examples (MNLI: second half of dev). `random` is the same in both tables.",
        "",
        f"| task | pseudo-labels agreeing with gold ({max(args.budgets)} scoring examples) | neurons kept at 50% by "
        "both (Jaccard) |",
        "|---|---|---|",
    ]
    for task in args.tasks:
        accuracy, overlap = agreement(args.model, task, args.seeds, max(args.budgets))
        kind = " (within 0.5)" if TASKS[task].is_regression else ""
        lines.append(f"| {task} | {accuracy:.3f}{kind} | {overlap:.3f} |")
    clock.lap("agreement")
    for sparsity in args.sparsities:
        for labels in ("gold", "pseudo"):
            lines += ["", f"## {labels} labels, {sparsity:.0%} FFN sparsity", ""]
            lines += table([r for r in rows if r["labels"] == labels], sparsity)
    lines += ["", clock.line()]
    write_report("unsupervised", lines)
    plot(rows, args.sparsities, "unsupervised", "Gold (solid) vs pseudo (dotted) labels (bars: min–max over seeds)")


if __name__ == "__main__":
    main()
