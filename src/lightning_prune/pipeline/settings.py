"""fit-free's options, declared once: the command line (``commands.fit_free``) forwards its keyword arguments here,
so this class's fields, defaults and docstring are the options, their defaults and their ``--help``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from lightning_prune.export.dtypes import GGUFDtype
from lightning_prune.modules import LabelSource
from lightning_prune.pruning import Reconstruct, Scope
from lightning_prune.pruning.repair import DEFAULT_DAMPING
from lightning_prune.vocabulary.cut import FREQUENT_TOKENS

DEFAULT_SPARSITY = 0.5


def swept_values(value: float | list[float]) -> list[float]:
    """One sparsity (or FLOP target) or several, sorted and without repeats."""
    return sorted(set(value)) if isinstance(value, list) else [value]


@dataclass(frozen=True)
class FitFreeSettings:
    """fit-free's options, as one value every stage reads.

    Args:
        scorer: a registered scorer (``lightning-prune scorers`` lists them): attribution (the paper's),
            activation, magnitude, wanda, random, or a plugin's (e.g. fisher).
        scorer_options: the scorer's own settings, e.g. ``{"steps": 20, "mode": "joint"}`` for attribution (a
            ``--scorer`` on the command line drops a config's options the new scorer does not take).
        labels: ``gold`` labels (supervised) or ``pseudo``: the model's own predictions (unsupervised).
        sparsity: fraction of FFN neurons to remove, in [0, 1) (default 0.5 unless ``target_speedup`` is given);
            or several (``0.1,0.3,0.5``): a sweep, scored once, with sweep.csv, sweep.md and sweep.png.
        target_speedup: instead of a sparsity, how many times fewer FLOPs the pruned model needs on the task's
            inputs (e.g. 1.6, counted on the first evaluation examples): head groups and FFN neurons go together.
            Several (``1.3,1.6,2``): a sweep over FLOP budgets, like a sparsity sweep.
        heads: with ``target_speedup``, also remove attention head groups (a key/value head and the query heads
            sharing it); false: FFN neurons only.
        max_drop: choose the highest swept sparsity (or FLOP target) whose primary metric on the selection examples (see
            ``--data.selection_examples``, held apart from the evaluation examples) is at most this much below
            the dense model's, e.g. 0.01; it is saved as ``model/``.
        save_models: ``auto``: the one point's model, or the ``max_drop`` choice of a sweep (none without it);
            ``all``: also every swept point as ``model-<sparsity>/`` (``model-<target>x/``); ``none``: no model.
        scope: ``layer`` (every layer loses the same fraction) or ``global`` (lowest scores model-wide: uneven
            widths; see benchmarks/results/allocation.md for when it helps).
        keep_rule: ``scores``: keep the best-scored neurons; ``obs``: remove them one by one by what the refit
            leaves, weighed by their scores.
        min_keep: neurons every layer keeps at least.
        width_multiple: round every layer's kept FFN width down to a multiple of this (e.g. 8 or 64: matrix kernels
            run faster on such widths; the lowest-scored kept neurons go); 1: no rounding.
        save_dtype: dtype of the saved weights; ``auto`` keeps the dtype the model had on disk (float16 in,
            float16 out; computation always runs in float32).
        pad_uneven_ffn: save layers of different widths padded to the widest with all-zero neurons (exact), so
            plain ``from_pretrained`` loads them; else at their widths (``load_pruned_model``, llama.cpp).
        output_dir: receives metrics.json, scores.safetensors, the pruned model and config.yaml, all at once;
            never an input, nor inside or above one.
        overwrite: replace an ``output_dir`` that holds an earlier run (only a folder lightning-prune wrote).
        evaluate_dense: also evaluate the model before pruning.
        cache_dir: where scores are kept, under a key of everything that produced them; default
            ``$XDG_CACHE_HOME/lightning-prune/scores``.
        reuse_scores: reuse finished scores of the same key, and resume interrupted scoring from the
            per-process progress saved every ``checkpoint_every`` batches; false recomputes from scratch.
        checkpoint_every: batches between two saves of the scoring progress.
        reconstruct: how each down projection is repaired after the cut, from the calibration examples'
            activation statistics: ``bias`` folds each removed neuron's mean into the down bias (as FLAP);
            ``least_squares`` refits the kept neurons' down weights (as K-prune); ``auto``: ``bias`` where there is
            a down bias (encoders), else ``least_squares``; ``none``: a plain cut.
        damping: ``least_squares`` ridge, as a fraction of the kept activations' mean second moment: larger
            stays closer to the plain cut.
        refit_aware: weigh each neuron by its residual (what the ``least_squares`` refit cannot predict of it from
            the others) instead of its activation. Default (unset): wherever the refit runs and the scorer weighs
            activations; false: score the activations.
        vocabulary: ``task``: also cut the embedding and output head to the tokens the task uses (any text still
            encodes); ``full``: keep them.
        vocabulary_texts: with ``vocabulary task``, a text file (one text per line) whose tokens are kept too.
        vocabulary_frequent: with ``vocabulary task``, the tokenizer's most frequent tokens kept too.
        export_gguf: decoder LMs: also write ``model.gguf`` for llama.cpp, in this dtype.
    """

    scorer: str = "attribution"
    scorer_options: dict[str, Any] | None = None
    labels: LabelSource = "gold"
    sparsity: float | list[float] | None = None
    target_speedup: float | list[float] | None = None
    heads: bool = True
    max_drop: float | None = None
    save_models: Literal["auto", "all", "none"] = "auto"
    scope: Scope = "layer"
    keep_rule: Literal["scores", "obs"] = "scores"
    min_keep: int = 1
    width_multiple: PositiveInt = 1
    save_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    pad_uneven_ffn: bool = False
    output_dir: str = "runs/fit-free"
    overwrite: bool = False
    evaluate_dense: bool = True
    cache_dir: str | None = None
    reuse_scores: bool = True
    checkpoint_every: PositiveInt = 10
    reconstruct: Reconstruct = "auto"
    damping: PositiveFloat = DEFAULT_DAMPING
    refit_aware: bool | None = None
    vocabulary: Literal["full", "task"] = "full"
    vocabulary_texts: str | None = None
    vocabulary_frequent: NonNegativeInt = FREQUENT_TOKENS
    export_gguf: GGUFDtype | None = None

    @classmethod
    def from_namespace(cls, options: Any) -> FitFreeSettings:
        """The settings a parsed command line (or any mapping holding every option) gives."""
        return cls(**{f.name: options[f.name] for f in fields(cls)})

    @property
    def sparsities(self) -> list[float]:
        """The FFN sparsities of a sparsity run (none for a ``target_speedup`` run)."""
        if self.target_speedup is not None:
            return []
        return swept_values(DEFAULT_SPARSITY if self.sparsity is None else self.sparsity)

    @property
    def targets(self) -> list[float]:
        """The FLOP budgets of a ``target_speedup`` run, lowest first (none for a sparsity run)."""
        return [] if self.target_speedup is None else swept_values(self.target_speedup)

    @property
    def points(self) -> int:
        """How many pruned models the run evaluates: one per sparsity or per target."""
        return len(self.targets or self.sparsities)

    @property
    def prunes_heads(self) -> bool:
        return self.target_speedup is not None and self.heads
