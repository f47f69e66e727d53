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
from lightning_prune.pipeline.sweep import MODEL_DIR
from lightning_prune.pruning import pruned

SCORES_FILE = "scores.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
GGUF_FILE = "model.gguf"


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
        if settings.export_gguf is not None and MODEL_DIR in saved:
            saved[MODEL_DIR]["gguf"] = _export_gguf(tmp, model, outcome)
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


def _export_gguf(folder: Path, model: TaskModel, outcome: Outcome) -> dict[str, Any]:
    """``model/`` as ``model.gguf``, the tokenizer copied from the input GGUF where there is one and the vocabulary
    was not cut (else converted from the saved ``tokenizer.json``)."""
    from lightning_prune.export.gguf import export_gguf
    from lightning_prune.sources import gguf_input

    source = gguf_input(model.hparams.path) if outcome.setup.vocabulary is None else None
    report = export_gguf(folder / MODEL_DIR, folder / GGUF_FILE, outcome.setup.settings.export_gguf, source)
    return {"file": GGUF_FILE, "architecture": report.architecture, "dtype": report.dtype, "bytes": report.file_bytes}
