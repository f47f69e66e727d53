"""The scorer contract: one small interface, in the spirit of Torch-Pruning's ``Importance``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel


class NeuronScorer(ABC):
    """Scores every FFN neuron of a model for its task; higher means more important (kept first).

    A data scorer (``needs_data``) is called once per batch and returns per-layer scores *summed over
    the batch's examples*; the scoring module adds batches and processes up, so scores must be additive.
    A data-free scorer is called once with ``batch=None``. ``batch["labels"]`` holds gold labels, or the
    model's own predictions when the run asks for pseudo-labels (only read if ``needs_labels``).
    """

    needs_data: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, model: PrunableModel, batch: Batch | None) -> list[Tensor]:
        """One float tensor per FFN layer (``model.ffn_layers()`` order), of shape ``[layer.size]``."""

    def check_memory(self, model: PrunableModel, heaviest_batch: Batch, available_bytes: int | None) -> None:
        """Raise ``UsageError`` if scoring ``heaviest_batch`` (the longest examples, a full batch) cannot fit in
        ``available_bytes`` (None: unknown). Called before any scoring; the default assumes it fits."""
        return
