"""How GLUE scores a task: its metrics as torchmetrics (synced across processes under DDP)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and torchmetrics load lazily: ``--help`` and errors should not wait for them
    import torch
    from torchmetrics import MetricCollection

from lightning_prune.tasks.spec import TaskSpec


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
