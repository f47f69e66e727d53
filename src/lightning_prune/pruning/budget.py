"""A speed budget: what each prunable unit costs on the task's inputs, counted in FLOPs.

``--target_speedup X`` asks for a model needing X times fewer FLOPs than the dense one on the task's inputs. The
dense and pruned totals are counted by ``torch.utils.flop_counter`` over real batches (attention run eagerly for
the count, so its matmuls are seen); what one FFN neuron or head group costs in each layer is derived from the
shapes those batches give each layer (``unit_costs``), and ``tests/test_heads.py`` checks that removing units
lowers the counted total by exactly their cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.attention import AttentionLayer

if TYPE_CHECKING:
    from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer


@contextlib.contextmanager
def eager_attention(model: PrunableModel) -> Iterator[None]:
    """Attention as plain matmuls (which the FLOP counter sees; fused kernels are not counted on CPU)."""
    configs = {id(m.config): m.config for m in model.weights_module.modules() if hasattr(m, "config")}
    before = {key: getattr(config, "_attn_implementation", None) for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


def count_flops(model: PrunableModel, batches: list[Batch]) -> float:
    """FLOPs of answering ``batches`` (``model.predict``: what evaluation and deployment run)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), eager_attention(model), counter:
        for batch in batches:
            model.predict(batch)
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class UnitCosts:
    """FLOPs of answering the counted batches: in total, and per unit of each layer (``model.unit_layers``)."""

    total: float
    per_unit: list[float]
    sizes: list[int]


def unit_costs(model: PrunableModel, batches: list[Batch], layers: list[UnitLayer]) -> UnitCosts:
    """What one unit of each of ``layers`` costs on ``batches``: an FFN neuron its up/gate row and down column
    for every token row the layer sees; a head group its query, key, value rows and output columns, and its
    attention scores and weighted sum over the keys (self-attention: as many as queries)."""
    rows: dict[str, int] = {}
    keys: dict[str, int] = {}

    def record(layer: UnitLayer, activations: Tensor) -> Tensor:
        rows[layer.name] = rows.get(layer.name, 0) + activations.shape[:-1].numel()
        keys[layer.name] = keys.get(layer.name, 0) + activations.shape[:-1].numel() * activations.shape[-2]
        return activations

    with model.hook_activations(layers, record):  # shapes only: the count is the model's alone
        total = count_flops(model, batches)
    per_unit = []
    for layer in layers:
        hidden = layer.down_proj.out_features
        if isinstance(layer, AttentionLayer):
            width, head_dim = layer.columns_per_unit, layer.head_dim
            linear = 2 * hidden * (2 * width + 2 * head_dim)  # query and output: the group's heads; key, value: one
            per_unit.append(rows.get(layer.name, 0) * linear + 4 * width * keys.get(layer.name, 0))
        else:
            up = sum(projection.in_features for projection in layer.up_projs)
            per_unit.append(2.0 * rows.get(layer.name, 0) * (up + hidden))
    return UnitCosts(total, per_unit, [layer.size for layer in layers])
