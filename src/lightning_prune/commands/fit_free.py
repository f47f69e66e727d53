"""``lightning-prune fit-free``: score -> prune -> evaluate dense and pruned -> save, without training."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveInt
from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors.torch import save_file

from lightning_prune.adapters.base import SAVE_DTYPES
from lightning_prune.cache import ScoreCache, cache_root, examples_fingerprint, model_fingerprint, score_key
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
from lightning_prune.modules import ActivationMeansModule, LabelSource, ScoringModule, TaskModel
from lightning_prune.pruning import PLAN_FILE, Scope, prune_model, restore_ffn, select_neurons, snapshot_ffn
from lightning_prune.scorers import NeuronScorer, check_scores, create_scorer, scorer_code, scorer_infos
from lightning_prune.sweep import SweepPoint, choose, parse_sparsities, write_sweep_reports

SCORES_FILE = "scores.safetensors"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"


def check_request(
    scorer: str,
    scorer_options: dict[str, Any] | None,
    labels: str,
    sparsity: float | list[float],
    scope: str,
    min_keep: int,
    output_dir: str,
    overwrite: bool,
    cache_dir: str | None = None,
    inputs: dict[str, Path | str | None] | None = None,
    max_drop: float | None = None,
    save_dtype: str = "auto",
) -> NeuronScorer:
    """Reject bad settings and unusable outputs before any model or data is loaded; return the scorer.

    ``inputs`` (see ``user_inputs``): what the run reads; neither ``output_dir`` nor the score cache may be,
    lie inside or contain one of them (the cache may lie above them: it only adds files of its own).
    """
    sparsities = parse_sparsities(sparsity)
    if not sparsities:
        raise UsageError("sparsity is an empty list: give one fraction of FFN neurons to remove, or several")
    for value in sparsities:
        select_neurons([], value, scope, min_keep)  # validates sparsity, scope and min_keep
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"max_drop {max_drop} is negative: give the largest tolerated metric drop, e.g. 0.01")
    if save_dtype != "auto" and save_dtype not in SAVE_DTYPES:
        raise UsageError(f"save_dtype {save_dtype!r} is not supported: use auto, {', '.join(SAVE_DTYPES)}")
    if labels not in ("gold", "pseudo"):
        raise UsageError(f"labels {labels!r} is not supported: use 'gold' (supervised) or 'pseudo' (unsupervised)")
    scorer_impl = create_scorer(scorer, scorer_options)
    inputs = dict(inputs or {})
    cache = cache_root(cache_dir) if scorer_impl.needs_data else None
    check_output_location(output_dir, "output_dir", {**inputs, "the score cache": cache})
    check_replaceable(Path(output_dir), overwrite)
    check_writable(output_dir, "output_dir", in_parent=True)
    if cache is not None:
        check_output_location(cache, "cache_dir", inputs, may_contain_inputs=True)
        check_writable(cache, "cache_dir")
    return scorer_impl


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


def _score_request(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    scorer: str,
    scorer_options: dict[str, Any] | None,
    labels: str,
) -> dict[str, Any]:
    """Everything that determines a data scorer's scores: the cache key is a hash of it."""
    provider = scorer_infos()[scorer]
    return {
        "code": scorer_code(scorer),  # this package's and the scorer's source: other code, other scores
        "model": model_fingerprint(model.net),
        "architecture": model.net.architecture,
        "task": model.spec.name,
        "task_labels": model.spec.labels,
        "max_length": model.net.max_length,
        "input_settings": model.net.input_settings(),
        "examples": examples_fingerprint(datamodule.score_examples()),
        "batch_size": datamodule.hparams.batch_size,
        "scorer": scorer,
        "scorer_provider": f"{provider.distribution}=={provider.version}:{provider.entry_point.value}",
        "scorer_options": scorer_options or {},
        "scorer_settings": vars(create_scorer(scorer, scorer_options)),  # with defaults: a new default, a new key
        "labels": labels,
        "precision": str(trainer.precision),
        "limit_predict_batches": trainer.limit_predict_batches,  # a partial scoring run is not the full one
    }


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
    compensate: bool = True,
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
        scope: ``layer`` (every layer loses the same fraction) or ``global`` (lowest scores model-wide).
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
        compensate: replace every removed neuron by its mean activation over the scoring examples' words,
            folded into the down projection's bias (layers without a bias are cut plainly): keeps the
            pruned model's predictions balanced on inputs unlike the scoring examples (e.g. long texts).
    """
    h = datamodule.hparams
    inputs = user_inputs(
        model.hparams.path, h.data_dir, h.score_file, h.eval_file, h.selection_file, model.hparams.adapter
    )
    scorer_impl = check_request(
        scorer,
        scorer_options,
        labels,
        sparsity,
        scope,
        min_keep,
        output_dir,
        overwrite,
        cache_dir,
        inputs,
        max_drop,
        save_dtype,
    )
    sparsities = parse_sparsities(sparsity)
    widest = max(layer.size for layer in model.net.ffn_layers())
    if max(sparsities) > 0 and min_keep >= widest:
        raise UsageError(
            f"min_keep {min_keep} is at least the width of every FFN layer (the widest has {widest} neurons): "
            "nothing would be pruned; choose a smaller min_keep"
        )
    if scorer_impl.needs_data:
        # Bad data, or a scorer that cannot fit its heaviest batch in memory, fails now, before any model work.
        scorer_impl.check_memory(model.net, datamodule.heaviest_score_batch(model.net), available_memory(trainer))
    # Compensation folds into down-projection biases: models without them (T5, decoder LMs) are cut plainly.
    compensate = compensate and any(layer.down_proj.bias is not None for layer in model.net.ffn_layers())
    if compensate:
        datamodule.score_examples()  # the means come from them: bad data fails now
    datamodule.eval_examples()
    if max_drop is not None:
        datamodule.selection_examples_list()
    seconds: dict[str, float] = {}
    metric = model.spec.primary_metric
    dense_neurons = model.ffn_sizes()
    dense: dict[str, Any] = {"parameters": model.net.num_parameters(), "metrics": None, "selection_metrics": None}

    if evaluate_dense:
        start = time.perf_counter()
        dense["metrics"] = test_metrics(trainer, model, datamodule)
        seconds["evaluate_dense"] = time.perf_counter() - start
    if max_drop is not None:
        start = time.perf_counter()
        dense["selection_metrics"] = test_metrics(trainer, model, datamodule, "selection")
        seconds["evaluate_selection"] = time.perf_counter() - start

    start = time.perf_counter()
    layers = model.net.ffn_layers()
    cache, from_cache, resumed_batches = None, False, 0
    if scorer_impl.needs_data:
        request = _score_request(trainer, model, datamodule, scorer, scorer_options, labels)
        cache = ScoreCache(cache_root(cache_dir), score_key(request), request)
        limited = trainer.limit_predict_batches not in (None, 1.0)  # then the example count is not known ahead
        expected = None if limited else len(datamodule.score_examples())
        cached = cache.load_final([layer.size for layer in layers], expected) if reuse_scores else None
        if cache.rejected:
            rank_zero_info(f"note: score cache: {'; '.join(cache.rejected)}: recomputing those scores")
        if cached is not None:
            (scores, examples_scored), from_cache = cached, True
        else:
            rank_zero_info(f"scoring {len(datamodule.score_examples())} examples with {scorer}")
            scoring = ScoringModule(model.net, scorer_impl, scorer, labels, cache, checkpoint_every, reuse_scores)
            trainer.predict(scoring, datamodule=datamodule, return_predictions=False)
            scores, examples_scored = scoring.scores, scoring.examples_seen
            resumed_batches = scoring.resumed_batches
            if trainer.is_global_zero:
                cache.save_final(scores, examples_scored)
            trainer.strategy.barrier()
            cache.clear_progress(trainer.global_rank, trainer.world_size)
    else:
        scores, examples_scored = check_scores(scorer, scorer_impl(model.net, None), layers), 0
    seconds["score"] = time.perf_counter() - start

    means = None
    if compensate:  # what removed neurons are replaced by: their mean activation over the scoring examples
        averaging = ActivationMeansModule(model.net)
        trainer.predict(averaging, datamodule=datamodule, return_predictions=False)
        means = averaging.means

    # Every sparsity prunes the same dense model: its FFN modules are put back between points, not reloaded.
    dense_ffn = snapshot_ffn(model.net)
    points: list[SweepPoint] = []
    seconds["prune"] = seconds["evaluate_pruned"] = 0.0
    for value in sparsities:
        start = time.perf_counter()
        kept = select_neurons(scores, value, scope, min_keep)
        prune_model(model.net, kept, means)
        seconds["prune"] += time.perf_counter() - start
        start = time.perf_counter()
        point = SweepPoint(value, kept, model.net.num_parameters(), test_metrics(trainer, model, datamodule))
        seconds["evaluate_pruned"] += time.perf_counter() - start
        if max_drop is not None:
            start = time.perf_counter()
            point.selection_metrics = test_metrics(trainer, model, datamodule, "selection")
            seconds["evaluate_selection"] += time.perf_counter() - start
        points.append(point)
        restore_ffn(model.net, dense_ffn)
        if len(sparsities) > 1:
            selected = f", selection {point.selection_metrics[metric]:.4f}" if point.selection_metrics else ""
            rank_zero_info(f"sparsity {value:g}: {metric} {point.metrics[metric]:.4f}{selected}")
    if max_drop is not None:
        chosen = choose(points, dense["selection_metrics"][metric], metric, max_drop)
    else:
        chosen = points[0] if len(points) == 1 else None
    to_save = {MODEL_DIR: chosen} if chosen is not None and save_models != "none" else {}
    if save_models == "all" and len(points) > 1:
        to_save.update({f"{MODEL_DIR}-{point.sparsity:g}": point for point in points})

    summary: dict[str, Any] = {
        "task": model.spec.name,
        "model": model.hparams.path,
        "adapter": model.hparams.adapter,
        "architecture": model.net.architecture,
        "scorer": scorer,
        "scorer_options": scorer_options or {},
        "labels": labels,
        "examples_scored": examples_scored,
        "score_key": cache.key if cache is not None else None,
        "scores_from_cache": from_cache,
        "cache_entries_rejected": cache.rejected if cache is not None else [],  # damaged or not fitting: recomputed
        "batches_resumed": resumed_batches,  # on rank 0: batches restored from an interrupted run
        "sparsity": chosen.sparsity if chosen else None,
        # The FFN neurons removed: below ``sparsity`` where min_keep keeps more.
        "achieved_sparsity": chosen.achieved_sparsity(dense_neurons) if chosen else None,
        "scope": scope,
        "primary_metric": metric,
        "dense_metrics": dense["metrics"],
        "pruned_metrics": chosen.metrics if chosen else None,
        "parameters": {"dense": dense["parameters"], "pruned": chosen.parameters if chosen else None},
        "bias_compensation": compensate,
        "ffn_neurons": {
            name: {"dense": size, "kept": len(chosen.kept[i]) if chosen else None}
            for i, (name, size) in enumerate(dense_neurons.items())
        },
        "world_size": trainer.world_size,
        "seconds": seconds,
    }
    if max_drop is not None:
        summary["selection"] = {
            "max_drop": max_drop,
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
    if trainer.is_global_zero:
        start = time.perf_counter()
        with (
            write_errors_reported("output_dir", output_dir),
            atomic_directory(Path(output_dir), overwrite=overwrite, protected=inputs) as tmp,
        ):
            save_file(
                {layer.name: score.contiguous() for layer, score in zip(layers, scores, strict=True)},
                str(tmp / SCORES_FILE),
                metadata={
                    "task": model.spec.name,
                    "scorer": scorer,
                    "labels": labels,
                    "scorer_options": json.dumps(scorer_options or {}),
                    "examples": str(examples_scored),
                    "layers": json.dumps([layer.name for layer in layers]),
                },
            )
            dtype = None if save_dtype == "auto" else SAVE_DTYPES[save_dtype]
            summary["saved_models"] = {}
            for name, point in to_save.items():
                plan = prune_model(model.net, point.kept, means)
                layout = save_model_folder(model.net, tmp / name, dtype, pad_uneven_ffn)
                padding = {"padded_width": layout["padded_width"]} if layout["padded_width"] is not None else {}
                write_json(tmp / name / PLAN_FILE, {**plan, **padding})
                restore_ffn(model.net, dense_ffn)
                summary["saved_models"][name] = {"sparsity": point.sparsity, **layout}
            if len(points) > 1:
                note = write_sweep_reports(tmp, points, metric, dense, chosen, max_drop)
                if note:
                    rank_zero_warn(note)
            config_text = getattr(trainer, "resolved_config", None)
            if config_text:
                (tmp / CONFIG_FILE).write_text(config_text)
            seconds["save"] = time.perf_counter() - start
            write_json(tmp / METRICS_FILE, summary)
        rank_zero_info(_report(summary, output_dir))
    trainer.strategy.barrier()
    if chosen is not None:  # the in-memory model ends as the chosen (saved) one
        prune_model(model.net, chosen.kept, means)
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
    return (
        f"{summary['task']}: {metric} dense {dense:.4f} -> pruned {pruned:.4f} at FFN sparsity {asked} "
        f"({summary['scorer']}); parameters {params['dense']:,} -> {params['pruned']:,}{chosen}; wrote {output_dir}"
    )
