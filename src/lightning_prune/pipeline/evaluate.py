"""Measuring the task: the metrics of the model as it is, on the evaluation (or any) examples, and the dense
model's before anything is cut (``DenseResult``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from lightning import LightningDataModule, Trainer

from lightning_prune.data import TaskDataModule
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.setup import RunSetup, flop_batches
from lightning_prune.pruning.budget import count_flops


def test_metrics(trainer: Trainer, model: TaskModel, data: LightningDataModule) -> dict[str, float]:
    """The task's metrics on ``data``'s test examples (a ``TaskDataModule``'s evaluation examples, or an
    ``ExampleSet``), synced across processes."""
    results = trainer.test(model, datamodule=data, verbose=False)
    return {name: float(value) for name, value in results[0].items()}


@dataclass(frozen=True)
class DenseResult:
    """The model before pruning: its size, and its metrics where the run measures them."""

    parameters: int
    neurons: dict[str, int]  # per FFN layer
    metrics: dict[str, float] | None  # on the evaluation examples (``evaluate_dense``)
    selection_metrics: dict[str, float] | None  # on the selection examples (``max_drop``)
    flops: float | None  # on the FLOP-count batches (``target_speedup``)
    evaluate_seconds: float | None
    selection_seconds: float | None


def evaluate_dense(trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, setup: RunSetup) -> DenseResult:
    """The dense model's size and, as the settings ask, its metrics on the evaluation and selection examples."""
    metrics = selection_metrics = evaluate_seconds = selection_seconds = None
    if setup.settings.evaluate_dense:
        start = time.perf_counter()
        metrics = test_metrics(trainer, model, datamodule)
        evaluate_seconds = time.perf_counter() - start
    if setup.selection is not None:
        start = time.perf_counter()
        selection_metrics = test_metrics(trainer, model, datamodule.serving(setup.selection))
        selection_seconds = time.perf_counter() - start
    flops = setup.costs.total if setup.costs is not None else None
    return DenseResult(
        model.net.num_parameters(), model.ffn_sizes(), metrics, selection_metrics, flops, evaluate_seconds,
        selection_seconds,
    )  # fmt: skip


def measured_flops(model: TaskModel, setup: RunSetup, batch_size: int) -> float | None:
    """FLOPs of the model as it is on the FLOP-count examples (``target_speedup`` runs; None otherwise)."""
    if setup.costs is None:
        return None
    return count_flops(model.net, flop_batches(model, setup.flop_examples, batch_size))
