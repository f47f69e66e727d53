"""Integrated-gradients attribution of the task's correct answer to each FFN neuron (Knowledge-Neurons style)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_prune.adapters.base import Batch, FFNLayer, PrunableModel, expand_batch
from lightning_prune.scorers.base import NeuronScorer

Aggregate = Literal["sum", "abs_sum"]


class AttributionScorer(NeuronScorer):
    """IG of p(correct answer) w.r.t. one layer's activations, zero baseline, ``steps`` midpoint-Riemann steps.

    For layer l with activations a (all tokens of a neuron scaled together by alpha), the attribution of
    neuron i is ``a_i * mean_k dp(alpha_k a)/da_i`` with ``alpha_k = (k - 0.5) / steps``, summed over tokens.
    One layer is scaled at a time (the other layers run unchanged), as in Knowledge Neurons. ``aggregate``
    combines examples: ``abs_sum`` (default: sum of per-example magnitudes, so a neuron that strongly
    pushes *against* the answer counts as important) or ``sum`` (signed sum: ranks such neurons lowest and
    prunes them first; on the stand-in model this collapsed SST-2 to chance at 10% sparsity, see README).
    ``steps_per_pass`` bounds memory: that many alpha steps of every example share one forward/backward pass.
    """

    needs_gradients = True
    needs_labels = True

    def __init__(self, steps: int = 20, aggregate: Aggregate = "abs_sum", steps_per_pass: int = 20) -> None:
        if steps < 1 or steps_per_pass < 1:
            raise ValueError("steps and steps_per_pass must be at least 1")
        if aggregate not in ("sum", "abs_sum"):
            raise ValueError(f"aggregate must be 'sum' or 'abs_sum', not {aggregate!r}")
        self.steps = steps
        self.aggregate = aggregate
        self.steps_per_pass = steps_per_pass

    def per_example(self, model: PrunableModel, batch: Batch, layer: FFNLayer) -> Tensor:
        """``[examples, neurons]`` attributions of one layer."""
        rows = batch["labels"].shape[0]
        alphas = (torch.arange(self.steps, dtype=torch.float32) + 0.5) / self.steps
        total = torch.zeros(rows, layer.size, device=batch["labels"].device)
        for chunk in alphas.split(self.steps_per_pass):
            expanded = expand_batch(batch, len(chunk))
            row_alpha = chunk.to(total.device).repeat(rows)
            captured: dict[str, Tensor] = {}

            def scale(_layer: FFNLayer, activations: Tensor, row_alpha=row_alpha, captured=captured) -> Tensor:
                original = activations.detach()
                shape = (-1,) + (1,) * (original.dim() - 1)
                scaled = (original * row_alpha.to(original.dtype).view(shape)).requires_grad_(True)
                captured["original"], captured["scaled"] = original, scaled
                return scaled

            with torch.enable_grad(), model.hook_activations([layer], scale):
                probability = model.target_log_prob(expanded, expanded["labels"]).exp()
                (gradient,) = torch.autograd.grad(probability.sum(), captured["scaled"])
            token_sum = (gradient * captured["original"]).float().sum(dim=1)  # [rows * chunk, neurons]
            total += token_sum.view(rows, len(chunk), -1).sum(1)
        return total / self.steps

    def __call__(self, model: PrunableModel, batch: Batch | None) -> list[Tensor]:
        assert batch is not None
        scores = []
        for layer in model.ffn_layers():
            attributions = self.per_example(model, batch, layer)
            scores.append((attributions.abs() if self.aggregate == "abs_sum" else attributions).sum(0))
        return scores
