"""What a run will do, settled before any work and after every check: the scorer, the repair that applies to this
model, the examples each stage uses, and for a FLOP budget what each unit costs (``RunSetup``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightning import Trainer

from lightning_prune.adapters import Batch, PrunableModel
from lightning_prune.attention import AttentionLayer
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.check import (
    check_exportable,
    check_keep_rule,
    check_refit_aware,
    check_request,
    check_scorer_fits,
    check_statistics_memory,
    check_widths,
    refit_aware_scoring,
    run_inputs,
)
from lightning_prune.pipeline.settings import FitFreeSettings
from lightning_prune.pruning import Reconstruct, RepairMethod
from lightning_prune.pruning.budget import UnitCosts, unit_costs
from lightning_prune.scorers import NeuronScorer
from lightning_prune.tasks import Example, read_texts
from lightning_prune.vocabulary import VocabularyCut, plan_vocabulary

FLOP_COUNT_EXAMPLES = 64  # evaluation examples whose FLOPs price the units for --target_speedup


@dataclass(frozen=True)
class RunSetup:
    """A checked run: its settings and scorer, and what the loaded model and data settle."""

    settings: FitFreeSettings
    scorer: NeuronScorer
    inputs: dict[str, Path | str | None]  # what the run reads: outputs keep clear of them
    repair: RepairMethod  # what applies: "auto" resolved; "none" where bias compensation finds no down bias
    refit_aware: bool  # the scorer weighs the residuals the least-squares refit leaves
    calibration: list[Example]  # the repair statistics' examples (none for a plain cut)
    selection: list[Example] | None  # ``max_drop``'s held-apart examples
    selection_source: str | None
    flop_examples: list[Example]  # what ``target_speedup`` counts FLOPs on (none for a sparsity run)
    costs: UnitCosts | None  # each unit's FLOPs on them
    vocabulary: VocabularyCut | None = None  # the task's tokens (``--vocabulary task``)


def set_up_run(trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings) -> RunSetup:
    """Check the request, then the request against the model, and read every data source once: bad input fails
    here, before minutes of scoring."""
    inputs = {**run_inputs(model, datamodule), "vocabulary_texts": settings.vocabulary_texts}
    scorer = check_request(settings, inputs)
    check_widths(model, settings)
    check_exportable(model, settings)
    repair = resolve_repair(settings.reconstruct, model.net)
    check_refit_aware(settings, repair, scorer)
    check_keep_rule(settings, repair)
    check_scorer_fits(trainer, model, datamodule, settings, scorer)
    flop_examples = datamodule.eval_examples()[:FLOP_COUNT_EXAMPLES] if settings.target_speedup is not None else []
    batch_size = datamodule.hparams.batch_size
    costs = price_units(model.net, settings, flop_batches(model, flop_examples, batch_size)) if flop_examples else None
    refit_aware = refit_aware_scoring(settings, repair, scorer)
    check_statistics_memory(trainer, model, settings, repair, refit_aware)
    held_apart = settings.max_drop is not None
    calibration = datamodule.calibration_examples_list(avoid_selection=held_apart) if repair != "none" else []
    datamodule.eval_examples()
    selection = datamodule.selection_examples_list() if held_apart else None
    source = datamodule.selection_source() if held_apart else None
    vocabulary = task_vocabulary(model, datamodule, settings) if settings.vocabulary == "task" else None
    return RunSetup(
        settings, scorer, inputs, repair, refit_aware, calibration, selection, source, flop_examples, costs, vocabulary
    )


def task_vocabulary(model: TaskModel, datamodule: TaskDataModule, settings: FitFreeSettings) -> VocabularyCut:
    """The tokens the task keeps (``--vocabulary task``): of every text the model reads for the scoring source and
    ``vocabulary_texts``; measured on the evaluation examples, as the model reads them (a decoder's whole prompt)."""
    texts = model.net.vocabulary_texts(datamodule.vocabulary_examples())
    if settings.vocabulary_texts is not None:
        texts += read_texts(settings.vocabulary_texts, "vocabulary_texts")
    evaluation = model.net.vocabulary_texts(datamodule.eval_examples())
    return plan_vocabulary(model.net, texts, evaluation, settings.vocabulary_frequent)


def resolve_repair(reconstruct: Reconstruct, net: PrunableModel) -> RepairMethod:
    """The repair ``--reconstruct`` gives this model: ``auto`` is bias compensation where the FFN has a down bias
    (encoders), the least-squares refit elsewhere; ``bias`` without a down bias to fold into is a plain cut."""
    down_biases = any(layer.down_proj.bias is not None for layer in net.ffn_layers())
    if reconstruct == "auto":
        return "bias" if down_biases else "least_squares"
    if reconstruct == "bias" and not down_biases:
        return "none"  # T5 and decoder LMs are cut plainly
    return reconstruct


def flop_batches(model: TaskModel, examples: list[Example], batch_size: int) -> list[Batch]:
    """The batches FLOPs are counted on (the first ``FLOP_COUNT_EXAMPLES`` evaluation examples, as evaluated), made
    with the model's tokenizer of the moment (a vocabulary cut renumbers the tokens)."""
    return [model.collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


def unit_floors(net: PrunableModel, settings: FitFreeSettings) -> list[int]:
    """Units each layer keeps at least: ``min_keep`` neurons per FFN layer, one head group per attention layer."""
    return [
        1 if isinstance(layer, AttentionLayer) else min(settings.min_keep, layer.size)
        for layer in net.unit_layers(settings.prunes_heads)
    ]


def price_units(net: PrunableModel, settings: FitFreeSettings, batches: list[Batch]) -> UnitCosts:
    """Each unit's FLOPs on ``batches``, after checking that the budget can be met: with every layer at its floor
    (``min_keep`` neurons, one head group), the model must need at most 1/target of the dense FLOPs (for the
    highest target)."""
    costs = unit_costs(net, batches, net.unit_layers(settings.prunes_heads))
    floors = unit_floors(net, settings)
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
