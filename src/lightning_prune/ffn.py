"""An FFN layer as adapters describe it and pruning cuts it: the block, and where its projections are."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class FFNLayer:
    """One feed-forward block: its neurons are the inputs of ``down`` (the outputs of each ``up``)."""

    name: str
    block: nn.Module
    up: tuple[str, ...]  # paths of the up (and gate) projections inside ``block``
    down: str  # path of the down projection inside ``block``
    side: str = "encoder"  # which token mask applies: "encoder" or "decoder"
    block_index: int = 0  # which transformer block, for restarting a pass at it (``PrunableModel.block_inputs``)

    @property
    def down_proj(self) -> nn.Linear:
        return self.block.get_submodule(self.down)

    @property
    def up_projs(self) -> list[nn.Linear]:
        return [self.block.get_submodule(path) for path in self.up]

    @property
    def size(self) -> int:
        return self.down_proj.in_features

    columns_per_unit = 1  # a neuron is one input column of the down projection
    unit_name = "neurons"

    @property
    def projections(self) -> tuple[str, ...]:
        return (*self.up, self.down)

    def per_unit(self, columns: Tensor) -> Tensor:
        """A per-column quantity is already per neuron (see ``AttentionLayer.per_unit``)."""
        return columns

    def columns(self, keep: Tensor) -> Tensor:
        """The down projection's input columns of neurons ``keep``: the same indices."""
        return keep
