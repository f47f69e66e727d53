"""Structured Wanda: the LLM-pruning baseline, per FFN neuron ``||W_down[:, i]||_2 * ||a_i||_2``."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer
from lightning_prune.scorers.base import UnitScorer


class WandaScorer(UnitScorer):
    """Wanda (Sun et al. 2024, "weights and activations") made structured: a neuron's weight is its
    down-projection column, its activation the L2 norm over every real token of the task's examples.

    Scores are the squares, ``||W_down[:, i]||^2 * sum_tokens a_i^2``: they add up over batches and
    processes as the scorer contract requires, and rank neurons exactly as the product of norms does.
    Like the activation scorer, it reads labels only for the tokens the answer adds (decoders). A head group
    scores the sum over its columns of the output projection (its weight) and its output (its activation).
    Under refit-aware scoring a neuron's activation is its residual, so the score is the output energy the refit
    cannot restore, ``||W_down[:, i]||^2 * sum_tokens e_i^2``: about the optimal brain surgeon's criterion.
    """

    needs_labels = True
    scores_residuals = True

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        assert batch is not None
        squares: dict[str, Tensor] = {}

        def record(layer: UnitLayer, activations: Tensor) -> Tensor:
            mask = model.token_mask(batch, layer.side, batch["labels"]).to(activations.dtype).unsqueeze(-1)
            weighed = self.weighed_activations(layer, activations).float()
            squares[layer.name] = (weighed.pow(2) * mask).sum((0, 1))
            return activations

        with torch.no_grad(), model.hook_activations(layers, record):
            model.target_log_prob(batch, batch["labels"])
        return [
            layer.per_unit(layer.down_proj.weight.detach().float().pow(2).sum(0) * squares[layer.name])
            for layer in layers
        ]
