"""The task vocabulary (``--vocabulary task``) against the full one on the same pruned model, through fit-free itself
(``runner.TaskBench``): tokens kept, parameters, the task metric in distribution, and on the unseen sentiment sets
for the SST-2 model; how many more tokens the evaluation texts need with the smaller vocabulary.

On the unseen sets the task vocabulary is measured twice: from the SST-2 scoring source alone, and with the rows of
the set that are not evaluated given as ``--vocabulary_texts`` (a user's own traffic, never the evaluated texts).

Models: the committed MiniLM multi-task encoder (the main table's settings: 128 scoring examples, attribution m = 10)
and the multi-task SmolLM2 (LoRA merged; the decoder table's settings: 64 examples, joint attribution m = 10, least
squares from 1,024 calibration examples), each at ``--sparsity`` (default 0.5) FFN sparsity, 300 evaluation examples.
Writes ``benchmarks/results/vocabulary.{csv,md}``. Re-run:

    OMP_NUM_THREADS=2 python benchmarks/exp_vocabulary.py
"""

from __future__ import annotations

import argparse
from typing import Any

from exp_decoder_lm import DOMAINS, data_of, labels_of
from experiments import ATTRIBUTION, DATA, MODEL
from results_io import add_rows, markdown_table, read_csv, write_csv, write_report
from runner import JOINT_ATTRIBUTION, MULTITASK_LM, RUNS, TaskBench, glue_data

from lightning_prune.data import TaskDataModule
from lightning_prune.io import atomic_path
from lightning_prune.modules import TaskModel
from lightning_prune.tasks import read_tsv

EXPERIMENT = "vocabulary"
MODELS = {
    "minilm": ("MiniLM multi-task encoder", ("sst2", "mrpc", "stsb", "rte", "qnli", "mnli")),
    "multitask-lm": ("multi-task SmolLM2 (LoRA merged)", ("sst2", "qnli", "mnli", "rte", "stsb", "agnews")),
}
TEXT_COLUMNS = ("model", "task", "evaluated_on", "metric", "vocabulary_texts")
COLUMNS = ["model", "task", "evaluated on", "+ its traffic", "tokens kept", "parameters full → task", "metric", "full",
           "task", "task / full", "more tokens", "texts as before", "without frequent tokens"]  # fmt: skip


def bench_of(model_name: str, task: str, eval_examples: int) -> TaskBench:
    """The task's bench with the model's experiment settings."""
    if model_name == "minilm":
        model = TaskModel(task=task, path=str(MODEL))
        data = glue_data(task, num_examples=128, batch_size=16, eval_examples=eval_examples, eval_seed=0)
        return TaskBench(EXPERIMENT, model, data, scorer_options=dict(ATTRIBUTION))
    model = TaskModel(task=task, labels=labels_of(task), **MULTITASK_LM)
    return TaskBench(EXPERIMENT, model, data_of(task, eval_examples, 0), scorer_options=dict(JOINT_ATTRIBUTION))


def traffic_file(bench: TaskBench, name: str) -> str:
    """The evaluation file's rows that are not evaluated, one text per line: a user's own traffic."""
    data = TaskDataModule(**bench.data)
    evaluated = {e.index for e in data.eval_examples()}
    texts = [e.texts[0] for e in read_tsv(bench.data["eval_file"], data.spec) if e.index not in evaluated]
    path = RUNS / EXPERIMENT / f"traffic-{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text.replace("\n", " ") for text in texts) + "\n")
    return str(path)


def row(model: str, task: str, domain: str, bench: TaskBench, sparsity: float, **vocabulary: Any) -> dict[str, Any]:
    """The full and the task vocabulary (with ``vocabulary``'s texts) on one evaluation set, the same FFN cut."""
    metric = bench.model.spec.primary_metric
    with_traffic = "yes" if vocabulary else ""
    full = bench.sweep("attribution", sparsity=sparsity)
    task_run = bench.sweep("attribution", sparsity=sparsity, vocabulary="task", **vocabulary)
    # WordPiece ranks no tokens by frequency: without them only where a tokenizer has them
    task_only = model != "minilm" and bench.sweep(
        "attribution", sparsity=sparsity, vocabulary="task", vocabulary_frequent=0, **vocabulary
    )
    [point_full], [point_task] = full["points"], task_run["points"]
    vocabulary = task_run["vocabulary"]
    texts = vocabulary["evaluation_texts"]
    tokens = texts["tokens"]
    return {
        "model": model, "task": task, "evaluated_on": domain, "sparsity": sparsity, "metric": metric,
        "vocabulary_texts": with_traffic,
        "tokens_kept": vocabulary["tokens"]["kept"], "tokens_total": vocabulary["tokens"]["dense"],
        "parameters_full": point_full["parameters"], "parameters_task": point_task["parameters"],
        "full": round(point_full["metrics"][metric], 5), "task_vocabulary": round(point_task["metrics"][metric], 5),
        "retained": round(point_task["metrics"][metric] / point_full["metrics"][metric], 5),
        "more_tokens_percent": round(100 * (tokens["task"] - tokens["full"]) / tokens["full"], 2),
        "texts_as_before": round(texts["segmented_as_before"] / texts["texts"], 4),
        "unknown_added": texts["unknown_tokens"]["task"] - texts["unknown_tokens"]["full"],
        **(_without_frequent(task_only, metric) if task_only else {}),
    }  # fmt: skip


