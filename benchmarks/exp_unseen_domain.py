"""Unseen domain: score on one sentiment data set, prune, evaluate on another (with the SST-2 head).

Forward: attribution scored on SST-2 training examples, evaluated on each ``sentiment_domains/*`` set,
next to scoring on the target domain itself (in-domain reference) and the random scorer. Reverse: scored
on each domain, evaluated on SST-2 dev, next to scoring on SST-2 itself. Each domain file (test sets only)
is split once with a fixed seed: ``--eval-limit`` examples for evaluation, the rest for scoring, so
scoring and evaluation examples never overlap. Means (min–max) over ``--seeds`` draws of scoring examples.

Writes ``benchmarks/results/unseen_domain.{csv,md,png}``. Re-run:

    python benchmarks/exp_unseen_domain.py
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from experiments import (
    ATTRIBUTION,
    DATA,
    EVAL_LIMIT,
    MODEL,
    Clock,
    data_free_scores,
    data_scores,
    dense_model,
    eval_examples,
    evaluate,
    model_name,
    primary,
    prune_and_evaluate,
    score_pool,
    seeded_order,
    spread,
)
from results_io import markdown_table, write_csv, write_figure, write_report

from lightning_prune.tasks import TASKS, Example, read_tsv

DOMAINS = ("yelp", "amazon_sentences", "vader_amazon", "vader_nyt", "vader_tweets")
SST2 = TASKS["sst2"]


def domain_split(domain: str, eval_size: int) -> tuple[list[Example], list[Example]]:
    """(scoring examples, evaluation examples) of a domain's file: a fixed seeded partition."""
    examples = read_tsv(DATA / "sentiment_domains" / domain / "test.tsv", SST2)
    order = list(range(len(examples)))
    random.Random(f"domain-split-{domain}").shuffle(order)  # files are sorted by label: never take a prefix
    held_out = set(order[:eval_size])
    return [e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in sorted(held_out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--examples", type=int, default=128, help="scoring examples")
    parser.add_argument("--seeds", type=int, default=3, help="draws of SST-2 scoring examples")
    parser.add_argument("--domain-seeds", type=int, default=1, help="draws of each domain's scoring examples")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--eval-limit", type=int, default=EVAL_LIMIT)
    args = parser.parse_args()
    sparsities = tuple(args.sparsities)
    clock = Clock()
    dense = dense_model(SST2, args.model)
    sst2_eval = eval_examples(SST2, args.eval_limit)
    seeds = range(args.seeds)
    sst2_scores = [data_scores(dense, "attribution", ATTRIBUTION, score_pool(SST2, s), args.examples) for s in seeds]
    random_scores = [data_free_scores(dense, "random", {"seed": s}) for s in seeds]
    clock.lap("score")
    rows = []

    def record(direction: str, domain: str, scored_on: str, evaluated_on: str, scores_list, examples) -> None:
        for seed, scores in enumerate(scores_list):
            for sparsity, metrics in prune_and_evaluate(dense, SST2, scores, sparsities, examples).items():
                rows.append({
                    "direction": direction, "domain": domain, "scored_on": scored_on, "evaluated_on": evaluated_on,
                    "seed": seed, "sparsity": sparsity, "accuracy": round(primary(SST2, metrics), 5),
                })  # fmt: skip
                print(rows[-1], flush=True)
        clock.lap("evaluate")

    dense_rows = {"sst2": primary(SST2, evaluate(dense, SST2, sst2_eval))}
    for domain in args.domains:
        pool, held_out = domain_split(domain, args.eval_limit)
        dense_rows[domain] = primary(SST2, evaluate(dense, SST2, held_out))
        domain_scores = [
            data_scores(dense, "attribution", ATTRIBUTION, seeded_order(pool, s), args.examples)
            for s in range(args.domain_seeds)
        ]
        clock.lap("score")
        record("forward", domain, "sst2", domain, sst2_scores, held_out)
        record("forward", domain, domain, domain, domain_scores, held_out)
        record("forward", domain, "random", domain, random_scores, held_out)
        record("reverse", domain, domain, "sst2", domain_scores, sst2_eval)
    record("reverse", "sst2", "sst2", "sst2", sst2_scores, sst2_eval)
    write_csv("unseen_domain", rows)

    def cell(direction: str, scored_on: str, evaluated_on: str, sparsity: float) -> str:
        key = (direction, scored_on, evaluated_on, sparsity)
        return spread(
            [r["accuracy"] for r in rows if (r["direction"], r["scored_on"], r["evaluated_on"], r["sparsity"]) == key]
        )

    lines = [
        "# Unseen domain: score on one sentiment data set, evaluate on another",
        "",
        f"Model `{model_name(args.model)}`, SST-2 head. Attribution (m = {ATTRIBUTION['steps']}, gold labels) "
        f"with {args.examples} scoring examples, mean (min–max) over {args.seeds} draws from SST-2 and "
        f"{args.domain_seeds} from each domain; accuracy on {args.eval_limit} held-out examples per domain (a "
        "fixed seeded draw, disjoint from the scoring examples) and on a seeded draw of at most that many SST-2 "
        "dev examples.",
    ]
    for sparsity in sparsities:
        forward = [
            [d, f"{dense_rows[d]:.3f}", *(cell("forward", s, d, sparsity) for s in ("sst2", d, "random"))]
            for d in args.domains
        ]
        lines += ["", f"## {sparsity:.0%} FFN sparsity", ""]
        lines += markdown_table(
            ["evaluated on", "dense", "scored on SST-2", "scored on the domain itself", "random"], forward
        )
        lines += [
            "",
            f"Reverse (evaluated on SST-2 dev, dense {dense_rows['sst2']:.3f}; scored on SST-2 itself: "
            f"{cell('reverse', 'sst2', 'sst2', sparsity)}):",
            "",
        ]
        lines += markdown_table(
            ["scored on", "SST-2 accuracy"], [[d, cell("reverse", d, "sst2", sparsity)] for d in args.domains]
        )
    lines += ["", clock.line()]
    write_report("unseen_domain", lines)

    figure, axes = plt.subplots(1, len(sparsities), figsize=(7 * len(sparsities), 4.5), squeeze=False)
    width = 0.2
    for axis, sparsity in zip(axes[0], sparsities, strict=True):
        positions = range(len(args.domains))
        series = [("dense", None), ("scored on SST-2", "sst2"), ("scored in-domain", "self"), ("random", "random")]
        for offset, (label, source) in enumerate(series):
            heights = []
            for domain in args.domains:
                if source is None:
                    heights.append(dense_rows[domain])
                    continue
                key = ("forward", domain, domain if source == "self" else source, sparsity)
                picked = [
                    r["accuracy"] for r in rows if (r["direction"], r["domain"], r["scored_on"], r["sparsity"]) == key
                ]
                heights.append(statistics.mean(picked))
            axis.bar([p + (offset - 1.5) * width for p in positions], heights, width, label=label)
        axis.set_xticks(list(positions), args.domains, rotation=20, fontsize=8)
        axis.set_ylim(0.4, 1.0)
        axis.set_ylabel("accuracy")
        axis.set_title(f"pruned for sentiment at {sparsity:.0%} FFN sparsity")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Unseen domain: scoring data vs evaluation domain")
    write_figure("unseen_domain", figure)


if __name__ == "__main__":
    main()
