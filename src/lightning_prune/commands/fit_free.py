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

from lightning_prune.adapters.base import SAVE_DTYPES
from lightning_prune.cache import ScoreCache, cache_root, score_key, score_request
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
from lightning_prune.modules import ActivationStatisticsModule, LabelSource, ScoringModule, TaskModel
from lightning_prune.pruning import (
    PLAN_FILE,
    ActivationStatistics,
    Reconstruct,
    Reconstruction,
    Repair,
    Scope,
    prune_model,
    restore_ffn,
    select_neurons,
    snapshot_ffn,
)
from lightning_prune.pruning.reconstruction import DEFAULT_DAMPING
from lightning_prune.scorers import NeuronScorer, check_scores, create_scorer
from lightning_prune.sweep import SweepPoint, choose, parse_sparsities, write_sweep_reports

SCORES_FILE = "scores.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"


@dataclass(frozen=True)
class FitFreeSettings:
    """fit-free's own options (documented on ``fit_free``), as one value the checks and steps share."""

    scorer: str
    scorer_options: dict[str, Any] | None
    labels: LabelSource
    sparsity: float | list[float]
    max_drop: float | None
    save_models: str
    scope: Scope
    min_keep: int
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
        return parse_sparsities(self.sparsity)


def check_request(settings: FitFreeSettings, inputs: dict[str, Path | str | None] | None = None) -> NeuronScorer:
    """Reject bad settings and unusable outputs before any model or data is loaded; return the scorer.

    ``inputs`` (see ``user_inputs``): what the run reads; neither ``output_dir`` nor the score cache may be,
    lie inside or contain one of them (the cache may lie above them: it only adds files of its own).
    """
    s = settings
    if not s.sparsities:
        raise UsageError("sparsity is an empty list: give one fraction of FFN neurons to remove, or several")
    for value in s.sparsities:
        select_neurons([], value, s.scope, s.min_keep)  # validates sparsity, scope and min_keep
    if s.max_drop is not None and s.max_drop < 0:
        raise UsageError(f"max_drop {s.max_drop} is negative: give the largest tolerated metric drop, e.g. 0.01")
    scorer_impl = create_scorer(s.scorer, s.scorer_options)
    inputs = dict(inputs or {})
    cache = cache_root(s.cache_dir) if scorer_impl.needs_data else None
    check_output_location(s.output_dir, "output_dir", {**inputs, "the score cache": cache})
    check_replaceable(Path(s.output_dir), s.overwrite)
    check_writable(s.output_dir, "output_dir", in_parent=True)
    if cache is not None:
        check_output_location(cache, "cache_dir", inputs, may_contain_inputs=True)
        check_writable(cache, "cache_dir")
    return scorer_impl


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
) -> Repair:
    """What needs the loaded model, before any work: min_keep against the layers' widths, the scorer's memory
    for its heaviest batch and the reconstruction's statistics, every data source read once (the datamodule
    learns whether selection examples are in use, which the calibration draw avoids). Returns the
    reconstruction that applies to this model ("auto" resolved; "none" where bias compensation finds no down
    bias)."""
    layers = model.net.ffn_layers()
    widest = max(layer.size for layer in layers)
    if max(settings.sparsities) > 0 and settings.min_keep >= widest:
        raise UsageError(
            f"min_keep {settings.min_keep} is at least the width of every FFN layer (the widest has {widest} "
            "neurons): nothing would be pruned; choose a smaller min_keep"
        )
    if scorer.needs_data:
        scorer.check_memory(model.net, datamodule.heaviest_score_batch(model.net), available_memory(trainer))
    reconstruct = settings.reconstruct
    down_biases = any(layer.down_proj.bias is not None for layer in layers)
    if reconstruct == "auto":
        reconstruct = "bias" if down_biases else "least_squares"
    elif reconstruct == "bias" and not down_biases:
        reconstruct = "none"  # bias compensation folds into down biases: T5 and decoder LMs are cut plainly
    if reconstruct == "least_squares":
        needed, free = ActivationStatistics.bytes_needed(layers, True), available_memory(trainer)
        if free is not None and needed > free // 2:
            raise UsageError(
                f"least_squares reconstruction needs {needed / 2**30:.1f} GiB of activation statistics "
                f"(d_ff² per layer) and {free / 2**30:.1f} GiB are free: use --reconstruct bias or none"
            )
    datamodule.selection_in_use = settings.max_drop is not None
    if reconstruct != "none":
        datamodule.calibration_examples_list()  # the statistics come from them: bad data fails now
    datamodule.eval_examples()
    if settings.max_drop is not None:
        datamodule.selection_examples_list()
    return reconstruct


