"""The cuts of a run (one per swept sparsity or FLOP target), each applied to the dense model, measured and undone;
then the choice among them (``--max_drop``) and which models are saved."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.adapters import PrunableModel
from lightning_prune.attention import AttentionLayer
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.evaluate import DenseResult, measured_flops, test_metrics
from lightning_prune.pipeline.score import Scores
from lightning_prune.pipeline.settings import FitFreeSettings
from lightning_prune.pipeline.setup import RunSetup, unit_floors
from lightning_prune.pruning import Cut, Repair, keep_neurons, pruned
from lightning_prune.pruning.budget import UnitCosts
from lightning_prune.pruning.keep import keep_for_flops, round_widths, rounded_width
from lightning_prune.pruning.obs import global_removals, kept_after, removal_order

MODEL_DIR = "model"


@dataclass(frozen=True)
class SweepPoint:
    """One cut and what it measured: the pruned model's size and its metrics on the evaluation (and selection)
    examples, its FLOPs (``target_speedup`` runs)."""

    cut: Cut
    parameters: int
    metrics: dict[str, float]
    selection_metrics: dict[str, float] | None = None
    flops: float | None = None
    within_drop: bool | None = None  # set by the ``max_drop`` choice


@dataclass(frozen=True)
class Sweep:
    """Every point of a run, lowest sparsity (or FLOP target) first, and the seconds its steps took in all."""

    points: list[SweepPoint]
    select_seconds: float
    prune_seconds: float
    evaluate_seconds: float
    selection_seconds: float | None


def plan_cuts(net: PrunableModel, setup: RunSetup, scores: Scores, repair: Repair | None = None) -> list[Cut]:
    """The cut of every point: one per swept sparsity, or one per FLOP target (heads and neurons by score per FLOP,
    or the same share in every layer); each with the run's vocabulary cut, if any. ``keep_rule obs``: the
    sparsities' cuts follow the refit's removal order (``repair``)."""
    if setup.settings.keep_rule == "obs":
        assert repair is not None
        cuts = _obs_cuts(net, setup.settings, scores, repair)
    else:
        cuts = _unit_cuts(net, setup.settings, scores, setup.costs)
    return [replace(cut, vocabulary=setup.vocabulary) for cut in cuts]


def _obs_cuts(net: PrunableModel, settings: FitFreeSettings, scores: Scores, repair: Repair) -> list[Cut]:
    """One greedy removal order per FFN layer (``pruning.obs``), as deep as the highest sparsity needs (with
    ``global`` scope, down to each layer's floor), cut at each sparsity: per layer, or the cheapest removals
    model-wide."""
    layers = net.ffn_layers()
    sizes = [layer.size for layer in layers]
    floors = [min(settings.min_keep, n) for n in sizes]
    keep = [
        [max(f, round((1.0 - value) * n)) for n, f in zip(sizes, floors, strict=True)] for value in settings.sparsities
    ]
    fewest = [  # per layer, at the highest sparsity, its width rounded
        rounded_width(min(column), n, settings.width_multiple, settings.min_keep)
        for n, column in zip(sizes, zip(*keep, strict=True), strict=True)
    ]
    global_scope = settings.scope == "global"
    deepest = [n - (f if global_scope else k) for n, f, k in zip(sizes, floors, fewest, strict=True)]
    found = [
        removal_order(layer.down_proj.weight, repair.precision(i, layer), score, count)
        for i, (layer, score, count) in enumerate(zip(layers, scores.layers, deepest, strict=True))
    ]
    orders, costs = [order for order, _ in found], [cost for _, cost in found]
    cuts = []
    for value, kept_per_layer in zip(settings.sparsities, keep, strict=True):
        if global_scope:
            total = sum(sizes) - max(sum(floors), round((1.0 - value) * sum(sizes)))
            removed = global_removals(costs, total)
        else:
            removed = [n - k for n, k in zip(sizes, kept_per_layer, strict=True)]
        # widths rounded along each layer's removal order (fewer or more of its removals), not by score
        removed = [
            n - rounded_width(n - r, n, settings.width_multiple, settings.min_keep)
            for n, r in zip(sizes, removed, strict=True)
        ]
        cuts.append(Cut(value, kept_after(orders, sizes, removed)))
    return cuts


def _unit_cuts(net: PrunableModel, settings: FitFreeSettings, scores: Scores, costs: UnitCosts | None) -> list[Cut]:
    ffn_count = len(net.ffn_layers())
    ffn_scores = scores.layers[:ffn_count]

    def rounded(kept):
        return round_widths(ffn_scores, kept, settings.width_multiple, settings.min_keep)

    if costs is None:
        return [
            Cut(value, rounded(keep_neurons(ffn_scores, value, settings.scope, settings.min_keep)))
            for value in settings.sparsities
        ]
    layers = net.unit_layers(settings.prunes_heads)
    kinds = ["attention" if isinstance(layer, AttentionLayer) else "ffn" for layer in layers]
    floors = unit_floors(net, settings)
    cuts = []
    for target in settings.targets:
        remove = costs.total * (1.0 - 1.0 / target)
        kept = keep_for_flops(scores.layers, costs.per_unit, remove, settings.scope, floors, kinds)
        if kept is None:
            raise UsageError(
                f"target_speedup {target:g} cannot be met with {settings.scope} scope (every layer losing the same "
                "share): try --scope global or a lower target"
            )
        ffn, heads = rounded(kept[:ffn_count]), kept[ffn_count:]
        achieved = 1.0 - sum(len(k) for k in ffn) / sum(costs.sizes[:ffn_count])
        cuts.append(Cut(achieved, ffn, heads if settings.prunes_heads else None, target))
    return cuts


def measure_cuts(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    setup: RunSetup,
    scores: Scores,
    repair: Repair | None,
) -> Sweep:
    """Prune the dense model at each cut (repaired by ``repair``), evaluate it (and on the selection examples, for
    ``max_drop``), and put it back: every point prunes the same dense model, without reloading it."""
    metric = model.spec.primary_metric
    points, seconds = [], {"prune": 0.0, "evaluate": 0.0, "selection": 0.0}
    start = time.perf_counter()
    cuts = plan_cuts(model.net, setup, scores, repair)  # which units go: with keep_rule obs, its removal orders
    select_seconds = time.perf_counter() - start
    for cut in cuts:
        start = time.perf_counter()
        with pruned(model.net, cut, repair):
            seconds["prune"] += time.perf_counter() - start
            start = time.perf_counter()
            metrics = test_metrics(trainer, model, datamodule)
            seconds["evaluate"] += time.perf_counter() - start
            start = time.perf_counter()
            selected = test_metrics(trainer, model, datamodule.serving(setup.selection)) if setup.selection else None
            seconds["selection"] += time.perf_counter() - start
            flops = measured_flops(model, setup, datamodule.hparams.batch_size)
            point = SweepPoint(cut, model.net.num_parameters(), metrics, selected, flops)
        points.append(point)
        if setup.settings.points > 1:
            rank_zero_info(_progress_line(point, metric))
    selection = seconds["selection"] if setup.selection is not None else None
    return Sweep(points, select_seconds, seconds["prune"], seconds["evaluate"], selection)


def _progress_line(point: SweepPoint, metric: str) -> str:
    """What a sweep prints after each point."""
    cut = point.cut
    selected = f", selection {point.selection_metrics[metric]:.4f}" if point.selection_metrics else ""
    if cut.target_speedup is not None:
        where = f"target {cut.target_speedup:g}x (FFN sparsity {cut.sparsity:.3f})"
    else:
        where = f"sparsity {cut.sparsity:g}"
    return f"{where}: {metric} {point.metrics[metric]:.4f}{selected}"


@dataclass(frozen=True)
class Choice:
    """The point the run ends with (its one point, or the ``max_drop`` choice of a sweep; None: no choice) and the
    models it saves, by folder name; the points with their ``within_drop`` marks."""

    chosen: SweepPoint | None
    to_save: dict[str, SweepPoint]
    points: list[SweepPoint]


def choose_models(setup: RunSetup, dense: DenseResult, sweep: Sweep, metric: str) -> Choice:
    """The chosen point and the models to write: ``max_drop`` takes the most pruned point (points come lowest first)
    whose selection metric is at most ``max_drop`` below the dense model's."""
    settings, points = setup.settings, sweep.points
    chosen = points[0] if len(points) == 1 else None
    if settings.max_drop is not None:
        assert dense.selection_metrics is not None
        dense_metric, tolerated = dense.selection_metrics[metric], settings.max_drop + 1e-12
        points = [replace(p, within_drop=dense_metric - p.selection_metrics[metric] <= tolerated) for p in points]  # type: ignore[index]
        chosen = next((p for p in reversed(points) if p.within_drop), None)
    to_save = {MODEL_DIR: chosen} if chosen is not None and settings.save_models != "none" else {}
    if settings.save_models == "all" and len(points) > 1:
        to_save.update({f"{MODEL_DIR}-{point.cut.label}": point for point in points})
    return Choice(chosen, to_save, points)
