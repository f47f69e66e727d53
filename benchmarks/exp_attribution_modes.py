"""Attribution's two IG paths on the multi-task decoder LM at equal scoring time: ``joint`` (every FFN layer scaled
together, one path: the decoders' default) against ``exact`` (the paper's: one layer scaled at a time, ``layers``
paths), and joint mode given exact mode's time in scoring examples instead. Fisher and Wanda with the main table's
settings are the reference rows.

Every variant has its own scoring and calibration examples (more scoring examples change both), so the variants are
compared on one set of **selection examples**: drawn from the scoring source apart from every variant's scoring
and calibration examples, written once under ``runs/benchmarks/data`` (single-text tasks). Each cell is also
reported on the main table's evaluation examples. Every sweep runs through ``runner.TaskBench`` (fit-free's steps,
defaults and caches). Writes ``benchmarks/results/attribution_modes.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_attribution_modes.py --tasks sst2
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

from exp_decoder_lm import SPARSITIES, data_of, model_of
from results_io import groups, markdown_table, read_csv, write_csv, write_report
from runner import JOINT_ATTRIBUTION, RUNS, TaskBench, scorer_options

from lightning_prune.data import TaskDataModule
from lightning_prune.io import atomic_path

EXPERIMENT = "attribution_modes"
DEFAULT_VARIANTS = (
    "attribution:joint/64", "fisher/64", "wanda/64", "attribution:exact/64", "attribution:joint/1024"
)  # fmt: skip


def parse_variant(variant: str) -> tuple[str, str | None, int]:
    """``scorer[:mode]/examples`` → (scorer, attribution mode or None, scoring examples)."""
    name, examples = variant.split("/")
    scorer, _, mode = name.partition(":")
    return scorer, mode or None, int(examples)


def options_of(scorer: str, mode: str | None) -> dict:
    """fit-free's scorer options of a variant: the main table's, with attribution's ``mode`` as asked."""
    options = scorer_options(scorer, 0, JOINT_ATTRIBUTION)
    if mode is not None:
        options["scorer_options"]["mode"] = mode
    return options


def selection_file(task: str, datas: list[dict], count: int) -> str:
    """A file of ``count`` examples of the scoring source that no variant scores or calibrates on (a seeded draw;
    the source's own lines, so it reads as that source does), named by its content: another set of variants
    (other examples used) gives another file, so cells are never served from other selection examples."""
    used = set()
    for data in datas:
        used |= {(e.texts, e.label) for e in TaskDataModule(**data).calibration_examples_list()}
    whole = TaskDataModule(**{**datas[0], "num_examples": None})
    h = whole.hparams
    source = Path(h.score_file or Path(h.data_dir) / task / whole.spec.split_files[h.score_split])
    pool = whole.score_examples()
    lines = source.read_text().splitlines()
    if len(lines) != len(pool) + 1 or any(e.texts[0] not in lines[1 + e.index] for e in pool):
        raise SystemExit(f"{source}: not one example per line after a header; give a single-text task")
    free = [e for e in pool if (e.texts, e.label) not in used]
    chosen = sorted(random.Random(f"{EXPERIMENT}-{task}").sample(free, count), key=lambda e: e.index)
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
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="scorer[:mode]/examples")
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--selection-examples", type=int, default=300)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    rows = read_csv(EXPERIMENT, ("task", "variant", "scorer", "mode", "metric"))
    if not args.report_only:
        rows = [r for r in rows if r["task"] not in args.tasks]
        for task in args.tasks:
            model = model_of(task)
            metric = model.spec.primary_metric
            variants = [(v, *parse_variant(v)) for v in args.variants]
            datas = {v: {**data_of(task, args.eval_examples, 0), "num_examples": n} for v, _, _, n in variants}
            held = selection_file(task, list(datas.values()), args.selection_examples)
            benches: dict[int, TaskBench] = {}
            for variant, scorer, mode, examples in variants:
                bench = benches.setdefault(examples, TaskBench(EXPERIMENT, model, datas[variant]))
                on_selection = bench.evaluated_on(eval_file=held, eval_examples=None)
                options = {**options_of(scorer, mode), "sparsity": SPARSITIES}
                evaluated, selected = bench.sweep(scorer, **options), on_selection.sweep(scorer, **options)
                for point, chosen in zip(evaluated["points"], selected["points"], strict=True):
                    rows.append({
                        "task": task, "variant": variant, "scorer": scorer, "mode": mode or "",
                        "score_examples": examples, "sparsity": point["sparsity"], "metric": metric,
                        "selection": round(chosen["metrics"][metric], 5),
                        "evaluation": round(point["metrics"][metric], 5),
                        "score_seconds": round(evaluated["seconds"]["score"], 1),
                    })  # fmt: skip
                print(rows[-1], flush=True)
                write_csv(EXPERIMENT, rows)
                report(rows, args)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Attribution's IG paths at equal scoring time (multi-task SmolLM2)",
        "",
        "`joint`: every FFN layer scaled together, one IG path (the decoders' default); `exact`: one layer scaled at "
        "a time (the paper's). m = 10 steps, fit-free's defaults otherwise (least-squares repair from 1,024 "
        "calibration examples, refit-aware scoring, every layer cut alike). Cells: *selection* / *evaluation* "
        f"metric; selection = {args.selection_examples} examples of the scoring source that no variant scored or "
        "calibrated on (the data a default is chosen on), evaluation = the main table's evaluation examples. "
        "Scoring seconds on this machine's 2 CPU cores, shared with other work. Written by "
        "`benchmarks/exp_attribution_modes.py` (one scoring draw).",
        "",
    ]
    for (task,), mine in groups(rows, "task").items():
        sparsities = sorted({r["sparsity"] for r in mine})
        lines += [f"## {task} ({mine[0]['metric']})", ""]
        table = []
        for (variant,), cells in groups(mine, "variant").items():
            by_sparsity = {r["sparsity"]: r for r in cells}
            table.append([
                variant, f"{cells[0]['score_seconds']:.0f}",
                *(f"{by_sparsity[s]['selection']:.3f} / {by_sparsity[s]['evaluation']:.3f}" for s in sparsities),
            ])  # fmt: skip
        lines += [*markdown_table(["variant", "scoring s", *(f"{s:g}" for s in sparsities)], table), ""]
    write_report(EXPERIMENT, lines)


if __name__ == "__main__":
    main()
