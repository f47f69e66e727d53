"""The paper's experiments on decoder LMs, run through the user's pipeline (``runner.TaskBench``: fit-free's own
steps, its defaults, its caches), on one of two models (``--model``):

- ``multitask`` (default): SmolLM2-135M-Instruct with the committed LoRA adapter
  ``models/smollm2-glue-multitask-lora`` (fine-tuned on 8 tasks by ``build_multitask_lm.py``), loaded as
  ``configs/smollm2_multitask_sst2.yaml`` loads it; results ``multitask_lm_<name>``;
- ``zero-shot``: SmolLM2-135M-Instruct answering zero-shot with each task's default prompt, loaded as
  ``configs/smollm2_sst2.yaml`` loads it (a model that barely does most tasks); results ``zero_shot_lm_<name>``;
- ``gemma3``: Gemma 3 270M with the committed LoRA adapter ``models/gemma3-270m-glue-multitask-lora``
  (``build_multitask_lm.py --base gemma3``), loaded as ``configs/gemma3_multitask_sst2.yaml`` loads it; results
  ``gemma3_lm_<name>``.

Experiments:

- ``dense``: the dense model per task next to chance (only tasks clearly above chance enter ``main``);
- ``main``: every installed scorer at 0.3 / 0.5 / 0.7 FFN sparsity per task, ``--draws`` scoring draws for
  ``--draw-scorers`` (random: seeds), one for the others; the retained fraction, averaged over tasks;
- ``unseen-domain``: scored on SST-2, evaluated on every ``sentiment_domains`` and ``sentiment_long`` set;
- ``examples``: attribution from more scoring examples than the main table's 64 (``--counts``), on ``--tasks``;
- ``speedup``: ``--target_speedup`` (``--targets``) with heads and FFN neurons together and FFN neurons only;
- ``report``: the main table's report and figure again from its CSV (no model needed);
- ``roundtrip``: a folder ``fit-free`` wrote (``--pruned``) loaded by plain transformers next to this project's loader.

Writes ``benchmarks/results/<prefix>_<name>.{csv,md}`` (and ``.png`` for ``main``). Re-run, e.g.:

    OMP_NUM_THREADS=2 python benchmarks/exp_decoder_lm.py main --tasks sst2 agnews
    OMP_NUM_THREADS=1 python benchmarks/exp_decoder_lm.py main --model gemma3 --tasks rte --no-comparisons --add
    OMP_NUM_THREADS=2 python benchmarks/exp_decoder_lm.py main --model zero-shot --tasks sst2 --eval-examples 872

``main --add`` keeps the CSV's rows of the tasks × scorers × draws it does not run (a table built in parts, e.g.
one task per process, several at once: the CSV is read and written under a lock); cells are cached under the
package's code fingerprint, so a table run across a code change keeps its earlier rows this way (``--first-draw 1``:
further draws beside a first draw of earlier code), not by reading their cells back.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import DATA, chance, spread
from results_io import RESULTS, add_rows, markdown_table, read_csv, write_csv, write_figure, write_report
from runner import (
    DECODER_LM_SCORING,
    JOINT_ATTRIBUTION,
    MULTITASK_GEMMA3,
    MULTITASK_LM,
    SMOLLM2,
    TaskBench,
    dense_metrics,
    glue_data,
    scorer_options,
    speedup_row,
    split_file,
)

from lightning_prune import load_pruned_model
from lightning_prune.data import TaskDataModule
from lightning_prune.modules import TaskModel
from lightning_prune.scorers import scorer_infos
from lightning_prune.tasks import get_task

ALL_TASKS = ("sst2", "agnews", "qnli", "mnli", "rte", "stsb", "mrpc", "cola")
AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def labels_of(task: str) -> list[str] | None:
    """``--data.labels`` of a task: AG News is not a GLUE task and names its four classes."""
    return AGNEWS_LABELS if task == "agnews" else None


SPARSITIES = [0.3, 0.5, 0.7]
ABOVE_CHANCE = 0.05  # dense − chance on the primary metric for a task to enter the main table
# main, first draw: these scorers also cut without repair, and repaired but scoring activations, not residuals
PLAIN_CUT_SCORERS = ("attribution", "wanda", "fisher")
MAIN_TEXTS = ("task", "scorer", "metric", "reconstruct")  # main's CSV columns that are text
DOMAINS = {
    **{f"sentiment_domains/{d}": d for d in ("yelp", "amazon_sentences", "vader_amazon", "vader_nyt", "vader_tweets")},
    **{f"sentiment_long/{d}": d for d in ("druglib_drugs", "tripadvisor_hotels")},
}
# --model: (TaskModel settings, result prefix (and cache folder), the reports' name of the model).
MODELS = {
    "multitask": (MULTITASK_LM, "multitask_lm", "Multi-task SmolLM2 (LoRA merged)"),
    "zero-shot": ({"path": SMOLLM2, "max_length": 128}, "zero_shot_lm", "Zero-shot SmolLM2-135M-Instruct"),
    "gemma3": (MULTITASK_GEMMA3, "gemma3_lm", "Multi-task Gemma 3 270M (LoRA merged)"),
}


def data_of(task: str, eval_examples: int, seed: int) -> dict[str, Any]:
    """``TaskDataModule`` settings of a task (AG News has only a test file: split once into scoring/evaluation)."""
    if task == "agnews":
        spec = get_task("agnews", AGNEWS_LABELS)
        score_file, eval_file = split_file(DATA / "agnews" / "test.tsv", spec, 3800, "agnews")
        settings = {"task": task, "labels": AGNEWS_LABELS, "score_file": score_file, "eval_file": eval_file}
    else:
        settings = glue_data(task, eval_examples=eval_examples)  # capped at the split's size (RTE: 277)
    return {"eval_examples": eval_examples, **settings, **DECODER_LM_SCORING, "seed": seed, "eval_seed": 0}


def model_of(task: str, model: str = "multitask") -> TaskModel:
    """The ``--model`` for ``task``, loaded as its config loads it."""
    return TaskModel(task=task, labels=labels_of(task), **MODELS[model][0])


def run_dense(args: argparse.Namespace) -> None:
    rows = []
    for task in args.tasks:
        model, data = model_of(task, args.model), data_of(task, args.eval_examples, 0)
        value = dense_metrics(args.prefix, model, data)[model.spec.primary_metric]
        base = chance(model.spec, TaskDataModule(**data).eval_examples())
        rows.append({
            "task": task, "metric": model.spec.primary_metric, "dense": round(value, 5), "chance": round(base, 5),
            "above_chance": round(value - base, 5), "eval_examples": args.eval_examples,
        })  # fmt: skip
        print(rows[-1], flush=True)
    write_csv(f"{args.prefix}_dense", rows)
    write_report(
        f"{args.prefix}_dense",
        [
            f"# {args.title}, dense, per task",
            "",
            f"{args.eval_examples} seeded evaluation examples per task (QNLI, MNLI: second half of dev; AG News: "
            "held-out half of its test file). Chance: the majority class's accuracy; F1 of always answering the "
            f"positive class; 0 for MCC / Pearson. Tasks at least {ABOVE_CHANCE} above chance enter the main table.",
            "",
            *markdown_table(
                ["task", "metric", "dense", "chance", "dense − chance"],
                [
                    [r["task"], r["metric"], f"{r['dense']:.3f}", f"{r['chance']:.3f}", f"{r['above_chance']:+.3f}"]
                    for r in rows
                ],
            ),
        ],
    )


def main_tasks(args: argparse.Namespace) -> list[str]:
    """The tasks the dense model does clearly above chance (from ``dense``'s results)."""
    path = RESULTS / f"{args.prefix}_dense.csv"
    if not path.is_file():
        raise SystemExit(f"run `exp_decoder_lm.py dense --model {args.model}` first: main takes the tasks above chance")
    with path.open() as handle:
        return [r["task"] for r in csv.DictReader(handle) if float(r["above_chance"]) >= ABOVE_CHANCE]


def rows_of(result: dict[str, Any], task: str, seed: int, dense: float, metric: str, **extra: Any) -> list[dict]:
    rows = []
    for point in result["points"]:
        value, positive = point["metrics"][metric], point["metrics"].get("positive_rate")
        rows.append({
            "task": task, "scorer": result["scorer"], "seed": seed, "sparsity": point["sparsity"], "metric": metric,
            "dense": round(dense, 5), "pruned": round(value, 5), "retained": round(value / dense, 5),
            "reconstruct": result["reconstruct"], "refit_aware": result["refit_aware"],
            "calibration_examples": result["calibration_examples"],
            "score_examples": result["examples_scored"], "score_seconds": round(result["seconds"]["score"], 1),
            "statistics_seconds": round(result["seconds"]["statistics"], 1),
            # two-class tasks: the share of class-1 answers (a pruned model drifting to one answer shows here)
            "positive_rate": None if positive is None else round(positive, 5),
            **extra,
        })  # fmt: skip
    return rows


def run_main(args: argparse.Namespace) -> None:
    tasks = args.tasks or main_tasks(args)
    scorers = args.scorers or sorted(scorer_infos())
    seeds = range(args.first_draw, args.draws)
    again = {(task, scorer, seed) for task in tasks for scorer in scorers for seed in seeds}
    rows: list[dict] = []  # this run's
    models: dict[str, TaskModel] = {}
    first_draws: dict[str, TaskBench] = {}  # the comparisons reuse their statistics (d_ff² x layers, ~0.3 GB each)
    # Every task's first draw first (a complete table early), then the other draws, then the first draw of some
    # scorers again cut plainly and refitted without refit-aware scoring: how much the repair carries, and how much
    # scoring for it adds (first-draw cells: not when the first draw is skipped).
    comparisons = [{"reconstruct": "none"}, {"refit_aware": False}] if args.comparisons and 0 in seeds else []
    for seed, repair in [(seed, {}) for seed in seeds] + [(0, changed) for changed in comparisons]:
        for task in tasks:
            drawn = task in (args.draw_tasks or tasks)
            wanted = [
                s
                for s in scorers
                if (seed == 0 or (drawn and s in args.draw_scorers)) and (not repair or s in PLAIN_CUT_SCORERS)
            ]
            if not wanted:
                continue
            model = models.setdefault(task, model_of(task, args.model))
            data = data_of(task, args.eval_examples, seed)
            metric = model.spec.primary_metric
            dense_all = dense_metrics(args.prefix, model, data_of(task, args.eval_examples, 0))
            dense, dense_positive = dense_all[metric], dense_all.get("positive_rate")
            dense_positive = None if dense_positive is None else round(dense_positive, 5)
            bench = TaskBench(args.prefix, model, data, **args.fit_free)
            if seed == 0:
                bench = first_draws.setdefault(task, bench)
            for scorer in wanted:
                start = time.perf_counter()
                result = bench.sweep(
                    scorer, **scorer_options(scorer, seed, JOINT_ATTRIBUTION), **repair, sparsity=SPARSITIES
                )
                rows += rows_of(
                    result, task, seed, dense, metric, default_repair=not repair, dense_positive_rate=dense_positive
                )
                print(f"{task} {scorer} {repair} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
                name = f"{args.prefix}_main"
                if args.add:
                    report_main(add_rows(name, MAIN_TEXTS, ("task", "scorer", "seed"), again, rows), args)
                else:
                    write_csv(name, rows)
                    report_main(rows, args)


def report_main(all_rows: list[dict], args: argparse.Namespace) -> None:
    rows = [r for r in all_rows if r["default_repair"]]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))

    def values(task: str, scorer: str, sparsity: float) -> list[float]:
        """Retained fractions; an undefined one (a Pearson correlation of a model that answers every pair with one
        value) counts as 0: no correlation is left."""
        cells = [r["retained"] for r in rows if (r["task"], r["scorer"], r["sparsity"]) == (task, scorer, sparsity)]
        return [0.0 if math.isnan(value) else value for value in cells]

    def average(scorer: str, sparsity: float) -> float | None:
        means = [statistics.mean(v) for t in tasks if (v := values(t, scorer, sparsity))]
        return statistics.mean(means) if len(means) == len(tasks) else None

    first = rows[0]
    lines = [
        f"# {args.title}: task-specific FFN pruning, every scorer",
        "",
        f"fit-free's pipeline and defaults (`benchmarks/exp_decoder_lm.py main`, `runner.TaskBench`): "
        f"{first['score_examples']} scoring examples (batch 4; attribution in joint mode, m = 10), "
        f"reconstruction `{first['reconstruct']}` from {first['calibration_examples']} calibration examples"
        f"{' (refit-aware scoring)' if first.get('refit_aware') else ''}, every "
        f"layer losing the same fraction; {args.eval_examples} seeded evaluation examples per task. Cells: retained "
        "fraction of the dense metric, mean (min–max) over scoring draws (random: seeds) where there are several; "
        "a Pearson correlation left undefined (the pruned model answers every pair with one value) counts as 0.",
        "",
        "## Average retained over the tasks",
        "",
    ]
    table = [[s, *(f"{a:.3f}" if (a := average(s, p)) is not None else "—" for p in SPARSITIES)] for s in scorers]
    lines += [*markdown_table(["scorer", *(f"{p:g}" for p in SPARSITIES)], table), ""]
    for task in tasks:
        mine = [r for r in rows if r["task"] == task]
        lines += [f"## {task} ({mine[0]['metric']}, dense {mine[0]['dense']:.3f})", ""]
        table = [[s, *(spread(values(task, s, p)) for p in SPARSITIES)] for s in scorers]
        lines += [*markdown_table(["scorer", *(f"{p:g}" for p in SPARSITIES)], table), ""]
        lines += answer_shares(mine, scorers)
    repairs = [r for r in all_rows if r["scorer"] in PLAIN_CUT_SCORERS and r["seed"] == 0]
    if len({repair_of(r) for r in repairs}) > 1:  # the comparisons ran (not with --no-comparisons)
        lines += repair_section(repairs, tasks)
    write_report(f"{args.prefix}_main", lines)
    figure, axis = plt.subplots(figsize=(6, 4))
    for scorer in scorers:
        points = [(p, a) for p in SPARSITIES if (a := average(scorer, p)) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=scorer)
    axis.set(xlabel="FFN sparsity", ylabel="retained (average over tasks)", title=args.title)
    axis.legend()
    write_figure(f"{args.prefix}_main", figure)


