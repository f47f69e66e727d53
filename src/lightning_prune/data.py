"""The task's data as a LightningDataModule: scoring examples (predict) and evaluation examples (test), and the
other draws a run needs (calibration, selection examples), each served by ``ExampleSet``.

Under DDP every example is seen by exactly one process: the samplers never pad with duplicates, so
summed scores and synced metrics equal a single-process run.
"""

from __future__ import annotations

import random
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning import LightningDataModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from lightning_prune.adapters.base import Batch, PrunableModel
from lightning_prune.errors import UsageError
from lightning_prune.tasks import Example, TaskSpec, check_data_file, get_task, load_split, read_tsv


def _draw(total: int, count: int | None, seed: int, what: str) -> list[int]:
    """Sorted positions of ``count`` of ``total`` items drawn without replacement with ``seed`` (all if None)."""
    if count is None:
        return list(range(total))
    if not 0 < count <= total:
        raise UsageError(f"{what}: asked for {count} examples but 1..{total} are available")
    return sorted(random.Random(seed).sample(range(total), count))


def subsample(examples: list[Example], count: int | None, seed: int, what: str) -> list[Example]:
    """``count`` examples drawn without replacement with ``seed`` (all of them if ``count`` is None)."""
    return [examples[i] for i in _draw(len(examples), count, seed, what)]


def _by_length(examples: list[Example]) -> list[Example]:
    """Shortest first, by characters: a cheap stand-in for token counts. What ``trainer.predict`` runs on is
    bucketed so: similar lengths share a batch, so little compute goes to padding; scores and statistics are sums,
    so the order does not matter (beyond float rounding, which is still deterministic)."""
    return sorted(examples, key=lambda e: sum(len(t) for t in e.texts))


