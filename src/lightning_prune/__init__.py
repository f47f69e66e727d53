"""lightning-prune: task-specific FFN-neuron pruning of multi-task language models, without training.

The names below load on first use, so ``lightning-prune --help`` and ``scorers`` start without torch's
model stack."""

from importlib import import_module
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from lightning_prune.errors import UsageError

if TYPE_CHECKING:
    from lightning_prune.adapters import PrunableModel, load_model
    from lightning_prune.prompts import Prompt
    from lightning_prune.tasks import TASKS, get_task

__version__ = version("lightning-prune")
_LAZY = {"PrunableModel": "lightning_prune.adapters", "load_model": "lightning_prune.adapters"}
_LAZY.update(
    {"TASKS": "lightning_prune.tasks", "get_task": "lightning_prune.tasks", "Prompt": "lightning_prune.prompts"}
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")


def load_pruned_model(
    path: str,
    task: str,
    labels: list[str] | None = None,
    max_length: int | None = None,
    prompt: "Prompt | None" = None,
) -> "PrunableModel":
    """Load a model saved by ``lightning-prune fit-free`` (its ``model/`` folder) for ``task``
    (with ``labels`` for a single-sentence task outside GLUE: the saved ones by default; ``prompt`` for a
    decoder LM: by default the saved prompt and demonstrations, so it answers as it did when measured).

    The result is a ``torch.nn.Module``: ``predict(batch)`` answers, ``collate(examples)`` makes batches,
    and ``weights_module`` is the underlying Hugging Face model at its pruned shapes.
    """
    from pathlib import Path

    from lightning_prune.adapters import load_model, read_answer_settings
    from lightning_prune.tasks import get_task

    saved = read_answer_settings(Path(path)) if labels is None and Path(path).is_dir() else {}
    if saved.get("task") == task:
        labels = saved.get("labels")
    return load_model(path, get_task(task, labels), max_length, prompt)


__all__ = [
    "TASKS",
    "Prompt",
    "PrunableModel",
    "UsageError",
    "__version__",
    "get_task",
    "load_model",
    "load_pruned_model",
]
