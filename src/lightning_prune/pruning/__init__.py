"""Pruning: which units to keep (``keep``), cut the others out (``slicing``), repair what the cut changed
(``repair``), record the cut and undo it (``plan``)."""

from lightning_prune.pruning.keep import Cut, Scope, keep_neurons
from lightning_prune.pruning.plan import (
    PLAN_FILE,
    apply_plan,
    prune_model,
    pruned,
    read_plan,
    restore_units,
    restored,
    snapshot_units,
    trim_padding,
)
from lightning_prune.pruning.repair import (
    ActivationStatistics,
    Reconstruct,
    Repair,
    RepairMethod,
    Residual,
    activation_statistics,
)
from lightning_prune.pruning.slicing import pad_ffn, slice_ffn

__all__ = [
    "PLAN_FILE",
    "ActivationStatistics",
    "Cut",
    "Reconstruct",
    "Repair",
    "RepairMethod",
    "Residual",
    "Scope",
    "activation_statistics",
    "apply_plan",
    "keep_neurons",
    "pad_ffn",
    "prune_model",
    "pruned",
    "read_plan",
    "restore_units",
    "restored",
    "slice_ffn",
    "snapshot_units",
    "trim_padding",
]