@dataclass
class Scores:
    """Per-layer neuron scores and where they came from."""

    layers: list[Tensor]
    examples: int = 0
    cache: ScoreCache | None = None
    from_cache: bool = False
    resumed_batches: int = 0  # on rank 0: batches restored from an interrupted run


def neuron_scores(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings, scorer: NeuronScorer
) -> Scores:
    """The scorer's scores: from the cache when this exact request was scored before, else computed over the
    scoring examples by ``trainer.predict`` (resuming an interrupted run) and cached."""
    layers = model.net.ffn_layers()
    if not scorer.needs_data:
        return Scores(check_scores(settings.scorer, scorer(model.net, None), layers))
    request = score_request(
        model.net,
        datamodule.score_examples(),
        datamodule.hparams.batch_size,
        settings.scorer,
        settings.scorer_options,
        settings.labels,
        str(trainer.precision),
        trainer.limit_predict_batches,
    )
    cache = ScoreCache(cache_root(settings.cache_dir), score_key(request), request)
    limited = trainer.limit_predict_batches not in (None, 1.0)  # then the example count is not known ahead
    expected = None if limited else len(datamodule.score_examples())
    cached = cache.load_final([layer.size for layer in layers], expected) if settings.reuse_scores else None
    if cache.rejected:
        rank_zero_info(f"note: score cache: {'; '.join(cache.rejected)}: recomputing those scores")
    if cached is not None:
        return Scores(cached[0], cached[1], cache, from_cache=True)
    rank_zero_info(f"scoring {len(datamodule.score_examples())} examples with {settings.scorer}")
    scoring = ScoringModule(
        model.net, scorer, settings.scorer, settings.labels, cache, settings.checkpoint_every, settings.reuse_scores
    )
    trainer.predict(scoring, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        cache.save_final(scoring.scores, scoring.examples_seen)
    trainer.strategy.barrier()
    cache.clear_progress(trainer.global_rank, trainer.world_size)
    return Scores(scoring.scores, scoring.examples_seen, cache, resumed_batches=scoring.resumed_batches)


def activation_statistics_of(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, second_moments: bool
) -> ActivationStatistics:
    """Activation statistics of every FFN neuron over the calibration examples (all processes): forward passes,
    no labels beyond the answer a decoder LM is fed."""
    collecting = ActivationStatisticsModule(model.net, second_moments)
    datamodule.predict_set = "calibration"
    try:
        trainer.predict(collecting, datamodule=datamodule, return_predictions=False)
    finally:
        datamodule.predict_set = "score"
    rank_zero_info(f"reconstruction statistics from {len(datamodule.calibration_examples_list())} examples")
    return collecting.statistics


def reconstruction_of(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, method: Repair, damping: float
) -> Reconstruction | None:
    """The repair of every cut from the calibration examples' statistics; None for a plain cut."""
    if method == "none":
        return None
    statistics = activation_statistics_of(trainer, model, datamodule, second_moments=method == "least_squares")
    return statistics.reconstruction(method, damping)


def prune_and_evaluate(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    scores: Scores,
    reconstruction: Reconstruction | None,
    seconds: dict[str, float],
) -> list[SweepPoint]:
    """Prune the dense model at each sparsity and evaluate it (and on the selection examples, for ``max_drop``).
    Every sparsity prunes the same dense model: its FFN modules are put back between points, not reloaded."""
    dense_ffn = snapshot_ffn(model.net)
    metric = model.spec.primary_metric
    points: list[SweepPoint] = []
    seconds["prune"] = seconds["evaluate_pruned"] = 0.0
    for value in settings.sparsities:
        start = time.perf_counter()
        kept = select_neurons(scores.layers, value, settings.scope, settings.min_keep)
        prune_model(model.net, kept, reconstruction)
        seconds["prune"] += time.perf_counter() - start
        start = time.perf_counter()
        point = SweepPoint(value, kept, model.net.num_parameters(), test_metrics(trainer, model, datamodule))
        seconds["evaluate_pruned"] += time.perf_counter() - start
        if settings.max_drop is not None:
            start = time.perf_counter()
            point.selection_metrics = test_metrics(trainer, model, datamodule, "selection")
            seconds["evaluate_selection"] = seconds.get("evaluate_selection", 0.0) + time.perf_counter() - start
        points.append(point)
        restore_ffn(model.net, dense_ffn)
        if len(settings.sparsities) > 1:
            selected = f", selection {point.selection_metrics[metric]:.4f}" if point.selection_metrics else ""
            rank_zero_info(f"sparsity {value:g}: {metric} {point.metrics[metric]:.4f}{selected}")
    return points


def models_to_save(
    points: list[SweepPoint], dense_selection: dict[str, float] | None, metric: str, settings: FitFreeSettings
) -> tuple[SweepPoint | None, dict[str, SweepPoint]]:
    """The chosen point (the one sparsity, or the ``max_drop`` choice of a sweep) and the models to write."""
    if settings.max_drop is not None:
        assert dense_selection is not None
        chosen = choose(points, dense_selection[metric], metric, settings.max_drop)
    else:
        chosen = points[0] if len(points) == 1 else None
    to_save = {MODEL_DIR: chosen} if chosen is not None and settings.save_models != "none" else {}
    if settings.save_models == "all" and len(points) > 1:
        to_save.update({f"{MODEL_DIR}-{point.sparsity:g}": point for point in points})
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
        "primary_metric": model.spec.primary_metric,
        "dense_metrics": dense["metrics"],
        "pruned_metrics": chosen.metrics if chosen else None,
        "parameters": {"dense": dense["parameters"], "pruned": chosen.parameters if chosen else None},
        "reconstruct": reconstruct,  # what applied: "auto" resolved, "none" where "bias" found no down bias
        "calibration_examples": len(datamodule.calibration_examples_list()) if reconstruct != "none" else 0,
        "ffn_neurons": {
            name: {"dense": size, "kept": len(chosen.kept[i]) if chosen else None}
            for i, (name, size) in enumerate(dense["neurons"].items())
        },
        "world_size": trainer.world_size,
        "seconds": seconds,
    }
    if settings.max_drop is not None:
        summary["selection"] = {
            "max_drop": settings.max_drop,
            "examples": len(datamodule.selection_examples_list()),
            "source": datamodule.selection_source(),
            "dense_metrics": dense["selection_metrics"],
            "chosen_metrics": chosen.selection_metrics if chosen else None,
            "chosen_sparsity": chosen.sparsity if chosen else None,
        }
    if len(points) > 1:
        summary["sweep"] = [
            {
                "sparsity": point.sparsity,
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
    layers = model.net.ffn_layers()
    dense_ffn = snapshot_ffn(model.net)
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
            plan = prune_model(model.net, point.kept, reconstruction)
            layout = save_model_folder(model.net, tmp / name, dtype, settings.pad_uneven_ffn)
            padding = {"padded_width": layout["padded_width"]} if layout["padded_width"] is not None else {}
            write_json(tmp / name / PLAN_FILE, {**plan, **padding})
            restore_ffn(model.net, dense_ffn)
            summary["saved_models"][name] = {"sparsity": point.sparsity, **layout}
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
    sparsity: float | list[float] = 0.5,
    max_drop: float | None = None,
    save_models: Literal["auto", "all", "none"] = "auto",
    scope: Scope = "layer",
    min_keep: int = 1,
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
) -> dict[str, Any]:
    """Prune the task's least important FFN neurons and save the smaller model.

    Args:
        scorer: a registered scorer (``lightning-prune scorers`` lists them): attribution, activation,
            magnitude, random, or a plugin's.
        scorer_options: the scorer's own settings, e.g. ``{"steps": 20, "mode": "joint"}`` for attribution.
            They belong to the scorer: a ``--scorer`` given on the command line drops options (from a config)
            that the new scorer does not take.
        labels: ``gold`` labels (supervised) or ``pseudo``: the model's own predictions (unsupervised).
        sparsity: fraction of FFN neurons to remove, in [0, 1); or several (``0.1,0.3,0.5``): a sweep that
            scores and evaluates the dense model once, then prunes and evaluates each, writing sweep.csv,
            sweep.md and sweep.png.
        max_drop: choose the highest swept sparsity whose primary metric on the selection examples (see
            ``--data.selection_examples``, held apart from the evaluation examples) is at most this much below
            the dense model's, e.g. 0.01; it is saved as ``model/``.
        save_models: ``auto``: the one sparsity's model, or the ``max_drop`` choice of a sweep (none without
            it); ``all``: also every swept sparsity as ``model-<sparsity>/``; ``none``: no model.
        scope: ``layer`` (every layer loses the same fraction) or ``global`` (lowest scores model-wide: uneven
            widths; see benchmarks/results/allocation.md for when it helps).
        min_keep: neurons every layer keeps at least.
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
    """
    settings = FitFreeSettings.of(locals())
    inputs = run_inputs(model, datamodule)
    scorer_impl = check_request(settings, inputs)
    reconstruct = check_against_model(trainer, model, datamodule, settings, scorer_impl)
    seconds: dict[str, float] = {}
    dense: dict[str, Any] = {
        "parameters": model.net.num_parameters(),
        "neurons": model.ffn_sizes(),
        "metrics": None,
        "selection_metrics": None,
    }
    if evaluate_dense:
        start = time.perf_counter()
        dense["metrics"] = test_metrics(trainer, model, datamodule)
        seconds["evaluate_dense"] = time.perf_counter() - start
    if max_drop is not None:
        start = time.perf_counter()
        dense["selection_metrics"] = test_metrics(trainer, model, datamodule, "selection")
        seconds["evaluate_selection"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = neuron_scores(trainer, model, datamodule, settings, scorer_impl)
    seconds["score"] = time.perf_counter() - start
    start = time.perf_counter()
    reconstruction = reconstruction_of(trainer, model, datamodule, reconstruct, damping)
    if reconstruction is not None:
        seconds["statistics"] = time.perf_counter() - start
    points = prune_and_evaluate(trainer, model, datamodule, settings, scores, reconstruction, seconds)
    chosen, to_save = models_to_save(points, dense["selection_metrics"], model.spec.primary_metric, settings)
    summary = run_summary(
        trainer, model, datamodule, settings, scores, dense, points, chosen, to_save, reconstruct, seconds
    )
    if trainer.is_global_zero:
        write_run(trainer, model, settings, scores, reconstruction, summary, dense, points, chosen, to_save, inputs)
        rank_zero_info(_report(summary, output_dir))
    trainer.strategy.barrier()
    if chosen is not None:  # the in-memory model ends as the chosen (saved) one
        prune_model(model.net, chosen.kept, reconstruction)
    return summary


def _report(summary: dict[str, Any], output_dir: str) -> str:
    metric = summary["primary_metric"]
    dense = summary["dense_metrics"][metric] if summary["dense_metrics"] else float("nan")
    params = summary["parameters"]
    selection = summary.get("selection")
    if summary["pruned_metrics"] is None:
        reason = (
            f"no swept sparsity keeps the selection {metric} within {selection['max_drop']:g} of the dense model"
            if selection
            else "pass --max_drop to choose one"
        )
        swept = len(summary.get("sweep") or [None])  # "sweep" is written only for several sparsities
        return f"{summary['task']}: swept {swept} sparsities ({reason}); wrote {output_dir}"
    pruned = summary["pruned_metrics"][metric]
    chosen = ""
    if selection:
        chosen = (
            f"; chosen by max_drop {selection['max_drop']:g}: selection {metric} "
            f"{selection['dense_metrics'][metric]:.4f} -> {selection['chosen_metrics'][metric]:.4f}"
        )
    asked, achieved = summary["sparsity"], summary["achieved_sparsity"]
    if abs(achieved - asked) > 0.005:
        asked = f"{achieved:.3f} (asked {asked}; min_keep kept more)"
    uneven = any(saved["ffn_widths"] == "per-layer" for saved in (summary.get("saved_models") or {}).values())
    loading = (
        " (uneven FFN widths: load it with lightning_prune.load_model; --scope layer or --pad_uneven_ffn true save "
        "one that plain from_pretrained loads)"
        if uneven
        else ""
    )
    return (
        f"{summary['task']}: {metric} dense {dense:.4f} -> pruned {pruned:.4f} at FFN sparsity {asked} "
        f"({summary['scorer']}, {summary['scope']} scope); parameters {params['dense']:,} -> {params['pruned']:,}"
        f"{chosen}; wrote {output_dir}{loading}"
    )
