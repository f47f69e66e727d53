"""Random scores: the baseline every informed scorer must beat."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer
from lightning_prune.scorers.base import UnitScorer


class RandomScorer(UnitScorer):
    """Data-free, seeded: the same seed gives the same scores on every process and machine (and the same FFN
    scores whether heads are scored too: they are drawn after the neurons)."""

    needs_data = False

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer from 0 to 2**64 - 1 (torch's seed range), not {seed!r}")
        self.seed = seed

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return [torch.rand(layer.size, generator=generator) for layer in layers]
