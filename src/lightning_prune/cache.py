"""Score cache: neuron scores keyed by everything that produced them, with per-process progress files.

A finished scoring run is stored as ``<key>.safetensors``; while scoring, each process saves its partial
sums every few batches as ``<key>.rank<r>-of-<w>.partial.safetensors``. A re-run with the same key reuses
the finished scores, or resumes each process after its last saved batch (batches are deterministic), so
a run killed mid-scoring finishes with the scores an uninterrupted run gives.

Every entry carries the full request it answers and a checksum of its tensors: an entry whose request is not
this run's, whose tensors were changed, that is a symlink, or that does not fit the model is rejected (the run
says so) and recomputed. Entries are written over a symlink of their name, never through it (caches are shared).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lightning_prune.io import atomic_path, write_errors_reported
from lightning_prune.tasks import Example

if TYPE_CHECKING:
    from lightning_prune.adapters.base import PrunableModel


def cache_root(cache_dir: str | None = None) -> Path:
    """The score cache folder: ``cache_dir`` if given, else ``$XDG_CACHE_HOME/lightning-prune/scores``."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-prune" / "scores"


def model_fingerprint(module: nn.Module) -> str:
    """Hash of every tensor (name, dtype, shape, bytes) in the module's state: equal weights, equal hash."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")  # 0-d too
    return digest.hexdigest()


def examples_fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.index, list(example.texts), example.label]).encode())
    return digest.hexdigest()


def score_request(
    net: PrunableModel,
    examples: list[Example],
    batch_size: int,
    scorer: str,
    scorer_options: dict[str, Any] | None,
    labels: str,
    precision: str = "32-true",
    limit_predict_batches: int | float | None = 1.0,
    heads: bool = False,
    residuals_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a data scorer's scores, the one schema of score cache keys (fit-free and the
    benchmarks share it): the code, the model's weights and inputs, the examples and their batching, the scorer
    with its resolved settings, the labels, the precision, how much of the data was scored and, under refit-aware
    scoring, what the residuals came from (calibration examples, damping)."""
    from lightning_prune.scorers import create_scorer, scorer_code, scorer_infos

    provider = scorer_infos()[scorer]
    return {
        "code": scorer_code(scorer),  # this package's and the scorer's source: other code, other scores
        "model": model_fingerprint(net),
        "architecture": net.architecture,
        "task": net.task.name,
        "task_labels": net.task.labels,
        "max_length": net.max_length,
        "input_settings": net.input_settings(),
        "examples": examples_fingerprint(examples),
        "batch_size": batch_size,
        "scorer": scorer,
        "scorer_provider": f"{provider.distribution}=={provider.version}:{provider.entry_point.value}",
        "scorer_options": scorer_options or {},
        "scorer_settings": vars(create_scorer(scorer, scorer_options)),  # with defaults: a new default, a new key
        "labels": labels,
        "units": "ffn+heads" if heads else "ffn",
        "precision": precision,
        "limit_predict_batches": limit_predict_batches,  # a partial scoring run is not the full one
        "residuals_from": residuals_from,
    }


def canonical_request(request: dict[str, Any]) -> str:
    """The request as the one JSON text that keys and identifies its entries."""
    return json.dumps(request, sort_keys=True, default=str)


def score_key(request: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_request(request).encode()).hexdigest()[:32]


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """Hash of named tensors (name, dtype, shape, bytes): an entry's checksum."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        data = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: a 0-d tensor has no byte view
    return digest.hexdigest()


@dataclass
class Progress:
    """One process's partial sums after ``batches`` batches of its shard."""

    sums: list[Tensor]
    examples: float
    batches: int


