"""Choices around the least-squares repair, measured on the multi-task decoder LM (``--task``, selection examples
held apart from the scoring and calibration examples), so that held-apart data picks fit-free's defaults:

- ``sequential``: each group of ``--groups`` layers refitted on the inputs of the model whose earlier layers are
  already pruned and refitted (as SparseGPT and SlimGPT), one statistics pass per group; ``--groups 30`` is
  fit-free's parallel refit (every layer from the dense model's inputs, one pass). Not adopted.
- ``selection``: neurons scored by their residuals (``refit-aware``, fit-free's default: what the refit cannot
  predict of each neuron from the others) or by their activations (``--refit_aware false``), before the same refit.
  (A greedy removal by score times the unpredictable share of the activation, optimal-brain-surgeon style, was
  measured here at commit f8f4ab6 and dropped: benchmarks/results/refit_variants.md in that commit.)

Both call the pipeline's own stages (``set_up_run``, ``collect_statistics``, ``score_units``, ``test_metrics``) and
pruning's pieces (``activation_statistics``, ``prune_model``, ``restored``, ``slice_ffn``). Writes
``benchmarks/results/refit_variants.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_refit_variants.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from exp_decoder_lm import MODELS, data_of, model_of
from results_io import markdown_table, write_csv, write_report
from runner import JOINT_ATTRIBUTION, scorer_options, trainer
from torch import Tensor

from lightning_prune.data import TaskDataModule
from lightning_prune.pipeline import FitFreeSettings, collect_statistics, score_units, set_up_run, test_metrics
from lightning_prune.pruning import activation_statistics, keep_neurons, prune_model, restored, slice_ffn


def refit_in_groups(model, kept: list[Tensor], batches: list, group: int) -> None:
    """Prune and refit ``group`` layers at a time, each group from the statistics of the model as pruned so far."""
    count = len(model.ffn_layers())
    for start in range(0, count, group):
        statistics = activation_statistics(model, batches, second_moments=True)
        repair = statistics.repair("least_squares")
        for index in range(start, min(count, start + group)):
            layer = model.ffn_layers()[index]
            slice_ffn(layer, kept[index], repair.down_projection(index, layer, kept[index]))


COLUMNS = ["task", "experiment", "variant", "scorer", "sparsity", "calibration examples", "selection", "retained",
           "seconds"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="multitask")
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--scorers", nargs="+", default=["attribution", "wanda"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--groups", nargs="*", type=int, default=[30, 10], help="none: skip the sequential refits")
    parser.add_argument("--sequential-calibration", type=int, default=256, help="examples per statistics pass")
    parser.add_argument("--selection-examples", type=int, default=300)
    args = parser.parse_args()
    rows: list[dict] = []
    notes = [measure_task(task, args, rows) for task in args.tasks]
    table = [
        [r["task"], r["experiment"], r["variant"], r["scorer"], f"{r['sparsity']:g}", str(r["calibration_examples"]),
         f"{r['selection']:.3f}", f"{r['selection'] / r['dense_selection']:.3f}", f"{r['seconds']:.0f}"]
        for r in rows
    ]  # fmt: skip
    write_report(
        "refit_variants",
        [
            "# Least-squares repair: "
            + ("sequential refits (not adopted) and " if args.groups else "")
            + "refit-aware scoring against scoring activations",
            "",
            f"{MODELS[args.model][2]}, {args.selection_examples} selection examples per task (held apart from the "
            f"scoring and calibration examples; {'; '.join(notes)}); fit-free's scoring settings; least squares as "
            "fit-free does it. "
            + (
                "*sequential, groups of 30* is fit-free's parallel refit from the same "
                f"{args.sequential_calibration} examples; "
                if args.groups
                else ""
            )
            + "*selection, refit-aware* is fit-free's scoring and selection "
            "with the refit from its calibration examples, *activations* the same with `--refit_aware false`. "
            "Seconds: pruning and repair (the scoring is not counted). Written by "
            f"`benchmarks/exp_refit_variants.py --model {args.model} --tasks {' '.join(args.tasks)}`.",
            "",
            *markdown_table(COLUMNS, table),
        ],
    )


def measure_task(task: str, args: argparse.Namespace, rows: list[dict]) -> str:
    """Add ``task``'s rows to ``rows`` (and the CSV); return what the report says of its dense model and statistics."""
    model = model_of(task, args.model)
    datamodule = TaskDataModule(**{**data_of(task, 300, 0), "selection_examples": args.selection_examples})
    runner = trainer()
    base = FitFreeSettings(scorer="wanda", output_dir="runs/benchmarks/refit_variants", max_drop=1.0)
    setup = set_up_run(runner, model, datamodule, base)  # holds the selection examples apart
    batches = [model.net.collate(setup.calibration[i : i + 16]) for i in range(0, len(setup.calibration), 16)]
    few = batches[: args.sequential_calibration // 16]
    metric = model.spec.primary_metric
    selection = datamodule.serving(setup.selection)
    dense = test_metrics(runner, model, selection)[metric]
    statistics = collect_statistics(runner, model, datamodule, setup)  # fit-free's statistics pass
    for scorer in args.scorers:
        scores = {}  # refit-aware (fit-free's default) and not
        for aware in (True, False):
            settings = replace(base, scorer=scorer, refit_aware=aware, **scorer_options(scorer, 0, JOINT_ATTRIBUTION))
            scored = score_units(runner, model, datamodule, replace(setup, settings=settings, refit_aware=aware),
                                 statistics.repair)  # fmt: skip
            scores[aware] = scored.layers
        for sparsity in args.sparsities:
            variants = [("sequential", f"groups of {g}", g) for g in args.groups]
            variants += [("selection", "refit-aware" if aware else "activations", aware) for aware in (True, False)]
            for experiment, name, value in variants:
                with restored(model.net):
                    start = time.perf_counter()
                    if experiment == "sequential":
                        refit_in_groups(model.net, keep_neurons(scores[True], sparsity), few, int(value))
                        calibrated = len(few) * 16
                    else:
                        prune_model(model.net, keep_neurons(scores[bool(value)], sparsity), statistics.repair)
                        calibrated = len(setup.calibration)
                    seconds = time.perf_counter() - start
                    value_after = test_metrics(runner, model, selection)[metric]
                rows.append({
                    "model": args.model, "task": task, "scorer": scorer, "sparsity": sparsity,
                    "experiment": experiment, "variant": name, "calibration_examples": calibrated, "metric": metric,
                    "dense_selection": round(dense, 5), "selection": round(value_after, 5),
                    "seconds": round(seconds, 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
                write_csv("refit_variants", rows)
    return f"{task} {metric} dense {dense:.3f}, statistics pass {statistics.seconds:.0f} s"


if __name__ == "__main__":
    main()
