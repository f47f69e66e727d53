"""Allocation across layers: every layer losing the same fraction (``--scope layer``) or one ranking over the whole
model (``--scope global``), per scorer and rule of what to keep (``--keep_rule``: the best scores, or removals by what
the least-squares refit leaves), chosen on held-apart data (the selection examples: drawn from the scoring split,
apart from the scoring and calibration examples) and reported on the evaluation examples too.

Every sweep runs through ``runner.TaskBench`` (fit-free's steps and defaults, ``--max_drop 1`` so each sparsity is
also measured on the selection examples). Writes ``benchmarks/results/allocation.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_allocation.py --models multitask-lm --tasks sst2 agnews
    OMP_NUM_THREADS=2 python benchmarks/exp_allocation.py --tasks sst2 mnli --keep-rules scores obs --scopes layer
"""

from __future__ import annotations

import argparse
import time

from exp_decoder_lm import data_of, model_of
from exp_reconstruction import SETUPS, SPARSITIES_OF
from results_io import groups, markdown_table, read_csv, write_csv, write_report
from runner import TaskBench, glue_data, scorer_options

from lightning_prune.modules import TaskModel

EXPERIMENT = "allocation"


def bench_of(kind: str, task: str, args: argparse.Namespace) -> TaskBench:
    """The task's bench with the model's settings (as its config and the main tables use them)."""
    model_settings, data_settings, _ = SETUPS[kind]
    held_apart = {"eval_examples": args.eval_examples, "selection_examples": args.selection_examples}
    if kind == "multitask-lm":
        model, data = model_of(task), {**data_of(task, args.eval_examples, 0), **held_apart}
    else:
        model, data = TaskModel(task=task, **model_settings), glue_data(task, **data_settings, **held_apart)
    return TaskBench(EXPERIMENT, model, data, max_drop=1.0)


def options_of(kind: str, scorer: str) -> dict:
    """The scorer's options as the model's main table runs it."""
    return scorer_options(scorer, 0, SETUPS[kind][2]["scorer_options"])


def scope_options(scope: str, bench: TaskBench) -> dict:
    """fit-free's ``scope`` (and ``min_keep``) of a scope name: ``global/0.25`` is a global ranking with a per-layer
    floor of a quarter of the narrowest layer's neurons."""
    if "/" not in scope:
        return {"scope": scope}
    fraction = float(scope.split("/")[1])
    narrowest = min(layer.size for layer in bench.model.net.ffn_layers())
    return {"scope": "global", "min_keep": max(1, round(fraction * narrowest))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["multitask-lm"], choices=list(SETUPS))
    parser.add_argument("--tasks", nargs="+", default=["sst2", "agnews"])
    parser.add_argument("--scorers", nargs="+", default=["attribution", "fisher", "wanda"])
    parser.add_argument(
        "--scopes",
        nargs="+",
        default=["layer", "global"],
        help="layer, global, or global/F: global with every layer "
        "keeping at least the fraction F of its neurons (--min_keep)",
    )
    parser.add_argument("--keep-rules", nargs="+", default=["scores"], choices=["scores", "obs"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=None, help="default: the model's main table's")
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--selection-examples", type=int, default=300)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    rows = read_csv(EXPERIMENT, ("model", "task", "scorer", "scope", "metric", "reconstruct", "keep_rule"))
    for row in rows:  # rows measured before refit-aware scoring, or the keep rule, existed
        row.setdefault("refit_aware", False)
        row["keep_rule"] = row.get("keep_rule") or "scores"
    if not args.report_only:  # the rows of other cells and sparsities stay; these are measured (or read from cache)
        cells = [
            (m, t, c, s, k)
            for m in args.models for t in args.tasks for c in args.scorers for s in args.scopes for k in args.keep_rules
        ]  # fmt: skip
        measured = {(*cell, p) for cell in cells for p in args.sparsities or SPARSITIES_OF[cell[0]]}
        key = ("model", "task", "scorer", "scope", "keep_rule", "sparsity")
        rows = [r for r in rows if tuple(r[k] for k in key) not in measured]
        for kind in args.models:
            for task in args.tasks:
                bench = bench_of(kind, task, args)
                metric = bench.model.spec.primary_metric
                variants = [(c, s, k) for c in args.scorers for s in args.scopes for k in args.keep_rules]
                for scorer, scope, rule in variants:
                    start = time.perf_counter()
                    sparsities = args.sparsities or SPARSITIES_OF[kind]
                    options = {**options_of(kind, scorer), **scope_options(scope, bench), "sparsity": sparsities}
                    result = bench.sweep(scorer, **options, **({"keep_rule": rule} if rule != "scores" else {}))
                    for point in result["points"]:
                        rows.append({
                            "model": kind, "task": task, "scorer": scorer, "scope": scope, "keep_rule": rule,
                            "sparsity": point["sparsity"], "metric": metric,
                            "selection": round(point["selection_metrics"][metric], 5),
                            "evaluation": round(point["metrics"][metric], 5),
                            "reconstruct": result["reconstruct"], "refit_aware": result["refit_aware"],
                            "seconds": round(time.perf_counter() - start, 1),
                            "score_seconds": round(result["seconds"]["score"], 1),
                            "select_seconds": round(result["seconds"].get("select", float("nan")), 1),
                        })  # fmt: skip
                        print(rows[-1], flush=True)
                    write_csv(EXPERIMENT, rows)
                    report(rows)
    report(rows)


def report(rows: list[dict]) -> None:
    lines = [
        "# Allocation across layers: per-layer (`--scope layer`) or one model-wide ranking (`--scope global`)",
        "",
        "Each scorer's scores, the same reconstruction (fit-free's default for the model), the neurons chosen per "
        "layer or over the whole model; *keep rule* `obs`: removals ordered by what the least-squares refit leaves "
        "(greedy structured OBS, weighed by the scores; `scores`: the best scores kept). Cells: *selection* / "
        "*evaluation* metric; selection = held-apart examples "
        "of the scoring split (neither scored nor calibrated on), the data the default is chosen on. `global/F`: one "
        "ranking with every layer keeping at least the fraction F of its neurons (`--min_keep`). *refit-aware*: "
        "neurons scored by what the least-squares refit cannot predict of them (the default under least squares "
        "since it was added; rows without it were measured before). Written by "
        "`benchmarks/exp_allocation.py` (one scoring draw).",
        "",
    ]
    for (kind, task), mine in groups(rows, "model", "task").items():
        sparsities = sorted({r["sparsity"] for r in mine})
        lines += [f"## {kind}, {task} ({mine[0]['metric']}; reconstruct {mine[0]['reconstruct']})", ""]
        table = []
        for (scorer, scope, rule, refit), cells in groups(mine, "scorer", "scope", "keep_rule", "refit_aware").items():
            by_sparsity = {r["sparsity"]: r for r in cells}
            table.append([
                scorer, scope, rule, "yes" if refit else "no",
                *(f"{by_sparsity[s]['selection']:.3f} / {by_sparsity[s]['evaluation']:.3f}" if s in by_sparsity
                  else "—" for s in sparsities),
            ])  # fmt: skip
        header = ["scorer", "scope", "keep rule", "refit-aware", *(f"{s:g}" for s in sparsities)]
        lines += [*markdown_table(header, table), ""]
    write_report(EXPERIMENT, lines)


if __name__ == "__main__":
    main()
