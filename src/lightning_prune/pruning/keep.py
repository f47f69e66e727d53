"""The pruning policy: which neurons (and head groups) to keep, given their scores and a sparsity or a FLOP
budget. What one budget keeps is a ``Cut``; cutting it out is ``slicing``'s job, not this module's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lightning_prune.errors import UsageError

if TYPE_CHECKING:
    from lightning_prune.vocabulary.cut import VocabularyCut

Scope = Literal["layer", "global"]


@dataclass(frozen=True)
class Cut:
    """The units one budget keeps: neurons per FFN layer and, where heads go, head groups per attention layer."""

    sparsity: float  # the FFN sparsity asked for, or the one a FLOP target reached
    kept: list[Tensor]
    kept_heads: list[Tensor] | None = None
    target_speedup: float | None = None  # the FLOP budget the cut was chosen for
    vocabulary: VocabularyCut | None = None  # the task's tokens (``--vocabulary task``)

    @property
    def label(self) -> str:
        """How the cut is named: its sparsity, or its FLOP target (``1.6x``)."""
        return f"{self.sparsity:g}" if self.target_speedup is None else f"{self.target_speedup:g}x"

    def achieved_sparsity(self, widths: list[int]) -> float:
        """The share of the FFN neurons (of layers ``widths`` wide) removed: below ``sparsity`` where ``min_keep``
        kept more."""
        return 1.0 - sum(len(k) for k in self.kept) / sum(widths)


def _top(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` highest scores, ties broken by lower index, returned sorted."""
    order = torch.sort(-scores.double(), stable=True).indices
    return order[:count].sort().values


def rounded_width(count: int, size: int, multiple: int, min_keep: int = 1) -> int:
    """``count`` kept neurons of a layer of ``size`` rounded down to a multiple of ``multiple``, or up to the
    smallest multiple at or above ``min_keep`` (at most ``size``) where rounding down would go below it."""
    rounded = count // multiple * multiple
    floor = min(max(min_keep, 1), size)
    return rounded if rounded >= floor else min(size, math.ceil(floor / multiple) * multiple)


def round_widths(scores: list[Tensor], kept: list[Tensor], multiple: int, min_keep: int = 1) -> list[Tensor]:
    """Each layer's kept neurons cut down to a multiple of ``multiple`` (its lowest-scored kept ones go): matrix
    kernels run faster on such widths. A layer that would fall below ``min_keep`` keeps the smallest multiple
    above it instead (at most all its neurons)."""
    if multiple == 1:
        return kept
    rounded = []
    for layer_scores, layer_kept in zip(scores, kept, strict=True):
        count = rounded_width(len(layer_kept), layer_scores.numel(), multiple, min_keep)
        if count <= len(layer_kept):
            rounded.append(layer_kept[_top(layer_scores[layer_kept], count)])
        else:  # grown to the multiple: the best of the whole layer (a superset of the kept ones)
            rounded.append(_top(layer_scores, count))
    return rounded


def keep_neurons(scores: list[Tensor], sparsity: float, scope: Scope = "layer", min_keep: int = 1) -> list[Tensor]:
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


def keep_for_flops(
    scores: list[Tensor],
    costs: list[float],
    remove: float,
    scope: Scope,
    floors: list[int],
    kinds: list[str],
) -> list[Tensor] | None:
    """Kept unit indices per layer (FFN layers and attention layers alike) removing at least ``remove`` FLOPs,
    each unit of layer i costing ``costs[i]``; None if the floors (units each layer keeps at least) leave too
    little to remove.

    ``global``: units go in order of score per FLOP, lowest first, wherever they are (Kwon et al. 2022 rank heads
    and neurons together by importance per cost). ``layer``: every layer of a kind loses the same share, FFN layers
    the same fraction of neurons and attention layers the same number of head groups; of the head counts that meet
    the budget, the one keeping the highest total score wins.
    """
    sizes = [s.numel() for s in scores]
    if sum((n - f) * c for n, f, c in zip(sizes, floors, costs, strict=True)) < remove:
        return None
    if scope == "global":
        ratio = torch.cat([s.double() / max(c, 1e-30) for s, c in zip(scores, costs, strict=True)])
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        order = torch.sort(ratio, stable=True).indices
        removed, left = [0] * len(scores), remove
        for layer in owner[order].tolist():  # within a layer the cost is one: the lowest scores go first
            if left <= 0:
                break
            if sizes[layer] - removed[layer] > floors[layer]:
                removed[layer] += 1
                left -= costs[layer]
        return [_top(s, n - r) for s, n, r in zip(scores, sizes, removed, strict=True)]
    heads = [i for i, kind in enumerate(kinds) if kind == "attention"]
    ffn = [i for i, kind in enumerate(kinds) if kind != "attention"]
    ffn_flops = sum(sizes[i] * costs[i] for i in ffn)
    best, best_value = None, -float("inf")
    most_heads = min((sizes[i] - floors[i] for i in heads), default=0)
    for drop in range(most_heads + 1):
        rest = remove - sum(drop * costs[i] for i in heads)
        fraction = min(max(rest, 0.0) / ffn_flops, 1.0) if ffn_flops else 0.0
        removed = [drop if i in heads else math.ceil(fraction * sizes[i] - 1e-9) for i in range(len(sizes))]
        if any(sizes[i] - removed[i] < floors[i] for i in range(len(sizes))):
            continue
        if sum(r * c for r, c in zip(removed, costs, strict=True)) < remove * (1 - 1e-9):
            continue
        kept = [_top(s, n - r) for s, n, r in zip(scores, sizes, removed, strict=True)]
        value = sum(float(s.double()[k].sum()) for s, k in zip(scores, kept, strict=True))
        if value > best_value:
            best, best_value = kept, value
    return best
