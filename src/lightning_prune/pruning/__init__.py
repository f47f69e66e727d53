"""Pruning: choose neurons (``selection``), cut them out (``slicing``), repair what the cut changed
(``reconstruction``), record the cut (``plan``)."""

from lightning_prune.pruning.plan import (
    PLAN_FILE,
    apply_plan,
    prune_model,
    read_plan,
    restore_units,
    snapshot_units,
    trim_padding,
)
from lightning_prune.pruning.reconstruction import (
    ActivationStatistics,
    Reconstruct,
    Reconstruction,
    Repair,
    Residual,
    activation_statistics,
)
from lightning_prune.pruning.selection import Scope, select_neurons
from lightning_prune.pruning.slicing import pad_ffn, slice_ffn

__all__ = [
    "PLAN_FILE",
    "ActivationStatistics",
    "Reconstruct",
    "Reconstruction",
    "Repair",
    "Residual",
    "Scope",
    "activation_statistics",
    "apply_plan",
    "pad_ffn",
    "prune_model",
    "read_plan",
    "restore_units",
    "select_neurons",
    "slice_ffn",
    "snapshot_units",
    "trim_padding",
]
