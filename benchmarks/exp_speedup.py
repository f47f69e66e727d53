"""The speed-quality frontier on the multi-task MiniLM: ``--target_speedup`` with heads and FFN neurons together
vs FFN neurons only, per scorer.

Each task of ``models/minilm-glue-multitask`` is pruned through the user's pipeline (``runner.TaskBench``:
fit-free's steps and defaults, main-table data: 128 scoring examples, 300 seeded evaluation examples) for each
FLOP target; the FLOPs are counted by ``torch.utils.flop_counter`` on the first evaluation examples (fit-free's
own count). An unreachable target (FFN neurons alone cannot remove the attention's share) is left blank.
Measured speed of such models: ``bench_inference.py``.

Writes ``benchmarks/results/speedup.{csv,md,png}``. Re-run:

    python benchmarks/exp_speedup.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import ATTRIBUTION, MODEL
from results_io import markdown_table, read_csv, write_csv, write_figure, write_report
from runner import TaskBench, dense_metrics, glue_data, scorer_options, speedup_row

from lightning_prune.errors import UsageError
from lightning_prune.modules import TaskModel

LEARNED = ("sst2", "mrpc", "stsb", "rte", "qnli", "mnli")  # CoLA: the model never learned it (MCC ~ 0)
EXPERIMENT = "speedup"


def measure(args: argparse.Namespace) -> list[dict]:
    changed = {key: yaml.safe_load(value) for key, value in (option.split("=", 1) for option in args.attribution)}
    attribution = {**ATTRIBUTION, **changed}
    label = "".join(f" {key}={value}" for key, value in changed.items())
    rows = []
    for task in args.tasks:
        model = TaskModel(task=task, path=str(args.model))
        data = glue_data(task, num_examples=128, batch_size=16, eval_examples=300, eval_seed=0)
        metric = model.spec.primary_metric
        dense = dense_metrics(EXPERIMENT, model, data)[metric]
        bench = TaskBench(EXPERIMENT, model, data)
        for scorer in args.scorers:
            for heads in (units == "heads+ffn" for units in args.units):
                for scope in args.scopes:
                    for target in args.targets:
                        settings = {"target_speedup": target, "heads": heads, "scope": scope, "sparsity": None}
                        try:
                            result = bench.sweep(scorer, **scorer_options(scorer, 0, attribution), **settings)
                        except UsageError as error:  # unreachable with FFN neurons only
                            print(f"{task} {scorer} heads={heads} {scope} {target}: {error}", flush=True)
                            continue
                        rows.append(speedup_row(result, task, metric, dense, scope=scope))
                        rows[-1]["scorer"] += label if scorer == "attribution" else ""
                        print(rows[-1], flush=True)
                        write_csv(args.results, rows)
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    variants = list(dict.fromkeys((r["scorer"], r["units"], r["scope"]) for r in rows))

    def cell(variant: tuple, target: float, key: str) -> float | None:
        picked = [r for r in rows if (r["scorer"], r["units"], r["scope"]) == variant and r["target"] == target]
        return statistics.mean(r[key] for r in picked) if len(picked) == len(tasks) else None

    def loss(variant: tuple, target: float) -> float | None:
        picked = [r for r in rows if (r["scorer"], r["units"], r["scope"]) == variant and r["target"] == target]
        if len(picked) != len(tasks):
            return None
        return 100 * statistics.mean(r["dense"] - r["pruned"] for r in picked)

    table = []
    for variant in variants:
        for target in args.targets:
            retained, speed = cell(variant, target, "retained"), cell(variant, target, "flop_speedup")
            if retained is None or speed is None:
                continue
            points = loss(variant, target)
            table.append([*variant, f"{target:g}", f"{speed:.2f}", f"{retained:.3f}", f"{points:+.1f}"])
    lines = [
        "# Speed-quality frontier: heads + FFN vs FFN only (multi-task MiniLM)",
        "",
        f"`benchmarks/exp_speedup.py`: fit-free's pipeline and defaults with `--target_speedup`, per task of "
        f"{', '.join(tasks)} (the learned ones; main-table data: 128 scoring examples, 300 seeded evaluation "
        "examples). FLOP speedup: dense / pruned FLOPs counted by `torch.utils.flop_counter` on the first 64 "
        "evaluation examples, averaged over tasks. Loss: mean of dense − pruned primary metric, in points "
        "(accuracy, F1 for MRPC, Pearson for STS-B). A blank row: the target is out of reach for FFN neurons alone.",
        "",
        *markdown_table(["scorer", "units", "scope", "target", "FLOP speedup", "retained", "loss (points)"], table),
        "",
    ]
    write_report(args.results, lines)
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for variant in variants:
        points = [
            (speed, retained)
            for target in args.targets
            if (speed := cell(variant, target, "flop_speedup")) is not None
            and (retained := cell(variant, target, "retained")) is not None
        ]
        if points:
            style = "-" if variant[1] == "heads+ffn" else "--"
            axis.plot(*zip(*points, strict=True), style, marker="o", label=" ".join(variant))
    axis.set(xlabel="FLOP speedup (dense / pruned)", ylabel="retained (average over tasks)", title="Multi-task MiniLM")
    axis.legend(fontsize=7)
    write_figure(args.results, figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tasks", nargs="+", default=list(LEARNED))
    parser.add_argument("--scorers", nargs="+", default=["attribution", "fisher", "activation", "random"])
    parser.add_argument("--scopes", nargs="+", default=["layer", "global"])
    parser.add_argument("--units", nargs="+", choices=["heads+ffn", "ffn"], default=["heads+ffn", "ffn"])
    parser.add_argument("--targets", nargs="+", type=float, default=[1.3, 1.6, 2.0])
    parser.add_argument(
        "--attribution",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="attribution options other than the main table's, e.g. aggregate=square_sum (rows name them)",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--results", default=EXPERIMENT, help="name of the results files (default: speedup)")
    args = parser.parse_args()
    texts = ("task", "scorer", "units", "scope", "metric")
    rows = read_csv(args.results, texts) if args.report_only else measure(args)
    report(rows, args)


if __name__ == "__main__":
    main()
