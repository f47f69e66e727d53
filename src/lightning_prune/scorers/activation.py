"""Mean absolute activation of each FFN neuron over the task's tokens and examples."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer
from lightning_prune.scorers.base import UnitScorer


class ActivationScorer(UnitScorer):
    """Per example: mean |activation| over real tokens; summed over examples (ranks as the mean does). A head
    group's activation is the sum of its output's absolute values (its columns before the output projection).

    T5 decoder layers see the target answer's tokens (gold or pseudo label), as in the attribution scorer,
    so the scorer reads labels (shared encoders ignore them).
    """

    needs_labels = True
    scores_residuals = True

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        assert batch is not None
        sums: dict[str, Tensor] = {}

        def record(layer: UnitLayer, activations: Tensor) -> Tensor:
            mask = model.token_mask(batch, layer.side, batch["labels"]).to(activations.dtype).unsqueeze(-1)
            mean = (self.weighed_activations(layer, activations).abs() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            sums[layer.name] = layer.per_unit(mean.float().sum(0))
            return activations

        with torch.no_grad(), model.hook_activations(layers, record):
            model.target_log_prob(batch, batch["labels"])
        return [sums[layer.name] for layer in layers]