def answer_shares(rows: list[dict], scorers: list[str]) -> list[str]:
    """A two-class task's share of class-1 answers, dense and pruned (mean over draws): whether a pruned model
    drifts to one answer, or away from it."""
    shares = [r for r in rows if r.get("positive_rate") is not None]
    if not shares:
        return []

    def mean_share(scorer: str, sparsity: float) -> str:
        values = [r["positive_rate"] for r in shares if (r["scorer"], r["sparsity"]) == (scorer, sparsity)]
        return f"{statistics.mean(values):.3f}" if values else "—"

    table = [[s, *(mean_share(s, p) for p in SPARSITIES)] for s in scorers]
    dense = shares[0].get("dense_positive_rate")
    return [
        f"Share of answers of class 1{'' if dense is None else f' (dense {dense:.3f})'}:",
        "",
        *markdown_table(["scorer", *(f"{p:g}" for p in SPARSITIES)], table),
        "",
    ]


def repair_of(row: dict) -> str:
    return f"{row['reconstruct']}{', refit-aware' if row.get('refit_aware') else ''}"


def repair_section(repairs: list[dict], tasks: list[str]) -> list[str]:
    """The first draw cut plainly, refitted scoring activations, and refitted with refit-aware scoring."""
    methods = list(dict.fromkeys(repair_of(r) for r in repairs))
    table = []
    for task in tasks:
        for scorer in dict.fromkeys(r["scorer"] for r in repairs if r["task"] == task):
            mine = [r for r in repairs if (r["task"], r["scorer"]) == (task, scorer)]
            cells = {(repair_of(r), r["sparsity"]): r["retained"] for r in mine}
            table += [
                [task, scorer, m, *(f"{cells[m, p]:.3f}" if (m, p) in cells else "—" for p in SPARSITIES)]
                for m in methods
                if any((m, p) in cells for p in SPARSITIES)
            ]
    return [
        "## Repair after the cut, and scoring for it (first draw)",
        "",
        "Retained fraction with the plain cut (`none`), the least-squares refit of the kept down-projection "
        "columns with neurons scored by their activations (`least_squares`), and the same refit with neurons scored "
        "by their residuals, what the refit cannot predict of them (`least_squares, refit-aware`, the default).",
        "",
        *markdown_table(["task", "scorer", "repair", *(f"{p:g}" for p in SPARSITIES)], table),
        "",
    ]


