"""LightningModules without optimizers: evaluating a task model, and accumulating neuron scores."""

from __future__ import annotations

import contextlib
import time
from typing import Literal

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import BatchSampler
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters import Batch, FFNLayer, PrunableModel, load_model, position_limit
from lightning_prune.cache import Progress, ScoreCache
from lightning_prune.errors import Terminated, UsageError
from lightning_prune.prompts import Prompt
from lightning_prune.pruning import ActivationStatistics
from lightning_prune.scorers import NeuronScorer, check_scores
from lightning_prune.tasks import Example, build_metrics, get_task, metric_inputs

LabelSource = Literal["gold", "pseudo"]


class TaskModel(LightningModule):
    """A multi-task model bound to one task; ``trainer.test`` reports the task's GLUE metrics.

    Args:
        path: model folder (dense or written by lightning-prune), or a hub id for T5 models when online.
        task: the task (linked to ``data.task`` on the command line).
        labels: label names of a non-GLUE single-sentence task (linked to ``data.labels``).
        max_length: tokens kept per scoring input (decoder LMs lose a long prompt's start); default: a
            pruned model's saved one, else 128.
        prompt: decoder LMs only: template, label words, chat (``lightning_prune.prompts``); default: a
            pruned model's saved prompt (and demonstrations), else the task's.
        demonstrations: in-context examples of decoder LMs; filled in from ``data.demonstrations``.
        eval_max_length: evaluation inputs are truncated to this many tokens (default: ``max_length``);
            set it to the length of the real inputs (e.g. 512 for long reviews) to evaluate them whole.
        adapter: a PEFT LoRA adapter folder trained on the (dense) model at ``path``: merged into its weights
            at load, so the model is scored, pruned and saved merged (needs ``pip install 'lightning-prune[lora]'``).
    """

    def __init__(
        self,
        path: str,
        task: str = "sst2",
        labels: list[str] | None = None,
        max_length: int | None = None,
        prompt: Prompt | None = None,
        demonstrations: list[Example] | None = None,
        eval_max_length: int | None = None,
        adapter: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["demonstrations"])
        if any(length is not None and length < 1 for length in (max_length, eval_max_length)):
            raise UsageError("max_length and eval_max_length must be at least 1 token")
        self.spec = get_task(task, labels)
        self.net: PrunableModel = load_model(path, self.spec, max_length, prompt, demonstrations, adapter)
        limit = position_limit(self.net)
        if eval_max_length is not None and limit is not None and eval_max_length > limit:
            raise UsageError(
                f"eval_max_length {eval_max_length} exceeds the {limit} positions of {path}: give at most {limit}"
            )
        self.metrics = build_metrics(self.spec)

    def collate(self, examples: list[Example]) -> Batch:
        """An evaluation batch, truncated at ``eval_max_length`` (scoring batches keep ``max_length``)."""
        with self.net.truncating_at(self.hparams.eval_max_length):
            return self.net.collate(examples)

    def _common_step(self, batch: Batch) -> None:
        predictions = self.net.predict(batch)
        self.metrics.update(*metric_inputs(self.spec, predictions, batch["labels"]))
        self.log_dict(self.metrics, on_step=False, on_epoch=True, batch_size=batch["labels"].shape[0])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._common_step(batch)

    def ffn_sizes(self) -> dict[str, int]:
        """Neurons per FFN layer, by layer name."""
        return {layer.name: layer.size for layer in self.net.ffn_layers()}


def score_batch(
    net: PrunableModel,
    scorer: NeuronScorer,
    scorer_name: str,
    batch: Batch | None,
    labels: LabelSource = "gold",
    heads: bool = False,
) -> list[Tensor]:
    """One batch's checked per-layer scores (summed over its examples) with gold or pseudo labels: of the FFN
    neurons, then (``heads``) of the attention head groups. A data-free scorer gets ``batch=None``."""
    if batch is not None and labels == "pseudo" and scorer.needs_labels:
        with torch.no_grad():
            batch = {**batch, "labels": net.predict(batch).to(batch["labels"].dtype)}
    layers = net.unit_layers(heads)
    with torch.enable_grad() if scorer.needs_gradients else contextlib.nullcontext():
        scores = scorer.score_units(net, batch, layers) if heads else scorer(net, batch)
    return check_scores(scorer_name, scores, layers)


