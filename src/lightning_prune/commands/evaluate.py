"""``lightning-prune evaluate``: a saved (dense or pruned) model's metrics on a task or a TSV file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.data import TaskDataModule
from lightning_prune.io import write_json
from lightning_prune.modules import TaskModel


def test_metrics(trainer: Trainer, model: TaskModel, datamodule: TaskDataModule) -> dict[str, float]:
    """The task's metrics on the evaluation examples (synced across processes)."""
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in results[0].items()}


def evaluate(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, output_file: str | None = None
) -> dict[str, Any]:
    """Evaluate the model on the task's evaluation examples.

    Args:
        output_file: also write the result as JSON to this file.
    """
    summary = {
        "task": model.spec.name,
        "model": model.hparams.path,
        "eval_source": datamodule.hparams.eval_file or f"{datamodule.hparams.eval_split} split",
        "metrics": test_metrics(trainer, model, datamodule),
        "parameters": model.net.num_parameters(),
        "ffn_neurons": model.ffn_sizes(),
    }
    if trainer.is_global_zero:
        if output_file is not None:
            write_json(Path(output_file), summary)
        rank_zero_info(json.dumps(summary["metrics"]))
    return summary
