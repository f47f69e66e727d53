"""Fisher-information neuron importance (Kwon et al. 2022) as a lightning-prune scorer plugin."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune.adapters import Batch, PrunableModel, UnitLayer
from lightning_prune.scorers import UnitScorer

__all__ = ["FisherScorer"]


class FisherScorer(UnitScorer):
    """``I_i = sum over examples of (dL/dm_i)^2`` for a mask m = 1 on every FFN neuron and attention head group
    (Kwon et al. 2022 mask both), L = -log p(answer).

    Each example gets its own mask copy, so one backward pass yields every per-example gradient. A head group's
    mask multiplies all of its output columns.
    """

    needs_gradients = True
    needs_labels = True
    scores_residuals = True

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        assert batch is not None
        rows = batch["labels"].shape[0]
        masks: dict[str, Tensor] = {}

        def apply_mask(layer: UnitLayer, activations: Tensor) -> Tensor:
            shape = (rows,) + (1,) * (activations.dim() - 2) + (layer.size,)
            mask = torch.ones(shape, dtype=activations.dtype, device=activations.device, requires_grad=True)
            masks[layer.name] = mask
            # a + (m - 1) e: at m = 1 the model is unchanged and dL/dm sums the gradient times the weighed
            # activations e (the activations themselves, or under refit-aware scoring their residuals)
            with torch.no_grad():
                weighed = self.weighed_activations(layer, activations)
            return activations + (mask.repeat_interleave(layer.columns_per_unit, dim=-1) - 1) * weighed

        with torch.enable_grad(), model.hook_activations(layers, apply_mask):
            loss = -model.target_log_prob(batch, batch["labels"])
            gradients = torch.autograd.grad(loss.sum(), [masks[layer.name] for layer in layers])
        return [g.reshape(rows, -1).float().pow(2).sum(0) for g in gradients]
