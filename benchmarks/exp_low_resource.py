"""Low-resource: attribution pruning scored with 8 ... 128 examples (and more), over several seeded draws.

Per task and seed, the scoring examples are the first n of a seeded permutation of the scoring split, so the
budgets of one seed are nested (a seeded draw of n is the first n of the draw of a larger budget); seed 0 at 128
examples is the main table's draw. Every cell runs through the user's pipeline (``runner.TaskBench``: fit-free's
steps, defaults and caches) at ``--sparsities`` (layer scope), reported as mean (min–max) over seeds, next to the
dense metric and the random scorer (same seeds). The repair is fit-free's default: bias compensation from 1,024
calibration examples (the scored ones and unlabeled others of the scoring split).

Writes ``benchmarks/results/low_resource.{csv,md,png}``. Re-run:

    python benchmarks/exp_low_resource.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import ATTRIBUTION, MODEL, model_name, spread
from results_io import markdown_table, write_csv, write_figure, write_report
from runner import TaskBench, dense_metrics, glue_data

from lightning_prune.modules import LabelSource, TaskModel


def sweep(
    experiment: str,
    model_path: Path,
    tasks: list[str],
    budgets: list[int],
    seeds: int,
    sparsities: list[float],
    eval_limit: int,
    label_sources: list[LabelSource],
) -> list[dict]:
    """Rows of (task, labels, budget, seed, sparsity, metric) for attribution; budget 0 = the random scorer (its
    repair from the largest budget's calibration examples). The label sources of one draw share its statistics."""
    rows = []
    for task in tasks:
        model = TaskModel(task=task, path=str(model_path))
        data = glue_data(task, batch_size=16, eval_examples=eval_limit, eval_seed=0)
        metric = model.spec.primary_metric
        dense_value = dense_metrics(experiment, model, data)[metric]
        for seed in range(seeds):
            benches: dict[int, TaskBench] = {}
            for labels in label_sources:
                runs = [(0, max(budgets), "random", {"scorer_options": {"seed": seed}})]
                runs += [
                    (n, n, "attribution", {"scorer_options": dict(ATTRIBUTION), "labels": labels}) for n in budgets
                ]
                for budget, count, scorer, options in runs:
                    data_of_draw = {**data, "num_examples": count, "seed": seed}
                    bench = benches.setdefault(count, TaskBench(experiment, model, data_of_draw))
                    result = bench.sweep(scorer, **options, sparsity=sparsities)
                    for point in result["points"]:
                        rows.append({
                            "task": task, "labels": labels, "examples": min(budget, result["examples_scored"]),
                            "seed": seed, "sparsity": point["sparsity"], "metric": metric,
                            "dense": round(dense_value, 5), "pruned": round(point["metrics"][metric], 5),
                        })  # fmt: skip
                    print(rows[-1], flush=True)
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
    parser.add_argument("--eval-limit", type=int, default=300)
    return parser.parse_args()


def settings_words(args: argparse.Namespace) -> str:
    """How every cell ran, for the reports."""
    return (
        "Through fit-free's pipeline and defaults (`runner.TaskBench`): every FFN layer losing the same fraction, bias "
        "compensation from 1,024 calibration examples (the n scored ones and a seeded draw of the rest of the "
        f"scoring split: unlabeled text); evaluation on at most {args.eval_limit} seeded dev examples (QNLI/MNLI: "
        "second half of dev, scored on the first half)."
    )


def main() -> None:
    args = sweep_arguments(__doc__, ["sst2", "mrpc", "stsb", "rte"], [8, 16, 32, 64, 128])
    start = time.perf_counter()
    settings = (args.model, args.tasks, args.budgets, args.seeds, args.sparsities, args.eval_limit)
    rows = sweep("low_resource", *settings, ["gold"])
    write_csv("low_resource", rows)
    lines = [
        "# Low-resource: attribution scored with few examples",
        "",
        f"Model `{model_name(args.model)}`; attribution (m = {ATTRIBUTION['steps']}, gold labels) with n seeded "
        f"scoring examples per task; mean (min–max) over {args.seeds} seeds (seed s draws the same examples "
        f"for every n, nested); `random` uses the same seeds. {settings_words(args)}",
    ]
    for sparsity in args.sparsities:
        lines += ["", f"## {sparsity:.0%} FFN sparsity", "", *table(rows, sparsity)]
    lines += ["", f"Wall time {(time.perf_counter() - start) / 60:.1f} min on this 2-core CPU."]
    write_report("low_resource", lines)
    plot(rows, args.sparsities, "low_resource", "Attribution with n scoring examples (bars: min–max over seeds)")


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
