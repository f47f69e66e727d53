"""The pruning plan: which neurons of which layer a saved model kept, so it can be rebuilt and loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_prune.errors import UsageError
from lightning_prune.pruning.slicing import slice_ffn

if TYPE_CHECKING:
    from lightning_prune.adapters.base import FFNLayer, PrunableModel
    from lightning_prune.pruning.reconstruction import Reconstruction

PLAN_FILE = "pruning_plan.json"


def _repairs(entry: dict) -> list[str]:
    """The repairs a plan entry records (version 1 plans recorded only bias compensation, as a flag)."""
    return list(entry.get("reconstruction", ["bias"] if entry.get("bias_compensated") else []))


def prune_model(model: PrunableModel, kept: list[Tensor], reconstruction: Reconstruction | None = None) -> dict:
    """Slice every FFN layer of ``model`` to its ``kept`` neurons; return the plan that rebuilds it.

    A model that is already pruned (loaded with a plan) is pruned further: the new plan's kept indices
    refer to the original dense model, so it rebuilds from the same dense config as the first one.
    With a ``reconstruction``, each layer it applies to gets its down projection repaired (bias compensation,
    or a least-squares refit); the plan records which. Only weight and bias values change, which the saved
    weights hold: loading needs nothing more.
    """
    layers = model.ffn_layers()
    previous = model.pruning_plan["layers"] if model.pruning_plan is not None else None
    entries = []
    for index, (layer, keep) in enumerate(zip(layers, kept, strict=True)):
        dense_size, original = layer.size, keep
        repaired = reconstruction is not None and reconstruction.applies_to(layer)
        if previous is not None:
            dense_size = previous[index]["dense_size"]
            original = torch.tensor(previous[index]["kept"], dtype=torch.long)[keep.cpu().long()]
        down = reconstruction.down_projection(index, layer, keep) if repaired and reconstruction else None
        slice_ffn(layer, keep, down)
        earlier = _repairs(previous[index]) if previous is not None else []
        entries.append(
            {
                "name": layer.name,
                "dense_size": dense_size,
                "kept": original.tolist(),
                # every repair this layer went through, pruning after pruning
                "reconstruction": [*earlier, reconstruction.method] if repaired and reconstruction else earlier,
            }
        )
    model.pruning_plan = {
        "format": "lightning-prune/pruning-plan",
        "version": 2,
        "architecture": model.architecture,
        "layers": entries,
    }
    return model.pruning_plan


@dataclass
class FFNSnapshot:
    """A model's FFN projection modules (per layer, by path) and its pruning plan at one moment."""

    modules: list[dict[str, nn.Module]]
    plan: dict | None


def snapshot_ffn(model: PrunableModel) -> FFNSnapshot:
    """Record the FFN modules and plan. Slicing builds new modules and never changes these, so
    ``restore_ffn`` brings the model back to this state without a copy (a sparsity sweep prunes the same
    model once per sparsity, each time composing with the plan it was loaded with, not the previous point's)."""
    modules = [
        {path: layer.block.get_submodule(path) for path in (*layer.up, layer.down)} for layer in model.ffn_layers()
    ]
    return FFNSnapshot(modules, model.pruning_plan)


def restore_ffn(model: PrunableModel, snapshot: FFNSnapshot) -> None:
    """Put back the FFN modules and plan recorded by ``snapshot_ffn``."""
    for layer, modules in zip(model.ffn_layers(), snapshot.modules, strict=True):
        for path, module in modules.items():
            layer.block.set_submodule(path, module)
    model.pruning_plan = snapshot.plan


def read_plan(folder: Path) -> dict | None:
    path = folder / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}): the pruned model folder is damaged") from None


def apply_plan(layers: list[FFNLayer], plan: dict, source: Path) -> None:
    """Shrink freshly built dense ``layers`` to the plan's shapes (weights are loaded afterwards)."""
    entries = plan.get("layers", [])
    names = [layer.name for layer in layers]
    if [entry.get("name") for entry in entries] != names:
        raise UsageError(
            f"{source / PLAN_FILE} does not match the model's FFN layers ({len(entries)} planned, "
            f"{len(layers)} in the model): the plan belongs to another model"
        )
    saved_width = plan.get("padded_width")  # uneven widths saved padded to the widest (see trim_padding)
    for layer, entry in zip(layers, entries, strict=True):
        kept = torch.tensor(entry["kept"], dtype=torch.long)
        if layer.size == (saved_width or kept.numel()):
            continue  # built at the saved width already: the saved config holds it (PrunableModel.ffn_width_key)
        if entry["dense_size"] != layer.size or kept.numel() == 0 or int(kept.max()) >= layer.size:
            raise UsageError(
                f"{source / PLAN_FILE}: layer {layer.name} has {layer.size} neurons, the plan expects "
                f"{entry['dense_size']}: the plan belongs to another model"
            )
        slice_ffn(layer, kept)


def trim_padding(layers: list[FFNLayer], plan: dict) -> None:
    """Drop the all-zero neurons a padded save appended (after the kept ones) once the weights are loaded."""
    for layer, entry in zip(layers, plan.get("layers", []), strict=True):
        if layer.size > len(entry["kept"]):
            slice_ffn(layer, torch.arange(len(entry["kept"])))