def rerun_report(args: argparse.Namespace) -> None:
    """``main``'s report from its CSV (e.g. after a run was stopped, or a change of the text), and
    ``unseen-domain``'s where it has one."""
    report_main(read_csv(f"{args.prefix}_main", MAIN_TEXTS), args)
    if (RESULTS / f"{args.prefix}_unseen_domain{args.suffix}.csv").is_file():
        texts = ("task", "scorer", "metric", "reconstruct", "domain")
        report_unseen_domain(read_csv(f"{args.prefix}_unseen_domain{args.suffix}", texts), args)


def run_unseen_domain(args: argparse.Namespace) -> None:
    """Scored on SST-2 (train), evaluated on other domains' sentiment sets, next to the SST-2 dev set."""
    model = model_of("sst2", args.model)
    metric = model.spec.primary_metric
    base = TaskBench(args.prefix, model, data_of("sst2", args.eval_examples, 0), **args.fit_free)
    rows = []
    for folder, name in [("glue/sst2", "sst2"), *DOMAINS.items()]:
        evaluation = {} if name == "sst2" else {"eval_file": str(DATA / folder / "test.tsv")}
        if folder.startswith("sentiment_long"):
            evaluation["eval_examples"] = min(args.eval_examples, 300)
        bench = base.evaluated_on(**evaluation)
        dense = dense_metrics(args.prefix, model, bench.data)[metric]
        for scorer in args.scorers or ["attribution", "wanda", "random"]:
            result = bench.sweep(scorer, **scorer_options(scorer, 0, JOINT_ATTRIBUTION), sparsity=args.sparsities)
            rows += rows_of(result, "sst2", 0, dense, metric, domain=name)
            print(rows[-1], flush=True)
            write_csv(f"{args.prefix}_unseen_domain{args.suffix}", rows)
    report_unseen_domain(rows, args)


