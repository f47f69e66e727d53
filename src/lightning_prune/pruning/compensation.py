"""What a removed neuron is replaced by: its mean activation over the content tokens of the scoring data.

``slice_ffn`` folds these means into the down projection's bias (bias compensation). The means count
every *content* token once: real tokens that are not special tokens ([CLS], [SEP], ...). Special tokens
are excluded because some FFN neurons fire 10-100x harder on them than on any word (on the committed
MiniLM model: up to 11.8 vs at most 1.1 on words) and they make up a large share of short texts' tokens
(16% of 128 SST-2 training sentences, 2% of long reviews): a mean over all tokens would add that
special-token spike to every word of a long text. Weighting tokens, not examples, matches what the layer
sees on long inputs, where most tokens are words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_prune.adapters.base import Batch, FFNLayer, PrunableModel


class ActivationMeans:
    """Per-neuron sums of FFN activations and content-token counts, added up over batches (and processes)."""

    def __init__(self, layers: list[FFNLayer]) -> None:
        self.sums = [torch.zeros(layer.size, dtype=torch.float64) for layer in layers]
        self.tokens = torch.zeros(len(layers), dtype=torch.float64)

    def update(self, model: PrunableModel, batch: Batch) -> None:
        """Add one batch's content-token activations (one forward pass, no gradients)."""
        layers = model.ffn_layers()
        index = {layer.name: i for i, layer in enumerate(layers)}

        def record(layer: FFNLayer, activations: Tensor) -> Tensor:
            i = index[layer.name]
            mask = model.content_mask(batch, layer.side, batch["labels"]).to(activations.device)
            self.sums[i] += activations.detach()[mask].double().sum(0).cpu()
            self.tokens[i] += float(mask.sum())
            return activations

        with torch.no_grad(), model.hook_activations(layers, record):
            model.target_log_prob(batch, batch["labels"])

    def flat(self) -> Tensor:
        """Sums and counts in one tensor (for one all-reduce); ``from_flat`` reads it back."""
        return torch.cat([*self.sums, self.tokens])

    def from_flat(self, flat: Tensor) -> None:
        *sums, tokens = torch.split(flat.cpu(), [*(s.numel() for s in self.sums), self.tokens.numel()])
        self.sums, self.tokens = list(sums), tokens

    def means(self) -> list[Tensor]:
        """Mean activation per neuron and layer (zero for a layer that saw no content token)."""
        return [s / max(float(n), 1.0) for s, n in zip(self.sums, self.tokens, strict=True)]


def activation_means(model: PrunableModel, batches: list[Batch]) -> list[Tensor]:
    """Mean content-token activation of every FFN neuron over ``batches`` (outside Lightning)."""
    accumulator = ActivationMeans(model.ffn_layers())
    for batch in batches:
        accumulator.update(model, batch)
    return accumulator.means()
