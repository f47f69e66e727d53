"""Repairing what a cut changed, without training: closed-form refits of each FFN layer's down projection (and,
when heads go, each attention layer's output projection, whose inputs are the heads' outputs) from activation
statistics of forward passes (no labels, no optimizer step).

- ``bias`` (bias compensation, as in FLAP): every removed neuron is replaced by its mean activation, folded
  into the down projection's bias; the kept weights stay. Only where the down projection has a bias
  (encoders); elsewhere (T5, decoder LMs) it is a plain cut.
- ``least_squares`` (as K-prune and SlimGPT refit the kept units): the kept neurons' down-projection columns
  (and the bias, where there is one) are refitted to reproduce the dense layer's output on the calibration
  tokens, ``min E||W'_K a_K + b' - (W a + b)||² + λ||W'_K - W_K||²``, whose solution needs only the activations'
  mean and second moment. With ``a_R`` the removed neurons and ``S`` the second moment (centred where there is
  a bias), ``W'_K = W_K + W_R S_RK (S_KK + λI)⁻¹``; the damping λ (a fraction of ``S_KK``'s mean diagonal)
  pulls the refit toward the plain cut where the statistics say little.

Statistics count every *content* token once: real tokens that are not special tokens ([CLS], [SEP], ...).
Special tokens are excluded because some FFN neurons fire 10-100x harder on them than on any word (on the
committed MiniLM model: up to 11.8 vs at most 1.1 on words) and they make up a large share of short texts'
tokens: statistics over all tokens would add that special-token spike to every word of a long text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_prune.adapters.base import Batch, PrunableModel, UnitLayer

RepairMethod = Literal["none", "bias", "least_squares"]  # what a run applies
Reconstruct = Literal["auto", "none", "bias", "least_squares"]  # what a user asks for (``--reconstruct``)
DEFAULT_DAMPING = 0.01
GRAM_DTYPE = torch.float32


class ActivationStatistics:
    """Per-layer sums of content-token FFN activations, their count and (``second_moments``) the sums of their
    outer products, added up over batches and processes. Sums and counts are float64; the ``d_ff²`` outer-product
    sums are float32 (``GRAM_DTYPE``): half the memory (Llama-7B: 15.5 GB instead of 31), and each batch's
    products are summed in float32 anyway. Their relative error over half a million tokens stays near 1e-6
    (tests/test_pruning.py), four orders below the damping that regularises the solve."""

    def __init__(self, layers: list[UnitLayer], second_moments: bool = False) -> None:
        self.names = [layer.name for layer in layers]
        widths = [layer.down_proj.in_features for layer in layers]
        self.sums = [torch.zeros(width, dtype=torch.float64) for width in widths]
        self.grams = [torch.zeros(width, width, dtype=GRAM_DTYPE) for width in widths] if second_moments else None
        self.tokens = torch.zeros(len(layers), dtype=torch.float64)
        self.examples = torch.zeros(1, dtype=torch.float64)  # what the statistics saw (a Trainer limit may cut it)

    @staticmethod
    def bytes_needed(layers: list[UnitLayer], second_moments: bool) -> int:
        """Memory the statistics take (the second moments dominate: d_ff² float32 per FFN layer)."""
        gram_bytes = torch.finfo(GRAM_DTYPE).bits // 8
        widths = [layer.down_proj.in_features for layer in layers]
        return sum(8 * width + (gram_bytes * width**2 if second_moments else 0) for width in widths)

    def update(self, model: PrunableModel, batch: Batch) -> None:
        """Add one batch's content-token activations (one forward pass, no gradients)."""
        index = {name: i for i, name in enumerate(self.names)}
        layers = [layer for layer in model.unit_layers(heads=True) if layer.name in index]

        def record(layer: UnitLayer, activations: Tensor) -> Tensor:
            i = index[layer.name]
            mask = model.content_mask(batch, layer.side, batch["labels"]).to(activations.device)
            tokens = activations.detach()[mask].float()
            self.sums[i] += tokens.double().sum(0).cpu()
            if self.grams is not None:
                with torch.autocast(tokens.device.type, enabled=False):  # float32 even under mixed precision
                    self.grams[i] += (tokens.T @ tokens).to("cpu", GRAM_DTYPE)
            self.tokens[i] += float(mask.sum())
            return activations

        with torch.no_grad(), model.hook_activations(layers, record):
            model.target_log_prob(batch, batch["labels"])
        self.examples += batch["labels"].shape[0]

    def reduce(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Replace every sum by ``reduce`` of it (under DDP: its sum over all processes): the means' sums and the
        token counts as one float64 tensor, then each layer's second-moment sum on its own (no copy of them all)."""
        sizes = [s.numel() for s in self.sums]
        flat = reduce(torch.cat([*self.sums, self.tokens, self.examples])).cpu()
        *sums, tokens, examples = torch.split(flat, [*sizes, self.tokens.numel(), 1])
        self.sums, self.tokens, self.examples = list(sums), tokens, examples
        if self.grams is not None:
            self.grams = [reduce(gram).cpu() for gram in self.grams]

    def means(self) -> list[Tensor]:
        """Mean activation per neuron and layer (zero for a layer that saw no content token)."""
        return [s / max(float(n), 1.0) for s, n in zip(self.sums, self.tokens, strict=True)]

    def repair(self, method: RepairMethod, damping: float = DEFAULT_DAMPING) -> Repair | None:
        """How to repair the cut with these statistics (None: a plain cut). The second-moment sums are shared,
        not copied: each layer's is normalised when its refit is solved."""
        if method == "none":
            return None
        tokens = self.tokens if self.grams is not None else None
        return Repair(method, self.means(), self.grams, damping, tokens)


def activation_statistics(
    model: PrunableModel, batches: list[Batch], second_moments: bool = False, heads: bool = False
) -> ActivationStatistics:
    """Content-token activation statistics of every FFN neuron (and with ``heads`` every head output) over
    ``batches`` (outside Lightning)."""
    statistics = ActivationStatistics(model.unit_layers(heads), second_moments)
    for batch in batches:
        statistics.update(model, batch)
    return statistics


@dataclass
class Repair:
    """A repair method and the per-layer statistics it needs: for ``least_squares`` the ``second_moments``
    ``E[a aᵀ]`` — or their sums over ``tokens`` content tokens per layer, so that statistics need no normalised
    copy — in any float dtype (each layer's is solved in float64)."""

    method: Literal["bias", "least_squares"]
    means: list[Tensor]
    second_moments: list[Tensor] | None = None
    damping: float = DEFAULT_DAMPING
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.method == "least_squares" and self.second_moments is None:
            raise ValueError("least_squares reconstruction needs the activations' second moments")

    def applies_to(self, layer: UnitLayer) -> bool:
        """Bias compensation needs a down bias to fold into; least squares refits any layer."""
        return self.method == "least_squares" or layer.down_proj.bias is not None

    def down_projection(self, index: int, layer: UnitLayer, keep: Tensor) -> tuple[Tensor, Tensor | None]:
        """The repaired down projection of layer ``index`` for its input columns ``keep`` (an FFN layer's neurons,
        an attention layer's kept heads' columns): (weight ``[out, kept]``, bias)."""
        down = layer.down_proj
        weight = down.weight.detach().double()
        bias = down.bias.detach().double() if down.bias is not None else None
        mean = self.means[index].to(weight.device)
        if mean.shape != (down.in_features,):
            raise ValueError(f"{layer.name}: statistics of {tuple(mean.shape)} columns for {down.in_features}")
        kept = keep.to(weight.device).long()
        removed = torch.ones(down.in_features, dtype=torch.bool, device=weight.device)
        removed[kept] = False
        w_kept, w_removed = weight[:, kept], weight[:, removed]
        if self.method == "bias":
            return w_kept, None if bias is None else bias + w_removed @ mean[removed]
        moment = self._moment(index, weight.device, centred=bias is not None)
        kk, rk = moment[kept][:, kept], moment[removed][:, kept]
        damping = self.damping * float(kk.diagonal().mean().clamp(min=1e-12))
        system = kk + damping * torch.eye(len(kept), dtype=kk.dtype, device=kk.device)
        correction = torch.linalg.solve(system, (w_removed @ rk).T).T  # W_R S_RK (S_KK + λI)⁻¹
        refit = w_kept + correction
        if bias is None:
            return refit, None
        return refit, bias + w_removed @ mean[removed] - correction @ mean[kept]

    def _moment(self, index: int, device: torch.device, centred: bool) -> Tensor:
        """Layer ``index``'s float64 second moment ``E[a aᵀ]``, centred (its covariance) where a bias absorbs the
        means."""
        assert self.second_moments is not None
        moment = self.second_moments[index].to(device, torch.float64)
        if self.tokens is not None:
            moment = moment / max(float(self.tokens[index]), 1.0)
        if centred:
            mean = self.means[index].to(device, torch.float64)
            moment = moment - torch.outer(mean, mean)
        return moment

    def residuals(self, layers: list[UnitLayer]) -> Residuals:
        """Refit-aware scoring's view of the FFN ``layers`` (the first statistics): per layer name, what the
        least-squares refit cannot restore of each neuron's activation (``Residual``)."""
        if self.method != "least_squares":
            raise ValueError("residuals come from the least_squares refit's second moments")
        return Residuals(self, layers)

    def precision(self, index: int, layer: UnitLayer) -> Tensor:
        """Layer ``index``'s float64 precision: the inverse of its second moment (centred where a bias absorbs the
        means), damped by the refit's fraction (of the whole layer's mean second moment here; the refit takes the
        kept neurons')."""
        moment = self._moment(index, torch.device("cpu"), centred=layer.down_proj.bias is not None)
        damping = self.damping * float(moment.diagonal().mean().clamp(min=1e-12))
        return torch.linalg.inv(moment + damping * torch.eye(len(moment), dtype=moment.dtype))

    def residual(self, index: int, layer: UnitLayer) -> Residual:
        """Layer ``index``'s ``Residual``: one float64 inversion of its second moment (``precision``)."""
        precision = self.precision(index, layer)
        transform = (precision / precision.diagonal()).to(torch.float32)  # column j over P_jj
        centred = layer.down_proj.bias is not None
        return Residual(transform, self.means[index].float() if centred else None)


class Residuals(Mapping[str, "Residual"]):
    """Per FFN layer name, its ``Residual``, each computed when first used: scores served from the cache never
    need them."""

    def __init__(self, repair: Repair, layers: list[UnitLayer]) -> None:
        self._repair = repair
        self._layers = {layer.name: (index, layer) for index, layer in enumerate(layers)}
        self._computed: dict[str, Residual] = {}

    def __getitem__(self, name: str) -> Residual:
        if name not in self._computed:
            self._computed[name] = self._repair.residual(*self._layers[name])
        return self._computed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)


@dataclass
class Residual:
    """What the least-squares refit cannot restore of each neuron's activation were that neuron removed and the
    rest kept: the activation minus its damped least-squares prediction from the layer's other neurons (and a
    constant, where a bias absorbs the means). With ``P`` the inverse of the damped second moment (covariance
    where centred) it is ``(a - μ) P_{:,j} / P_jj`` for every neuron j at once (the precision matrix's regression
    identity), so scorers apply one ``[d_ff, d_ff]`` matrix per layer to their activations."""

    transform: Tensor
    mean: Tensor | None = None

    def __call__(self, activations: Tensor) -> Tensor:
        """The residuals of ``activations`` ``[..., d_ff]``, in float32 on their device (where the map then stays)."""
        values = activations.float()
        if self.transform.device != values.device:
            self.transform = self.transform.to(values.device)
            self.mean = None if self.mean is None else self.mean.to(values.device)
        if self.mean is not None:
            values = values - self.mean
        with torch.autocast(values.device.type, enabled=False):  # a small difference of large values: float32
            return values @ self.transform