def report_unseen_domain(rows: list[dict], args: argparse.Namespace) -> None:
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))
    table = []
    for name in dict.fromkeys(r["domain"] for r in rows):
        mine = [r for r in rows if r["domain"] == name]
        cells = {(r["scorer"], r["sparsity"]): r for r in mine}
        table.append([
            name, f"{mine[0]['dense']:.3f}",
            *(f"{c['pruned']:.3f} ({c['retained']:.3f})" if (c := cells.get((s, p))) else "—"
              for s in scorers for p in args.sparsities),
        ])  # fmt: skip
    header = ["evaluated on", "dense", *(f"{s} {p:g}" for s in scorers for p in args.sparsities)]
    scope = args.fit_free.get("scope", "layer")
    allocation = "every layer losing the same fraction" if scope == "layer" else (
        f"one ranking over the model, every layer keeping at least {args.fit_free['min_keep']} neurons"
    )  # fmt: skip
    write_report(
        f"{args.prefix}_unseen_domain{args.suffix}",
        [
            f"# {args.title}: pruned for SST-2, evaluated on unseen domains",
            "",
            f"Scored on {DECODER_LM_SCORING['num_examples']} SST-2 training sentences (fit-free's defaults, as in "
            f"the main table); evaluated on {args.eval_examples} seeded examples of each set (truncated at the "
            f"model's {MODELS[args.model][0]['max_length']} tokens, left side); {allocation}. Cells: accuracy "
            "(retained fraction of dense).",
            "",
            *markdown_table(header, table),
        ],
    )


