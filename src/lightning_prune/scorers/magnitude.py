"""Weight magnitude: the L2 norm of all weights that enter and leave a neuron."""

from __future__ import annotations

from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel
from lightning_prune.scorers.base import NeuronScorer


class MagnitudeScorer(NeuronScorer):
    """Data-free: ``sqrt(sum_up ||W_up[i, :]||^2 + ||W_down[:, i]||^2)`` per neuron i."""

    needs_data = False

    def __call__(self, model: PrunableModel, batch: Batch | None = None) -> list[Tensor]:
        scores = []
        for layer in model.ffn_layers():
            squared = layer.down_proj.weight.detach().float().pow(2).sum(0)
            for up in layer.up_projs:
                squared = squared + up.weight.detach().float().pow(2).sum(1)
            scores.append(squared.sqrt())
        return scores
