"""Low-level slicing: rebuild an FFN layer's Linear modules with only the kept neurons, an attention layer's with
only the kept head groups.

No policy here: callers decide what to keep (``selection``) and where it is recorded (``plan``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_prune.attention import AttentionLayer

if TYPE_CHECKING:
    from lightning_prune.ffn import FFNLayer


def _linear_like(linear: nn.Linear, weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A new Linear holding ``weight`` and ``bias``, on ``linear``'s device and dtype, frozen like ``linear``."""
    out_features, in_features = weight.shape
    rebuilt = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        rebuilt.weight.copy_(weight)
        if bias is not None:
            rebuilt.bias.copy_(bias)
    for parameter in rebuilt.parameters():
        parameter.requires_grad_(linear.weight.requires_grad)
    return rebuilt


def _sliced_linear(linear: nn.Linear, keep: Tensor, dim: int) -> nn.Linear:
    """A new Linear holding the rows (dim 0: outputs) or columns (dim 1: inputs) ``keep`` of ``linear``."""
    keep = keep.to(linear.weight.device)
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, keep)
    return _linear_like(linear, linear.weight.detach().index_select(dim, keep), bias)


def _set_down(layer: FFNLayer | AttentionLayer, columns: Tensor, down: tuple[Tensor, Tensor | None] | None) -> None:
    """Replace the down (output) projection by its ``columns``, or by the repaired ``down`` (weight, bias)."""
    old_down = layer.down_proj
    if down is None:
        layer.block.set_submodule(layer.down, _sliced_linear(old_down, columns, dim=1))
        return
    weight, bias = down
    if weight.shape != (old_down.out_features, columns.numel()):
        raise ValueError(
            f"{layer.name}: repaired down projection of shape {tuple(weight.shape)} for {columns.numel()} columns"
        )
    bias = bias if bias is not None else (old_down.bias.detach() if old_down.bias is not None else None)
    dtype = old_down.weight.dtype
    layer.block.set_submodule(
        layer.down, _linear_like(old_down, weight.to(dtype), None if bias is None else bias.to(dtype))
    )


def slice_ffn(layer: FFNLayer, keep: Tensor, down: tuple[Tensor, Tensor | None] | None = None) -> None:
    """Keep neurons ``keep`` (sorted indices) of ``layer``: rows of up/gate projections, columns of down.

    ``down``: the repaired down projection for the kept neurons (weight ``[out, kept]`` and bias, from
    ``reconstruction``) instead of the plain cut's sliced columns. The shapes stay those of a plain cut, and the
    original modules are left untouched (``restore_units`` relies on it).
    """
    keep = keep.long()
    if keep.numel() == 0:
        raise ValueError(f"refusing to remove every neuron of {layer.name}")
    for path in layer.up:
        layer.block.set_submodule(path, _sliced_linear(layer.block.get_submodule(path), keep, dim=0))
    _set_down(layer, keep, down)


def slice_heads(layer: AttentionLayer, keep: Tensor, down: tuple[Tensor, Tensor | None] | None = None) -> None:
    """Keep head groups ``keep`` (sorted indices) of ``layer``: their rows of the query, key and value projections
    and their columns of the output projection (or the repaired ``down``, as in ``slice_ffn``). The attention code
    infers the head count from the projections' widths; the original modules are left untouched."""
    keep = keep.long()
    if keep.numel() == 0:
        raise ValueError(f"refusing to remove every head of {layer.name}")
    columns, key_value_rows = layer.columns(keep), layer.key_value_rows(keep)
    for path, rows in ((layer.query, columns), (layer.key, key_value_rows), (layer.value, key_value_rows)):
        layer.block.set_submodule(path, _sliced_linear(layer.block.get_submodule(path), rows, dim=0))
    _set_down(layer, columns, down)


def slice_units(
    layer: FFNLayer | AttentionLayer, keep: Tensor, down: tuple[Tensor, Tensor | None] | None = None
) -> None:
    """``slice_heads`` for an attention layer, ``slice_ffn`` for an FFN layer."""
    (slice_heads if isinstance(layer, AttentionLayer) else slice_ffn)(layer, keep, down)


def _padded_linear(linear: nn.Linear, extra: int, dim: int) -> nn.Linear:
    """A new Linear with ``extra`` all-zero rows (dim 0: outputs, and zero bias) or columns (dim 1: inputs)."""
    weight = linear.weight.detach()
    zeros = weight.new_zeros((extra, weight.shape[1]) if dim == 0 else (weight.shape[0], extra))
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and dim == 0:
        bias = torch.cat([bias, bias.new_zeros(extra)])
    return _linear_like(linear, torch.cat([weight, zeros], dim=dim), bias)


def pad_ffn(layer: FFNLayer, width: int) -> None:
    """Grow ``layer`` to ``width`` neurons by appending all-zero ones: zero rows of the up/gate projections and
    zero columns of the down projection, so its output is exactly unchanged (used to save uneven widths in a
    form plain Hugging Face loading accepts)."""
    extra = width - layer.size
    if extra <= 0:
        return
    for path in layer.up:
        layer.block.set_submodule(path, _padded_linear(layer.block.get_submodule(path), extra, dim=0))
    layer.block.set_submodule(layer.down, _padded_linear(layer.down_proj, extra, dim=1))


def pad_heads(layer: AttentionLayer, groups: int) -> None:
    """Grow ``layer`` to ``groups`` head groups by appending all-zero ones (zero query, key and value rows and
    biases, zero output columns): a zero head attends uniformly to zero values and adds nothing, so the output is
    exactly unchanged (saving uneven head counts in a form plain Hugging Face loading accepts)."""
    extra = groups - layer.size
    if extra <= 0:
        return
    for path, per_group in (
        (layer.query, layer.columns_per_unit), (layer.key, layer.head_dim), (layer.value, layer.head_dim)
    ):  # fmt: skip
        layer.block.set_submodule(path, _padded_linear(layer.block.get_submodule(path), extra * per_group, dim=0))
    layer.block.set_submodule(layer.down, _padded_linear(layer.down_proj, extra * layer.columns_per_unit, dim=1))
