"""Main table: each task's metric after pruning 10-90% of the FFN neurons, for every installed scorer.

The multi-task model (``models/minilm-glue-multitask``) is pruned for one task at a time through the user's
pipeline (``runner.TaskBench``: fit-free's steps, defaults and caches; every FFN layer losing the same fraction,
fit-free's default reconstruction). Scorers are every one ``lightning_prune.scorers.scorer_infos()`` lists
(built-ins and installed plugins such as ``fisher``). Data scorers see the same ``--examples`` seeded training
examples per task; ``random`` runs with ``--random-seeds`` seeds (mean, min and max shown).
``attribution-signed`` (on ``--signed-tasks``) is attribution with the signed sum over examples
(``aggregate: sum``) — the literal reading of "summed over examples" — next to the default sum of
per-example magnitudes.

Writes ``benchmarks/results/main_table.{csv,md,png}`` (with ``--reconstruct X``, not the default:
``main_table_X.*``). Re-run:

    python benchmarks/exp_main_table.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import ATTRIBUTION, MODEL, SPARSITIES, TASK_NAMES, model_name, spread
from results_io import markdown_table, read_csv, write_csv, write_figure, write_report
from runner import TaskBench, dense_metrics, glue_data

from lightning_prune.modules import TaskModel
from lightning_prune.scorers import scorer_infos
from lightning_prune.tasks import TASKS

SIGNED = "attribution-signed"
HEADLINE_SPARSITIES = (0.5, 0.7)


def variants(random_seeds: int, signed: bool) -> list[tuple[str, str, dict, int]]:
    """(row name, registered scorer, options, seed) for every installed scorer, plus the signed variant."""
    rows = []
    for name in scorer_infos():
        if name == "random":
            rows += [(name, name, {"seed": seed}, seed) for seed in range(random_seeds)]
        elif name == "attribution":
            rows.append((name, name, dict(ATTRIBUTION), 0))
            if signed:
                rows.append((SIGNED, name, {**ATTRIBUTION, "aggregate": "sum"}, 0))
        else:
            rows.append((name, name, {}, 0))
    return rows


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL, help="multi-task model folder")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    parser.add_argument("--examples", type=int, default=128, help="scoring examples per task")
    parser.add_argument("--eval-limit", type=int, default=300, help="evaluate on a seeded draw of at most N")
    parser.add_argument("--signed-tasks", nargs="*", default=["sst2", "rte"], help="tasks that also get the signed sum")
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument(
        "--min-dense", type=float, default=0.2, help="leave tasks whose dense metric is below this out of the average"
    )
    parser.add_argument("--reconstruct", default="auto", help="fit-free's --reconstruct for every scorer")
    parser.add_argument("--report-only", action="store_true", help="rebuild the .md and .png from the CSV")
    return parser.parse_args()


def measure(args: argparse.Namespace) -> list[dict]:
    """Score, prune and evaluate every (task, scorer, seed, sparsity) with fit-free's steps: the rows of the CSV."""
    rows = []
    for task in args.tasks:
        model = TaskModel(task=task, path=str(args.model))
        data = glue_data(task, num_examples=args.examples, batch_size=16, eval_examples=args.eval_limit, eval_seed=0)
        metric = model.spec.primary_metric
        dense_value = dense_metrics("main_table", model, data)[metric]
        bench = TaskBench("main_table", model, data, reconstruct=args.reconstruct)
        for row_name, scorer, options, seed in variants(args.random_seeds, task in args.signed_tasks):
            result = bench.sweep(scorer, scorer_options=options or None, sparsity=list(args.sparsities))
            for point in result["points"]:
                value = point["metrics"][metric]
                rows.append({
                    "task": task, "scorer": row_name, "seed": seed, "sparsity": point["sparsity"], "metric": metric,
                    "dense": round(dense_value, 5), "pruned": round(value, 5),
                    "retained": round(value / dense_value, 5), "eval_examples": data["eval_examples"],
                    "reconstruct": result["reconstruct"], "refit_aware": result["refit_aware"],
                    "calibration_examples": result["calibration_examples"],
                    "score_seconds": round(result["seconds"]["score"], 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def report(rows: list[dict], args: argparse.Namespace, timing: str) -> None:
    """The markdown report and the plot, from the rows."""
    sparsities = tuple(args.sparsities)
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))
    repair, calibration = rows[0]["reconstruct"], rows[0]["calibration_examples"]
    chosen = "fit-free's default for this model" if args.reconstruct == "auto" else f"--reconstruct {args.reconstruct}"
    if rows[0].get("refit_aware"):
        chosen += ", refit-aware scoring"
    # A ratio to a dense metric near zero (a task the model never learned, e.g. CoLA MCC ~0) is noise.
    learned = [t for t in args.tasks if next(r["dense"] for r in rows if r["task"] == t) >= args.min_dense]
    left_out = [t for t in args.tasks if t not in learned]

    def scorers_of(task: str) -> list[str]:
        return [sc for sc in scorers if any(r["scorer"] == sc and r["task"] == task for r in rows)]

    # Averages compare only scorers run on every learned task (the signed variant runs on a few).
    everywhere = [sc for sc in scorers if all(sc in scorers_of(t) for t in learned)]

    def values(task: str | None, scorer: str, sparsity: float, key: str) -> list[float]:
        picked = [r for r in rows if r["scorer"] == scorer and r["sparsity"] == sparsity]
        if task is not None:
            return [r[key] for r in picked if r["task"] == task]
        # Average over the learned tasks, per seed (only random has several), so the spread is over seeds.
        picked = [r for r in picked if r["task"] in learned]
        seeds = sorted({r["seed"] for r in picked})
        return [statistics.mean(r[key] for r in picked if r["seed"] == s) for s in seeds]

    lines = [
        "# Main table: task metric after pruning FFN neurons for one task",
        "",
        f"Model `{model_name(args.model)}` (6 FFN layers x 1536 neurons), pruned through fit-free's own steps "
        f"(`runner.TaskBench`). Per task: scorers see the same {args.examples} seeded scoring examples (gold "
        f"labels); attribution uses m = {ATTRIBUTION['steps']} Riemann steps (`example_weight: "
        f"{ATTRIBUTION['example_weight']}`); every layer loses the same fraction; reconstruction `{repair}` "
        f"({chosen}) from {calibration} calibration examples, for every scorer. "
        f"Evaluation on at most {args.eval_limit} examples (a seeded draw) of dev; QNLI and MNLI: scored on the "
        "first half of dev, evaluated on the second half (the model was fine-tuned on the first half). "
        "`random`: mean (min–max) over "
        f"{args.random_seeds} seeds.",
        "",
        "## Headline: average over the tasks of the retained fraction of the dense metric",
        "",
        f"Retained fraction = pruned metric / dense metric, averaged over {', '.join(learned)}"
        + (f"; left out (dense metric below {args.min_dense}, not learned): {', '.join(left_out)}" if left_out else "")
        + ".",
        "",
        *markdown_table(
            ["scorer", *(f"{s:.0%} sparsity" for s in sparsities)],
            [[sc, *(spread(values(None, sc, s, "retained")) for s in sparsities)] for sc in everywhere],
        ),
        "",
        "## Per task (metric of the pruned model; dense in the header)",
        "",
    ]
    for task in args.tasks:
        dense_value = next(r["dense"] for r in rows if r["task"] == task)
        lines += [f"### {task} — {TASKS[task].primary_metric}, dense {dense_value:.4f}", ""]
        lines += markdown_table(
            ["scorer", *(f"{s:.0%}" for s in sparsities)],
            [[sc, *(spread(values(task, sc, s, "pruned")) for s in sparsities)] for sc in scorers_of(task)],
        )
        lines.append("")
    lines.append(timing)
    write_report(results_name(args), lines)

    plot(rows, args, scorers, scorers_of, values)


def plot(rows: list[dict], args: argparse.Namespace, scorers: list[str], scorers_of, values) -> None:
    """One panel per task: each scorer's pruned metric against sparsity (random's spread shaded), dense dashed."""
    sparsities = tuple(args.sparsities)
    figure, axes = plt.subplots(2, (len(args.tasks) + 2) // 2, figsize=(4 * ((len(args.tasks) + 2) // 2), 8))
    axes = axes.flatten()
    colors = {scorer: f"C{i}" for i, scorer in enumerate(scorers)}  # the same colour in every panel
    for axis, task in zip(axes, args.tasks, strict=False):
        for scorer in scorers_of(task):
            means = [statistics.mean(values(task, scorer, s, "pruned")) for s in sparsities]
            axis.plot(sparsities, means, marker="o", markersize=3, label=scorer, color=colors[scorer])
            if scorer == "random":
                low = [min(values(task, scorer, s, "pruned")) for s in sparsities]
                high = [max(values(task, scorer, s, "pruned")) for s in sparsities]
                axis.fill_between(sparsities, low, high, alpha=0.2, color=colors[scorer])
        axis.axhline(next(r["dense"] for r in rows if r["task"] == task), color="black", linestyle="--", lw=1)
        axis.set_title(f"{task} ({TASKS[task].primary_metric})")
        axis.set_xlabel("FFN sparsity")
    for axis in axes[len(args.tasks) :]:
        axis.axis("off")
    axes[0].legend(fontsize=7)
    figure.suptitle("Pruned metric vs FFN sparsity (dashed: dense)")
    figure.tight_layout()
    write_figure(results_name(args), figure)


def results_name(args: argparse.Namespace) -> str:
    """``main_table``, or ``main_table_<reconstruct>`` for a repair other than the default."""
    return "main_table" if args.reconstruct == "auto" else f"main_table_{args.reconstruct}"


def main() -> None:
    args = arguments()
    if args.report_only:
        rows = read_csv(results_name(args), ("task", "scorer", "metric", "reconstruct"))
        report(rows, args, f"Rebuilt from {results_name(args)}.csv with --report-only.")
        return
    start = time.perf_counter()
    rows = measure(args)
    write_csv(results_name(args), rows)
    report(rows, args, f"Wall time of the measuring run: {time.perf_counter() - start:.0f} s (2-core CPU).")


if __name__ == "__main__":
    main()
