"""What the experiment scripts share: where the model and data are, the tasks' splits, and small helpers for
reports (spreads over draws, overlaps of kept neurons, chance levels). Every cell itself runs through the user's
pipeline (``runner.py``).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from torch import Tensor

from lightning_prune.adapters import PrunableModel
from lightning_prune.tasks import Example, TaskSpec

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "minilm-glue-multitask"
DATA = ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"
TASK_NAMES = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli")
# QNLI and MNLI have only dev files here: the model was fine-tuned on the first half, which also feeds
# scoring; every QNLI/MNLI number is measured on the second half.
SCORE_SPLITS = {t: "validation_first_half" if t in ("qnli", "mnli") else "train" for t in TASK_NAMES}
EVAL_SPLITS = {t: "validation_second_half" if t in ("qnli", "mnli") else "validation" for t in TASK_NAMES}
SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
# m = 10 Riemann steps (20 in the paper): half the CPU time. Every option that changes scores is spelled
# out, so cached scores of an earlier default are never taken for the current one.
ATTRIBUTION = {"steps": 10, "steps_per_pass": 10, "example_weight": "tokens"}


def model_name(path: Path) -> str:
    """The model folder as the reports name it (relative to the repository when inside it)."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


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
