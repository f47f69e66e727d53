"""What the experiment scripts share: the multi-task model, the data splits, cached scoring, pruned evaluation.

Scoring examples are drawn as the first ``n`` of a seeded permutation of the task's scoring split, and
scored in segments (1-8, 9-16, 17-32, ...), so the scores of ``n`` examples are the sum of the segments
below ``n``: every budget of the low-resource sweep reuses the smaller ones, and the main table's scores
are the low-resource run's at the same budget. Each segment's scores are cached on disk
(``runs/experiments/scores``) under fit-free's own key (``lightning_prune.cache.score_request``: code, model
weights, examples, batching, scorer and settings, labels), so re-running a script, or another script that needs
the same scores, does not score again.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_prune import load_model
from lightning_prune.adapters import PrunableModel
from lightning_prune.cache import ScoreCache, score_key, score_request
from lightning_prune.data import subsample
from lightning_prune.modules import LabelSource, score_batch
from lightning_prune.pruning import Reconstruction, Scope, activation_statistics, prune_model, select_neurons
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import Example, TaskSpec, build_metrics, load_split, metric_inputs

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "minilm-glue-multitask"
DATA = ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"
SCORE_CACHE = ROOT / "runs" / "experiments" / "scores"
TASK_NAMES = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli")
# QNLI and MNLI have only dev files here: the model was fine-tuned on the first half, which also feeds
# scoring; every QNLI/MNLI number is measured on the second half.
SCORE_SPLITS = {t: "validation_first_half" if t in ("qnli", "mnli") else "train" for t in TASK_NAMES}
EVAL_SPLITS = {t: "validation_second_half" if t in ("qnli", "mnli") else "validation" for t in TASK_NAMES}
SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
SEGMENT_ENDS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
EVAL_LIMIT = 300  # evaluation examples per task (a seeded draw where dev is larger): CPU budget
# m = 10 Riemann steps (20 in the paper): half the CPU time. Every option that changes scores is spelled
# out, so cached scores of an earlier default are never taken for the current one.
ATTRIBUTION = {"steps": 10, "steps_per_pass": 10, "example_weight": "tokens"}


def dense_model(spec: TaskSpec, path: Path = MODEL) -> PrunableModel:
    return load_model(path, spec)


def model_name(path: Path) -> str:
    """The model folder as the reports name it (relative to the repository when inside it)."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def eval_examples(spec: TaskSpec, limit: int | None, split: str | None = None) -> list[Example]:
    """The task's evaluation examples, a seeded draw of ``limit`` of them when the split is larger."""
    examples = load_split(spec, split or EVAL_SPLITS[spec.name], GLUE)
    return examples if limit is None or len(examples) <= limit else subsample(examples, limit, 0, "eval")


def seeded_order(examples: list[Example], seed: int) -> list[Example]:
    """``examples`` in a seeded order: the first ``n`` are the ``n``-example draw of ``seed``."""
    shuffled = list(examples)
    random.Random(f"score-{seed}").shuffle(shuffled)
    return shuffled


def score_pool(spec: TaskSpec, seed: int) -> list[Example]:
    """The task's scoring split in the seeded order of ``seed``."""
    return seeded_order(load_split(spec, SCORE_SPLITS[spec.name], GLUE), seed)


def evaluate(
    model: PrunableModel, spec: TaskSpec, examples: list[Example], batch_size: int = 64, max_length: int | None = None
) -> dict[str, float]:
    """The task's metrics, and for two-class tasks ``positive_rate`` (share of predictions of class 1).

    Inputs are truncated at ``max_length`` tokens (default: the model's scoring length).
    """
    metrics = build_metrics(spec)
    positives = 0
    ordered = sorted(examples, key=lambda e: sum(len(t) for t in e.texts))  # less padding; metrics ignore order
    with torch.inference_mode(), model.truncating_at(max_length):
        for i in range(0, len(ordered), batch_size):
            batch = model.collate(ordered[i : i + batch_size])
            predictions = model.predict(batch)
            metrics.update(*metric_inputs(spec, predictions, batch["labels"]))
            positives += int((predictions == 1).sum()) if spec.num_labels == 2 else 0
    results = {name: float(value) for name, value in metrics.compute().items()}
    if spec.num_labels == 2:
        results["positive_rate"] = positives / len(examples)
    return results


def chance(spec: TaskSpec, examples: list[Example]) -> float:
    """What answering without reading gets: the majority class's accuracy; F1 of always answering the positive
    class (2p / (1 + p), p its share); 0 for MCC and correlations."""
    labels = [e.label for e in examples]
    if spec.primary_metric == "accuracy":
        return max(labels.count(v) for v in set(labels)) / len(labels)
    if spec.primary_metric == "f1":
        positive = labels.count(1) / len(labels)
        return 2 * positive / (1 + positive)
    return 0.0


