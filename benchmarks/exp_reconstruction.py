"""Which repair of the cut, from how many calibration examples: ``--reconstruct none|bias|least_squares``,
``--data.calibration_examples`` and least squares' ``--damping``, chosen on held-apart data (the selection examples:
drawn from the scoring split, disjoint from the scoring and calibration examples), reported also on the evaluation
examples.

Every cell is a ``fit-free`` run through ``runner.run_cell`` (attribution, the model's config settings, sparsities
0.3, 0.5, 0.7, ``--max_drop 1`` so each sparsity is also measured on the selection examples). Writes
``benchmarks/results/reconstruction.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_reconstruction.py --models multitask-lm minilm
"""

from __future__ import annotations

import argparse
import time

from experiments import MODEL
from results_io import groups, markdown_table, read_csv, write_csv, write_report
from runner import DECODER_LM_SCORING, JOINT_ATTRIBUTION, MULTITASK_LM, glue_data, run_cell

from lightning_prune.modules import TaskModel
from lightning_prune.pruning.repair import DEFAULT_DAMPING

SPARSITIES = [0.3, 0.5, 0.7]
# (model kind) -> (TaskModel settings, data settings, fit-free options), as its config and the main tables use them
SETUPS = {
    "multitask-lm": (
        MULTITASK_LM,
        DECODER_LM_SCORING,
        {"scorer": "attribution", "scorer_options": JOINT_ATTRIBUTION},
    ),
    "minilm": (
        {"path": str(MODEL)},
        {"num_examples": 256, "batch_size": 16},
        {"scorer": "attribution", "scorer_options": {"steps": 10, "steps_per_pass": 10, "example_weight": "tokens"}},
    ),
}
SPARSITIES_OF = {"multitask-lm": SPARSITIES, "minilm": [0.5, 0.7, 0.9]}


def variants(kind: str, calibrations: list[int], dampings: list[float]) -> list[tuple[str, int | None, float]]:
    """(reconstruct, calibration examples, damping; 0 where none applies): the plain cut, bias compensation where
    the model has down biases, and least squares from each number of calibration examples with each damping."""
    plain = [("none", None, 0.0)] + ([("bias", c, 0.0) for c in calibrations] if kind == "minilm" else [])
    return [*plain, *(("least_squares", c, d) for c in calibrations for d in dampings)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["multitask-lm", "minilm"], choices=list(SETUPS))
    parser.add_argument("--tasks", nargs="+", default=["sst2", "qnli"])
    parser.add_argument("--calibrations", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--methods", nargs="+", default=["none", "bias", "least_squares"])
    parser.add_argument("--dampings", nargs="+", type=float, default=[DEFAULT_DAMPING], help="least squares' --damping")
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--selection-examples", type=int, default=300)
    args = parser.parse_args()
    rows = earlier_rows({
        (kind, task, reconstruct, calibration or 0, damping)
        for kind in args.models for task in args.tasks
        for reconstruct, calibration, damping in variants(kind, args.calibrations, args.dampings)
        if reconstruct in args.methods
    })  # fmt: skip
    for kind in args.models:
        model_settings, data_settings, options = SETUPS[kind]
        for task in args.tasks:
            model = TaskModel(task=task, **model_settings)
            for reconstruct, calibration, damping in variants(kind, args.calibrations, args.dampings):
                if reconstruct not in args.methods:
                    continue
                data = glue_data(
                    task,
                    **data_settings,
                    eval_examples=args.eval_examples,
                    selection_examples=args.selection_examples,
                    calibration_examples=calibration,
                )
                start = time.perf_counter()
                changed = {"damping": damping} if damping not in (0.0, DEFAULT_DAMPING) else {}  # default: its cells
                summary = run_cell(
                    "reconstruction", model, data, **options, sparsity=SPARSITIES_OF[kind], max_drop=1.0,
                    reconstruct=reconstruct, **changed,
                )  # fmt: skip
                metric = summary["primary_metric"]
                for point in summary["sweep"]:
                    rows.append({
                        "model": kind, "task": task, "reconstruct": reconstruct,
                        "calibration_examples": calibration or 0, "damping": damping,
                        "sparsity": point["sparsity"], "metric": metric,
                        "dense_selection": round(summary["selection"]["dense_metrics"][metric], 5),
                        "selection": round(point["selection_metrics"][metric], 5),
                        "evaluation": round(point["metrics"][metric], 5),
                        "refit_aware": summary["refit_aware"],
                        "statistics_seconds": round(summary["seconds"].get("statistics", 0.0), 1),
                        "cell_seconds": round(time.perf_counter() - start, 1),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
                write_csv("reconstruction", rows)
    report(rows, args)


def earlier_rows(rerun: set[tuple[str, str, str, int, float]]) -> list[dict]:
    """The CSV's rows of the (model, task, reconstruct, calibration examples, damping) cells this run does not
    measure again (numbers parsed): measuring more calibration counts or dampings keeps the others."""
    rows = read_csv("reconstruction", ("model", "task", "reconstruct", "metric"))
    for row in rows:  # rows measured before refit-aware scoring, or other dampings, existed
        row.setdefault("refit_aware", False)
        row.setdefault("damping", DEFAULT_DAMPING if row["reconstruct"] == "least_squares" else 0.0)
    keys = ("model", "task", "reconstruct", "calibration_examples", "damping")
    return [r for r in rows if tuple(r[k] for k in keys) not in rerun]


def report(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Repair after the cut: which repair, from how many calibration examples",
        "",
        "Every cell is one `fit-free` run (attribution; the model's config settings; `--max_drop 1` so every "
        f"sparsity is also measured on {args.selection_examples} selection examples, drawn from the scoring split "
        "apart from the scoring and calibration examples). *selection*: the held-apart data the defaults are "
        f"chosen on; *evaluation*: {args.eval_examples} seeded dev examples (QNLI: the second half of dev). "
        "Written by `benchmarks/exp_reconstruction.py`. `scales` rows: one refitted factor per kept neuron (Kwon et "
        "al. 2022), measured at commit a601c29 and removed since (least squares won on the decoder). *refit-aware*: "
        "neurons scored by what the refit cannot predict of them (fit-free's default under least squares since it "
        "was added; rows without it were measured before).",
        "",
    ]
    for (kind, task), mine in groups(rows, "model", "task").items():
        sparsities = sorted({r["sparsity"] for r in mine})
        metric, dense = mine[0]["metric"], mine[0]["dense_selection"]
        lines += [f"## {kind}, {task} ({metric}; dense on the selection examples {dense:.3f})", ""]
        table = []
        for (reconstruct, calibration, damping, refit), setup in groups(
            mine, "reconstruct", "calibration_examples", "damping", "refit_aware"
        ).items():
            cells = {r["sparsity"]: r for r in setup}
            table.append([
                reconstruct, str(calibration or "—"), f"{damping:g}" if damping else "—", "yes" if refit else "no",
                *(f"{cells[s]['selection']:.3f} / {cells[s]['evaluation']:.3f}" for s in sparsities),
                f"{setup[0]['statistics_seconds']:.0f}",
            ])  # fmt: skip
        cells = [f"{s:g}: selection / evaluation" for s in sparsities]
        header = ["reconstruct", "calibration examples", "damping", "refit-aware", *cells]
        lines += [*markdown_table([*header, "statistics s"], table), ""]
    write_report("reconstruction", lines)


if __name__ == "__main__":
    main()