def run_examples(args: argparse.Namespace) -> None:
    """Does a scorer (attribution by default) trail for want of examples? The main table's cell from more of them."""
    rows = []
    for task in args.tasks or ["sst2"]:
        model = model_of(task, args.model)
        metric = model.spec.primary_metric
        dense = dense_metrics(args.prefix, model, data_of(task, args.eval_examples, 0))[metric]
        for count in args.counts:
            bench = TaskBench(args.prefix, model, {**data_of(task, args.eval_examples, 0), "num_examples": count})
            for scorer in args.scorers or ["attribution"]:
                options = scorer_options(scorer, 0, JOINT_ATTRIBUTION)
                rows += rows_of(
                    bench.sweep(scorer, **options, **args.fit_free, sparsity=SPARSITIES), task, 0, dense, metric
                )
                print(rows[-1], flush=True)
                write_csv(f"{args.prefix}_examples", rows)
    table = [
        [r["task"], r["scorer"], str(r["score_examples"]), f"{r['sparsity']:g}", f"{r['pruned']:.3f}",
         f"{r['retained']:.3f}", f"{r['score_seconds']:.0f}"]
        for r in rows
    ]  # fmt: skip
    write_report(
        f"{args.prefix}_examples",
        [
            f"# {args.title}: scorers from more scoring examples",
            "",
            "The main table's cells (attribution in joint mode, m = 10; least-squares repair from 1,024 calibration "
            f"examples; first draw) with more scoring examples; {args.eval_examples} seeded evaluation examples. "
            "Written by `benchmarks/exp_decoder_lm.py examples`.",
            "",
            *markdown_table(
                ["task", "scorer", "scoring examples", "sparsity", "pruned", "retained", "scoring s"], table
            ),
        ],
    )


