"""What a run reports: ``metrics.json``'s record of it (``summarize_run``) and the line printed at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning import Trainer

from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.evaluate import DenseResult
from lightning_prune.pipeline.score import Scores
from lightning_prune.pipeline.setup import RunSetup
from lightning_prune.pipeline.statistics import RepairStatistics
from lightning_prune.pipeline.sweep import Choice, Sweep, SweepPoint
from lightning_prune.vocabulary import VocabularyCut


@dataclass(frozen=True)
class Outcome:
    """Everything a run settled and measured, stage by stage."""

    setup: RunSetup
    dense: DenseResult
    statistics: RepairStatistics
    scores: Scores
    sweep: Sweep
    choice: Choice


def stage_seconds(outcome: Outcome) -> dict[str, float]:
    """Seconds per stage, for the stages that ran (``save`` is added once the output is written)."""
    dense, sweep = outcome.dense, outcome.sweep
    selection = None if dense.selection_seconds is None else dense.selection_seconds + (sweep.selection_seconds or 0)
    seconds = {
        "evaluate_dense": dense.evaluate_seconds,
        "evaluate_selection": selection,
        "statistics": outcome.statistics.seconds,
        "score": outcome.scores.seconds,
        "select": sweep.select_seconds,
        "prune": sweep.prune_seconds,
        "evaluate_pruned": sweep.evaluate_seconds,
    }
    return {name: value for name, value in seconds.items() if value is not None}


def summarize_run(trainer: Trainer, model: TaskModel, outcome: Outcome) -> dict[str, Any]:
    """What ``metrics.json`` records about the run (before its models are saved: ``write_run`` adds how)."""
    setup, dense, scores, chosen = outcome.setup, outcome.dense, outcome.scores, outcome.choice.chosen
    settings, metric = setup.settings, model.spec.primary_metric
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
        "sparsity": chosen.cut.sparsity if chosen else None,
        # The FFN neurons removed: below ``sparsity`` where min_keep keeps more.
        "achieved_sparsity": chosen.cut.achieved_sparsity(list(dense.neurons.values())) if chosen else None,
        "scope": settings.scope,
        "width_multiple": settings.width_multiple,
        "primary_metric": metric,
        "dense_metrics": dense.metrics,
        "pruned_metrics": chosen.metrics if chosen else None,
        "parameters": {"dense": dense.parameters, "pruned": chosen.parameters if chosen else None},
        "reconstruct": setup.repair,  # what applied: "auto" resolved, "none" where "bias" found no down bias
        "refit_aware": scores.refit_aware,
        "calibration_examples": outcome.statistics.examples,  # as many as a --trainer limit let through
        "ffn_neurons": {
            name: {"dense": size, "kept": len(chosen.cut.kept[i]) if chosen else None}
            for i, (name, size) in enumerate(dense.neurons.items())
        },
        "target_speedup": chosen.cut.target_speedup if chosen else settings.target_speedup,
        "world_size": trainer.world_size,
        "seconds": stage_seconds(outcome),
    }
    vocabulary = _vocabulary_summary(outcome.setup.vocabulary)
    return {**summary, **_budget_summary(model, outcome), **_sweep_summary(outcome, metric), **vocabulary}


def _vocabulary_summary(cut: VocabularyCut | None) -> dict[str, Any]:
    """The task vocabulary's size and what it costs the evaluation texts (``--vocabulary task``)."""
    if cut is None:
        return {}
    part: dict[str, Any] = {"vocabulary": {"tokens": {"dense": cut.total, "kept": cut.kept}}}
    if cut.evaluation is not None:
        e = cut.evaluation
        part["vocabulary"]["evaluation_texts"] = {
            "texts": e.texts,
            "tokens": {"full": e.original_tokens, "task": e.trimmed_tokens},
            "more_tokens_percent": round(e.extra_tokens_percent, 2),
            "segmented_as_before": e.identical,  # texts whose ids are the full vocabulary's, renumbered
            "decoded_as_before": e.same_decode,
            "unknown_tokens": {"full": e.original_unknown, "task": e.trimmed_unknown},  # WordPiece [UNK]
        }
    return part