class ScoringModule(LightningModule):
    """Runs a data scorer over ``trainer.predict`` batches and sums its scores over batches and processes.

    No optimizer and no ``training_step``: gradients, where the scorer needs them, are taken w.r.t.
    activations only. With ``labels="pseudo"`` the model's own predictions replace the gold labels, so
    supervised and unsupervised scoring differ only in the labels the scorer sees. With a ``cache``, each
    process saves its partial sums every ``checkpoint_every`` batches and (with ``resume``) starts from them.
    """

    def __init__(
        self,
        net: PrunableModel,
        scorer: NeuronScorer,
        scorer_name: str,
        labels: LabelSource = "gold",
        cache: ScoreCache | None = None,
        checkpoint_every: int = 10,
        resume: bool = True,
        heads: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "scorer", "cache"])
        self.net = net
        self.scorer = scorer
        self.cache = cache
        self.progress = Progress([], 0.0, 0)  # per FFN layer, summed over examples (and processes, once done)
        self.resumed_batches = 0
        self._pass_counter: RemovableHandle | None = None

    def collate(self, examples: list[Example]) -> Batch:
        return self.net.collate(examples)

    def _shard(self) -> tuple[int, int]:
        return self.trainer.global_rank, self.trainer.world_size

    def on_predict_epoch_start(self) -> None:
        layers = self.net.unit_layers(self.hparams.heads)
        resumed = None
        if self.cache is not None and self.hparams.resume:
            noted = len(self.cache.rejected)  # the finished entry's rejection was reported already
            resumed = self.cache.load_progress(*self._shard(), [layer.size for layer in layers], self._batch_sizes())
            if self.cache.rejected[noted:]:
                rejected = "; ".join(self.cache.rejected[noted:])
                rank_zero_info(f"note: score cache: {rejected}: scoring those batches again")
        fresh = Progress([torch.zeros(layer.size, dtype=torch.float64) for layer in layers], 0.0, 0)
        self.progress = resumed if resumed is not None else fresh
        self.resumed_batches = self.progress.batches
        self._pass_counter = self._count_passes(self.net.ffn_layers()[-1]) if layers else None

    def _batch_sizes(self) -> list[int]:
        """The examples in each batch of this process's shard. Drawn from a new batch sampler over the loader's
        sampler: the loader's own (Lightning's index-capturing wrapper) shares one iterator with the running loop,
        and iterating it here would leave the loop no batch at all."""
        batches = self.trainer.predict_dataloaders.batch_sampler
        return [len(indices) for indices in BatchSampler(batches.sampler, batches.batch_size, batches.drop_last)]

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        if batch_idx < self.progress.batches:  # done before an interruption
            return
        checked = score_batch(
            self.net, self.scorer, self.hparams.scorer_name, batch, self.hparams.labels, self.hparams.heads
        )
        sums = [total + score for total, score in zip(self.progress.sums, checked, strict=True)]
        # one assignment: a stop (SIGTERM, Ctrl-C) raised between two statements never leaves half a batch counted
        self.progress = Progress(sums, self.progress.examples + batch["labels"].shape[0], batch_idx + 1)
        if self.progress.batches % self.hparams.checkpoint_every == 0:
            self.save_progress()

    def save_progress(self) -> None:
        """Save this process's partial sums, so an interrupted run resumes after its last batch."""
        if self.cache is not None:
            self.cache.save_progress(*self._shard(), self.progress)

    def _count_passes(self, last_layer: FFNLayer) -> RemovableHandle | None:
        """Show the passes through the last FFN layer on the progress bar as they happen: one attribution
        batch runs ``layers × steps`` of them and can take minutes, with nothing else moving on screen."""
        if getattr(self.trainer, "progress_bar_callback", None) is None:
            return None
        started, passes = time.monotonic(), [0]

        def tick(_module, _args, _output) -> None:
            passes[0] += 1
            _describe_progress(self.trainer, f"{passes[0]} model passes, {time.monotonic() - started:.0f} s")

        return last_layer.down_proj.register_forward_hook(tick)

    def on_predict_epoch_end(self) -> None:
        """All-reduce (sum) the per-process sums in one collective, so every process holds the totals."""
        if self._pass_counter is not None:
            self._pass_counter.remove()
        sums = self.progress.sums
        flat = torch.cat([*sums, torch.tensor([self.progress.examples], dtype=torch.float64)]).to(self.device)
        flat = self.trainer.strategy.reduce(flat, reduce_op="sum").cpu()
        *totals, count = torch.split(flat, [*(s.numel() for s in sums), 1])
        self.progress = Progress(list(totals), float(count), self.progress.batches)

    @property
    def scores(self) -> list[Tensor]:
        return self.progress.sums

    @property
    def examples_seen(self) -> int:
        return int(self.progress.examples)


def _describe_progress(trainer, text: str) -> None:
    """Put ``text`` on the scoring progress bar (Rich or tqdm, whichever Lightning shows)."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    callback = trainer.progress_bar_callback
    if isinstance(callback, RichProgressBar):
        if callback.progress is not None and callback.predict_progress_bar_id is not None:
            callback.progress.update(callback.predict_progress_bar_id, description=f"Scoring ({text})")
    elif isinstance(callback, TQDMProgressBar) and callback._predict_progress_bar is not None:
        callback.predict_progress_bar.set_postfix_str(text)


class ActivationStatisticsModule(LightningModule):
    """Content-token activation statistics of every FFN neuron (and with ``heads`` every head output) over
    ``trainer.predict`` batches, summed over processes: what reconstruction repairs a cut with
    (``lightning_prune.pruning.repair``)."""

    def __init__(self, net: PrunableModel, second_moments: bool = False, heads: bool = False) -> None:
        super().__init__()
        self.net = net
        self.statistics = ActivationStatistics(net.unit_layers(heads), second_moments)

    def collate(self, examples: list[Example]) -> Batch:
        return self.net.collate(examples)

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        self.statistics.update(self.net, batch)

    def on_predict_epoch_end(self) -> None:
        self.statistics.reduce(lambda part: self.trainer.strategy.reduce(part.to(self.device), reduce_op="sum"))


class StopOnSignal(Callback):
    """A stop (``Terminated``: SIGTERM or Ctrl-C, raised mid-batch by ``signals.stopping_on_signals``) saves the
    scoring progress of the batches before it, so the same command resumes. Without those handlers (a script using
    the Python API), Lightning only notes SIGTERM, and the run stops after the batch it is on."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Terminated) and isinstance(pl_module, ScoringModule):
            pl_module.save_progress()

    def _check(self, trainer: Trainer) -> None:
        if trainer.received_sigterm:
            raise Terminated("SIGTERM")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._check(trainer)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._check(trainer)
