"""Unseen domain: score on SST-2, prune, evaluate on other sentiment data sets (with the SST-2 head).

Every cell runs through the user's pipeline (``runner.TaskBench``: fit-free's steps, defaults and caches). Each
scorer scores ``--examples`` SST-2 training examples (``--draws`` seeded draws; random: seeds), every FFN layer
loses the same fraction, fit-free's default repair (bias compensation from 1,024 calibration examples of SST-2
train); the pruned model is evaluated on every ``sentiment_domains/*`` set (short sentences) and
``sentiment_long/*`` set (whole reviews, 500-1000 characters): accuracy and the share of "positive" answers, since
a pruned model that drifts to one class shows up there first. The model reads ``--max-length`` tokens (SST-2
sentences are far shorter, so scoring is unchanged; the report gives each set's share of longer inputs). Each
domain file (test sets only) is split once with a fixed seed into ``--eval-examples`` for evaluation and the rest;
``--in-domain`` also scores attribution on a short domain's rest and evaluates on the domain (and, reverse, on
SST-2 dev).

Writes ``benchmarks/results/unseen_domain.{csv,md,png}``. Re-run:

    python benchmarks/exp_unseen_domain.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import ATTRIBUTION, DATA, MODEL, model_name
from results_io import markdown_table, write_csv, write_figure, write_report
from runner import TaskBench, dense_metrics, glue_data, scorer_options, split_file

from lightning_prune.data import TaskDataModule
from lightning_prune.modules import TaskModel
from lightning_prune.tasks import TASKS

SHORT_DOMAINS = ("yelp", "amazon_sentences", "vader_amazon", "vader_nyt", "vader_tweets")
LONG_DOMAINS = ("tripadvisor_hotels", "druglib_drugs")
METHODS = ("attribution", "activation", "random")
EXPERIMENT = "unseen_domain"


def domain_files(domain: str, eval_examples: int) -> tuple[str, str]:
    """(scoring file, evaluation file) of a domain: a fixed seeded partition of its test file."""
    folder = "sentiment_long" if domain in LONG_DOMAINS else "sentiment_domains"
    return split_file(DATA / folder / domain / "test.tsv", TASKS["sst2"], eval_examples, f"domain-{domain}")


def truncated_share(model: TaskModel, data: dict[str, Any]) -> float:
    """Share of the evaluation examples longer than the model reads (cut when evaluated)."""
    examples = TaskDataModule(**data).eval_examples()
    lengths = [len(model.net.tokenizer(*e.texts, truncation=False)["input_ids"]) for e in examples]
    return sum(n > model.hparams.max_length for n in lengths) / len(examples)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--domains", nargs="+", default=[*SHORT_DOMAINS, *LONG_DOMAINS])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--examples", type=int, default=128, help="scoring examples")
    parser.add_argument("--draws", type=int, default=3, help="draws of SST-2 scoring examples (random: seeds)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=256, help="tokens the model reads")
    parser.add_argument("--in-domain", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--name", default="unseen_domain", help="results file name (a run of other sparsities)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    start = time.perf_counter()
    model = TaskModel(task="sst2", path=str(args.model), max_length=args.max_length)
    sst2 = glue_data("sst2", num_examples=args.examples, batch_size=16, eval_examples=args.eval_examples, eval_seed=0)
    evaluations = {"sst2": {}} | {d: {"eval_file": domain_files(d, args.eval_examples)[1]} for d in args.domains}
    truncated = {name: truncated_share(model, {**sst2, **data}) for name, data in evaluations.items()}
    rows: list[dict] = []

    def add(result: dict[str, Any], evaluated_on: str, scored_on: str, method: str, draw: int, dense: float) -> None:
        for point in result["points"]:
            rows.append({
                "evaluated_on": evaluated_on, "scored_on": scored_on, "method": method, "draw": draw,
                "sparsity": point["sparsity"], "dense": round(dense, 5),
                "accuracy": round(point["metrics"]["accuracy"], 5),
                "positive_rate": round(point["metrics"]["positive_rate"], 5),
            })  # fmt: skip
        print(rows[-1], flush=True)
        write_csv(args.name, rows)

    dense = {}
    for name, data in evaluations.items():
        metrics = dense_metrics(EXPERIMENT, model, {**sst2, **data})
        dense[name] = metrics
        rows.append({
            "evaluated_on": name, "scored_on": "-", "method": "dense", "draw": 0, "sparsity": 0.0,
            "dense": round(metrics["accuracy"], 5), "accuracy": round(metrics["accuracy"], 5),
            "positive_rate": round(metrics["positive_rate"], 5),
        })  # fmt: skip
    for draw in range(args.draws):
        base = TaskBench(EXPERIMENT, model, {**sst2, "seed": draw})
        for name, data in evaluations.items():
            bench = base.evaluated_on(**data)
            for method in args.methods:
                result = bench.sweep(method, **scorer_options(method, draw, ATTRIBUTION), sparsity=args.sparsities)
                add(result, name, "sst2", method, draw, dense[name]["accuracy"])
    if args.in_domain:
        for domain in [d for d in args.domains if d in SHORT_DOMAINS]:
            score_file, eval_file = domain_files(domain, args.eval_examples)
            bench = TaskBench(EXPERIMENT, model, {**sst2, "score_file": score_file, "eval_file": eval_file})
            for evaluated_on, other in ((domain, bench), ("sst2", bench.evaluated_on(eval_file=None))):
                result = other.sweep(
                    "attribution", **scorer_options("attribution", 0, ATTRIBUTION), sparsity=args.sparsities
                )
                add(result, evaluated_on, domain, "attribution", 0, dense[evaluated_on]["accuracy"])
    minutes = (time.perf_counter() - start) / 60
    write_csv(args.name, rows)
    write_report(args.name, report(args, rows, truncated, minutes))
    plot(args, rows)


def _values(rows: list[dict], key: str, **match: Any) -> list[float]:
    return [r[key] for r in rows if all(r[k] == v for k, v in match.items())]


def report(args: argparse.Namespace, rows: list[dict], truncated: dict[str, float], minutes: float) -> list[str]:
    names = ["sst2", *args.domains]
    dense = {d: _values(rows, "accuracy", evaluated_on=d, method="dense")[0] for d in names}
    dense_positive = {d: _values(rows, "positive_rate", evaluated_on=d, method="dense")[0] for d in names}

    def cell(name: str, method: str, sparsity: float) -> str:
        match = {"evaluated_on": name, "scored_on": "sst2", "method": method, "sparsity": sparsity}
        accuracy = statistics.mean(_values(rows, "accuracy", **match))
        positive = statistics.mean(_values(rows, "positive_rate", **match))
        return f"{accuracy:.3f} ({positive:.2f})"

    def retained(method: str, sparsity: float, names: list[str]) -> float:
        match = {"scored_on": "sst2", "method": method, "sparsity": sparsity}
        return statistics.mean(
            statistics.mean(_values(rows, "accuracy", evaluated_on=d, **match)) / dense[d] for d in names
        )

    lines = [
        "# Unseen domain: score on SST-2, evaluate on other sentiment data",
        "",
        f"Model `{model_name(args.model)}`, SST-2 head, through fit-free's pipeline and defaults "
        "(`benchmarks/exp_unseen_domain.py`, `runner.TaskBench`). Every method scores "
        f"{args.examples} SST-2 training examples (mean over {args.draws} seeded draws; random: seeds; attribution "
        f"m = {ATTRIBUTION['steps']}, content tokens weighting the examples), every FFN layer losing the same "
        "fraction, bias compensation from 1,024 calibration examples of SST-2 train. Evaluation: "
        f"{args.eval_examples} held-out examples per domain (a fixed seeded split) and a seeded draw of SST-2 dev, "
        f'the model reading {args.max_length} tokens. Cells: accuracy (share of "positive" answers). Short: '
        "`sentiment_domains/*`; long: `sentiment_long/*` (whole reviews).",
        "",
        "Longer than the model reads (truncated): "
        + ", ".join(f"{d} {truncated[d]:.0%}" for d in names)
        + '. `druglib_drugs` is hard for the dense model itself (it answers "negative" for most reviews): its '
        "numbers say little about pruning.",
    ]
    groups = {
        "short domains": [d for d in args.domains if d in SHORT_DOMAINS],
        "tripadvisor_hotels": [d for d in args.domains if d == "tripadvisor_hotels"],
        "long domains": [d for d in args.domains if d in LONG_DOMAINS],
    }
    groups = {k: v for k, v in groups.items() if v}
    lines += ["", "## Retained accuracy (pruned / dense), mean over domains and draws", ""]
    lines += markdown_table(
        ["method", "sparsity", *groups, "SST-2 dev"],
        [
            [m, f"{s:.0%}", *(f"{retained(m, s, ds):.3f}" for ds in groups.values()), f"{retained(m, s, ['sst2']):.3f}"]
            for s in args.sparsities
            for m in args.methods
        ],
    )
    for sparsity in args.sparsities:
        lines += ["", f"## {sparsity:.0%} FFN sparsity: accuracy (positive rate)", ""]
        lines += markdown_table(
            ["evaluated on", "dense", *args.methods],
            [
                [d, f"{dense[d]:.3f} ({dense_positive[d]:.2f})", *(cell(d, m, sparsity) for m in args.methods)]
                for d in names
            ],
        )
    in_domain = [r for r in rows if r["scored_on"] not in ("sst2", "-")]
    if in_domain:
        lines += ["", "## Scored on the domain itself (attribution, defaults, one draw)", ""]
        lines += markdown_table(
            ["domain", *(f"{s:.0%}: on the domain / reverse on SST-2" for s in args.sparsities)],
            [
                [
                    d,
                    *(
                        f"{_values(in_domain, 'accuracy', evaluated_on=d, scored_on=d, sparsity=s)[0]:.3f} / "
                        f"{_values(in_domain, 'accuracy', evaluated_on='sst2', scored_on=d, sparsity=s)[0]:.3f}"
                        for s in args.sparsities
                    ),
                ]
                for d in dict.fromkeys(r["scored_on"] for r in in_domain)
            ],
        )
    return [*lines, "", f"Wall time {minutes:.1f} min on this 2-core CPU (cells cached under runs/benchmarks)."]


def plot(args: argparse.Namespace, rows: list[dict]) -> None:
    groups = {"short domains": [d for d in args.domains if d in SHORT_DOMAINS]}
    groups.update({d: [d] for d in args.domains if d in LONG_DOMAINS})
    groups["SST-2 dev"] = ["sst2"]
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for axis, (title, names) in zip(axes[0], groups.items(), strict=True):
        dense = {d: _values(rows, "accuracy", evaluated_on=d, method="dense")[0] for d in names}
        for method in args.methods:
            heights = [
                statistics.mean(
                    statistics.mean(
                        _values(rows, "accuracy", evaluated_on=d, method=method, sparsity=s, scored_on="sst2")
                    )
                    / dense[d]
                    for d in names
                )
                for s in args.sparsities
            ]
            axis.plot(args.sparsities, heights, marker="o", label=method)
        axis.axhline(0.97, color="grey", linestyle=":", linewidth=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("FFN sparsity")
    axes[0][0].set_ylabel("retained accuracy (pruned / dense)")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Scored on SST-2, evaluated elsewhere (dotted: 97% of dense)")
    write_figure(args.name, figure)


if __name__ == "__main__":
    main()