class ScoreCache:
    """Finished scores and partial progress for one key under ``root``."""

    def __init__(self, root: Path, key: str, request: dict[str, Any]) -> None:
        self.root = Path(root)
        self.key = key
        self.request = request
        self.rejected: list[str] = []  # why entries of this key were not trusted (they are recomputed)

    @property
    def final_path(self) -> Path:
        return self.root / f"{self.key}.safetensors"

    def partial_path(self, rank: int, world_size: int) -> Path:
        return self.root / f"{self.key}.rank{rank}-of-{world_size}.partial.safetensors"

    def _read(self, path: Path) -> dict[str, Tensor] | None:
        """The entry at ``path`` if it answers this request unchanged; None (and why, in ``rejected``) otherwise."""
        if path.is_symlink():
            self.rejected.append(f"{path.name} is a symlink (entries are never read through links)")
            return None
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError):  # a damaged cache entry is recomputed, never trusted
            self.rejected.append(f"{path.name} is unreadable")
            return None
        if metadata.get("request") != canonical_request(self.request):
            self.rejected.append(f"{path.name} answers another request")
            return None
        if metadata.get("sha256") != tensors_digest(tensors):
            self.rejected.append(f"{path.name} was changed after it was written (checksum)")
            return None
        return tensors

    def _write(self, path: Path, tensors: dict[str, Tensor]) -> None:
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        metadata = {"request": canonical_request(self.request), "sha256": tensors_digest(tensors)}
        with write_errors_reported("the score cache", self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, follow_symlinks=False) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)

    def _layers(self, path: Path, sizes: list[int], extras: tuple[str, ...]) -> tuple[list[Tensor], dict] | None:
        """The per-layer tensors and extras of the entry at ``path``, or None for a missing one or one that does
        not fit the model (a layer's width, a missing key) or holds non-finite scores: it is recomputed."""
        tensors = self._read(path)
        if tensors is None:
            return None
        layers = [tensors.get(f"layer{i}") for i in range(len(sizes))]
        problem = None
        if any(t is None for t in layers) or any(key not in tensors for key in extras):
            problem = "lacks entries"
        elif any(tuple(t.shape) != (size,) for t, size in zip(layers, sizes, strict=True)):  # type: ignore[union-attr]
            problem = "has scores of another shape than the model's FFN layers"
        elif not all(bool(torch.isfinite(t).all()) for t in layers):  # type: ignore[arg-type]
            problem = "holds NaN or infinite scores"
        if problem is not None:
            self.rejected.append(f"{path.name} {problem}")
            return None
        return layers, tensors  # type: ignore[return-value]

    def load_final(self, sizes: list[int], examples: int | None = None) -> tuple[list[Tensor], int] | None:
        """Finished scores for FFN layers of ``sizes`` neurons, summed over ``examples`` examples (if known)."""
        found = self._layers(self.final_path, sizes, ("examples",))
        if found is None:
            return None
        layers, tensors = found
        if examples is not None and int(tensors["examples"]) != examples:
            self.rejected.append(f"{self.final_path.name} sums {int(tensors['examples'])} examples, not {examples}")
            return None
        return layers, int(tensors["examples"])

    def save_final(self, scores: list[Tensor], examples: int) -> None:
        tensors = {f"layer{i}": s for i, s in enumerate(scores)}
        self._write(self.final_path, {**tensors, "examples": torch.tensor(examples)})

    def load_progress(self, rank: int, world_size: int, sizes: list[int], batch_sizes: list[int]) -> Progress | None:
        """This process's saved partial sums, if they fit its shard: at most as many batches as it has
        (``batch_sizes``: the examples in each), and exactly the examples those batches hold."""
        path = self.partial_path(rank, world_size)
        found = self._layers(path, sizes, ("examples", "batches"))
        if found is None:
            return None
        layers, tensors = found
        batches, examples = int(tensors["batches"]), float(tensors["examples"])
        if not 0 <= batches <= len(batch_sizes) or examples != sum(batch_sizes[:batches]):
            self.rejected.append(
                f"{path.name} claims {examples:g} examples in {batches} batches, which this shard does not have"
            )
            return None
        return Progress(layers, examples, batches)

    def save_progress(self, rank: int, world_size: int, progress: Progress) -> None:
        tensors = {f"layer{i}": s for i, s in enumerate(progress.sums)}
        extra = {
            "examples": torch.tensor(progress.examples, dtype=torch.float64),
            "batches": torch.tensor(progress.batches),
        }
        self._write(self.partial_path(rank, world_size), {**tensors, **extra})

    def clear_progress(self, rank: int, world_size: int) -> None:
        self.partial_path(rank, world_size).unlink(missing_ok=True)
