"""Unseen domain: score on SST-2, prune, evaluate on other sentiment data sets (with the SST-2 head).

Forward: each scorer scores 128 SST-2 training examples (``--seeds`` draws; random: seeds), the pruned
model is evaluated on every ``sentiment_domains/*`` set (short sentences) and ``sentiment_long/*`` set
(whole reviews of other domains, 500-1000 characters) — accuracy and the share of "positive" answers,
since a pruned model that drifts to one class shows up there first. Every method uses the library's
default settings (token-weighted attribution, bias compensation); "attribution, before" is the default
before issue 11 (examples weighted uniformly, no compensation). Inputs are evaluated at
``--eval-max-length`` tokens (scoring keeps the model's 128); the report gives each domain's share of
truncated inputs. With ``--in-domain``, also attribution scored on each short domain itself (in-domain
reference) and the reverse direction (scored on a domain, evaluated on SST-2 dev). Each domain file
(test sets only) is split once with a fixed seed: ``--eval-limit`` examples for evaluation, the rest for
in-domain scoring, so scoring and evaluation examples never overlap.

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
    bias_compensation,
    data_free_scores,
    data_scores,
    dense_model,
    eval_examples,
    evaluate,
    model_name,
    prune_and_evaluate,
    score_pool,
    seeded_order,
    truncated_share,
)
from results_io import markdown_table, write_csv, write_figure, write_report

from lightning_prune.tasks import TASKS, Example, read_tsv

SHORT_DOMAINS = ("yelp", "amazon_sentences", "vader_amazon", "vader_nyt", "vader_tweets")
LONG_DOMAINS = ("tripadvisor_hotels", "druglib_drugs")
SST2 = TASKS["sst2"]
# method -> (scorer, scorer options, bias compensation); "before": the defaults this issue replaced
METHODS = {
    "attribution": ("attribution", ATTRIBUTION, True),
    "attribution, before": ("attribution", {**ATTRIBUTION, "example_weight": "uniform"}, False),
    "activation": ("activation", {}, True),
    "random": ("random", {}, True),
}


def domain_file(domain: str) -> Path:
    folder = "sentiment_long" if domain in LONG_DOMAINS else "sentiment_domains"
    return DATA / folder / domain / "test.tsv"


def domain_split(domain: str, eval_size: int) -> tuple[list[Example], list[Example]]:
    """(scoring examples, evaluation examples) of a domain's file: a fixed seeded partition."""
    examples = read_tsv(domain_file(domain), SST2)
    order = list(range(len(examples)))
    random.Random(f"domain-split-{domain}").shuffle(order)  # files are sorted by label: never take a prefix
    held_out = set(order[:eval_size])
    return [e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in sorted(held_out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--domains", nargs="+", default=[*SHORT_DOMAINS, *LONG_DOMAINS])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--examples", type=int, default=128, help="scoring examples")
    parser.add_argument("--seeds", type=int, default=3, help="draws of SST-2 scoring examples (random: seeds)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--eval-limit", type=int, default=EVAL_LIMIT)
    parser.add_argument("--eval-max-length", type=int, default=256, help="evaluation truncation (tokens)")
    parser.add_argument("--in-domain", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--name", default="unseen_domain", help="results file name (a run of extra sparsities)")
    args = parser.parse_args()
    sparsities, length = tuple(args.sparsities), args.eval_max_length
    clock = Clock()
    dense = dense_model(SST2, args.model)
    seeds = range(args.seeds)
    pools = [score_pool(SST2, s) for s in seeds]
    means = [bias_compensation(dense, pool, args.examples) for pool in pools]
    scores = {}
    for method in args.methods:
        scorer, options, _ = METHODS[method]
        scores[method] = [
            data_free_scores(dense, scorer, {"seed": s})
            if scorer == "random"
            else data_scores(dense, scorer, options, pools[s], args.examples)
            for s in seeds
        ]
    clock.lap("score")
    eval_sets = {"sst2": eval_examples(SST2, args.eval_limit)}
    pools_by_domain = {}
    for domain in args.domains:
        pools_by_domain[domain], eval_sets[domain] = domain_split(domain, args.eval_limit)
    truncated = {name: truncated_share(dense, examples, length) for name, examples in eval_sets.items()}
    rows = []

    def add(direction: str, domain: str, scored_on: str, method: str, seed: int, sparsity: float, metrics) -> None:
        rows.append({
            "direction": direction, "domain": domain, "scored_on": scored_on, "method": method, "seed": seed,
            "sparsity": sparsity, "accuracy": round(metrics["accuracy"], 5),
            "positive_rate": round(metrics["positive_rate"], 5),
        })  # fmt: skip
        print(rows[-1], flush=True)

    for name, examples in eval_sets.items():
        add("forward", name, "-", "dense", 0, 0.0, evaluate(dense, SST2, examples, max_length=length))
        for method in args.methods:
            compensate = METHODS[method][2]
            for seed, method_scores in enumerate(scores[method]):
                results = prune_and_evaluate(
                    dense, SST2, method_scores, sparsities, examples,
                    reconstruction=means[seed] if compensate else None, max_length=length,
                )  # fmt: skip
                for sparsity, metrics in results.items():
                    add("forward", name, "sst2", method, seed, sparsity, metrics)
        clock.lap("evaluate")
    if args.in_domain:
        scorer, options, compensate = METHODS["attribution"]
        for domain in [d for d in args.domains if d in SHORT_DOMAINS]:
            pool = seeded_order(pools_by_domain[domain], 0)
            domain_scores = data_scores(dense, scorer, options, pool, args.examples)
            domain_means = bias_compensation(dense, pool, args.examples) if compensate else None
            clock.lap("score")
            for direction, evaluated_on in (("forward", domain), ("reverse", "sst2")):
                results = prune_and_evaluate(
                    dense, SST2, domain_scores, sparsities, eval_sets[evaluated_on],
                    reconstruction=domain_means, max_length=length,
                )  # fmt: skip
                for sparsity, metrics in results.items():
                    add(direction, evaluated_on, domain, "attribution", 0, sparsity, metrics)
            clock.lap("evaluate")
    write_csv(args.name, rows)
    write_report(args.name, report(args, rows, truncated, clock))
    plot(args, rows)


def _values(rows: list[dict], key: str, **match) -> list[float]:
    return [r[key] for r in rows if all(r[k] == v for k, v in match.items())]


def report(args, rows: list[dict], truncated: dict[str, float], clock: Clock) -> list[str]:
    names = ["sst2", *args.domains]
    dense = {d: _values(rows, "accuracy", domain=d, method="dense")[0] for d in names}
    dense_pos = {d: _values(rows, "positive_rate", domain=d, method="dense")[0] for d in names}

    def cell(domain: str, method: str, sparsity: float) -> str:
        match = {"direction": "forward", "domain": domain, "scored_on": "sst2", "method": method, "sparsity": sparsity}
        accuracy = statistics.mean(_values(rows, "accuracy", **match))
        positive = statistics.mean(_values(rows, "positive_rate", **match))
        return f"{accuracy:.3f} ({positive:.2f})"

    def retained(method: str, sparsity: float, domains: list[str]) -> float:
        match = {"direction": "forward", "scored_on": "sst2", "method": method, "sparsity": sparsity}
        return statistics.mean(
            statistics.mean(_values(rows, "accuracy", domain=d, **match)) / dense[d] for d in domains
        )

    a = METHODS["attribution"][1]
    lines = [
        "# Unseen domain: score on SST-2, evaluate on other sentiment data",
        "",
        f"Model `{model_name(args.model)}`, SST-2 head. Every method scores {args.examples} SST-2 training examples "
        f"(a seeded draw; mean over {args.seeds} draws, random: over {args.seeds} seeds) and prunes every FFN layer "
        f"by the same fraction with the library's defaults: attribution m = {a['steps']}, gold labels, `abs_sum`, "
        "examples weighted by their content tokens (`example_weight: tokens`), and bias compensation (removed "
        "neurons' mean content-token activation over the scoring examples folded into the down bias) for every "
        "scorer. **attribution, before**: the defaults before issue 11 (`example_weight: uniform`, no "
        f"compensation). Evaluation: {args.eval_limit} held-out examples per domain (a fixed seeded draw) and a "
        f"seeded draw of SST-2 dev, cut at {args.eval_max_length} tokens (scoring: 128). Cells: accuracy "
        '(share of "positive" answers). Short: `sentiment_domains/*`; long: `sentiment_long/*` (whole reviews).',
        "",
        "Truncated at the evaluation length: "
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
    lines += ["", "## Retained accuracy (pruned / dense), mean over domains and seeds", ""]
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
            [[d, f"{dense[d]:.3f} ({dense_pos[d]:.2f})", *(cell(d, m, sparsity) for m in args.methods)] for d in names],
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
                        f"{_values(in_domain, 'accuracy', direction='forward', scored_on=d, sparsity=s)[0]:.3f} / "
                        f"{_values(in_domain, 'accuracy', direction='reverse', scored_on=d, sparsity=s)[0]:.3f}"
                        for s in args.sparsities
                    ),
                ]
                for d in dict.fromkeys(r["scored_on"] for r in in_domain)
            ],
        )
    return [*lines, "", clock.line()]


def plot(args, rows: list[dict]) -> None:
    groups = {"short domains": [d for d in args.domains if d in SHORT_DOMAINS]}
    groups.update({d: [d] for d in args.domains if d in LONG_DOMAINS})
    groups["SST-2 dev"] = ["sst2"]
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for axis, (title, domains) in zip(axes[0], groups.items(), strict=True):
        dense = {d: _values(rows, "accuracy", domain=d, method="dense")[0] for d in domains}
        for method in args.methods:
            heights = [
                statistics.mean(
                    statistics.mean(_values(rows, "accuracy", domain=d, method=method, sparsity=s, scored_on="sst2"))
                    / dense[d]
                    for d in domains
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
