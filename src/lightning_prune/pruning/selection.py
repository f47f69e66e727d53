"""The pruning policy: which neurons to keep, given their scores and a sparsity."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_prune.errors import UsageError

Scope = Literal["layer", "global"]


def _top(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` highest scores, ties broken by lower index, returned sorted."""
    order = torch.sort(-scores.double(), stable=True).indices
    return order[:count].sort().values


def select_neurons(scores: list[Tensor], sparsity: float, scope: Scope = "layer", min_keep: int = 1) -> list[Tensor]:
    """Kept neuron indices per layer.

    ``layer``: every layer loses the same fraction. ``global``: the lowest-scored neurons of the whole model
    go, wherever they are — only meaningful for scores comparable across layers. Either way each layer keeps
    at least ``min_keep`` neurons, so no layer is emptied.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"sparsity {sparsity} is outside [0, 1): give the fraction of FFN neurons to remove")
    if min_keep < 1:
        raise UsageError(f"min_keep {min_keep} must be at least 1 so that no FFN layer is emptied")
    if scope not in ("layer", "global"):
        raise UsageError(f"unknown pruning scope {scope!r}: use 'layer' or 'global'")
    if not scores:
        return []
    sizes = [s.numel() for s in scores]
    floors = [min(min_keep, n) for n in sizes]
    if scope == "layer":
        return [
            _top(s, max(floor, round((1.0 - sparsity) * n))) for s, n, floor in zip(scores, sizes, floors, strict=True)
        ]
    total_keep = max(sum(floors), round((1.0 - sparsity) * sum(sizes)))
    # Each layer's floor is kept first; the remaining budget goes to the best of the rest, model-wide.
    kept = [_top(s, floor) for s, floor in zip(scores, floors, strict=True)]
    rest_scores, rest_owner, rest_index = [], [], []
    for layer, (s, k) in enumerate(zip(scores, kept, strict=True)):
        mask = torch.ones(s.numel(), dtype=torch.bool)
        mask[k] = False
        idx = mask.nonzero().squeeze(1)
        rest_scores.append(s.double()[idx])
        rest_owner.append(torch.full_like(idx, layer))
        rest_index.append(idx)
    chosen = _top(torch.cat(rest_scores), total_keep - sum(floors))
    owners, indices = torch.cat(rest_owner)[chosen], torch.cat(rest_index)[chosen]
    return [torch.cat([k, indices[owners == layer]]).sort().values for layer, k in enumerate(kept)]