def _without_frequent(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """The task vocabulary without the tokenizer's frequent tokens (``--vocabulary_frequent 0``)."""
    [point] = result["points"]
    texts = result["vocabulary"]["evaluation_texts"]
    return {
        "tokens_kept_task_only": result["vocabulary"]["tokens"]["kept"],
        "task_only": round(point["metrics"][metric], 5),
        "more_tokens_percent_task_only": round(100 * (texts["tokens"]["task"] / texts["tokens"]["full"] - 1), 2),
        "texts_as_before_task_only": round(texts["segmented_as_before"] / texts["texts"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--tasks", nargs="*", help="default: every task the model does above chance")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--no-domains", action="store_true", help="skip the unseen sentiment sets")
    parser.add_argument("--add", action="store_true", help="keep the CSV's rows of models and tasks not run now")
    parser.add_argument("--report-only", action="store_true", help="rebuild the .md from the CSV")
    args = parser.parse_args()
    if args.report_only:
        report(read_csv(EXPERIMENT, TEXT_COLUMNS), args)
        return
    rows: list[dict[str, Any]] = []  # this run's
    for name in args.models:
        for task in args.tasks or MODELS[name][1]:
            bench = bench_of(name, task, args.eval_examples)
            rows.append(row(name, task, task, bench, args.sparsity))
            print(rows[-1], flush=True)
            save_rows(rows, args)
            if task != "sst2" or args.no_domains:
                continue
            for folder, domain in DOMAINS.items():
                evaluation = {"eval_file": str(DATA / folder / "test.tsv"), "eval_examples": args.eval_examples}
                on_domain = bench.evaluated_on(**evaluation)
                rows.append(row(name, task, domain, on_domain, args.sparsity))
                rows.append(row(name, task, domain, on_domain, args.sparsity,
                                vocabulary_texts=traffic_file(on_domain, domain)))  # fmt: skip
                print(rows[-2:], flush=True)
                save_rows(rows, args)
    report(save_rows(rows, args), args)


def save_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The CSV written with this run's ``rows`` (with ``--add``, after its rows of the models and tasks this run
    does not measure again); the rows written."""
    if not args.add:
        write_csv(EXPERIMENT, rows)
        return rows
    again = {(model, task) for model in args.models for task in args.tasks or MODELS[model][1]}
    return add_rows(EXPERIMENT, TEXT_COLUMNS, ("model", "task"), again, rows)


def _task_only_cell(r: dict[str, Any]) -> str:
    if r.get("task_only") in (None, ""):
        return ""
    return (f"{r['tokens_kept_task_only']:,} tokens: {r['task_only']:.4f}, +{r['more_tokens_percent_task_only']:.1f}%, "
            f"{r['texts_as_before_task_only']:.0%}")  # fmt: skip


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = [
        [r["model"], r["task"], r["evaluated_on"], r.get("vocabulary_texts") or "",
         f"{r['tokens_kept']:,} / {r['tokens_total']:,}",
         f"{r['parameters_full'] / 1e6:.1f}M → {r['parameters_task'] / 1e6:.1f}M", r["metric"], f"{r['full']:.4f}",
         f"{r['task_vocabulary']:.4f}", f"{r['retained']:.3f}", f"+{r['more_tokens_percent']:.1f}%",
         f"{r['texts_as_before']:.0%}", _task_only_cell(r)]
        for r in rows
    ]  # fmt: skip
    write_report(
        EXPERIMENT,
        [
            "# The task vocabulary against the full one, same pruned model",
            "",
            f"FFN sparsity {args.sparsity:g}, attribution, fit-free's defaults otherwise; {args.eval_examples} seeded "
            "evaluation examples per set. *tokens kept*: of the tokenizer's, the task's (its scoring source's "
            "texts as the model reads them, their cased forms, specials, the base alphabet); *task / full*: the "
            "metric with the task vocabulary over the metric with the full one; *more tokens*: how many more tokens "
            "the evaluation texts take with the task vocabulary; *+ its traffic*: the unseen set's other rows (not "
            "evaluated) given as `--vocabulary_texts`; *without frequent tokens*: `--vocabulary_frequent 0` (tokens "
            "kept, metric, more tokens, texts as before); *texts as before*: the share of evaluation texts "
            "every token of which was kept (they segment exactly as before). Written by "
            "`python benchmarks/exp_vocabulary.py`.",
            "",
            *markdown_table(COLUMNS, table),
        ],
    )


if __name__ == "__main__":
    main()
