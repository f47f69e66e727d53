"""Scoring every unit for the task: from the score cache when this exact request was scored before, else over the
scoring examples by ``trainer.predict`` (resuming an interrupted run), all processes' sums all-reduced."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_prune.cache import ScoreCache, cache_root, examples_fingerprint, score_key, score_request
from lightning_prune.data import TaskDataModule
from lightning_prune.modules import ScoringModule, TaskModel, score_batch
from lightning_prune.pipeline.setup import RunSetup
from lightning_prune.pruning import Repair
from lightning_prune.scorers import NeuronScorer


@dataclass(frozen=True)
class Scores:
    """Per-layer unit scores (FFN layers, then attention layers when heads are pruned) and where they came from."""

    layers: list[Tensor]
    examples: int = 0
    cache: ScoreCache | None = None
    from_cache: bool = False
    refit_aware: bool = False  # the scorer weighed neurons by their residuals
    resumed_batches: int = 0  # on rank 0: batches restored from an interrupted run
    seconds: float = 0.0


def score_units(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, setup: RunSetup, repair: Repair | None
) -> Scores:
    """The scores the cut ranks units by. Under refit-aware scoring (``RunSetup.refit_aware``) the scorer weighs
    each neuron's residual under ``repair``'s statistics (of the calibration examples) instead of its activation:
    a copy of the scorer holding the residual maps scores, the run's own is left as it is."""
    start = time.perf_counter()
    if not setup.refit_aware:
        scores = _scores_of(trainer, model, datamodule, setup, setup.scorer)
    else:
        assert repair is not None
        source = {"calibration": examples_fingerprint(setup.calibration), "damping": repair.damping}
        scorer = setup.scorer.with_residuals(repair.residuals(model.net.ffn_layers()))
        scores = _scores_of(trainer, model, datamodule, setup, scorer, source)
    return replace(scores, seconds=time.perf_counter() - start)


def _scores_of(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    setup: RunSetup,
    scorer: NeuronScorer,
    residuals_from: dict[str, Any] | None = None,
) -> Scores:
    """``scorer``'s scores, cached under a key of everything that produced them (``residuals_from``: what refit-aware
    scoring's residuals came from)."""
    settings, heads = setup.settings, setup.settings.prunes_heads
    layers = model.net.unit_layers(heads)
    if not scorer.needs_data:
        return Scores(score_batch(model.net, scorer, settings.scorer, None, heads=heads))
    refit = residuals_from is not None
    request = score_request(
        model.net,
        datamodule.score_examples(),
        datamodule.hparams.batch_size,
        settings.scorer,
        settings.scorer_options,
        settings.labels,
        str(trainer.precision),
        trainer.limit_predict_batches,
        heads,
        residuals_from,
    )
    cache = ScoreCache(cache_root(settings.cache_dir), score_key(request), request)
    limited = trainer.limit_predict_batches not in (None, 1.0)  # then the example count is not known ahead
    expected = None if limited else len(datamodule.score_examples())
    cached = cache.load_final([layer.size for layer in layers], expected) if settings.reuse_scores else None
    if cache.rejected:
        rank_zero_info(f"note: score cache: {'; '.join(cache.rejected)}: recomputing those scores")
    if cached is not None:
        return Scores(cached[0], cached[1], cache, from_cache=True, refit_aware=refit)
    rank_zero_info(f"scoring {len(datamodule.score_examples())} examples with {settings.scorer}")
    scoring = ScoringModule(
        model.net, scorer, settings.scorer, settings.labels, cache, settings.checkpoint_every, settings.reuse_scores,
        heads,
    )  # fmt: skip
    trainer.predict(scoring, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        cache.save_final(scoring.scores, scoring.examples_seen)
    trainer.strategy.barrier()
    cache.clear_progress(trainer.global_rank, trainer.world_size)
    return Scores(
        scoring.scores, scoring.examples_seen, cache, resumed_batches=scoring.resumed_batches, refit_aware=refit
    )