def run_speedup(args: argparse.Namespace) -> None:
    """FLOP budgets on the decoder: head groups (3 per layer, of 3 query heads each) and FFN neurons together, or
    FFN neurons only; layer scope keeps every layer's head count equal (plain ``from_pretrained`` loads it)."""
    rows = []
    for task in args.tasks or ["sst2"]:
        model = model_of(task, args.model)
        metric = model.spec.primary_metric
        data = data_of(task, args.eval_examples, 0)
        dense = dense_metrics(args.prefix, model, data)[metric]
        bench = TaskBench(args.prefix, model, data, **args.fit_free)
        for scorer in args.scorers or ["fisher", "attribution"]:
            for heads in (True, False):
                for target in args.targets:
                    settings = {"target_speedup": target, "heads": heads, "sparsity": None}
                    result = bench.sweep(scorer, **scorer_options(scorer, 0, JOINT_ATTRIBUTION), **settings)
                    rows.append(speedup_row(result, task, metric, dense))
                    print(rows[-1], flush=True)
                    write_csv(f"{args.prefix}_speedup", rows)
    table = [
        [r["task"], r["scorer"], r["units"], f"{r['target']:g}", f"{r['flop_speedup']:.2f}", f"{r['ffn_sparsity']:.3f}",
         "270" if r["heads_kept"] in (None, "") else str(r["heads_kept"]), f"{r['pruned']:.3f}", f"{r['retained']:.3f}"]
        for r in rows
    ]  # fmt: skip
    write_report(
        f"{args.prefix}_speedup",
        [
            f"# {args.title}: heads and FFN neurons for a FLOP budget",
            "",
            "fit-free's pipeline and defaults with `--target_speedup` (layer scope: every layer keeps the same number "
            "of head groups, so the saved model loads with plain `from_pretrained`), main-table scoring "
            f"(64 examples; attribution joint, m = 10), {args.eval_examples} seeded evaluation examples. FLOP speedup: "
            "dense / pruned FLOPs counted by `torch.utils.flop_counter` on the first 64 evaluation examples "
            "(prompt and answer; the LM head at the answer only). Heads: query heads kept of 270 (30 layers × 9). "
            "Written by `benchmarks/exp_decoder_lm.py speedup`.",
            "",
            *markdown_table(
                ["task", "scorer", "units", "target", "FLOP speedup", "FFN sparsity", "heads", "pruned", "retained"],
                table,
            ),
        ],
    )


