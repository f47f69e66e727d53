"""Collecting what the repair needs: activation statistics of every unit over the calibration examples (forward
passes under ``trainer.predict``, all processes), turned into the run's ``Repair``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.cache import examples_fingerprint, model_fingerprint
from lightning_prune.data import TaskDataModule
from lightning_prune.modules import ActivationStatisticsModule, TaskModel
from lightning_prune.pipeline.setup import RunSetup
from lightning_prune.pruning import ActivationStatistics, Repair
from lightning_prune.tasks import Example


@dataclass(frozen=True)
class RepairStatistics:
    """The run's repair (None: a plain cut), the examples its statistics saw and the seconds they took (None: none
    were collected)."""

    repair: Repair | None
    examples: int = 0
    seconds: float | None = None


class StatisticsMemo:
    """Statistics kept for later runs in the same process (a benchmark runs many scorers on one task and draw): an
    entry serves only the same model weights, calibration examples and units, with second moments (which every
    repair can use)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, bool], tuple[ActivationStatistics, float]] = {}

    def key(self, model: TaskModel, examples: list[Example], heads: bool) -> tuple[str, str, bool]:
        return model_fingerprint(model.net), examples_fingerprint(examples), heads

    def get(self, key: tuple[str, str, bool]) -> tuple[ActivationStatistics, float] | None:
        return self._entries.get(key)

    def put(self, key: tuple[str, str, bool], statistics: ActivationStatistics, seconds: float) -> None:
        self._entries[key] = (statistics, seconds)


def activation_statistics_of(
    trainer: Trainer, model: TaskModel, datamodule: TaskDataModule, examples: list[Example], second_moments: bool,
    heads: bool = False,
) -> ActivationStatistics:  # fmt: skip
    """Activation statistics of every FFN neuron (and with ``heads`` every head output) over ``examples`` (all
    processes): forward passes, no labels beyond the answer a decoder LM is fed."""
    collecting = ActivationStatisticsModule(model.net, second_moments, heads)
    trainer.predict(collecting, datamodule=datamodule.serving(examples), return_predictions=False)
    rank_zero_info(f"reconstruction statistics from {int(collecting.statistics.examples)} examples")
    return collecting.statistics


def collect_statistics(
    trainer: Trainer,
    model: TaskModel,
    datamodule: TaskDataModule,
    setup: RunSetup,
    memo: StatisticsMemo | None = None,
) -> RepairStatistics:
    """The repair of every cut (of the attention layers' too, when heads go) from the calibration examples'
    statistics; none for a plain cut. With a ``memo``, statistics an earlier run of this process collected on the
    same model and examples are used again."""
    if setup.repair == "none":
        return RepairStatistics(None)
    heads, damping = setup.settings.prunes_heads, setup.settings.damping
    if memo is None:
        start = time.perf_counter()
        second_moments = setup.repair == "least_squares"
        statistics = activation_statistics_of(trainer, model, datamodule, setup.calibration, second_moments, heads)
        seconds = time.perf_counter() - start
        return RepairStatistics(statistics.repair(setup.repair, damping), int(statistics.examples), seconds)
    key = memo.key(model, setup.calibration, heads)
    if memo.get(key) is None:
        start = time.perf_counter()
        statistics = activation_statistics_of(trainer, model, datamodule, setup.calibration, True, heads)
        memo.put(key, statistics, time.perf_counter() - start)
    statistics, seconds = memo.get(key)  # type: ignore[misc]
    return RepairStatistics(statistics.repair(setup.repair, damping), int(statistics.examples), seconds)
