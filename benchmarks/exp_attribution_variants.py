"""Attribution's variants on the multi-task decoder LM, next to Fisher and Wanda: its IG path (``mode``: ``joint``,
every FFN layer scaled together, the decoders' default, or ``exact``, one layer at a time, the paper's) and more
scoring examples (joint mode given about exact mode's time), or any other scorer option. A variant is
``scorer[:option=value,...]/scoring examples``, its options over the main table's.

Variants with more scoring examples also have other calibration examples, so the variants are compared on one set of
**selection examples**, the same for all: drawn from the evaluation source apart from the evaluation examples (so
never scored or calibrated on), written once under ``runs/benchmarks/data``; RTE has none to spare. Each cell is
also reported on the main table's evaluation examples. Every sweep runs through ``runner.TaskBench`` (fit-free's
steps, defaults and caches). Writes ``benchmarks/results/attribution_variants.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_attribution_variants.py --tasks sst2

A re-run replaces the cells of the variants it runs and keeps the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from exp_decoder_lm import SPARSITIES, data_of, model_of
from results_io import groups, markdown_table, read_csv, write_csv, write_report
from runner import JOINT_ATTRIBUTION, RUNS, TaskBench, dense_metrics, scorer_options

from lightning_prune.data import TaskDataModule
from lightning_prune.io import atomic_path

EXPERIMENT = "attribution_variants"
DEFAULT_VARIANTS = (
    "attribution/64", "fisher/64", "wanda/64", "attribution:mode=exact/64", "attribution/1024"
)  # fmt: skip


def parse_variant(variant: str) -> tuple[str, dict[str, Any], int]:
    """``scorer[:option=value,...]/examples`` → (scorer, its options over the main table's, scoring examples); a
    value is read as JSON where it is JSON (``steps=20``, ``reuse_prefix=false``), else as a string."""
    name, examples = variant.rsplit("/", 1)
    scorer, _, changed = name.partition(":")
    options = {}
    for pair in filter(None, changed.split(",")):
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return scorer, options, int(examples)


def options_of(scorer: str, changed: dict[str, Any]) -> dict:
    """fit-free's scorer options of a variant: the main table's, with ``changed`` ones."""
    options = scorer_options(scorer, 0, JOINT_ATTRIBUTION)
    options.setdefault("scorer_options", {}).update(changed)
    return options


def selection_file(task: str, data: dict, count: int) -> str:
    """A file of ``count`` examples of the evaluation source that are not evaluation examples (a seeded draw of the
    source's own lines, so it reads as that source does): never scored or calibrated on (those come from the
    scoring source), the same for every variant. Named by its content, so cells never see another file's."""
    module = TaskDataModule(**data)
    h = module.hparams
    evaluated = {(e.texts, e.label) for e in module.eval_examples()}
    whole = TaskDataModule(**{**data, "eval_examples": None}).eval_examples()
    split = "validation" if h.eval_split.startswith("validation_") else h.eval_split  # a half: indices are the file's
    source = Path(h.eval_file or Path(h.data_dir) / task / module.spec.split_files[split])
    lines = source.read_text().splitlines()
    if any(e.index + 1 >= len(lines) or e.texts[0] not in lines[1 + e.index] for e in whole):
        raise SystemExit(
            f"{source}: not one example per line after a header; the selection examples cannot be written as that file"
        )
    free = [e for e in whole if (e.texts, e.label) not in evaluated]
    if not free:
        raise SystemExit(f"{task}: every example of {source} is an evaluation example, none is left to select on")
    chosen = sorted(random.Random(f"selection-{task}").sample(free, min(count, len(free))), key=lambda e: e.index)
    text = "\n".join([lines[0], *(lines[1 + e.index] for e in chosen)]) + "\n"
    path = RUNS / "data" / f"{task}_{EXPERIMENT}_{hashlib.sha256(text.encode()).hexdigest()[:12]}.tsv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="scorer[:option=value,...]/scoring examples"
    )
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--selection-examples", type=int, default=300)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    rows = read_csv(EXPERIMENT, ("task", "variant", "scorer", "metric"))
    if not args.report_only:
        rows = [r for r in rows if r["task"] not in args.tasks or r["variant"] not in args.variants]
        for task in args.tasks:
            model = model_of(task)
            metric = model.spec.primary_metric
            variants = [(v, *parse_variant(v)) for v in args.variants]
            datas = {v: {**data_of(task, args.eval_examples, 0), "num_examples": n} for v, _, _, n in variants}
            held = selection_file(task, data_of(task, args.eval_examples, 0), args.selection_examples)
            on_held = {**datas[args.variants[0]], "eval_file": held, "eval_examples": None}
            dense = {
                "dense_selection": round(dense_metrics(EXPERIMENT, model, on_held)[metric], 5),
                "dense_evaluation": round(dense_metrics(EXPERIMENT, model, datas[args.variants[0]])[metric], 5),
            }
            benches: dict[int, TaskBench] = {}
            for variant, scorer, changed, examples in variants:
                bench = benches.setdefault(examples, TaskBench(EXPERIMENT, model, datas[variant]))
                on_selection = bench.evaluated_on(eval_file=held, eval_examples=None)
                options = {**options_of(scorer, changed), "sparsity": SPARSITIES}
                evaluated, selected = bench.sweep(scorer, **options), on_selection.sweep(scorer, **options)
                for point, chosen in zip(evaluated["points"], selected["points"], strict=True):
                    rows.append({
                        "task": task, "variant": variant, "scorer": scorer,
                        "score_examples": examples, "sparsity": point["sparsity"], "metric": metric,
                        "selection": round(chosen["metrics"][metric], 5),
                        "evaluation": round(point["metrics"][metric], 5),
                        **dense,
                    })  # fmt: skip
                print(rows[-1], flush=True)
                write_csv(EXPERIMENT, rows)
                report(rows, args)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Attribution's variants at their scoring time (multi-task SmolLM2)",
        "",
        "A variant is `scorer[:option=value,...]/scoring examples`, its options over the main table's (attribution: "
        "joint mode, m = 10); `mode=exact` scales one layer at a time (the paper's IG path). fit-free's defaults "
        "otherwise (least-squares repair from "
        "1,024 calibration examples, refit-aware scoring, every layer cut alike). Cells: *selection* / *evaluation* "
        f"metric; selection = {args.selection_examples} examples of the evaluation source that are not evaluation "
        "examples (never scored or calibrated on; the data a default is chosen on), evaluation = the main table's "
        "evaluation examples. Written by `benchmarks/exp_attribution_variants.py` (one scoring draw).",
        "",
    ]
    for (task,), mine in groups(rows, "task").items():
        sparsities = sorted({r["sparsity"] for r in mine})
        first = mine[0]
        lines += [
            f"## {task} ({first['metric']}; dense {first['dense_selection']:.3f} / {first['dense_evaluation']:.3f})",
            "",
        ]
        table = []
        for (variant,), cells in groups(mine, "variant").items():
            by_sparsity = {r["sparsity"]: r for r in cells}
            table.append([
                variant,
                *(f"{by_sparsity[s]['selection']:.3f} / {by_sparsity[s]['evaluation']:.3f}" for s in sparsities),
            ])  # fmt: skip
        lines += [*markdown_table(["variant", *(f"{s:g}" for s in sparsities)], table), ""]
    write_report(EXPERIMENT, lines)


if __name__ == "__main__":
    main()
