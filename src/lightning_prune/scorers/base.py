"""The scorer contract: one small interface, in the spirit of Torch-Pruning's ``Importance``."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer

if TYPE_CHECKING:
    from typing_extensions import Self


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
    scores_heads: ClassVar[bool] = False  # True: ``score_units`` also scores attention head groups (``UnitScorer``)
    # True: the scorer weighs each unit by ``weighed_activations`` (refit-aware scoring can apply)
    scores_residuals: ClassVar[bool] = False
    # Under refit-aware scoring (``with_residuals``): per FFN layer name, the map from activations to what the
    # least-squares refit cannot restore of them (``lightning_prune.pruning.Residual``).
    residuals: Mapping[str, Callable[[Tensor], Tensor]] | None = None

    @abstractmethod
    def __call__(self, model: PrunableModel, batch: Batch | None) -> list[Tensor]:
        """One float tensor per FFN layer (``model.ffn_layers()`` order), of shape ``[layer.size]``."""

    def check_memory(self, model: PrunableModel, heaviest_batch: Batch, available_bytes: int | None) -> None:
        """Raise ``UsageError`` if scoring ``heaviest_batch`` (the longest examples, a full batch) cannot fit in
        ``available_bytes`` (None: unknown). Called before any scoring; the default assumes it fits."""
        return

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        """One float tensor per layer of ``layers`` (FFN layers, then attention layers), of shape ``[layer.size]``:
        neuron scores, and head-group scores. Only scorers with ``scores_heads`` are asked (``UnitScorer``)."""
        raise NotImplementedError(f"{type(self).__name__} scores FFN neurons only")

    def with_residuals(self, residuals: Mapping[str, Callable[[Tensor], Tensor]]) -> Self:
        """A copy of this scorer that weighs neurons by ``residuals`` (refit-aware scoring); this one is unchanged."""
        scorer = copy.copy(self)
        scorer.residuals = residuals
        return scorer

    def weighed_activations(self, layer: UnitLayer, activations: Tensor) -> Tensor:
        """The activations a unit is weighed by (not those the model computes with): as they are, or under
        refit-aware scoring each neuron's residual, the part of its activation that the least-squares refit of
        the layer cannot predict from the other neurons. A neuron the others predict well then scores low: the
        refit restores most of what removing it changes."""
        if self.residuals is None or layer.name not in self.residuals:
            return activations
        return self.residuals[layer.name](activations).to(activations.dtype)


class UnitScorer(NeuronScorer):
    """A scorer of any prunable unit: FFN neurons and attention head groups, from one pass where it can.

    Both kinds are the input columns of a down projection (the FFN's down projection; the attention's output
    projection, where a head group owns ``columns_per_unit`` columns), so a scorer written over a layer's
    ``down_proj``, its inputs (``PrunableModel.hook_activations``) and ``layer.per_unit`` scores both.
    A plugin scores heads by subclassing this class and implementing ``score_units``; a plain ``NeuronScorer``
    keeps working for FFN-only pruning.
    """

    scores_heads: ClassVar[bool] = True

    @abstractmethod
    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        """See ``NeuronScorer.score_units``."""

    def __call__(self, model: PrunableModel, batch: Batch | None) -> list[Tensor]:
        return self.score_units(model, batch, model.ffn_layers())