def _budget_summary(model: TaskModel, outcome: Outcome) -> dict[str, Any]:
    """The chosen point's heads and FLOPs, where the run removed heads or counted FLOPs."""
    chosen, dense, part = outcome.choice.chosen, outcome.dense, {}
    if chosen is not None and chosen.cut.kept_heads is not None:
        part["attention_heads"] = {
            layer.name: {"dense": layer.num_heads, "kept": len(kept) * layer.queries_per_group}
            for layer, kept in zip(model.net.attention_layers(), chosen.cut.kept_heads, strict=True)
        }
    if chosen is not None and chosen.flops is not None:
        assert dense.flops is not None
        part["flops"] = {
            "examples": len(outcome.setup.flop_examples),
            "dense": dense.flops,
            "pruned": chosen.flops,
            "speedup": dense.flops / chosen.flops,
        }
        if dense.evaluate_seconds is not None:  # the same examples, one pass each: a rough measured ratio
            part["flops"]["evaluation_seconds_ratio"] = dense.evaluate_seconds / outcome.sweep.evaluate_seconds
    return part


def _sweep_summary(outcome: Outcome, metric: str) -> dict[str, Any]:
    """The ``max_drop`` choice and, for several points, each one's row."""
    setup, dense, choice, part = outcome.setup, outcome.dense, outcome.choice, {}
    chosen = choice.chosen
    if setup.settings.max_drop is not None:
        assert setup.selection is not None
        part["selection"] = {
            "max_drop": setup.settings.max_drop,
            "examples": len(setup.selection),
            "source": setup.selection_source,
            "dense_metrics": dense.selection_metrics,
            "chosen_metrics": chosen.selection_metrics if chosen else None,
            "chosen_sparsity": chosen.cut.sparsity if chosen else None,
            "chosen_target_speedup": chosen.cut.target_speedup if chosen else None,
        }
    if len(choice.points) > 1:
        part["sweep"] = [point_row(point, dense, choice) for point in choice.points]
    return part


def point_row(point: SweepPoint, dense: DenseResult, choice: Choice) -> dict[str, Any]:
    """One sweep point as ``metrics.json`` (and the benchmarks) record it."""
    return {
        "sparsity": point.cut.sparsity,
        "target_speedup": point.cut.target_speedup,
        "flop_speedup": dense.flops / point.flops if point.flops and dense.flops else None,
        "parameters": point.parameters,
        "metrics": point.metrics,
        "selection_metrics": point.selection_metrics,
        "within_drop": point.within_drop,
        "saved_as": next((name for name, p in choice.to_save.items() if p is point), None),
    }


def report_line(summary: dict[str, Any], output_dir: str) -> str:
    """The line a run ends with: the metric dense and pruned, the sparsity (or FLOPs) reached, the sizes, where it
    wrote, and how to load a model plain ``from_pretrained`` cannot."""
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
    cut = summary.get("vocabulary") or {}
    vocabulary = f", vocabulary {cut['tokens']['dense']:,} -> {cut['tokens']['kept']:,} tokens" if cut else ""
    if "evaluation_texts" in cut:
        vocabulary += f" (evaluation texts +{cut['evaluation_texts']['more_tokens_percent']:g}% tokens)"
    return (
        f"{summary['task']}: {metric} {dense}pruned {pruned:.4f} at FFN sparsity {_reached(summary)} "
        f"({summary['scorer']}, {summary['scope']} scope); parameters {params['dense']:,} -> {params['pruned']:,}"
        f"{vocabulary}{chosen}; wrote {output_dir}{_loading_hint(summary)}"
    )


def _reached(summary: dict[str, Any]) -> str:
    """The sparsity reached, with why it differs from the one asked for, or the FLOPs a budget run reached."""
    asked, achieved = summary["sparsity"], summary["achieved_sparsity"]
    if summary.get("flops"):
        flops = summary["flops"]
        heads = summary.get("attention_heads") or {}
        kept_heads = sum(v["kept"] for v in heads.values())
        return (
            f"{achieved:.3f}"
            + (f" and {1 - kept_heads / sum(v['dense'] for v in heads.values()):.3f} of the heads" if heads else "")
            + f": {flops['speedup']:.2f}x fewer FLOPs (target {summary['target_speedup']:g})"
        )
    if abs(achieved - asked) > 0.005:
        multiple = summary["width_multiple"]
        why = f"widths rounded to multiples of {multiple}" if multiple > 1 else "min_keep kept more"
        return f"{achieved:.3f} (asked {asked}; {why})"
    return f"{asked}"


def _loading_hint(summary: dict[str, Any]) -> str:
    uneven = any(not saved["plain_hf_loadable"] for saved in (summary.get("saved_models") or {}).values())
    if not uneven:
        return ""
    return (
        " (per-layer shapes: load it with lightning_prune.load_pruned_model; --pad_uneven_ffn true saves one that "
        "plain from_pretrained loads, padded with zeros to shapes its config can hold, as large as needed)"
    )
