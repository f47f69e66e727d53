"""What a task is: its text fields, label set, metrics, file layout and text-to-text format; the GLUE tasks, and
single-sentence tasks named with their labels. Every source yields the same ``Example`` records, with labels as
indices in the task's label order (the order ``nyu-mll/glue`` uses) or floats for regression."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from lightning_prune.errors import UsageError


@dataclass(frozen=True)
class Example:
    """One task input: one or two texts and a label (class index, or float for regression)."""

    texts: tuple[str, ...]
    label: float | int
    index: int


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific: fields, label set, metrics, file layout and text-to-text format."""

    name: str
    text_fields: tuple[str, ...]
    labels: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]
    label_range: tuple[float, float] | None = None  # regression: the scores a label may take
    # TSV layout: per field, the header names it may have (or a column position for headerless files).
    tsv_columns: tuple[tuple[str, ...] | int, ...] = ()
    tsv_label_column: tuple[str, ...] | int = ("label",)
    tsv_has_header: bool = True
    split_files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    # Text-to-text format of the T5 paper: "<prefix> <field>: <text> ..." -> label word.
    t5_prefix: str = ""
    t5_field_names: tuple[str, ...] = ()
    t5_label_words: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def parse_label(self, raw: str | float | int, where: str) -> float | int:
        """Map a raw label (name, index or number) to the task's label value; reject anything else.

        Numbers must be written in ASCII digits: Python would also read ``'１'`` (full width) or ``'1_0'``.
        """
        text = str(raw).strip()
        if self.labels is None:
            if not DECIMAL.fullmatch(text) or not math.isfinite(float(text)):
                raise UsageError(f"{where}: label {raw!r} is not a number; task {self.name} is a regression task")
            value = float(text)
            low, high = self.label_range or (-math.inf, math.inf)
            if not low <= value <= high:
                raise UsageError(f"{where}: label {raw!r} is outside {low:g}-{high:g}, the scores of task {self.name}")
            return value
        if text in self.labels:
            return self.labels.index(text)
        if INTEGER.fullmatch(text) and 0 <= int(text) < len(self.labels):
            return int(text)
        allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(self.labels))
        raise UsageError(f"{where}: label {raw!r} is not in the label set of task {self.name}: {allowed}")


INTEGER = re.compile(r"[0-9]+")
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _glue(name: str, **kwargs) -> TaskSpec:
    return TaskSpec(name=name, **kwargs)


STSB_LABEL_WORDS = tuple(f"{k / 5:.1f}" for k in range(26))  # T5 rounds STS-B scores to steps of 0.2

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue(
            "sst2",
            text_fields=("sentence",),
            labels=("negative", "positive"),
            metrics=("accuracy",),
            tsv_columns=(("sentence",),),
            t5_prefix="sst2",
            t5_field_names=("sentence",),
            t5_label_words=("negative", "positive"),
        ),
        _glue(
            "cola",
            text_fields=("sentence",),
            labels=("unacceptable", "acceptable"),
            metrics=("matthews_correlation",),
            tsv_columns=(3,),
            tsv_label_column=1,
            tsv_has_header=False,
            t5_prefix="cola",
            t5_field_names=("sentence",),
            t5_label_words=("unacceptable", "acceptable"),
        ),
        _glue(
            "mrpc",
            text_fields=("sentence1", "sentence2"),
            labels=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            tsv_columns=(("#1 String", "sentence1"), ("#2 String", "sentence2")),
            tsv_label_column=("Quality", "label"),
            t5_prefix="mrpc",
            t5_field_names=("sentence1", "sentence2"),
            t5_label_words=("not_equivalent", "equivalent"),
        ),
        _glue(
            "qqp",
            text_fields=("question1", "question2"),
            labels=("not_duplicate", "duplicate"),
            metrics=("f1", "accuracy"),
            tsv_columns=(("question1",), ("question2",)),
            tsv_label_column=("is_duplicate", "label"),
            t5_prefix="qqp",
            t5_field_names=("question1", "question2"),
            t5_label_words=("not_duplicate", "duplicate"),
        ),
        _glue(
            "stsb",
            text_fields=("sentence1", "sentence2"),
            labels=None,
            metrics=("pearson", "spearman"),
            label_range=(0.0, 5.0),
            tsv_columns=(("sentence1",), ("sentence2",)),
            tsv_label_column=("score", "label"),
            t5_prefix="stsb",
            t5_field_names=("sentence1", "sentence2"),
            t5_label_words=STSB_LABEL_WORDS,
        ),
        _glue(
            "mnli",
            text_fields=("premise", "hypothesis"),
            labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            tsv_columns=(("premise", "sentence1"), ("hypothesis", "sentence2")),
            tsv_label_column=("label", "gold_label"),
            split_files={"train": "train.tsv", "validation": "dev_matched.tsv"},
            hub_splits={"train": "train", "validation": "validation_matched"},
            t5_prefix="mnli",
            t5_field_names=("hypothesis", "premise"),
            t5_label_words=("entailment", "neutral", "contradiction"),
        ),
        _glue(
            "qnli",
            text_fields=("question", "sentence"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            tsv_columns=(("question",), ("sentence",)),
            t5_prefix="qnli",
            t5_field_names=("question", "sentence"),
            t5_label_words=("entailment", "not_entailment"),
        ),
        _glue(
            "rte",
            text_fields=("sentence1", "sentence2"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            tsv_columns=(("sentence1",), ("sentence2",)),
            t5_prefix="rte",
            t5_field_names=("sentence1", "sentence2"),
            t5_label_words=("entailment", "not_entailment"),
        ),
    )
}


def sentence_task(name: str, labels: tuple[str, ...]) -> TaskSpec:
    """A single-sentence classification task read from ``sentence<TAB>label`` files (e.g. AG News)."""
    return TaskSpec(
        name=name,
        text_fields=("sentence",),
        labels=labels,
        metrics=("accuracy",),
        tsv_columns=(("sentence",),),
        hub_splits={},
        t5_prefix=name,
        t5_field_names=("sentence",),
        t5_label_words=labels,
    )


def get_task(name: str, labels: list[str] | None = None) -> TaskSpec:
    """A GLUE task by name, or — with ``labels`` — a single-sentence task of that name."""
    if labels:
        if name in TASKS:
            raise UsageError(f"task {name!r} is a GLUE task with a fixed label set; drop `labels` or rename the task")
        return sentence_task(name, tuple(labels))
    if name not in TASKS:
        raise UsageError(
            f"unknown task {name!r}: choose one of {', '.join(TASKS)}, or give `labels` for a "
            "single-sentence task read from sentence<TAB>label files"
        )
    return TASKS[name]
