"""``lightning-prune evaluate``: a saved (dense or pruned) model's metrics on a task or a TSV file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.io import (
    check_output_location,
    check_renameable,
    check_writable,
    write_errors_reported,
    write_json,
)
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.check import user_inputs
from lightning_prune.pipeline.evaluate import test_metrics

RESULT_FORMAT = "lightning-prune/evaluation"  # marks a result file evaluate wrote: only such a file is overwritten


MAX_RESULT_BYTES = 1 << 24  # an evaluation result is a few kB: a larger file is not one


def _is_result_file(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == RESULT_FORMAT
    except (OSError, ValueError, AttributeError):  # unreadable, not UTF-8, not JSON, not an object
        return False


def check_output_file(output_file: str, overwrite: bool, inputs: dict[str, Path | str | None]) -> None:
    """Refuse, before any work, an ``output_file`` that would change an input or a file evaluate did not write."""
    check_output_location(output_file, "output_file", inputs)
    path = Path(output_file).expanduser()
    if path.is_dir():
        raise UsageError(f"output_file {path} is a folder: give a file path such as runs/eval.json")
    if path.exists() and not path.is_file():  # reading a FIFO would hang, /dev/zero fill the memory
        raise UsageError(f"output_file {path} is not a regular file (a device, pipe or socket): give a file path")
    if path.exists():
        if not overwrite:
            raise UsageError(
                f"output_file {path} exists: choose another file, or pass --overwrite true to replace an earlier "
                "result of lightning-prune evaluate"
            )
        if not _is_result_file(path):
            raise UsageError(
                f"output_file {path} was not written by lightning-prune evaluate; --overwrite only replaces its "
                "result files: choose another file"
            )
    check_writable(path, "output_file", in_parent=True)
    check_renameable(path, "output_file")


def evaluate(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    output_file: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate the model on the task's evaluation examples.

    Args:
        output_file: also write the result as JSON to this file (never an input; an existing file only with
            ``overwrite``, and only if it is an earlier result of this command).
        overwrite: replace an ``output_file`` that holds an earlier result.
    """
    h = datamodule.hparams
    inputs = user_inputs(model.hparams.path, h.data_dir, h.score_file, h.eval_file, adapter=model.hparams.adapter)
    if output_file is not None:
        check_output_file(output_file, overwrite, inputs)
    summary = {
        "format": RESULT_FORMAT,
        "task": model.spec.name,
        "model": model.hparams.path,
        "adapter": model.hparams.adapter,
        "eval_source": datamodule.hparams.eval_file or f"{datamodule.hparams.eval_split} split",
        "metrics": test_metrics(trainer, model, datamodule),
        "parameters": model.net.num_parameters(),
        "ffn_neurons": model.ffn_sizes(),
    }
    if trainer.is_global_zero:
        if output_file is not None:
            with write_errors_reported("output_file", output_file):
                write_json(Path(output_file), summary, protected=inputs)
        rank_zero_info(json.dumps(summary["metrics"]))
    return summary
