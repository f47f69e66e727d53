"""Pruning: choose neurons (``selection``), cut them out (``slicing``), record the cut (``plan``)."""

from lightning_prune.pruning.plan import PLAN_FILE, apply_plan, prune_model, read_plan
from lightning_prune.pruning.selection import Scope, select_neurons
from lightning_prune.pruning.slicing import slice_ffn

__all__ = ["PLAN_FILE", "Scope", "apply_plan", "prune_model", "read_plan", "select_neurons", "slice_ffn"]