def run_roundtrip(args: argparse.Namespace) -> None:
    """The folder ``fit-free`` wrote (``--pruned``) loaded by plain transformers next to this project's loader: same
    logits on SST-2 prompts, same greedy generation from a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(args.pruned).eval()
    ours = load_pruned_model(args.pruned, "sst2")
    tokenizer = AutoTokenizer.from_pretrained(args.pruned)
    batch = ours.collate(TaskDataModule(**data_of("sst2", 8, 0)).eval_examples())
    question = [
        {"role": "user", "content": "Is this review positive or negative? 'A gorgeous, witty, seductive movie.'"}
    ]
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        gap = plain(**inputs).logits - ours.model(**inputs).logits
        generated = plain.generate(**ids, max_new_tokens=24, do_sample=False)
        ours_generated = ours.model.generate(**ids, max_new_tokens=24, do_sample=False)
    row = {
        "folder": args.pruned, "intermediate_size": plain.config.intermediate_size, "dtype": str(plain.dtype),
        "parameters_dense": model_of("sst2", args.model).net.num_parameters(),
        "parameters_pruned": sum(p.numel() for p in plain.parameters()),
        "max_abs_logit_gap": float(gap.abs().max()), "same_generation": bool(torch.equal(generated, ours_generated)),
        "generation": tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True),
    }  # fmt: skip
    write_csv(f"{args.prefix}_roundtrip", [row])
    write_report(
        f"{args.prefix}_roundtrip",
        [
            f"# The pruned {args.title} folder is a plain Hugging Face model",
            "",
            f"`AutoModelForCausalLM.from_pretrained('{args.pruned}')` (plain transformers, no PEFT) next to "
            "`load_pruned_model` (this project's loader), on 8 SST-2 prompts and one chat-template prompt, greedy "
            "decoding. Written by `benchmarks/exp_decoder_lm.py roundtrip`.",
            "",
            *markdown_table(
                ["what", "value"], [[k, f"`{v}`" if k == "generation" else str(v)] for k, v in row.items()]
            ),
        ],
    )


EXPERIMENTS = {
    "dense": run_dense,
    "main": run_main,
    "unseen-domain": run_unseen_domain,
    "examples": run_examples,
    "speedup": run_speedup,
    "report": rerun_report,
    "roundtrip": run_roundtrip,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--model", choices=list(MODELS), default="multitask")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: dense: all; main: those above chance")
    parser.add_argument("--scorers", nargs="+", default=None)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--draw-scorers", nargs="+", default=["attribution", "random"])
    parser.add_argument(
        "--first-draw",
        type=int,
        default=0,
        help="main: the first draw run; with --add the CSV keeps the earlier draws' rows (e.g. from earlier code)",
    )
    parser.add_argument(
        "--add", action="store_true", help="main: keep the CSV's rows of tasks × scorers × draws not run now"
    )
    parser.add_argument(
        "--draw-tasks", nargs="+", default=None, help="main: the tasks drawn --draws times (default: all)"
    )
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5])
    parser.add_argument("--counts", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--targets", nargs="+", type=float, default=[1.3, 1.6])
    parser.add_argument(
        "--pruned", default="runs/smollm2-multitask-sst2/model", help="roundtrip: a folder fit-free wrote"
    )
    parser.add_argument("--scope", choices=["layer", "global"], default="layer", help="fit-free's --scope")
    parser.add_argument("--min-keep", type=int, default=1, help="fit-free's --min_keep (with --scope global)")
    parser.add_argument(
        "--comparisons", action=argparse.BooleanOptionalAction, default=True, help="main: the repair comparisons"
    )
    parser.add_argument("--suffix", default="", help="unseen-domain: results name suffix (e.g. _floor)")
    args = parser.parse_args()
    if args.scope != "layer" and args.experiment != "unseen-domain":
        parser.error("--scope global is measured by unseen-domain here (allocation: benchmarks/exp_allocation.py)")
    if not 0 <= args.first_draw < args.draws:
        parser.error(f"--first-draw {args.first_draw} is not one of the --draws {args.draws} (0 to {args.draws - 1})")
    # fit-free's defaults (reconstruction included); only options that differ enter the cells' cache keys
    args.fit_free = {} if args.scope == "layer" else {"scope": args.scope, "min_keep": args.min_keep}
    _, args.prefix, args.title = MODELS[args.model]
    if args.experiment == "dense":
        args.tasks = args.tasks or list(ALL_TASKS)
    EXPERIMENTS[args.experiment](args)


if __name__ == "__main__":
    Path(RESULTS).mkdir(exist_ok=True)
    main()
