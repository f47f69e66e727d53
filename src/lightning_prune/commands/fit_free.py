"""``lightning-prune fit-free``: score -> prune -> evaluate dense and pruned -> save, without training."""

from __future__ import annotations

import inspect
import json
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors.torch import save_file
from torch import Tensor

from lightning_prune.adapters.base import SAVE_DTYPES, Batch, PrunableModel
from lightning_prune.attention import AttentionLayer
from lightning_prune.cache import ScoreCache, cache_root, examples_fingerprint, score_key, score_request
from lightning_prune.commands.evaluate import test_metrics, user_inputs
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.export import save_model_folder
from lightning_prune.io import (
    atomic_directory,
    check_output_location,
    check_replaceable,
    check_writable,
    write_errors_reported,
    write_json,
)
from lightning_prune.modules import ActivationStatisticsModule, LabelSource, ScoringModule, TaskModel, score_batch
from lightning_prune.pruning import (
    ActivationStatistics,
    Reconstruct,
    Reconstruction,
    Repair,
    Scope,
    prune_model,
    restore_units,
    select_neurons,
    snapshot_units,
)
from lightning_prune.pruning.budget import UnitCosts, count_flops, unit_costs
from lightning_prune.pruning.reconstruction import DEFAULT_DAMPING
from lightning_prune.pruning.selection import round_widths, select_for_flops
from lightning_prune.scorers import NeuronScorer, create_scorer
from lightning_prune.sweep import SweepPoint, choose, swept_values, write_sweep_reports

SCORES_FILE = "scores.safetensors"
DEFAULT_SPARSITY = 0.5
FLOP_COUNT_EXAMPLES = 64  # evaluation examples whose FLOPs price the units for --target_speedup
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"


@dataclass(frozen=True)
class FitFreeSettings:
    """fit-free's own options (documented on ``fit_free``), as one value the checks and steps share."""

    scorer: str
    scorer_options: dict[str, Any] | None
    labels: LabelSource
    sparsity: float | list[float] | None
    target_speedup: float | list[float] | None
    heads: bool
    max_drop: float | None
    save_models: str
    scope: Scope
    min_keep: int
    width_multiple: int
    save_dtype: str
    pad_uneven_ffn: bool
    output_dir: str
    overwrite: bool
    evaluate_dense: bool
    cache_dir: str | None
    reuse_scores: bool
    checkpoint_every: int
    reconstruct: Reconstruct
    damping: float
    refit_aware: bool | None

    @classmethod
    def of(cls, options: Any) -> FitFreeSettings:
        """The settings held by a mapping (the parsed command line, or a function's ``locals()``)."""
        return cls(**{f.name: options[f.name] for f in fields(cls)})

    @classmethod
    def with_defaults(cls, **options: Any) -> FitFreeSettings:
        """The settings of a run given only ``options``: fit-free's defaults for the rest."""
        parameters = inspect.signature(fit_free).parameters.values()
        return cls.of({**{p.name: p.default for p in parameters if p.default is not p.empty}, **options})

    @property
    def sparsities(self) -> list[float]:
        """The FFN sparsities of a sparsity run (none for a ``target_speedup`` run)."""
        if self.target_speedup is not None:
            return []
        return swept_values(DEFAULT_SPARSITY if self.sparsity is None else self.sparsity)

    @property
    def targets(self) -> list[float]:
        """The FLOP budgets of a ``target_speedup`` run, lowest first (none for a sparsity run)."""
        return [] if self.target_speedup is None else swept_values(self.target_speedup)

    @property
    def points(self) -> int:
        """How many pruned models the run evaluates: one per sparsity or per target."""
        return len(self.targets or self.sparsities)

    @property
    def prunes_heads(self) -> bool:
        return self.target_speedup is not None and self.heads


def check_request(settings: FitFreeSettings, inputs: dict[str, Path | str | None] | None = None) -> NeuronScorer:
    """Reject bad settings and unusable outputs before any model or data is loaded; return the scorer.

    ``inputs`` (see ``user_inputs``): what the run reads; neither ``output_dir`` nor the score cache may be,
    lie inside or contain one of them (the cache may lie above them: it only adds files of its own).
    """
    s = settings
    if s.target_speedup is not None:
        _check_speedup_request(s)
    elif not s.sparsities:
        raise UsageError("sparsity is an empty list: give one fraction of FFN neurons to remove, or several")
    for value in s.sparsities or [0.0]:
        select_neurons([], value, s.scope, s.min_keep)  # validates sparsity, scope and min_keep
    if s.max_drop is not None and s.max_drop < 0:
        raise UsageError(f"max_drop {s.max_drop} is negative: give the largest tolerated metric drop, e.g. 0.01")
    scorer_impl = create_scorer(s.scorer, s.scorer_options)
    check_refit_aware(s, s.reconstruct, scorer_impl)  # "auto" is resolved, and checked again, with the model
    if s.prunes_heads and not scorer_impl.scores_heads:
        raise UsageError(
            f"scorer {s.scorer!r} scores FFN neurons only, and --target_speedup removes attention heads too: "
            "choose a scorer with head scores (attribution, fisher, wanda, activation, magnitude, random) or "
            "--heads false"
        )
    inputs = dict(inputs or {})
    cache = cache_root(s.cache_dir) if scorer_impl.needs_data else None
    check_output_location(s.output_dir, "output_dir", {**inputs, "the score cache": cache})
    check_replaceable(Path(s.output_dir), s.overwrite)
    check_writable(s.output_dir, "output_dir", in_parent=True)
    if cache is not None:
        check_output_location(cache, "cache_dir", inputs, may_contain_inputs=True)
        check_writable(cache, "cache_dir")
    return scorer_impl


