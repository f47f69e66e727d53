"""Weight magnitude: the L2 norm of all weights that enter and leave a neuron (or a head group)."""

from __future__ import annotations

from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer
from lightning_prune.attention import AttentionLayer
from lightning_prune.scorers.base import UnitScorer


class MagnitudeScorer(UnitScorer):
    """Data-free: ``sqrt(sum_up ||W_up[i, :]||^2 + ||W_down[:, i]||^2)`` per neuron i; for a head group, its rows
    of the query, key and value projections and its columns of the output projection."""

    needs_data = False

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        scores = []
        for layer in layers:
            squared = layer.down_proj.weight.detach().float().pow(2).sum(0)
            if isinstance(layer, AttentionLayer):
                squared = layer.per_unit(squared + _rows(layer.block.get_submodule(layer.query)))
                for path in (layer.key, layer.value):
                    squared = squared + _rows(layer.block.get_submodule(path)).view(layer.size, -1).sum(1)
            else:
                for up in layer.up_projs:
                    squared = squared + _rows(up)
            scores.append(squared.sqrt())
        return scores


def _rows(linear) -> Tensor:
    """Squared L2 norm of each output row of ``linear``."""
    return linear.weight.detach().float().pow(2).sum(1)
