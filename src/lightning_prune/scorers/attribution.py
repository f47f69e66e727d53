"""Integrated-gradients attribution of the task's correct answer to each FFN neuron (Knowledge-Neurons style) and
each attention head group (self-attention attribution, Hao et al. 2021: a gate on the heads' outputs)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_prune.adapters.base import Batch, BlockInput, PrunableModel, UnitLayer, expand_batch
from lightning_prune.attention import AttentionLayer
from lightning_prune.errors import UsageError
from lightning_prune.scorers.base import UnitScorer

Aggregate = Literal["auto", "sum", "abs_sum", "square_sum"]
Mode = Literal["exact", "joint"]
ExampleWeight = Literal["tokens", "uniform"]

# The midpoint rule's error falls as 1/steps^2: at 10,000 steps it is far below float32 rounding, while
# every step costs one forward/backward row per example and FFN layer.
MAX_STEPS = 10_000


class AttributionScorer(UnitScorer):
    """IG of p(correct answer) w.r.t. FFN activations, zero baseline, ``steps`` midpoint-Riemann steps.

    The attribution of neuron i with activations a (all tokens of a neuron scaled together by alpha) is
    ``a_i * mean_k dp(alpha_k a)/da_i`` with ``alpha_k = (k - 0.5) / steps``, summed over tokens. A head group's
    output (the attention output projection's inputs) is scaled the same way (Hao et al. 2021 gate attention
    weights; the output gate has the same path for the values, and needs no change to the attention code), and
    each of its columns is attributed as a neuron is; ``aggregate`` says how a group's columns and the examples
    combine into its score.

    ``mode="exact"`` (Knowledge Neurons, the paper): one layer is scaled at a time while the rest of the
    network runs unchanged — ``layers x steps`` forward/backward rows per example. Where the adapter can
    restart from a block (``reuse_prefix``), the blocks before the scaled layer run once, not per step.
    ``mode="joint"``: every layer's activations are scaled together, each held at its clean value times
    alpha, so one IG path covers all layers — ``steps`` rows per example in all. Both satisfy
    completeness (exact: per layer; joint: over all layers together), but they are different attributions.

    ``aggregate`` combines examples: ``abs_sum`` (sum of per-example magnitudes, so a neuron that strongly pushes
    *against* the answer counts as important), ``sum`` (signed sum: ranks such neurons lowest and prunes them first;
    see benchmarks/results/main_table.md for what that costs) or ``square_sum`` (per example, a unit's signed
    attribution, a head group's columns summed, squared: the group's own removal effect, in squares). ``auto``
    (default): ``abs_sum`` for FFN neurons alone, ``square_sum`` when head groups are scored with them. Units of
    different sizes compare alike only in squares: effects of independent signs add up in squares, so 100 neurons
    of effect e each remove about 10 e together, as much as one head of effect 10 e; summed as magnitudes the
    neurons looked worth ten such heads, and heads went first (MiniLM at ``--target_speedup 2``: 24-30 of 72 kept,
    MNLI 0.934 of dense; in squares 48-54, 1.017; docs/experiments.md, "Attention heads and speed budgets").
    ``example_weight`` says how much each example counts in that sum: ``tokens`` (default) in proportion
    to its own text's tokens (``example_tokens``: real, not special; on a decoder LM not the prompt template
    every example repeats), so every word of the scoring data weighs
    the same; ``uniform``: every example once. An example's attributions add up to at most 1
    (completeness: p(answer) minus its value at the baseline), whatever its length, so with uniform
    weights a two-word phrase outweighs each word of a long sentence twentyfold, and neurons that matter
    once many tokens interact are ranked by the short examples, which barely use them. Scored on SST-2's
    short training phrases, uniform weights removed neurons that long texts need (see
    benchmarks/results/unseen_domain.md).
    ``steps_per_pass`` bounds memory: that many alpha steps of every example share one pass.
    Under refit-aware scoring the path-averaged gradient multiplies each neuron's residual (what the refit cannot
    predict of its activation) instead of its activation: the first-order effect of removing it once the refit
    has put back what the other neurons predict.
    """

    needs_gradients = True
    needs_labels = True
    scores_residuals = True

    def __init__(
        self,
        steps: int = 20,
        aggregate: Aggregate = "auto",
        steps_per_pass: int = 20,
        mode: Mode = "exact",
        reuse_prefix: bool = True,
        example_weight: ExampleWeight = "tokens",
    ) -> None:
        for name, value in (("steps", steps), ("steps_per_pass", steps_per_pass)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if steps > MAX_STEPS:
            raise ValueError(
                f"steps {steps} is more than {MAX_STEPS:,}: the Riemann sum's error (falling as 1/steps^2) is far "
                "below float32 rounding long before that, and each step costs a forward/backward pass per layer"
            )
        if not isinstance(reuse_prefix, bool):
            raise ValueError(f"reuse_prefix must be true or false, not {reuse_prefix!r}")
        if aggregate not in ("auto", "sum", "abs_sum", "square_sum"):
            raise ValueError(f"aggregate must be 'auto', 'sum', 'abs_sum' or 'square_sum', not {aggregate!r}")
        if mode not in ("exact", "joint"):
            raise ValueError(f"mode must be 'exact' or 'joint', not {mode!r}")
        if example_weight not in ("tokens", "uniform"):
            raise ValueError(f"example_weight must be 'tokens' or 'uniform', not {example_weight!r}")
        self.steps = steps
        self.aggregate = aggregate
        self.steps_per_pass = steps_per_pass
        self.mode = mode
        self.reuse_prefix = reuse_prefix
        self.example_weight = example_weight

    def check_memory(self, model: PrunableModel, heaviest_batch: Batch, available_bytes: int | None) -> None:
        """Refuse settings whose one pass cannot fit: a pass holds batch x steps_per_pass rows, and the
        backward pass keeps at least the FFN activations (2 x neurons) and the block's input and output
        (2 x hidden) of every layer per token in float32 — a lower bound, so settings that fit pass."""
        if available_bytes is None:
            return
        examples, tokens = heaviest_batch["attention_mask"].shape
        rows = examples * min(self.steps, self.steps_per_pass)
        per_token = sum(2 * layer.size + 2 * layer.down_proj.out_features for layer in model.ffn_layers()) * 4
        needed = rows * tokens * per_token
        if needed > available_bytes:
            raise UsageError(
                f"attribution needs at least {needed / 2**30:.1f} GiB per pass ({rows:,} rows = {examples} examples "
                f"x {min(self.steps, self.steps_per_pass)} steps per pass, {tokens} tokens, activations of "
                f"{len(model.ffn_layers())} FFN layers kept for the backward pass) but {available_bytes / 2**30:.1f} "
                "GiB are available: lower steps_per_pass (memory grows with batch_size x steps_per_pass, not steps)"
            )

    def _alpha_chunks(self) -> tuple[Tensor, ...]:
        return ((torch.arange(self.steps, dtype=torch.float32) + 0.5) / self.steps).split(self.steps_per_pass)

    def per_example(
        self, model: PrunableModel, batch: Batch, layer: UnitLayer, block_inputs: list[BlockInput] | None = None
    ) -> Tensor:
        """``[examples, columns]`` exact-mode attributions of one layer (a neuron's column is the neuron); with
        ``block_inputs`` (from ``model.block_inputs``) the blocks before the layer are not recomputed."""
        layer_index = layer.block_index
        rows = batch["labels"].shape[0]
        total = torch.zeros(rows, layer.down_proj.in_features, device=batch["labels"].device)
        for chunk in self._alpha_chunks():
            expanded = expand_batch(batch, len(chunk))
            row_alpha = chunk.to(total.device).repeat(rows)
            captured: dict[str, Tensor] = {}

            def scale(_layer: UnitLayer, activations: Tensor, row_alpha=row_alpha, captured=captured) -> Tensor:
                original = activations.detach()
                shape = (-1,) + (1,) * (original.dim() - 1)
                scaled = (original * row_alpha.to(original.dtype).view(shape)).requires_grad_(True)
                captured["original"], captured["scaled"] = original, scaled
                return scaled

            with torch.enable_grad(), model.hook_activations([layer], scale):
                if block_inputs is None:
                    log_prob = model.target_log_prob(expanded, expanded["labels"])
                else:
                    start = block_inputs[layer_index].expand(len(chunk))
                    log_prob = model.target_log_prob_from(expanded, expanded["labels"], layer_index, start)
                (gradient,) = torch.autograd.grad(log_prob.exp().sum(), captured["scaled"])
            weighed = self.weighed_activations(layer, captured["original"])
            token_sum = (gradient * weighed).float().sum(dim=1)  # [rows * chunk, columns]
            total += token_sum.view(rows, len(chunk), -1).sum(1)
        return total / self.steps

    def joint_per_example(self, model: PrunableModel, batch: Batch, layers: list[UnitLayer]) -> list[Tensor]:
        """``[examples, columns]`` joint-mode attributions of ``layers``, from ``steps`` rows per example."""
        clean: dict[str, Tensor] = {}

        def record(layer: UnitLayer, activations: Tensor) -> Tensor:
            clean[layer.name] = activations.detach()
            return activations

        with torch.no_grad(), model.hook_activations(layers, record):
            model.target_log_prob(batch, batch["labels"])
        weighed = {layer.name: self.weighed_activations(layer, clean[layer.name]) for layer in layers}
        rows = batch["labels"].shape[0]
        totals = [torch.zeros(rows, layer.down_proj.in_features, device=batch["labels"].device) for layer in layers]
        for chunk in self._alpha_chunks():
            expanded = expand_batch(batch, len(chunk))
            row_alpha = chunk.to(batch["labels"].device).repeat(rows)
            leaves: dict[str, Tensor] = {}

            def replace(layer: UnitLayer, _activations: Tensor, row_alpha=row_alpha, leaves=leaves) -> Tensor:
                original = clean[layer.name].repeat_interleave(len(row_alpha) // rows, dim=0)
                shape = (-1,) + (1,) * (original.dim() - 1)
                leaves[layer.name] = (original * row_alpha.to(original.dtype).view(shape)).requires_grad_(True)
                return leaves[layer.name]

            with torch.enable_grad(), model.hook_activations(layers, replace):
                log_prob = model.target_log_prob(expanded, expanded["labels"])
                gradients = torch.autograd.grad(log_prob.exp().sum(), [leaves[layer.name] for layer in layers])
            for total, layer, gradient in zip(totals, layers, gradients, strict=True):
                factor = weighed[layer.name].repeat_interleave(len(chunk), dim=0)
                total += (gradient * factor).float().sum(dim=1).view(rows, len(chunk), -1).sum(1)
        return [total / self.steps for total in totals]

    def score_units(self, model: PrunableModel, batch: Batch | None, layers: list[UnitLayer]) -> list[Tensor]:
        assert batch is not None
        if self.mode == "joint":
            per_layer = self.joint_per_example(model, batch, layers)
        else:
            block_inputs = model.block_inputs(batch) if self.reuse_prefix else None
            per_layer = [self.per_example(model, batch, layer, block_inputs) for layer in layers]
        # One weight per example, its own text's tokens, for every layer: T5's decoder layers (which see only the
        # answer) must not weigh examples differently from the encoder's, or global scope would compare unlike
        # sums; a decoder LM's prompt template, which every example repeats, does not count.
        words = model.example_tokens(batch) if self.example_weight == "tokens" else None
        aggregate = self.aggregate
        if aggregate == "auto":
            aggregate = "square_sum" if any(isinstance(layer, AttentionLayer) for layer in layers) else "abs_sum"
        scores = []
        for layer, attributions in zip(layers, per_layer, strict=True):
            if aggregate == "abs_sum":
                attributions = attributions.abs()
            per_unit = layer.per_unit(attributions)  # a head group's columns summed per example
            if aggregate == "square_sum":
                per_unit = per_unit.square()
            if words is not None:
                per_unit = per_unit * words.to(per_unit.dtype).unsqueeze(1)
            scores.append(per_unit.sum(0))
        return scores
