"""lightning-prune: task-specific FFN-neuron pruning of multi-task language models, without training."""

from importlib.metadata import version

from lightning_prune.adapters import PrunableModel, load_model
from lightning_prune.errors import UsageError
from lightning_prune.tasks import TASKS, get_task

__version__ = version("lightning-prune")


def load_pruned_model(path: str, task: str, labels: list[str] | None = None, max_length: int = 128) -> PrunableModel:
    """Load a model saved by ``lightning-prune fit-free`` (its ``model/`` folder) for ``task``
    (with ``labels`` for a single-sentence task outside GLUE).

    The result is a ``torch.nn.Module``: ``predict(batch)`` answers, ``collate(examples)`` makes batches,
    and ``weights_module`` is the underlying Hugging Face model at its pruned shapes.
    """
    return load_model(path, get_task(task, labels), max_length)


__all__ = ["TASKS", "PrunableModel", "UsageError", "__version__", "get_task", "load_model", "load_pruned_model"]
