"""The scorer registry: every scorer, built-in or third-party, comes from the entry-point group
``lightning_prune.scorers`` (``name = "module:Class"``); this package registers its own five in its
``pyproject.toml`` exactly as a plugin would."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import torch
from torch import Tensor

from lightning_prune.adapters.base import UnitLayer
from lightning_prune.attention import AttentionLayer
from lightning_prune.errors import UsageError
from lightning_prune.scorers.base import NeuronScorer, UnitScorer

ENTRY_POINT_GROUP = "lightning_prune.scorers"

__all__ = [
    "ENTRY_POINT_GROUP",
    "NeuronScorer",
    "ScorerInfo",
    "UnitScorer",
    "accepted_options",
    "check_scores",
    "create_scorer",
    "scorer_infos",
]


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    distribution: str
    version: str
    entry_point: EntryPoint


def _distribution(entry_point: EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def _claims() -> dict[str, list[ScorerInfo]]:
    """Every installed claim on each scorer name (the same distribution seen twice counts once)."""
    claims: dict[str, list[ScorerInfo]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist, version = _distribution(entry_point)
        info = ScorerInfo(entry_point.name, dist, version, entry_point)
        known = claims.setdefault(entry_point.name, [])
        if all((c.distribution, c.entry_point.value) != (dist, entry_point.value) for c in known):
            known.append(info)
    return claims


def scorer_infos() -> dict[str, ScorerInfo]:
    """Registered scorers by name (for a name claimed twice, the first claim; choosing it is an error)."""
    return {name: infos[0] for name, infos in sorted(_claims().items())}


def load_scorer_class(name: str) -> type[NeuronScorer]:
    """The scorer class registered as ``name``, with a clear error for unknown, ambiguous or broken plugins."""
    claims = _claims()
    if name not in claims:
        raise UsageError(f"unknown scorer {name!r}: choose one of {', '.join(sorted(claims)) or 'none installed'}")
    if len(claims[name]) > 1:
        owners = " and ".join(f"{c.distribution} ({c.entry_point.value})" for c in claims[name])
        raise UsageError(f"scorer name {name!r} is claimed by several installed distributions: {owners}; uninstall one")
    info = claims[name][0]
    try:
        scorer_class = info.entry_point.load()
    except Exception as error:  # a broken plugin must not look like a bug of ours
        raise UsageError(
            f"scorer {name!r} from {info.distribution} {info.version} failed to import "
            f"({type(error).__name__}: {error}); reinstall or fix that plugin"
        ) from None
    if not (inspect.isclass(scorer_class) and issubclass(scorer_class, NeuronScorer)):
        raise UsageError(
            f"scorer {name!r} from {info.distribution} is {info.entry_point.value}, which is not a "
            "lightning_prune.scorers.NeuronScorer subclass; fix that plugin"
        )
    return scorer_class


def scorer_code(name: str) -> str:
    """A fingerprint of the code that computes scorer ``name``'s scores (this package and the scorer's module
    and its parents' modules, e.g. a plugin's file): part of every score cache key."""
    from lightning_prune.fingerprint import code_fingerprint

    files = sorted({inspect.getfile(cls) for cls in load_scorer_class(name).__mro__[:-1] if cls is not object})
    return code_fingerprint(*files)


def accepted_options(name: str) -> tuple[list[str], bool]:
    """The option names scorer ``name``'s constructor takes, and whether it takes any (``**kwargs``)."""
    parameters = inspect.signature(load_scorer_class(name)).parameters
    accepted = [p for p in parameters if parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    return accepted, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def create_scorer(name: str, options: dict[str, Any] | None = None) -> NeuronScorer:
    """Instantiate scorer ``name`` with ``options``, rejecting options its constructor does not take."""
    scorer_class = load_scorer_class(name)
    options = dict(options or {})
    accepted, takes_any = accepted_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise UsageError(
            f"scorer {name!r} has no option {', '.join(unknown)}: its options are {', '.join(accepted) or 'none'}"
        )
    try:
        return scorer_class(**options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"scorer {name!r} rejected its options {options}: {error}") from None


def check_scores(name: str, scores: list[Tensor], layers: list[UnitLayer]) -> list[Tensor]:
    """Scores as float64 CPU tensors, after checking count, shapes, dtype and finiteness, naming the scorer."""
    if not isinstance(scores, (list, tuple)) or len(scores) != len(layers):
        count = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
        attention = sum(isinstance(layer, AttentionLayer) for layer in layers)
        kinds = f"{len(layers) - attention} FFN layers" + (f" and {attention} attention layers" if attention else "")
        raise UsageError(f"scorer {name!r} returned {count} score tensors for {kinds}; fix the scorer")
    checked = []
    for layer, score in zip(layers, scores, strict=True):
        if not isinstance(score, Tensor) or not score.is_floating_point():
            kind = score.dtype if isinstance(score, Tensor) else type(score).__name__
            raise UsageError(f"scorer {name!r} returned {kind} scores for {layer.name}; scores must be float tensors")
        if tuple(score.shape) != (layer.size,):
            raise UsageError(
                f"scorer {name!r} returned shape {tuple(score.shape)} for {layer.name}, "
                f"which has {layer.size} {layer.unit_name}"
            )
        if not bool(torch.isfinite(score).all()):
            bad = int((~torch.isfinite(score)).sum())
            raise UsageError(f"scorer {name!r} returned {bad} NaN/inf scores for {layer.name}; nothing was pruned")
        checked.append(score.detach().to("cpu", torch.float64))
    return checked
