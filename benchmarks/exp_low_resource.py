"""Low-resource: attribution pruning scored with 8 ... 128 examples (and more), over several seeded draws.

Per task and seed, the scoring examples are the first n of a seeded permutation of the scoring split, so the
budgets of one seed are nested (see ``experiments.py``); seed 0 at 128 examples is the main table's draw.
Evaluated at ``--sparsities`` (layer scope), reported as mean (min–max) over seeds, next to the dense metric
and the random scorer (same seeds). With fit-free's default bias compensation, each removed neuron's mean
activation comes from the same n examples the scores did (random: from the largest budget's examples), as a
user with n examples would get.

Writes ``benchmarks/results/low_resource.{csv,md,png}``. Re-run:

    python benchmarks/exp_low_resource.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import (
    ATTRIBUTION,
    EVAL_LIMIT,
    MODEL,
    Clock,
    add_compensate_option,
    bias_compensation,
    data_free_scores,
    data_scores,
    dense_model,
    eval_examples,
    evaluate,
    model_name,
    primary,
    prune_and_evaluate,
    score_pool,
    spread,
)
from results_io import markdown_table, write_csv, write_figure, write_report

from lightning_prune.modules import LabelSource
from lightning_prune.tasks import TASKS


def sweep(
    model: Path,
    tasks: list[str],
    budgets: list[int],
    seeds: int,
    sparsities: tuple[float, ...],
    eval_limit: int,
    labels: LabelSource,
    compensate: bool,
    clock: Clock,
) -> list[dict]:
    """Rows of (task, labels, budget, seed, sparsity, metric) for attribution; budget 0 = the random scorer."""
    rows = []
    for task in tasks:
        spec = TASKS[task]
        dense = dense_model(spec, model)
        examples = eval_examples(spec, eval_limit)
        dense_value = primary(spec, evaluate(dense, spec, examples))
        clock.lap("evaluate")
        for seed in reversed(range(seeds)):  # seed 0 last: another script running beside may have cached it
            pool = score_pool(spec, seed)
            runs = [(0, data_free_scores(dense, "random", {"seed": seed}))]
            for budget in budgets:
                runs.append((budget, data_scores(dense, "attribution", ATTRIBUTION, pool, budget, labels)))
                clock.lap("score")
            means = {}  # per example count: random's (the largest budget's) is that budget's too
            for budget, scores in runs:
                count = min(budget or max(budgets), len(pool))
                if compensate and count not in means:
                    means[count] = bias_compensation(dense, pool, count)
                pruned = prune_and_evaluate(dense, spec, scores, sparsities, examples, reconstruction=means.get(count))
                for sparsity, metrics in pruned.items():
                    rows.append({
                        "task": task, "labels": labels, "examples": min(budget, len(pool)), "seed": seed,
                        "sparsity": sparsity, "metric": spec.primary_metric, "dense": round(dense_value, 5),
                        "pruned": round(primary(spec, metrics), 5),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
                clock.lap("evaluate")
    return rows


def table(rows: list[dict], sparsity: float) -> list[str]:
    """Markdown: one row per task, one column per budget (0 = random), mean (min–max) over seeds."""
    budgets = sorted({r["examples"] for r in rows})
    body = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task and r["sparsity"] == sparsity]
        cells = [spread([r["pruned"] for r in mine if r["examples"] == b]) for b in budgets]
        body.append([f"{task} ({mine[0]['metric']})", f"{mine[0]['dense']:.3f}", *cells])
    return markdown_table(["task", "dense", *("random" if b == 0 else f"{b} examples" for b in budgets)], body)


def sweep_arguments(description: str, tasks: list[str], budgets: list[int]) -> argparse.Namespace:
    """The command line of a budget sweep (this script's and ``exp_unsupervised.py``'s)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tasks", nargs="+", default=tasks)
    parser.add_argument("--budgets", type=int, nargs="+", default=budgets)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--eval-limit", type=int, default=EVAL_LIMIT)
    add_compensate_option(parser)
    return parser.parse_args()


def main() -> None:
    args = sweep_arguments(__doc__, ["sst2", "mrpc", "stsb", "rte"], [8, 16, 32, 64, 128])
    clock = Clock()
    settings = (args.model, args.tasks, args.budgets, args.seeds, tuple(args.sparsities), args.eval_limit)
    rows = sweep(*settings, "gold", args.compensate, clock)
    write_csv("low_resource", rows)
    lines = [
        "# Low-resource: attribution scored with few examples",
        "",
        f"Model `{model_name(args.model)}`; attribution (m = {ATTRIBUTION['steps']}, gold labels) with n seeded "
        f"scoring examples per task; mean (min–max) over {args.seeds} seeds (seed s draws the same examples "
        f"for every n, nested); `random` uses the same seeds. {compensation_words(args.compensate)} Evaluation on "
        f"at most {args.eval_limit} dev examples (QNLI/MNLI: second half of dev, scored on the first half).",
    ]
    for sparsity in args.sparsities:
        lines += ["", f"## {sparsity:.0%} FFN sparsity", "", *table(rows, sparsity)]
    lines += ["", clock.line()]
    write_report("low_resource", lines)
    plot(rows, args.sparsities, "low_resource", "Attribution with n scoring examples (bars: min–max over seeds)")


def compensation_words(compensate: bool) -> str:
    if not compensate:
        return "No bias compensation."
    return (
        "Bias compensation (fit-free's default): removed neurons' mean activations over the same n scoring examples "
        "(`random`: over the largest budget's)."
    )


def plot(rows: list[dict], sparsities: list[float], name: str, title: str) -> None:
    """One panel per sparsity: metric relative to dense vs number of examples, one line per task (and labels)."""
    figure, axes = plt.subplots(1, len(sparsities), figsize=(6 * len(sparsities), 4.5), squeeze=False)
    for axis, sparsity in zip(axes[0], sparsities, strict=True):
        for key in dict.fromkeys((r["task"], r["labels"]) for r in rows):
            mine = [r for r in rows if (r["task"], r["labels"]) == key and r["sparsity"] == sparsity]
            budgets = sorted({r["examples"] for r in mine if r["examples"] > 0})
            relative = [[r["pruned"] / r["dense"] for r in mine if r["examples"] == b] for b in budgets]
            means = [statistics.mean(v) for v in relative]
            errors = [
                [m - min(v) for m, v in zip(means, relative, strict=True)],
                [max(v) - m for m, v in zip(means, relative, strict=True)],
            ]
            style = "-" if key[1] == "gold" else ":"
            axis.errorbar(budgets, means, yerr=errors, linestyle=style, marker="o", markersize=3, capsize=2,
                          label=f"{key[0]} ({key[1]})")  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xlabel("scoring examples")
        axis.set_ylabel("pruned / dense metric")
        axis.set_title(f"{sparsity:.0%} FFN sparsity")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    write_figure(name, figure)


if __name__ == "__main__":
    main()