def truncated_share(model: PrunableModel, examples: list[Example], max_length: int) -> float:
    """Share of ``examples`` longer than ``max_length`` tokens (cut when evaluated at that length)."""
    lengths = [len(model.tokenizer(*e.texts, truncation=False)["input_ids"]) for e in examples]
    return sum(n > max_length for n in lengths) / len(examples)


def add_compensate_option(parser: argparse.ArgumentParser) -> None:
    """``--compensate/--no-compensate``: bias compensation, on by default as in fit-free (``--reconstruct bias``)."""
    parser.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bias compensation (fit-free's default): removed neurons' mean activations over the scoring examples",
    )


def bias_compensation(model: PrunableModel, pool: list[Example], count: int, batch_size: int = 16) -> Reconstruction:
    """fit-free's default repair: removed neurons replaced by their mean activations over the scoring examples."""
    examples = pool[:count]
    batches = [model.collate(examples[i : i + batch_size]) for i in range(0, count, batch_size)]
    return Reconstruction("bias", activation_statistics(model, batches).means())


def primary(spec: TaskSpec, metrics: dict[str, float]) -> float:
    return metrics[spec.primary_metric]


def _score_segment(
    model: PrunableModel,
    scorer: str,
    options: dict[str, Any],
    examples: list[Example],
    labels: LabelSource,
    batch_size: int,
) -> list[Tensor]:
    request = score_request(model, examples, batch_size, scorer, options, labels)
    cache = ScoreCache(SCORE_CACHE, score_key(request), request)
    cached = cache.load_final([layer.size for layer in model.ffn_layers()], len(examples))
    if cached is not None:
        return cached[0]
    impl = create_scorer(scorer, options)
    ordered = sorted(examples, key=lambda e: sum(len(t) for t in e.texts))  # length bucketing, as fit-free does
    sums = [torch.zeros(layer.size, dtype=torch.float64) for layer in model.ffn_layers()]
    for i in range(0, len(ordered), batch_size):
        batch = model.collate(ordered[i : i + batch_size])
        sums = [s + b for s, b in zip(sums, score_batch(model, impl, scorer, batch, labels), strict=True)]
    cache.save_final(sums, len(examples))
    return sums


def data_scores(
    model: PrunableModel,
    scorer: str,
    options: dict[str, Any],
    pool: list[Example],
    count: int,
    labels: LabelSource = "gold",
    batch_size: int = 16,
) -> list[Tensor]:
    """Scores of the first ``count`` examples of ``pool``, summed from cached segments (see module doc)."""
    count = min(count, len(pool))
    ends = [end for end in SEGMENT_ENDS if end < count] + [count]
    totals = None
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        segment = _score_segment(model, scorer, options, pool[start:end], labels, batch_size)
        totals = segment if totals is None else [t + s for t, s in zip(totals, segment, strict=True)]
    assert totals is not None
    return totals


def data_free_scores(model: PrunableModel, scorer: str, options: dict[str, Any]) -> list[Tensor]:
    return create_scorer(scorer, options)(model, None)


def prune_and_evaluate(
    dense: PrunableModel,
    spec: TaskSpec,
    scores: list[Tensor],
    sparsities: tuple[float, ...],
    examples: list[Example],
    scope: Scope = "layer",
    reconstruction: Reconstruction | None = None,
    max_length: int | None = None,
) -> dict[float, dict[str, float]]:
    """Metrics of a pruned copy of ``dense`` per sparsity (the dense model is left untouched), each cut repaired
    by ``reconstruction`` (e.g. ``bias_compensation``)."""
    results = {}
    for sparsity in sparsities:
        pruned = copy.deepcopy(dense)
        prune_model(pruned, select_neurons(scores, sparsity, scope), reconstruction)
        results[sparsity] = evaluate(pruned, spec, examples, max_length=max_length)
    return results


def spread(values: list[float]) -> str:
    """A value, the mean (min–max) of several (one per seed), or a dash for none (not measured yet)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def jaccard(kept_a: list[Tensor], kept_b: list[Tensor]) -> float:
    """Overlap of two kept-neuron selections (per-layer index tensors), over all layers."""
    pairs = [(set(a.tolist()), set(b.tolist())) for a, b in zip(kept_a, kept_b, strict=True)]
    return sum(len(a & b) for a, b in pairs) / sum(len(a | b) for a, b in pairs)


class Clock:
    """Wall-clock seconds per named phase, for the reports' timing lines."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._start
        self._start = now

    def line(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {value / 60:.1f}" for name, value in self.seconds.items())
        return f"Wall time {total / 60:.1f} min on this 2-core CPU ({parts} min)."
