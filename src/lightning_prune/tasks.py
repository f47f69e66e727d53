"""Tasks: what a task's examples look like, where they come from, and how GLUE scores them.

A task is read from the original GLUE TSV files (a local folder such as ``../shared/data/glue``), from
the Hugging Face hub (``nyu-mll/glue``) through ``datasets``, or from a ``sentence<TAB>label`` file
(the unseen-domain sets). Every source yields the same ``Example`` records, with labels as indices in
the task's label order (the order ``nyu-mll/glue`` uses) or floats for regression.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # torch and torchmetrics load lazily: ``--help`` and errors should not wait for them
    import torch
    from torchmetrics import MetricCollection

from lightning_prune.errors import UsageError

GLUE_HUB_ID = "nyu-mll/glue"
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
SPLITS = ("train", "validation", "validation_first_half", "validation_second_half")
HALF_SEED = 0  # fixed: the two halves of a dev set are the same partition in every run


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


# -- reading -------------------------------------------------------------------------------------------------


def check_data_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` as a Path, if it names an existing file (a folder or a missing path is a one-line error)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file: give the TSV file itself")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist: check the path (or data_dir)")
    return path


def _read_tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows with their line numbers in the file (blank lines are skipped, not renumbered)."""
    data = check_data_file(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        start = error.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        raise UsageError(
            f"data file {path} is not UTF-8: byte offset {start} (line {line}) cannot be decoded; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise UsageError(f"data file {path} is empty: give a file with examples")
    return rows


def _column(header: list[str], names: tuple[str, ...] | int, path: Path) -> int:
    if isinstance(names, int):
        return names
    for name in names:
        if name in header:
            return header.index(name)
    raise UsageError(
        f"data file {path} has no column {' or '.join(map(repr, names))} (header: {', '.join(header)}); "
        "give a file in the task's GLUE TSV format or a sentence<TAB>label file"
    )


def read_tsv(path: str | Path, spec: TaskSpec) -> list[Example]:
    """Read a task's examples from its GLUE TSV file, or from a ``sentence<TAB>label`` file (header row
    ``sentence``, ``label``) for single-sentence tasks — how the unseen-domain sets are given."""
    path = Path(path)
    rows = _read_tsv_rows(path)
    columns, label_column, has_header = spec.tsv_columns, spec.tsv_label_column, spec.tsv_has_header
    first = [name.strip() for name in rows[0][1]]
    if first == ["sentence", "label"]:
        if len(spec.text_fields) != 1:
            raise UsageError(
                f"{path} is a sentence<TAB>label file, but task {spec.name} has two texts per example; "
                "such files only fit single-sentence tasks (sst2, cola, or a task given with labels)"
            )
        columns, label_column, has_header = (("sentence",),), ("label",), True
    header = first if has_header else []
    body = rows[1:] if has_header else rows
    if not body:
        raise UsageError(f"data file {path} has a header but no examples: give a file with examples")
    text_idx = [_column(header, c, path) for c in columns]
    label_idx = _column(header, label_column, path)
    width = max([*text_idx, label_idx]) + 1
    examples = []
    for offset, (line, row) in enumerate(body):
        where = f"{path}:{line}"
        if len(row) < width:
            raise UsageError(f"{where}: expected at least {width} tab-separated columns, found {len(row)}")
        label = spec.parse_label(row[label_idx], where)
        examples.append(Example(tuple(row[i] for i in text_idx), label, offset))
    return examples


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[Example]:
    """A task split from a GLUE folder (``<data_dir>/<task>/<file>``) or, without ``data_dir``, from the hub.

    ``validation_first_half`` / ``validation_second_half`` partition the dev set by a fixed seeded shuffle
    (each half in file order): for tasks whose train file is not at hand (QNLI, MNLI in ``../shared/data``),
    one half can be used for fine-tuning and scoring and the other for evaluation.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if split.startswith("validation_"):
        examples = load_split(spec, "validation", data_dir)
        order = list(range(len(examples)))
        random.Random(HALF_SEED).shuffle(order)
        half = order[: len(order) // 2] if split == "validation_first_half" else order[len(order) // 2 :]
        return [examples[i] for i in sorted(half)]
    if data_dir is not None:
        return read_tsv(Path(data_dir) / spec.name / spec.split_files[split], spec)
    if spec.name not in TASKS:
        raise UsageError(f"task {spec.name} is not on the hub: give its sentence<TAB>label files")
    return _load_hub_split(spec, split)


def hub_offline() -> bool:
    """Whether Hugging Face's offline mode is set: ``datasets`` then reads its cache only."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in HUB_OFFLINE_VARIABLES)


def require_hub(option: str) -> None:
    """Fail at once, naming ``option``, when the Hugging Face hub's host does not accept a connection within
    3 s. In offline mode nothing is checked: ``datasets`` reads its cache, and a task missing there is the
    one-line error of loading it; with a proxy configured, ``datasets`` decides too."""
    if hub_offline() or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=3).close()
    except OSError:
        raise UsageError(
            f"no {option} given and the Hugging Face hub is unreachable: give {option}, "
            "a folder of GLUE TSV files such as ../shared/data/glue"
        ) from None


def _load_hub_split(spec: TaskSpec, split: str) -> list[Example]:
    import datasets  # heavy: only for hub users

    try:
        rows = datasets.load_dataset(GLUE_HUB_ID, spec.name, split=spec.hub_splits[split])
    except Exception as error:  # the hub raises many kinds; all mean the same to the user
        where = "the datasets cache (offline mode)" if hub_offline() else "the hub"
        raise UsageError(
            f"could not load {GLUE_HUB_ID}/{spec.name} ({split}) from {where} ({type(error).__name__}): "
            "give data_dir instead (a folder of GLUE TSV files)"
        ) from None
    return [
        Example(tuple(row[f] for f in spec.text_fields), spec.parse_label(row["label"], f"{GLUE_HUB_ID} row {i}"), i)
        for i, row in enumerate(rows)
    ]


# -- metrics -------------------------------------------------------------------------------------------------


def build_metrics(spec: TaskSpec) -> MetricCollection:
    """GLUE's metrics for the task, as torchmetrics (they sync across processes under DDP); two-class tasks also
    get ``positive_rate``, the share of answers of class 1: a pruned model drifting to one class shows there first."""
    from torchmetrics import MeanMetric, MetricCollection
    from torchmetrics.classification import BinaryF1Score, MatthewsCorrCoef, MulticlassAccuracy
    from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

    class PositiveRate(MeanMetric):
        def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:  # type: ignore[override]
            super().update((predictions == 1).float())

    factories = {
        "accuracy": lambda: MulticlassAccuracy(num_classes=spec.num_labels, average="micro"),
        "f1": lambda: BinaryF1Score(),
        "matthews_correlation": lambda: MatthewsCorrCoef(task="binary"),
        "pearson": lambda: PearsonCorrCoef(),
        "spearman": lambda: SpearmanCorrCoef(),
    }
    metrics = {name: factories[name]() for name in spec.metrics}
    if spec.num_labels == 2 and not spec.is_regression:
        metrics["positive_rate"] = PositiveRate()
    return MetricCollection(metrics)


def metric_inputs(spec: TaskSpec, predictions: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and labels in the dtype each metric kind expects."""
    if spec.is_regression:
        return predictions.float(), labels.float()
    return predictions.long(), labels.long()
