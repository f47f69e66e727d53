"""An attention layer as adapters describe it and pruning cuts it: the block, where its projections are, and how
its heads are grouped.

The prunable unit is a *head group*: one key/value head and the query heads that share it (grouped-query
attention, as Llama 3, Qwen, SmolLM2); with plain multi-head attention (BERT) every group is one head. Removing
whole groups keeps every remaining key/value head shared by the same number of query heads, which is what the
attention code and a model's config can express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class AttentionLayer:
    """One self-attention block. Its units are head groups; the output projection ``down`` consumes them, each
    group as ``columns_per_unit`` consecutive input columns (its query heads' outputs)."""

    name: str
    block: nn.Module  # the transformer layer that holds the projections
    query: str
    key: str
    value: str
    down: str  # the output projection: the consumer of the heads, as ``FFNLayer.down`` is of the neurons
    head_dim: int
    queries_per_group: int  # query heads per key/value head (1 without grouped-query attention)
    side: str = "encoder"
    block_index: int = 0  # which transformer block, for restarting a pass at it (``PrunableModel.block_inputs``)

    unit_name = "head groups"

    @property
    def down_proj(self) -> nn.Linear:
        return self.block.get_submodule(self.down)

    @property
    def columns_per_unit(self) -> int:
        return self.head_dim * self.queries_per_group

    @property
    def size(self) -> int:
        """Head groups (key/value heads) the layer has now."""
        return self.down_proj.in_features // self.columns_per_unit

    @property
    def num_heads(self) -> int:
        """Query heads the layer has now."""
        return self.size * self.queries_per_group

    @property
    def projections(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value, self.down)

    def per_unit(self, columns: Tensor) -> Tensor:
        """Sum a per-column quantity (last dimension: the output projection's inputs) over each group's columns."""
        return columns.unflatten(-1, (self.size, self.columns_per_unit)).sum(-1)

    def columns(self, keep: Tensor) -> Tensor:
        """Rows of the query projection (= input columns of the output projection) of head groups ``keep``."""
        width = self.columns_per_unit
        return (keep.long().unsqueeze(1) * width + torch.arange(width, device=keep.device)).flatten()

    def key_value_rows(self, keep: Tensor) -> Tensor:
        """Rows of the key and value projections of head groups ``keep``."""
        return (keep.long().unsqueeze(1) * self.head_dim + torch.arange(self.head_dim, device=keep.device)).flatten()
