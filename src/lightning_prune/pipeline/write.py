"""Writing a run's output folder whole or not at all: scores, the models to save, sweep reports, the resolved
config and ``metrics.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import save_file

from lightning_prune.adapters.base import SAVE_DTYPES
from lightning_prune.export import save_model_folder
from lightning_prune.io import atomic_directory, write_errors_reported, write_json
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.report import write_sweep_reports
from lightning_prune.pipeline.summary import Outcome
from lightning_prune.pruning import pruned

SCORES_FILE = "scores.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


def write_run(trainer: Trainer, model: TaskModel, outcome: Outcome, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the output folder (rank 0 only); return ``summary`` with how each model was saved and the seconds
    saving took, as ``metrics.json`` holds it."""
    start = time.perf_counter()
    settings, choice = outcome.setup.settings, outcome.choice
    with (
        write_errors_reported("output_dir", settings.output_dir),
        atomic_directory(
            Path(settings.output_dir), overwrite=settings.overwrite, protected=outcome.setup.inputs
        ) as tmp,
    ):
        _write_scores(tmp / SCORES_FILE, model, outcome)
        dtype = None if settings.save_dtype == "auto" else SAVE_DTYPES[settings.save_dtype]
        saved = {}
        for name, point in choice.to_save.items():
            with pruned(model.net, point.cut, outcome.statistics.repair):
                layout = save_model_folder(model.net, tmp / name, dtype, settings.pad_uneven_ffn)
            saved[name] = {"sparsity": point.cut.sparsity, "target_speedup": point.cut.target_speedup, **layout}
        if len(choice.points) > 1:
            metric = model.spec.primary_metric
            note = write_sweep_reports(tmp, choice, metric, outcome.dense, settings.max_drop)
            if note:
                rank_zero_warn(note)
        config_text = getattr(trainer, "resolved_config", None)
        if config_text:
            (tmp / CONFIG_FILE).write_text(config_text)
        seconds = {**summary["seconds"], "save": time.perf_counter() - start}
        final = {**summary, "seconds": seconds, "saved_models": saved}
        write_json(tmp / METRICS_FILE, final)
    return final


def _write_scores(path: Path, model: TaskModel, outcome: Outcome) -> None:
    """The unit scores per layer, with what produced them in the file's metadata."""
    settings, scores = outcome.setup.settings, outcome.scores
    layers = model.net.unit_layers(settings.prunes_heads)
    save_file(
        {layer.name: score.contiguous() for layer, score in zip(layers, scores.layers, strict=True)},
        str(path),
        metadata={
            "task": model.spec.name,
            "scorer": settings.scorer,
            "labels": settings.labels,
            "scorer_options": json.dumps(settings.scorer_options or {}),
            "examples": str(scores.examples),
            "layers": json.dumps([layer.name for layer in layers]),
        },
    )
