"""The pruning plan: which neurons (and head groups) of which layer a saved model kept, so it can be rebuilt and
loaded."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_prune.errors import UsageError
from lightning_prune.pruning.slicing import slice_units
from lightning_prune.vocabulary.cut import VocabularyState, cut_vocabulary, restore_vocabulary, vocabulary_state

if TYPE_CHECKING:
    from lightning_prune.adapters.base import PrunableModel, UnitLayer
    from lightning_prune.pruning.keep import Cut
    from lightning_prune.pruning.repair import Repair
    from lightning_prune.vocabulary.cut import VocabularyCut

PLAN_FILE = "pruning_plan.json"
PADDING_KEYS = ("padded_width", "padded_heads")  # how a folder stored its layers, not part of the model's plan


def _repairs(entry: dict) -> list[str]:
    """The repairs a plan entry records (version 1 plans recorded only bias compensation, as a flag)."""
    return list(entry.get("reconstruction", ["bias"] if entry.get("bias_compensated") else []))


def _prune_layers(
    layers: list[UnitLayer],
    kept: list[Tensor],
    previous: list[dict] | None,
    repair: Repair | None,
    offset: int,
) -> list[dict]:
    """Slice ``layers`` to their ``kept`` units (repairing their down projections with ``repair``, whose
    statistics for layer i sit at ``offset + i``) and return their plan entries, composed with ``previous``."""
    entries = []
    for index, (layer, keep) in enumerate(zip(layers, kept, strict=True)):
        dense_size, original = layer.size, keep
        if previous is not None:
            dense_size = previous[index]["dense_size"]
            original = torch.tensor(previous[index]["kept"], dtype=torch.long)[keep.cpu().long()]
        repaired = repair is not None and repair.applies_to(layer)
        columns = layer.columns(keep)
        down = repair.down_projection(offset + index, layer, columns) if repaired and repair else None
        slice_units(layer, keep, down)
        earlier = _repairs(previous[index]) if previous is not None else []
        entries.append(
            {
                "name": layer.name,
                "dense_size": dense_size,
                "kept": original.tolist(),
                # every repair this layer went through, pruning after pruning
                "reconstruction": [*earlier, repair.method] if repaired and repair else earlier,
            }
        )
    return entries


def prune_model(
    model: PrunableModel,
    kept: list[Tensor],
    repair: Repair | None = None,
    kept_heads: list[Tensor] | None = None,
    vocabulary: VocabularyCut | None = None,
) -> dict:
    """Slice every FFN layer of ``model`` to its ``kept`` neurons (and, with ``kept_heads``, every attention layer
    to its kept head groups); return the plan that rebuilds it.

    A model that is already pruned (loaded with a plan) is pruned further: the new plan's kept indices
    refer to the original dense model, so it rebuilds from the same dense config as the first one.
    With a ``repair`` (statistics of the FFN layers, then of the attention layers when heads go), each
    layer it applies to gets its down (output) projection repaired (bias compensation, or a least-squares refit);
    the plan records which. Only weight and bias values change, which the saved weights hold: loading needs
    nothing more.
    """
    plan = model.pruning_plan
    layers = model.ffn_layers()
    entries = _prune_layers(layers, kept, plan["layers"] if plan else None, repair, 0)
    attention = list(plan.get("attention", [])) if plan else []
    if kept_heads is not None:
        attention = _prune_layers(model.attention_layers(), kept_heads, attention or None, repair, len(layers))
    tokens = plan.get("vocabulary") if plan else None
    if vocabulary is not None:
        tokens = _vocabulary_entry(vocabulary, tokens)
        cut_vocabulary(model, vocabulary)
    model.pruning_plan = {
        "format": "lightning-prune/pruning-plan",
        "version": 3,
        "architecture": model.architecture,
        "layers": entries,
        **({"attention": attention} if attention else {}),
        **({"vocabulary": tokens} if tokens else {}),
    }
    return model.pruning_plan


def _vocabulary_entry(vocabulary: VocabularyCut, previous: dict | None) -> dict:
    """The plan's record of a vocabulary cut: the original model's ids of the kept tokens (composed with an earlier
    cut). Informational: the saved config and tokenizer already hold the smaller vocabulary."""
    kept = torch.tensor(vocabulary.old_ids, dtype=torch.long)
    if previous is not None:
        kept = torch.tensor(previous["kept"], dtype=torch.long)[kept]
    return {"dense_size": previous["dense_size"] if previous else vocabulary.total, "kept": kept.tolist()}


@dataclass
class UnitSnapshot:
    """A model's FFN and attention projection modules (per layer, by path), its vocabulary and its pruning plan at
    one moment."""

    modules: list[dict[str, nn.Module]]
    plan: dict | None
    vocabulary: VocabularyState


def snapshot_units(model: PrunableModel) -> UnitSnapshot:
    """Record the FFN and attention projection modules and the plan. Slicing builds new modules and never changes
    these, so ``restore_units`` brings the model back to this state without a copy (a sparsity sweep prunes the
    same model once per sparsity, each time composing with the plan it was loaded with, not the previous point's)."""
    modules = [
        {path: layer.block.get_submodule(path) for path in layer.projections} for layer in model.unit_layers(True)
    ]
    return UnitSnapshot(modules, model.pruning_plan, vocabulary_state(model))


def restore_units(model: PrunableModel, snapshot: UnitSnapshot) -> None:
    """Put back the modules and plan recorded by ``snapshot_units``."""
    for layer, modules in zip(model.unit_layers(True), snapshot.modules, strict=True):
        for path, module in modules.items():
            layer.block.set_submodule(path, module)
    restore_vocabulary(model, snapshot.vocabulary)
    model.pruning_plan = snapshot.plan


@contextlib.contextmanager
def restored(model: PrunableModel) -> Iterator[None]:
    """Whatever the block cuts of ``model``, it is put back as it was afterwards, also when the block fails."""
    snapshot = snapshot_units(model)
    try:
        yield
    finally:
        restore_units(model, snapshot)


@contextlib.contextmanager
def pruned(model: PrunableModel, cut: Cut, repair: Repair | None = None) -> Iterator[dict]:
    """``model`` cut to ``cut`` (repaired by ``repair``) inside the block, yielding the plan, and put back
    afterwards (``restored``): every point of a sweep prunes the same model."""
    with restored(model):
        yield prune_model(model, cut.kept, repair, cut.kept_heads, cut.vocabulary)


def read_plan(folder: Path) -> dict | None:
    path = folder / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}): the pruned model folder is damaged") from None


