"""``lightning-prune fit-free``: score -> prune -> evaluate dense and pruned -> save, without training.

The options are ``FitFreeSettings``'s fields (declared once, there): the keyword arguments below are forwarded to
it, and the LightningCLI reads them, their types, defaults and help from it."""

from __future__ import annotations

from typing import Any

from lightning import Trainer

from lightning_prune.data import TaskDataModule
from lightning_prune.errors import NothingChosen
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline import FitFreeSettings, run_fit_free


def fit_free(trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, **options: Any) -> dict[str, Any]:
    """Prune the task's least important FFN neurons and save the smaller model."""
    settings = FitFreeSettings(**options)
    summary = run_fit_free(trainer, model, datamodule, settings).summary
    if settings.max_drop is not None and summary["pruned_metrics"] is None:
        raise NothingChosen(f"no swept point is within max_drop {settings.max_drop:g}", summary)
    return summary
