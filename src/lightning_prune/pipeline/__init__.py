"""fit-free as a list of stages, each a module with one job, passing small typed values:

check and set up (``setup``) -> evaluate the dense model (``evaluate``) -> collect the repair's statistics
(``statistics``) -> score the units (``score``) -> cut, repair and measure each budget (``sweep``) -> choose ->
summarize (``summary``) -> write (``write``).

The command line (``commands.fit_free``), the Python API and the benchmarks all run ``run_fit_free``, or its
public stages in its order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.data import TaskDataModule
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline.evaluate import DenseResult, evaluate_dense, test_metrics
from lightning_prune.pipeline.score import Scores, score_units
from lightning_prune.pipeline.settings import FitFreeSettings
from lightning_prune.pipeline.setup import RunSetup, set_up_run
from lightning_prune.pipeline.statistics import RepairStatistics, StatisticsMemo, collect_statistics
from lightning_prune.pipeline.summary import Outcome, report_line, summarize_run
from lightning_prune.pipeline.sweep import Choice, Sweep, SweepPoint, choose_models, measure_cuts
from lightning_prune.pipeline.write import METRICS_FILE, write_run
from lightning_prune.pruning import prune_model

__all__ = [
    "METRICS_FILE",
    "Choice",
    "DenseResult",
    "FitFreeRun",
    "FitFreeSettings",
    "Outcome",
    "RepairStatistics",
    "RunSetup",
    "Scores",
    "StatisticsMemo",
    "Sweep",
    "SweepPoint",
    "collect_statistics",
    "evaluate_dense",
    "measure_cuts",
    "run_fit_free",
    "score_units",
    "set_up_run",
    "test_metrics",
]


@dataclass(frozen=True)
class FitFreeRun:
    """A finished run: ``metrics.json``'s record of it, and every stage's result."""

    summary: dict[str, Any]
    outcome: Outcome


def run_fit_free(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    settings: FitFreeSettings,
    memo: StatisticsMemo | None = None,
) -> FitFreeRun:
    """Score, cut, repair, measure and save: the in-memory model ends as the chosen (saved) one. ``memo``: repair
    statistics shared with other runs of this process on the same model and examples (benchmarks)."""
    setup = set_up_run(trainer, model, datamodule, settings)
    dense = evaluate_dense(trainer, model, datamodule, setup)
    statistics = collect_statistics(trainer, model, datamodule, setup, memo)  # first: refit-aware scoring needs it
    scores = score_units(trainer, model, datamodule, setup, statistics.repair)
    sweep = measure_cuts(trainer, model, datamodule, setup, scores, statistics.repair)
    choice = choose_models(setup, dense, sweep, model.spec.primary_metric)
    outcome = Outcome(setup, dense, statistics, scores, sweep, choice)
    summary = summarize_run(trainer, model, outcome)
    if trainer.is_global_zero:
        summary = write_run(trainer, model, outcome, summary)
        rank_zero_info(report_line(summary, settings.output_dir))
    trainer.strategy.barrier()
    if choice.chosen is not None:
        cut = choice.chosen.cut
        prune_model(model.net, cut.kept, statistics.repair, cut.kept_heads, cut.vocabulary)
    return FitFreeRun(summary, outcome)
