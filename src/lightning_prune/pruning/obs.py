"""Which neurons the least-squares refit stands in for best: a removal order by greedy structured optimal brain
surgeon (as ZipLM), guided by the task's scores.

Removing neuron j of a layer whose down projection W the refit then re-solves from the activations' second moment
leaves ``||W[:, j]||² / P_jj`` of output energy (P: the damped precision, the second moment's inverse): what the
other neurons cannot predict of j, through W. Refit-aware Wanda ranks neurons by exactly this, once, for every
neuron alone. Removing several, each removal changes what is left: the greedy order removes the cheapest neuron,
updates W (the refit of the others) and P (the precision of the others) in closed form, and repeats, so neurons
that stand in for each other are not all removed at once.

The task decides what a unit of output energy is worth: each neuron's energy is weighed by its score over its
energy before any removal (``prior``), so with refit-aware attribution scores (the task's gradient times the
residual) a neuron the task needs stays however little energy it has, and as removals change what the refit leaves
of it, its weight follows. With Wanda's refit-aware scores the weight is one: plain greedy OBS.
"""

from __future__ import annotations

import torch
from torch import Tensor


def removal_order(weight: Tensor, precision: Tensor, prior: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` neurons to remove, in order, and what each removal cost, from a down projection
    ``weight`` [out, n] with ``precision`` [n, n] of its inputs and a ``prior`` score per neuron (float64 throughout:
    the updates subtract large terms)."""
    w = weight.detach().to("cpu", torch.float64).clone()  # where the statistics are
    inverse = precision.to("cpu", torch.float64).clone()
    energy = w.pow(2).sum(0) / inverse.diagonal()
    value = prior.to("cpu", torch.float64).clamp(min=0) / energy.clamp(min=1e-30)  # the task's worth of its energy
    # neurons the task gives no worth go first, and among them the least energy first (not in index order)
    value = value.clamp(min=float(value.max()) * 1e-9 if bool((value > 0).any()) else 1.0)
    alive = torch.ones(w.shape[1], dtype=torch.bool)
    order, costs = [], []
    for _ in range(count):
        cost = value * w.pow(2).sum(0) / inverse.diagonal().clamp(min=1e-30)
        cost[~alive] = torch.inf
        j = int(torch.argmin(cost))
        costs.append(float(cost[j]))
        row = inverse[j].clone()
        w.addr_(w[:, j].clone(), row, alpha=-1.0 / float(row[j]))  # the others' refit without j
        inverse.addr_(inverse[:, j].clone(), row, alpha=-1.0 / float(row[j]))  # the others' precision without j
        alive[j] = False
        order.append(j)
    return torch.tensor(order, dtype=torch.long), torch.tensor(costs, dtype=torch.float64)


def kept_after(orders: list[Tensor], sizes: list[int], removed: list[int]) -> list[Tensor]:
    """Each layer's kept neurons (sorted) once the first ``removed[i]`` of its ``orders[i]`` are gone."""
    kept = []
    for order, size, count in zip(orders, sizes, removed, strict=True):
        alive = torch.ones(size, dtype=torch.bool)
        alive[order[:count]] = False
        kept.append(alive.nonzero().squeeze(1))
    return kept


def global_removals(costs: list[Tensor], total: int) -> list[int]:
    """How many of each layer's removals a global budget of ``total`` takes: the cheapest next removal anywhere,
    each layer's costs made non-decreasing (a removal comes after those before it in its layer's order)."""
    envelopes = [torch.cummax(c, 0).values if len(c) else c for c in costs]
    owners = torch.cat([torch.full((len(c),), i) for i, c in enumerate(envelopes)])
    order = torch.sort(torch.cat(envelopes), stable=True).indices[:total]
    return torch.bincount(owners[order], minlength=len(costs)).tolist()