class TaskDataModule(LightningDataModule):
    """One task's examples for scoring and for evaluation.

    Args:
        task: a GLUE task (sst2, cola, mrpc, qqp, stsb, mnli, qnli, rte), or any name together with ``labels``
            for a single-sentence task read from ``sentence<TAB>label`` files.
        data_dir: folder of GLUE TSV files (``<data_dir>/<task>/train.tsv``); None loads ``nyu-mll/glue``
            through ``datasets``: from its cache in offline mode, else from the hub (unreachable: fails at once).
        labels: label names, in the head's output order, of a single-sentence task that is not in GLUE.
        score_split: split the scoring examples come from: ``train``, ``validation``, or
            ``validation_first_half`` / ``validation_second_half`` (a fixed seeded partition of dev).
        eval_split: split the evaluation examples come from (same choices as ``score_split``).
        score_file: a TSV file that replaces ``score_split`` (e.g. another domain's sentence<TAB>label set).
        eval_file: a TSV file that replaces ``eval_split``.
        num_examples: how many scoring examples to draw (low-resource setting); None uses all.
        calibration_examples: how many examples the reconstruction statistics (``--reconstruct``) come from:
            forward passes only, so they can be many more than the scored ones. The scoring examples plus a
            seeded draw of the rest of the scoring source (held apart from the selection examples of a
            ``--max_drop`` run; fewer if the source has fewer), or a draw among the scoring examples when
            fewer; None: the scoring examples.
        eval_examples: how many evaluation examples to draw; None uses all.
        selection_examples: with ``--max_drop``: how many examples to choose the sparsity on, drawn from the
            scoring source (split or file) among the examples not drawn for scoring, so they are held apart
            from both the scoring and the evaluation examples.
        selection_file: with ``--max_drop``: a TSV file of selection examples instead of that draw.
        seed: seed of the draws.
        eval_seed: seed of the evaluation draw (``eval_examples``) alone, so runs with other scoring draws
            (``seed``) are evaluated on the same examples; default: ``seed``.
        batch_size: examples per batch (scoring and evaluation).
        num_workers: data loader worker processes (0: load in the main process).
        demonstrations: in-context examples for decoder LMs, drawn from the scoring source (not scored).
    """

    def __init__(
        self,
        task: str = "sst2",
        data_dir: str | None = None,
        labels: list[str] | None = None,
        score_split: str = "train",
        eval_split: str = "validation",
        score_file: str | None = None,
        eval_file: str | None = None,
        num_examples: int | None = None,
        calibration_examples: PositiveInt | None = 1024,
        eval_examples: int | None = None,
        selection_examples: int = 500,
        selection_file: str | None = None,
        seed: int = 0,
        eval_seed: int | None = None,
        batch_size: int = 16,
        num_workers: NonNegativeInt = 0,
        demonstrations: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec: TaskSpec = get_task(task, labels)
        if labels and (score_file is None or eval_file is None):
            raise UsageError(f"task {task!r} given with labels is read from files: give score_file and eval_file")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise UsageError(f"data_dir {data_dir} is not a folder: give the folder holding <task>/train.tsv, dev.tsv")
        if demonstrations < 0:
            raise UsageError(f"demonstrations {demonstrations} must be 0 (zero-shot) or more")
        if batch_size < 1:
            raise UsageError(f"batch_size {batch_size} must be at least 1")
        for name, file in (("score_file", score_file), ("eval_file", eval_file), ("selection_file", selection_file)):
            if file is not None:
                check_data_file(file, name)
        self._cache: dict[str, list[Example]] = {}

    def _examples(self, file: str | None, split: str) -> list[Example]:
        return read_tsv(file, self.spec) if file is not None else load_split(self.spec, split, self.hparams.data_dir)

    def _score_pool(self) -> tuple[list[Example], list[Example]]:
        """(demonstrations, the rest of the scoring split): the seeded draw of in-context examples comes first."""
        h = self.hparams
        examples = self._examples(h.score_file, h.score_split)
        if not h.demonstrations:
            return [], examples
        if h.demonstrations >= len(examples):
            raise UsageError(
                f"demonstrations: asked for {h.demonstrations} but the scoring data has {len(examples)} examples"
            )
        picked = set(random.Random(f"demonstrations-{h.seed}").sample(range(len(examples)), h.demonstrations))
        return [examples[i] for i in sorted(picked)], [e for i, e in enumerate(examples) if i not in picked]

    def _pool(self) -> list[Example]:
        """The scoring source without the demonstrations (read once)."""
        if "pool" not in self._cache:
            self._cache["demonstrations"], self._cache["pool"] = self._score_pool()
        return self._cache["pool"]

    def demonstration_examples(self) -> list[Example]:
        """The in-context examples (none unless ``demonstrations`` > 0: then the scoring data is not read, so
        ``evaluate`` with an ``eval_file`` needs nothing else)."""
        if not self.hparams.demonstrations:
            return []
        self._pool()
        return self._cache["demonstrations"]

    def vocabulary_examples(self) -> list[Example]:
        """Every example of the scoring source (the demonstrations too) and of a selection file: whose tokens a task
        vocabulary keeps (``--vocabulary task``); never the evaluation examples, which measure it."""
        h = self.hparams
        selection = read_tsv(h.selection_file, self.spec) if h.selection_file is not None else []
        return [*self.demonstration_examples(), *self._pool(), *selection]

    def score_examples(self) -> list[Example]:
        """The scoring examples (read once; a bad file fails here, before any model work if called early)."""
        h = self.hparams
        if "score" not in self._cache:
            self._cache["score"] = subsample(self._pool(), h.num_examples, h.seed, "num_examples")
        return self._cache["score"]

    def _unscored(self) -> list[Example]:
        """The scoring source's examples not drawn for scoring."""
        if "unscored" not in self._cache:
            h = self.hparams
            examples = self._pool()
            scoring = set(_draw(len(examples), h.num_examples, h.seed, "num_examples"))
            self._cache["unscored"] = [e for i, e in enumerate(examples) if i not in scoring]
        return self._cache["unscored"]

    def _selection_draw(self) -> list[Example]:
        """The selection examples a ``max_drop`` run draws from the scoring source: the same draw whatever the
        calibration examples are (these avoid it only when asked to)."""
        if "selection_draw" not in self._cache:
            h = self.hparams
            rest = self._unscored()
            self._cache["selection_draw"] = (
                subsample(rest, min(h.selection_examples, len(rest)), h.seed, "selection_examples") if rest else []
            )
        return self._cache["selection_draw"]

    def _calibration_extra(self, avoid_selection: bool) -> list[Example]:
        """What the statistics add to the scoring examples: a draw of the rest of the scoring source (apart from
        the selection examples with ``avoid_selection``), as many as there are up to ``calibration_examples``."""
        h = self.hparams
        wanted = (h.calibration_examples or 0) - len(self.score_examples())
        if wanted <= 0:
            return []
        apart = avoid_selection and h.selection_file is None
        held = {id(e) for e in self._selection_draw()} if apart else set()
        rest = [e for e in self._unscored() if id(e) not in held]
        return subsample(rest, min(wanted, len(rest)), h.seed, "calibration_examples") if rest else []

    def calibration_examples_list(self, avoid_selection: bool = False) -> list[Example]:
        """The examples the repair statistics come from (see ``calibration_examples``); with ``avoid_selection``
        (a ``max_drop`` run) none of the selection examples drawn from the scoring source."""
        key = f"calibration-{avoid_selection}"
        if key not in self._cache:
            h = self.hparams
            scored = self.score_examples()
            if h.calibration_examples is not None and h.calibration_examples < len(scored):
                self._cache[key] = subsample(scored, h.calibration_examples, h.seed, "calibration_examples")
            else:
                self._cache[key] = scored + self._calibration_extra(avoid_selection)
        return self._cache[key]

    def heaviest_score_batch(self, net: PrunableModel) -> Batch:
        """The batch of the longest scoring examples (a full batch, if there are enough): what memory must fit."""
        return net.collate(_by_length(self.score_examples())[-self.hparams.batch_size :])

    def selection_source(self) -> str:
        h = self.hparams
        return h.selection_file or f"{h.score_file or h.score_split + ' split'}, not drawn for scoring"

    def selection_examples_list(self) -> list[Example]:
        """Examples to choose a sparsity on (``max_drop``), disjoint from the scoring and evaluation examples."""
        h = self.hparams
        if "selection" in self._cache:
            return self._cache["selection"]
        if h.selection_file is not None:
            self._cache["selection"] = self._measurable(read_tsv(h.selection_file, self.spec), "selection")
            return self._cache["selection"]
        score_source = h.score_file or h.score_split
        eval_source = h.eval_file or h.eval_split
        halves = {"validation_first_half", "validation_second_half"}
        if score_source == eval_source or (
            h.score_file is None
            and h.eval_file is None
            and {score_source, eval_source} != halves
            and score_source.startswith("validation")
            and eval_source.startswith("validation")
        ):
            raise UsageError(
                f"the selection examples are drawn from the scoring source {score_source}, which overlaps the "
                "evaluation examples: give --data.selection_file, or score on another split or file"
            )
        if not self._selection_draw():
            raise UsageError(
                "every scoring example is used for scoring, none is left to choose the sparsity on: "
                "set --data.num_examples, or give --data.selection_file"
            )
        self._cache["selection"] = self._measurable(self._selection_draw(), "selection")
        return self._cache["selection"]

    def eval_examples(self) -> list[Example]:
        """The evaluation examples (read once)."""
        h = self.hparams
        if "eval" not in self._cache:
            examples = self._examples(h.eval_file, h.eval_split)
            seed = h.seed if h.eval_seed is None else h.eval_seed
            self._cache["eval"] = self._measurable(subsample(examples, h.eval_examples, seed, "eval_examples"), "eval")
        return self._cache["eval"]

    def _measurable(self, examples: list[Example], what: str) -> list[Example]:
        """``examples``, if the task's metrics are defined on that many: a correlation needs two."""
        if self.spec.is_regression and len(examples) < 2:
            raise UsageError(
                f"{len(examples)} {what} example(s): task {self.spec.name}'s {self.spec.primary_metric} is a "
                "correlation, undefined on fewer than 2 examples; give more"
            )
        return examples

    def serving(self, examples: list[Example]) -> ExampleSet:
        """``examples`` as a datamodule of their own, batched like this one's: what ``trainer.predict`` or
        ``trainer.test`` runs on besides the scoring and evaluation examples (calibration, selection)."""
        return ExampleSet(examples, self.hparams.batch_size, self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        h = self.hparams
        return _loader(self.trainer, _by_length(self.score_examples()), h.batch_size, h.num_workers)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.trainer, self.eval_examples(), self.hparams.batch_size, self.hparams.num_workers)


class ExampleSet(LightningDataModule):
    """A fixed list of examples for ``trainer.predict`` (shortest first) or ``trainer.test`` (in order)."""

    def __init__(self, examples: list[Example], batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.examples, self.batch_size, self.num_workers = examples, batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return _loader(self.trainer, _by_length(self.examples), self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.trainer, self.examples, self.batch_size, self.num_workers)


def _loader(trainer: Trainer, examples: list[Example], batch_size: int, num_workers: int) -> DataLoader:
    """Batches of ``examples`` made by the running module's ``collate``, each example in exactly one process."""
    sampler = None
    if trainer is not None and trainer.world_size > len(examples):
        raise UsageError(
            f"{len(examples)} examples cannot be shared by {trainer.world_size} processes: "
            "use fewer devices or more examples"
        )
    if trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(
            examples, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        examples,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=trainer.lightning_module.collate,
    )