def _slice_to_plan(layers: list[UnitLayer], entries: list[dict], saved: int | None, source: Path, unit: str) -> None:
    """Shrink freshly built dense ``layers`` to their plan ``entries`` (``saved``: the padded width they were saved
    at, if any)."""
    names = [layer.name for layer in layers]
    if [entry.get("name") for entry in entries] != names:
        raise UsageError(
            f"{source / PLAN_FILE} does not match the model's {unit} layers ({len(entries)} planned, "
            f"{len(layers)} in the model): the plan belongs to another model"
        )
    for layer, entry in zip(layers, entries, strict=True):
        kept = torch.tensor(entry["kept"], dtype=torch.long)
        if layer.size == (saved or kept.numel()):
            continue  # built at the saved width already: the saved config holds it
        if entry["dense_size"] != layer.size:
            raise UsageError(
                f"{source / PLAN_FILE}: layer {layer.name} has {layer.size} {layer.unit_name}, the plan expects "
                f"{entry['dense_size']}: the plan belongs to another model"
            )
        if (
            kept.numel() == 0
            or int(kept.min()) < 0
            or int(kept.max()) >= layer.size
            or kept.unique().numel() < len(kept)
        ):
            raise UsageError(
                f"{source / PLAN_FILE}: layer {layer.name} keeps {kept.numel()} of its {layer.size} {layer.unit_name} "
                f"by indices that do not fit it (from {int(kept.min()) if kept.numel() else '-'} to "
                f"{int(kept.max()) if kept.numel() else '-'}, or repeated): the plan is damaged; prune again"
            )
        slice_units(layer, kept)


def apply_plan(model: PrunableModel, plan: dict, source: Path) -> None:
    """Shrink a freshly built dense ``model`` to the plan's shapes (weights are loaded afterwards): FFN widths as
    the config or the plan say (``PrunableModel.ffn_width_key``), head groups likewise (``head_count_keys``)."""
    _slice_to_plan(model.ffn_layers(), plan.get("layers", []), plan.get("padded_width"), source, "FFN")
    if plan.get("attention"):
        _slice_to_plan(model.attention_layers(), plan["attention"], plan.get("padded_heads"), source, "attention")


def trim_padding(model: PrunableModel, plan: dict) -> None:
    """Drop the all-zero neurons and heads a padded save appended (after the kept ones) once the weights are
    loaded."""
    for layers, entries in (
        (model.ffn_layers(), plan.get("layers", [])),
        (model.attention_layers(), plan.get("attention", [])),
    ):
        for layer, entry in zip(layers, entries, strict=False):
            if layer.size > len(entry["kept"]):
                slice_units(layer, torch.arange(len(entry["kept"])))