def _check_speedup_request(s: FitFreeSettings) -> None:
    """FLOP budgets are targets above 1, instead of (not besides) FFN sparsities."""
    if s.sparsity is not None:
        raise UsageError(
            f"both sparsity ({s.sparsity}) and target_speedup ({s.target_speedup}) are given: sparsity removes FFN "
            "neurons only, target_speedup chooses heads and neurons for a FLOP budget; give one (a config's "
            "sparsity is dropped with --sparsity null)"
        )
    if not s.targets:
        raise UsageError("target_speedup is an empty list: give one FLOP budget, e.g. 1.6, or several")
    if not min(s.targets) > 1.0:
        raise UsageError(
            f"target_speedup {min(s.targets)} is not above 1: give how many times fewer FLOPs the pruned model "
            "should need, e.g. 1.6"
        )


def run_inputs(model: TaskModel, datamodule: TaskDataModule) -> dict[str, Path | str | None]:
    """What this run reads (``user_inputs``), from the model's and the data's settings."""
    h = datamodule.hparams
    return user_inputs(
        model.hparams.path, h.data_dir, h.score_file, h.eval_file, h.selection_file, model.hparams.adapter
    )


def available_memory(trainer: Trainer) -> int | None:
    """Bytes free on the device the scorer runs on (GPU: free device memory; CPU: MemAvailable), None if unknown."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def check_against_model(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings, scorer: NeuronScorer
) -> tuple[Repair, UnitCosts | None]:
    """What needs the loaded model, before any work: min_keep against the layers' widths, the scorer's memory
    for its heaviest batch and the reconstruction's statistics, every data source read once (the datamodule
    learns whether selection examples are in use, which the calibration draw avoids). Returns the
    reconstruction that applies to this model ("auto" resolved; "none" where bias compensation finds no down
    bias) and, for a ``target_speedup`` run, what each unit costs."""
    layers = model.net.ffn_layers()
    widest = max(layer.size for layer in layers)
    if max(settings.sparsities, default=1.0) > 0 and settings.min_keep >= widest:
        raise UsageError(
            f"min_keep {settings.min_keep} is at least the width of every FFN layer (the widest has {widest} "
            "neurons): nothing would be pruned; choose a smaller min_keep"
        )
    reconstruct = settings.reconstruct
    down_biases = any(layer.down_proj.bias is not None for layer in layers)
    if reconstruct == "auto":
        reconstruct = "bias" if down_biases else "least_squares"
    elif reconstruct == "bias" and not down_biases:
        reconstruct = "none"  # bias compensation folds into down biases: T5 and decoder LMs are cut plainly
    check_refit_aware(settings, reconstruct, scorer)
    if scorer.needs_data:
        scorer.check_memory(model.net, datamodule.heaviest_score_batch(model.net), available_memory(trainer))
    if settings.prunes_heads and model.net.head_pruning_unsupported:
        raise UsageError(
            f"{model.net.architecture} models cannot lose attention heads: {model.net.head_pruning_unsupported}; "
            "use --target_speedup with --heads false, or --sparsity"
        )
    costs = speedup_costs(model, datamodule, settings) if settings.target_speedup is not None else None
    if reconstruct == "least_squares":
        unit_layers = model.net.unit_layers(settings.prunes_heads)
        needed, free = ActivationStatistics.bytes_needed(unit_layers, True), available_memory(trainer)
        refit = refit_aware_scoring(settings, reconstruct, scorer)
        if refit:  # one d_ff² residual map per FFN layer besides
            needed += ActivationStatistics.bytes_needed(layers, True)
        if free is not None and needed > free // 2:
            raise UsageError(
                f"least_squares reconstruction needs {needed / 2**30:.1f} GiB of activation statistics "
                + ("and residual maps " if refit else "")
                + f"(d_ff² per layer) and {free / 2**30:.1f} GiB are free: use --reconstruct bias or none"
                + (", or --refit_aware false" if refit else "")
            )
    datamodule.selection_in_use = settings.max_drop is not None
    if reconstruct != "none":
        datamodule.calibration_examples_list()  # the statistics come from them: bad data fails now
    datamodule.eval_examples()
    if settings.max_drop is not None:
        datamodule.selection_examples_list()
    return reconstruct, costs


def refit_aware_scoring(settings: FitFreeSettings, reconstruct: Repair, scorer: NeuronScorer) -> bool:
    """Whether the scorer weighs neurons by what the least-squares refit cannot restore of them (their residuals,
    ``NeuronScorer.weighed_activations``): unless ``refit_aware`` is false, wherever the refit runs and the scorer
    can."""
    if settings.refit_aware is False or reconstruct != "least_squares":
        return False
    return scorer.needs_data and scorer.scores_residuals


def check_refit_aware(settings: FitFreeSettings, reconstruct: Reconstruct, scorer: NeuronScorer) -> None:
    """Refuse ``refit_aware`` true where it cannot apply: without the least-squares refit (``reconstruct``, as
    asked or as resolved for the model), or with a scorer that does not weigh activations."""
    if not settings.refit_aware:
        return
    if reconstruct in ("bias", "none"):
        raise UsageError(
            f"refit_aware scores what the least-squares refit cannot restore, and this run's reconstruction is "
            f"{reconstruct!r}: add --reconstruct least_squares, or drop --refit_aware"
        )
    if not (scorer.needs_data and scorer.scores_residuals):
        raise UsageError(
            f"scorer {settings.scorer!r} does not weigh neurons by their activations, so it cannot score their "
            "residuals: drop --refit_aware, or choose attribution, fisher, wanda or activation"
        )


def speedup_costs(model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings) -> UnitCosts:
    """Each unit's FLOPs on the first ``FLOP_COUNT_EXAMPLES`` evaluation examples, after checking that the
    budget can be met: with every layer at its floor (``min_keep`` neurons, one head group), the model must need
    at most 1/target of the dense FLOPs (for the highest target)."""
    costs = unit_costs(model.net, _flop_batches(model, datamodule), model.net.unit_layers(settings.prunes_heads))
    floors = unit_floors(model.net, settings)
    smallest = costs.total - sum((n - f) * c for n, f, c in zip(costs.sizes, floors, costs.per_unit, strict=True))
    highest = max(settings.targets)
    if costs.total / highest < smallest:
        kept = "min_keep neurons and one head group" if settings.prunes_heads else "min_keep neurons"
        raise UsageError(
            f"target_speedup {highest:g} is out of reach: keeping only {kept} per layer leaves "
            f"{smallest / costs.total:.0%} of the FLOPs (embeddings, LM head, norms stay), at most "
            f"{costs.total / smallest:.2f}x fewer; give a lower target"
        )
    return costs


def unit_floors(net: PrunableModel, settings: FitFreeSettings) -> list[int]:
    """Units each layer keeps at least: ``min_keep`` neurons per FFN layer, one head group per attention layer."""
    return [
        1 if isinstance(layer, AttentionLayer) else min(settings.min_keep, layer.size)
        for layer in net.unit_layers(settings.prunes_heads)
    ]


@dataclass
class Scores:
    """Per-layer unit scores (FFN layers, then attention layers when heads are pruned) and where they came from."""

    layers: list[Tensor]
    examples: int = 0
    cache: ScoreCache | None = None
    from_cache: bool = False
    refit_aware: bool = False  # the scorer weighed neurons by their residuals
    resumed_batches: int = 0  # on rank 0: batches restored from an interrupted run


def neuron_scores(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    scorer: NeuronScorer,
    residuals_from: dict[str, Any] | None = None,
) -> Scores:
    """The scorer's scores: from the cache when this exact request was scored before, else computed over the
    scoring examples by ``trainer.predict`` (resuming an interrupted run) and cached. Under refit-aware scoring
    (``scorer.residuals`` set) ``residuals_from`` names what the residuals came from, for the cache key."""
    heads = settings.prunes_heads
    layers = model.net.unit_layers(heads)
    if not scorer.needs_data:
        return Scores(score_batch(model.net, scorer, settings.scorer, None, heads=heads))
    refit = residuals_from is not None
    request = score_request(
        model.net,
        datamodule.score_examples(),
        datamodule.hparams.batch_size,
        settings.scorer,
        settings.scorer_options,
        settings.labels,
        str(trainer.precision),
        trainer.limit_predict_batches,
        heads,
        residuals_from,
    )
    cache = ScoreCache(cache_root(settings.cache_dir), score_key(request), request)
    limited = trainer.limit_predict_batches not in (None, 1.0)  # then the example count is not known ahead
    expected = None if limited else len(datamodule.score_examples())
    cached = cache.load_final([layer.size for layer in layers], expected) if settings.reuse_scores else None
    if cache.rejected:
        rank_zero_info(f"note: score cache: {'; '.join(cache.rejected)}: recomputing those scores")
    if cached is not None:
        return Scores(cached[0], cached[1], cache, from_cache=True, refit_aware=refit)
    rank_zero_info(f"scoring {len(datamodule.score_examples())} examples with {settings.scorer}")
    scoring = ScoringModule(
        model.net,
        scorer,
        settings.scorer,
        settings.labels,
        cache,
        settings.checkpoint_every,
        settings.reuse_scores,
        heads,
    )
    trainer.predict(scoring, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        cache.save_final(scoring.scores, scoring.examples_seen)
    trainer.strategy.barrier()
    cache.clear_progress(trainer.global_rank, trainer.world_size)
    return Scores(
        scoring.scores, scoring.examples_seen, cache, resumed_batches=scoring.resumed_batches, refit_aware=refit
    )


def selection_scores(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    scorer: NeuronScorer,
    reconstruction: Reconstruction | None,
) -> Scores:
    """The scores selection ranks units by: ``neuron_scores``, weighing the neurons' residuals under the
    ``reconstruction``'s statistics (of the calibration examples) where refit-aware scoring applies
    (``refit_aware_scoring``). The scorer holds the residual maps only while it scores."""
    method = reconstruction.method if reconstruction is not None else "none"
    if not refit_aware_scoring(settings, method, scorer):
        return neuron_scores(trainer, model, datamodule, settings, scorer)
    assert reconstruction is not None
    source = {
        "calibration": examples_fingerprint(datamodule.calibration_examples_list()),
        "damping": reconstruction.damping,
    }
    scorer.residuals = reconstruction.residuals(model.net.ffn_layers())
    try:
        return neuron_scores(trainer, model, datamodule, settings, scorer, source)
    finally:
        scorer.residuals = None


def activation_statistics_of(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, second_moments: bool, heads: bool = False
) -> ActivationStatistics:
    """Activation statistics of every FFN neuron (and with ``heads`` every head output) over the calibration
    examples (all processes): forward passes, no labels beyond the answer a decoder LM is fed."""
    collecting = ActivationStatisticsModule(model.net, second_moments, heads)
    datamodule.predict_set = "calibration"
    try:
        trainer.predict(collecting, datamodule=datamodule, return_predictions=False)
    finally:
        datamodule.predict_set = "score"
    rank_zero_info(f"reconstruction statistics from {len(datamodule.calibration_examples_list())} examples")
    return collecting.statistics


def reconstruction_of(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, method: Repair, damping: float, heads: bool = False
) -> Reconstruction | None:
    """The repair of every cut (of the attention layers' too, with ``heads``) from the calibration examples'
    statistics; None for a plain cut."""
    if method == "none":
        return None
    statistics = activation_statistics_of(trainer, model, datamodule, method == "least_squares", heads)
    return statistics.reconstruction(method, damping)


def prune_and_evaluate(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    scores: Scores,
    reconstruction: Reconstruction | None,
    seconds: dict[str, float],
    costs: UnitCosts | None = None,
) -> list[SweepPoint]:
    """Prune the dense model at each sparsity (or for the FLOP budget) and evaluate it (and on the selection
    examples, for ``max_drop``). Every point prunes the same dense model: its modules are put back between points,
    not reloaded."""
    dense_units = snapshot_units(model.net)
    metric = model.spec.primary_metric
    points: list[SweepPoint] = []
    seconds["prune"] = seconds["evaluate_pruned"] = 0.0
    for target, value, kept, kept_heads in selections(model.net, settings, scores, costs):
        start = time.perf_counter()
        prune_model(model.net, kept, reconstruction, kept_heads)
        seconds["prune"] += time.perf_counter() - start
        start = time.perf_counter()
        point = SweepPoint(value, kept, model.net.num_parameters(), test_metrics(trainer, model, datamodule))
        seconds["evaluate_pruned"] += time.perf_counter() - start
        point.kept_heads, point.target_speedup = kept_heads, target
        if costs is not None:
            point.flops = count_flops(model.net, _flop_batches(model, datamodule))
        if settings.max_drop is not None:
            start = time.perf_counter()
            point.selection_metrics = test_metrics(trainer, model, datamodule, "selection")
            seconds["evaluate_selection"] = seconds.get("evaluate_selection", 0.0) + time.perf_counter() - start
        points.append(point)
        restore_units(model.net, dense_units)
        if settings.points > 1:
            selected = f", selection {point.selection_metrics[metric]:.4f}" if point.selection_metrics else ""
            where = f"target {target:g}x (FFN sparsity {value:.3f})" if target is not None else f"sparsity {value:g}"
            rank_zero_info(f"{where}: {metric} {point.metrics[metric]:.4f}{selected}")
    return points


Selection = tuple[float | None, float, list[Tensor], list[Tensor] | None]


def selections(
    net: PrunableModel, settings: FitFreeSettings, scores: Scores, costs: UnitCosts | None
) -> list[Selection]:
    """(FLOP target or None, FFN sparsity, kept neurons per FFN layer, kept head groups per attention layer or None)
    of every point: one per swept sparsity, or one per FLOP target."""
    ffn_count = len(net.ffn_layers())
    ffn_scores = scores.layers[:ffn_count]

    def rounded(kept: list[Tensor]) -> list[Tensor]:
        return round_widths(ffn_scores, kept, settings.width_multiple, settings.min_keep)

    if costs is None:
        return [
            (None, value, rounded(select_neurons(ffn_scores, value, settings.scope, settings.min_keep)), None)
            for value in settings.sparsities
        ]
    layers = net.unit_layers(settings.prunes_heads)
    kinds = ["attention" if isinstance(layer, AttentionLayer) else "ffn" for layer in layers]
    floors = unit_floors(net, settings)
    points: list[Selection] = []
    for target in settings.targets:
        remove = costs.total * (1.0 - 1.0 / target)
        kept = select_for_flops(scores.layers, costs.per_unit, remove, settings.scope, floors, kinds)
        if kept is None:
            raise UsageError(
                f"target_speedup {target:g} cannot be met with {settings.scope} scope (every layer losing the same "
                "share): try --scope global or a lower target"
            )
        ffn, heads = rounded(kept[:ffn_count]), kept[ffn_count:]
        achieved = 1.0 - sum(len(k) for k in ffn) / sum(costs.sizes[:ffn_count])
        points.append((target, achieved, ffn, heads if settings.prunes_heads else None))
    return points


def _flop_batches(model: TaskModel, datamodule: TaskDataModule) -> list[Batch]:
    """The batches ``speedup_costs`` priced the units on (the first evaluation examples)."""
    examples = datamodule.eval_examples()[:FLOP_COUNT_EXAMPLES]
    size = datamodule.hparams.batch_size
    return [model.collate(examples[i : i + size]) for i in range(0, len(examples), size)]


def models_to_save(
    points: list[SweepPoint], dense_selection: dict[str, float] | None, metric: str, settings: FitFreeSettings
) -> tuple[SweepPoint | None, dict[str, SweepPoint]]:
    """The chosen point (the one sparsity or target, or the ``max_drop`` choice of a sweep) and the models to
    write."""
    if settings.max_drop is not None:
        assert dense_selection is not None
        chosen = choose(points, dense_selection[metric], metric, settings.max_drop)
    else:
        chosen = points[0] if len(points) == 1 else None
    to_save = {MODEL_DIR: chosen} if chosen is not None and settings.save_models != "none" else {}
    if settings.save_models == "all" and len(points) > 1:
        to_save.update({f"{MODEL_DIR}-{point.label}": point for point in points})
    return chosen, to_save


def run_summary(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    scores: Scores,
    dense: dict[str, Any],
    points: list[SweepPoint],
    chosen: SweepPoint | None,
    to_save: dict[str, SweepPoint],
    reconstruct: Repair,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What ``metrics.json`` records about the run."""
    summary: dict[str, Any] = {
        "task": model.spec.name,
        "model": model.hparams.path,
        "adapter": model.hparams.adapter,
        "architecture": model.net.architecture,
        "scorer": settings.scorer,
        "scorer_options": settings.scorer_options or {},
        "labels": settings.labels,
        "examples_scored": scores.examples,
        "score_key": scores.cache.key if scores.cache is not None else None,
        "scores_from_cache": scores.from_cache,
        # damaged or not fitting: recomputed
        "cache_entries_rejected": scores.cache.rejected if scores.cache is not None else [],
        "batches_resumed": scores.resumed_batches,
        "sparsity": chosen.sparsity if chosen else None,
        # The FFN neurons removed: below ``sparsity`` where min_keep keeps more.
        "achieved_sparsity": chosen.achieved_sparsity(dense["neurons"]) if chosen else None,
        "scope": settings.scope,
        "width_multiple": settings.width_multiple,
        "primary_metric": model.spec.primary_metric,
        "dense_metrics": dense["metrics"],
        "pruned_metrics": chosen.metrics if chosen else None,
        "parameters": {"dense": dense["parameters"], "pruned": chosen.parameters if chosen else None},
        "reconstruct": reconstruct,  # what applied: "auto" resolved, "none" where "bias" found no down bias
        "refit_aware": scores.refit_aware,
        "calibration_examples": len(datamodule.calibration_examples_list()) if reconstruct != "none" else 0,
        "ffn_neurons": {
            name: {"dense": size, "kept": len(chosen.kept[i]) if chosen else None}
            for i, (name, size) in enumerate(dense["neurons"].items())
        },
        "target_speedup": chosen.target_speedup if chosen else settings.target_speedup,
        "world_size": trainer.world_size,
        "seconds": seconds,
    }
    if chosen is not None and chosen.kept_heads is not None:
        summary["attention_heads"] = {
            layer.name: {"dense": layer.num_heads, "kept": len(kept) * layer.queries_per_group}
            for layer, kept in zip(model.net.attention_layers(), chosen.kept_heads, strict=True)
        }
    if chosen is not None and chosen.flops is not None:
        summary["flops"] = {
            "examples": min(FLOP_COUNT_EXAMPLES, len(datamodule.eval_examples())),
            "dense": dense["flops"],
            "pruned": chosen.flops,
            "speedup": dense["flops"] / chosen.flops,
        }
        if "evaluate_dense" in seconds:  # the same examples, one pass each: a rough measured ratio
            summary["flops"]["evaluation_seconds_ratio"] = seconds["evaluate_dense"] / seconds["evaluate_pruned"]
    if settings.max_drop is not None:
        summary["selection"] = {
            "max_drop": settings.max_drop,
            "examples": len(datamodule.selection_examples_list()),
            "source": datamodule.selection_source(),
            "dense_metrics": dense["selection_metrics"],
            "chosen_metrics": chosen.selection_metrics if chosen else None,
            "chosen_sparsity": chosen.sparsity if chosen else None,
            "chosen_target_speedup": chosen.target_speedup if chosen else None,
        }
    if len(points) > 1:
        summary["sweep"] = [
            {
                "sparsity": point.sparsity,
                "target_speedup": point.target_speedup,
                "flop_speedup": dense["flops"] / point.flops if point.flops else None,
                "parameters": point.parameters,
                "metrics": point.metrics,
                "selection_metrics": point.selection_metrics,
                "within_drop": point.within_drop,
                "saved_as": next((name for name, p in to_save.items() if p is point), None),
            }
            for point in points
        ]
    return summary


def write_run(
    trainer: Trainer,
    model: TaskModel,
    settings: FitFreeSettings,
    scores: Scores,
    reconstruction: Reconstruction | None,
    summary: dict[str, Any],
    dense: dict[str, Any],
    points: list[SweepPoint],
    chosen: SweepPoint | None,
    to_save: dict[str, SweepPoint],
    inputs: dict[str, Path | str | None],
) -> None:
    """Write output_dir whole or not at all: scores, the models to save, sweep reports, config, metrics."""
    start = time.perf_counter()
    layers = model.net.unit_layers(settings.prunes_heads)
    dense_units = snapshot_units(model.net)
    metric = model.spec.primary_metric
    with (
        write_errors_reported("output_dir", settings.output_dir),
        atomic_directory(Path(settings.output_dir), overwrite=settings.overwrite, protected=inputs) as tmp,
    ):
        save_file(
            {layer.name: score.contiguous() for layer, score in zip(layers, scores.layers, strict=True)},
            str(tmp / SCORES_FILE),
            metadata={
                "task": model.spec.name,
                "scorer": settings.scorer,
                "labels": settings.labels,
                "scorer_options": json.dumps(settings.scorer_options or {}),
                "examples": str(scores.examples),
                "layers": json.dumps([layer.name for layer in layers]),
            },
        )
        dtype = None if settings.save_dtype == "auto" else SAVE_DTYPES[settings.save_dtype]
        summary["saved_models"] = {}
        for name, point in to_save.items():
            prune_model(model.net, point.kept, reconstruction, point.kept_heads)
            layout = save_model_folder(model.net, tmp / name, dtype, settings.pad_uneven_ffn)
            restore_units(model.net, dense_units)
            summary["saved_models"][name] = {
                "sparsity": point.sparsity,
                "target_speedup": point.target_speedup,
                **layout,
            }
        if len(points) > 1:
            note = write_sweep_reports(tmp, points, metric, dense, chosen, settings.max_drop)
            if note:
                rank_zero_warn(note)
        config_text = getattr(trainer, "resolved_config", None)
        if config_text:
            (tmp / CONFIG_FILE).write_text(config_text)
        summary["seconds"]["save"] = time.perf_counter() - start
        write_json(tmp / METRICS_FILE, summary)


def fit_free(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    scorer: str = "attribution",
    scorer_options: dict[str, Any] | None = None,
    labels: LabelSource = "gold",
    sparsity: float | list[float] | None = None,
    target_speedup: float | list[float] | None = None,
    heads: bool = True,
    max_drop: float | None = None,
    save_models: Literal["auto", "all", "none"] = "auto",
    scope: Scope = "layer",
    min_keep: int = 1,
    width_multiple: PositiveInt = 1,
    save_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
    pad_uneven_ffn: bool = False,
    output_dir: str = "runs/fit-free",
    overwrite: bool = False,
    evaluate_dense: bool = True,
    cache_dir: str | None = None,
    reuse_scores: bool = True,
    checkpoint_every: PositiveInt = 10,
    reconstruct: Reconstruct = "auto",
    damping: PositiveFloat = DEFAULT_DAMPING,
    refit_aware: bool | None = None,
) -> dict[str, Any]:
    """Prune the task's least important FFN neurons and save the smaller model.

    Args:
        scorer: a registered scorer (``lightning-prune scorers`` lists them): attribution, activation,
            magnitude, random, or a plugin's.
        scorer_options: the scorer's own settings, e.g. ``{"steps": 20, "mode": "joint"}`` for attribution.
            They belong to the scorer: a ``--scorer`` given on the command line drops options (from a config)
            that the new scorer does not take.
        labels: ``gold`` labels (supervised) or ``pseudo``: the model's own predictions (unsupervised).
        sparsity: fraction of FFN neurons to remove, in [0, 1) (default 0.5 unless ``target_speedup`` is given);
            or several (``0.1,0.3,0.5``): a sweep that scores and evaluates the dense model once, then prunes and
            evaluates each, writing sweep.csv, sweep.md and sweep.png.
        target_speedup: instead of a sparsity, how many times fewer FLOPs the pruned model needs on the task's
            inputs (e.g. 1.6): attention head groups and FFN neurons are removed together, by score per FLOP
            (``global`` scope) or by the same share in every layer (``layer``), counted with
            ``torch.utils.flop_counter`` on the first evaluation examples; metrics.json reports the FLOPs. Several
            (``1.3,1.6,2``): a sweep over FLOP budgets, like a sparsity sweep (``max_drop`` chooses among them).
        heads: with ``target_speedup``, also remove attention head groups (a key/value head and the query heads
            sharing it); false: FFN neurons only.
        max_drop: choose the highest swept sparsity (or FLOP target) whose primary metric on the selection examples (see
            ``--data.selection_examples``, held apart from the evaluation examples) is at most this much below
            the dense model's, e.g. 0.01; it is saved as ``model/``.
        save_models: ``auto``: the one point's model, or the ``max_drop`` choice of a sweep (none without it);
            ``all``: also every swept point as ``model-<sparsity>/`` (``model-<target>x/``); ``none``: no model.
        scope: ``layer`` (every layer loses the same fraction) or ``global`` (lowest scores model-wide: uneven
            widths; see benchmarks/results/allocation.md for when it helps).
        min_keep: neurons every layer keeps at least.
        width_multiple: round every layer's kept FFN width down to a multiple of this (e.g. 8 or 64: matrix kernels
            run faster on such widths; the lowest-scored kept neurons go); 1: no rounding.
        save_dtype: dtype of the saved weights; ``auto`` keeps the dtype the model had on disk (float16 in,
            float16 out; computation always runs in float32).
        pad_uneven_ffn: when layers keep different widths (global scope), pad each to the widest with
            all-zero neurons (exact; the file grows) so plain Hugging Face ``from_pretrained`` loads it;
            otherwise the weights are saved at their exact widths, loadable by lightning-prune only.
        output_dir: receives metrics.json, scores.safetensors, the pruned model and config.yaml, all at once;
            never an input, nor inside or above one.
        overwrite: replace an ``output_dir`` that holds an earlier run (only a folder lightning-prune wrote).
        evaluate_dense: also evaluate the model before pruning.
        cache_dir: where scores are kept under a key of everything that produced them (model weights,
            task, scoring examples, batch size, scorer and options, labels, precision); default
            ``$XDG_CACHE_HOME/lightning-prune/scores``.
        reuse_scores: reuse finished scores of the same key, and resume interrupted scoring from the
            per-process progress saved every ``checkpoint_every`` batches; false recomputes from scratch.
        checkpoint_every: batches between two saves of the scoring progress.
        reconstruct: how each layer's down projection is repaired after the cut, from activation statistics
            over the calibration examples (``--data.calibration_examples``; no optimizer step): ``auto``:
            ``bias`` where the FFN has a down bias (encoders), ``least_squares`` elsewhere (decoder LMs, T5);
            ``bias`` replaces every removed neuron by its mean activation, folded into the down bias (as FLAP;
            without a down bias the cut is plain); ``least_squares`` refits the kept neurons' down weights
            (and bias) to reproduce the dense layer's output (as K-prune; needs d_ff² statistics per layer);
            ``none``: a plain cut.
        damping: ``least_squares`` ridge, as a fraction of the kept activations' mean second moment: larger
            stays closer to the plain cut.
        refit_aware: score what the ``least_squares`` refit cannot restore: each neuron is weighed by its residual
            (its activation minus what the layer's other neurons predict of it, from the same statistics) instead
            of its activation, so neurons the refit can stand in for go first; with Wanda this is the optimal
            brain surgeon's criterion. Default (unset): wherever the refit runs and the scorer weighs activations
            (attribution, fisher, wanda, activation); false: score the activations.
    """
    settings = FitFreeSettings.of(locals())
    inputs = run_inputs(model, datamodule)
    scorer_impl = check_request(settings, inputs)
    reconstruct, costs = check_against_model(trainer, model, datamodule, settings, scorer_impl)
    seconds: dict[str, float] = {}
    dense: dict[str, Any] = {
        "parameters": model.net.num_parameters(),
        "neurons": model.ffn_sizes(),
        "metrics": None,
        "selection_metrics": None,
        "flops": costs.total if costs is not None else None,
    }
    if evaluate_dense:
        start = time.perf_counter()
        dense["metrics"] = test_metrics(trainer, model, datamodule)
        seconds["evaluate_dense"] = time.perf_counter() - start
    if max_drop is not None:
        start = time.perf_counter()
        dense["selection_metrics"] = test_metrics(trainer, model, datamodule, "selection")
        seconds["evaluate_selection"] = time.perf_counter() - start
    start = time.perf_counter()  # the statistics first: refit-aware scoring needs them
    reconstruction = reconstruction_of(trainer, model, datamodule, reconstruct, damping, settings.prunes_heads)
    if reconstruction is not None:
        seconds["statistics"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = selection_scores(trainer, model, datamodule, settings, scorer_impl, reconstruction)
    seconds["score"] = time.perf_counter() - start
    points = prune_and_evaluate(trainer, model, datamodule, settings, scores, reconstruction, seconds, costs)
    chosen, to_save = models_to_save(points, dense["selection_metrics"], model.spec.primary_metric, settings)
    summary = run_summary(
        trainer, model, datamodule, settings, scores, dense, points, chosen, to_save, reconstruct, seconds
    )
    if trainer.is_global_zero:
        write_run(trainer, model, settings, scores, reconstruction, summary, dense, points, chosen, to_save, inputs)
        rank_zero_info(_report(summary, output_dir))
    trainer.strategy.barrier()
    if chosen is not None:  # the in-memory model ends as the chosen (saved) one
        prune_model(model.net, chosen.kept, reconstruction, chosen.kept_heads)
    return summary


def _report(summary: dict[str, Any], output_dir: str) -> str:
    metric = summary["primary_metric"]
    # --evaluate_dense false: no dense metric to print (not a NaN)
    dense = f"dense {summary['dense_metrics'][metric]:.4f} -> " if summary["dense_metrics"] else ""
    params = summary["parameters"]
    selection = summary.get("selection")
    if summary["pruned_metrics"] is None:
        reason = (
            f"no swept point keeps the selection {metric} within {selection['max_drop']:g} of the dense model"
            if selection
            else "pass --max_drop to choose one"
        )
        swept = len(summary.get("sweep") or [None])  # "sweep" is written only for several points
        kind = "FLOP targets" if summary["target_speedup"] is not None else "sparsities"
        return f"{summary['task']}: swept {swept} {kind} ({reason}); wrote {output_dir}"
    pruned = summary["pruned_metrics"][metric]
    chosen = ""
    if selection:
        chosen = (
            f"; chosen by max_drop {selection['max_drop']:g}: selection {metric} "
            f"{selection['dense_metrics'][metric]:.4f} -> {selection['chosen_metrics'][metric]:.4f}"
        )
    asked, achieved = summary["sparsity"], summary["achieved_sparsity"]
    if summary.get("flops"):
        flops = summary["flops"]
        heads = summary.get("attention_heads") or {}
        kept_heads = sum(v["kept"] for v in heads.values())
        asked = (
            f"{achieved:.3f}"
            + (f" and {1 - kept_heads / sum(v['dense'] for v in heads.values()):.3f} of the heads" if heads else "")
            + f": {flops['speedup']:.2f}x fewer FLOPs (target {summary['target_speedup']:g})"
        )
    elif abs(achieved - asked) > 0.005:
        why = (
            "min_keep kept more" if achieved < asked else f"widths rounded to multiples of {summary['width_multiple']}"
        )
        asked = f"{achieved:.3f} (asked {asked}; {why})"
    uneven = any(not saved["plain_hf_loadable"] for saved in (summary.get("saved_models") or {}).values())
    loading = (
        " (per-layer shapes: load it with lightning_prune.load_pruned_model; --pad_uneven_ffn true saves one that "
        "plain from_pretrained loads, padded with zeros to shapes its config can hold, as large as needed)"
        if uneven
        else ""
    )
    return (
        f"{summary['task']}: {metric} {dense}pruned {pruned:.4f} at FFN sparsity {asked} "
        f"({summary['scorer']}, {summary['scope']} scope); parameters {params['dense']:,} -> {params['pruned']:,}"
        f"{chosen}; wrote {output_dir}{loading}"
    )
