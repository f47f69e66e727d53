"""Checks that run before any work: the request alone (before a model loads), then the request against the loaded
model. Each raises ``UsageError`` with one line; none changes anything."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from lightning import Trainer

from lightning_prune.adapters import model_inputs
from lightning_prune.cache import cache_root
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.io import (
    Protected,
    check_output_location,
    check_renameable,
    check_replaceable,
    check_writable,
)
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.settings import FitFreeSettings
from lightning_prune.pruning import ActivationStatistics, Reconstruct, RepairMethod, keep_neurons
from lightning_prune.scorers import NeuronScorer, create_scorer
from lightning_prune.sources import gguf_input, require_gguf_extra
from lightning_prune.tasks import read_texts


def user_inputs(
    model_path: str,
    data_dir: str | None,
    score_file: str | None,
    eval_file: str | None,
    selection_file: str | None = None,
    adapter: str | None = None,
) -> dict[str, Path | str | None]:
    """Everything a run reads, by description: no output may be, lie inside or contain any of them."""
    files = {"score_file": score_file, "eval_file": eval_file, "selection_file": selection_file}
    return {**model_inputs(model_path, adapter), "data_dir": data_dir, **files}


def run_inputs(model: TaskModel, datamodule: TaskDataModule) -> dict[str, Path | str | None]:
    """What this run reads (``user_inputs``), from the model's and the data's settings."""
    h = datamodule.hparams
    return user_inputs(
        model.hparams.path, h.data_dir, h.score_file, h.eval_file, h.selection_file, model.hparams.adapter
    )


def check_request(settings: FitFreeSettings, inputs: Protected | None = None) -> NeuronScorer:
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
        keep_neurons([], value, s.scope, s.min_keep)  # validates sparsity, scope and min_keep
    if s.keep_rule == "obs" and s.target_speedup is not None:
        raise UsageError("keep_rule obs removes FFN neurons by sparsity: use --sparsity, or --keep_rule scores")
    if s.max_drop is not None and not (math.isfinite(s.max_drop) and s.max_drop >= 0):
        raise UsageError(
            f"max_drop {s.max_drop} is not a drop: give the largest tolerated metric drop, a number from 0, e.g. 0.01"
        )
    if not math.isfinite(s.damping):
        raise UsageError(f"damping {s.damping} is not a finite number: give a small fraction, e.g. 0.01 (the default)")
    if s.vocabulary_texts is not None:
        if s.vocabulary != "task":
            raise UsageError("vocabulary_texts adds texts to a task vocabulary: add --vocabulary task, or drop it")
        read_texts(s.vocabulary_texts, "vocabulary_texts")
    if s.export_gguf is not None:
        _check_export_request(s)
    scorer = create_scorer(s.scorer, s.scorer_options)
    check_refit_aware(s, s.reconstruct, scorer)  # "auto" is resolved, and checked again, with the model
    if s.prunes_heads and not scorer.scores_heads:
        raise UsageError(
            f"scorer {s.scorer!r} scores FFN neurons only, and --target_speedup removes attention heads too: "
            "choose a scorer with head scores (attribution, fisher, wanda, activation, magnitude, random) or "
            "--heads false"
        )
    inputs = {**(inputs or {}), "vocabulary_texts": s.vocabulary_texts}
    cache = cache_root(s.cache_dir) if scorer.needs_data else None
    check_output_location(s.output_dir, "output_dir", {**inputs, "the score cache": cache})
    check_replaceable(Path(s.output_dir), s.overwrite)
    check_writable(s.output_dir, "output_dir", in_parent=True)
    check_renameable(s.output_dir, "output_dir")
    if cache is not None:
        check_output_location(cache, "cache_dir", inputs, may_contain_inputs=True)
        check_writable(cache, "cache_dir")
    return scorer


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


def _check_export_request(s: FitFreeSettings) -> None:
    """``export_gguf`` writes the saved ``model/``, with the optional ``gguf`` package."""
    if s.save_models == "none" or (s.points > 1 and s.max_drop is None):
        raise UsageError(
            "export_gguf writes the saved model/ as model.gguf, and this run saves none: drop --save_models none, "
            "or choose one sparsity (or a --max_drop sweep)"
        )
    require_gguf_extra("export_gguf")


def check_exportable(model: TaskModel, settings: FitFreeSettings) -> None:
    """``export_gguf`` needs a decoder LM whose family llama.cpp builds at the widths this run may give it."""
    if settings.export_gguf is None:
        return
    if not model.net.answers_through_prompt:
        raise UsageError(
            f"export_gguf writes decoder LMs for llama.cpp; {model.net.architecture} models are not run there: "
            "drop --export_gguf"
        )
    from lightning_prune.export.gguf import check_convertible
    from lightning_prune.export.gguf import check_exportable as check_family

    uneven = settings.scope == "global" or settings.prunes_heads
    check_family(model.net.architecture, uneven, settings.pad_uneven_ffn)
    if settings.vocabulary == "task" or gguf_input(model.hparams.path) is None:  # converted, not copied
        backend = getattr(model.net.source_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UsageError("export_gguf converts the tokenizer.json this model lacks: drop --export_gguf")
        check_convertible(json.loads(backend.to_str()))


def check_keep_rule(settings: FitFreeSettings, repair: RepairMethod) -> None:
    """``keep_rule obs`` orders removals by what the least-squares refit leaves: it needs that refit."""
    if settings.keep_rule == "obs" and repair != "least_squares":
        raise UsageError(
            f"keep_rule obs orders removals by what the least-squares refit leaves, and this run's reconstruction is "
            f"{repair!r}: add --reconstruct least_squares, or use --keep_rule scores"
        )


def refit_aware_scoring(settings: FitFreeSettings, repair: RepairMethod, scorer: NeuronScorer) -> bool:
    """Whether the scorer weighs neurons by what the least-squares refit cannot restore of them (their residuals,
    ``NeuronScorer.weighed_activations``): unless ``refit_aware`` is false, wherever the refit runs and the scorer
    can."""
    if settings.refit_aware is False or repair != "least_squares":
        return False
    return scorer.needs_data and scorer.scores_residuals


def check_refit_aware(settings: FitFreeSettings, repair: Reconstruct, scorer: NeuronScorer) -> None:
    """Refuse ``refit_aware`` true where it cannot apply: without the least-squares refit (``repair``, as asked or
    as resolved for the model), or with a scorer that does not weigh activations."""
    if not settings.refit_aware:
        return
    if repair in ("bias", "none"):
        raise UsageError(
            f"refit_aware scores what the least-squares refit cannot restore, and this run's reconstruction is "
            f"{repair!r}: add --reconstruct least_squares, or drop --refit_aware"
        )
    if not (scorer.needs_data and scorer.scores_residuals):
        raise UsageError(
            f"scorer {settings.scorer!r} does not weigh neurons by their activations, so it cannot score their "
            "residuals: drop --refit_aware, or choose attribution, fisher, wanda or activation"
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


def check_widths(model: TaskModel, settings: FitFreeSettings) -> None:
    """``min_keep`` and ``width_multiple`` must leave something to prune in the widest FFN layer."""
    widest = max(layer.size for layer in model.net.ffn_layers())
    if max(settings.sparsities, default=1.0) > 0 and settings.min_keep >= widest:
        raise UsageError(
            f"min_keep {settings.min_keep} is at least the width of every FFN layer (the widest has {widest} "
            "neurons): nothing would be pruned; choose a smaller min_keep"
        )
    if settings.width_multiple >= widest:
        raise UsageError(
            f"width_multiple {settings.width_multiple} is at least the width of every FFN layer (the widest has "
            f"{widest} neurons): every layer would keep all of them; choose a divisor of the width, e.g. 64"
        )


def check_scorer_fits(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings, scorer: NeuronScorer
) -> None:
    """The scorer's memory for its heaviest batch fits, and the model's heads can go where the run removes them."""
    if scorer.needs_data:
        scorer.check_memory(model.net, datamodule.heaviest_score_batch(model.net), available_memory(trainer))
    if settings.prunes_heads and model.net.head_pruning_unsupported:
        raise UsageError(
            f"{model.net.architecture} models cannot lose attention heads: {model.net.head_pruning_unsupported}; "
            "use --target_speedup with --heads false, or --sparsity"
        )


def check_statistics_memory(
    trainer: Trainer, model: TaskModel, settings: FitFreeSettings, repair: RepairMethod, refit_aware: bool
) -> None:
    """The least-squares refit's d_ff² statistics per layer (and refit-aware scoring's residual maps) must fit in
    half the free memory."""
    if repair != "least_squares":
        return
    layers = model.net.unit_layers(settings.prunes_heads)
    needed, free = ActivationStatistics.bytes_needed(layers, True), available_memory(trainer)
    if refit_aware:  # one d_ff² residual map per FFN layer besides
        needed += ActivationStatistics.bytes_needed(model.net.ffn_layers(), True)
    if free is not None and needed > free // 2:
        raise UsageError(
            f"least_squares reconstruction needs {needed / 2**30:.1f} GiB of activation statistics "
            + ("and residual maps " if refit_aware else "")
            + f"(d_ff² per layer) and {free / 2**30:.1f} GiB are free: use --reconstruct bias or none"
            + (", or --refit_aware false" if refit_aware else "")
        )
