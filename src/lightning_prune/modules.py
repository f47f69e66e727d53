"""LightningModules without optimizers: evaluating a task model, and accumulating neuron scores."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from lightning import LightningModule
from torch import Tensor

from lightning_prune.adapters import Batch, PrunableModel, load_model
from lightning_prune.scorers import NeuronScorer, check_scores
from lightning_prune.tasks import Example, build_metrics, get_task, metric_inputs

LabelSource = Literal["gold", "pseudo"]


class TaskModel(LightningModule):
    """A multi-task model bound to one task; ``trainer.test`` reports the task's GLUE metrics.

    Args:
        path: model folder (dense or written by lightning-prune), or a hub id for T5 models when online.
        task: the task (linked to ``data.task`` on the command line).
        labels: label names of a non-GLUE single-sentence task (linked to ``data.labels``).
        max_length: inputs are truncated to this many tokens.
    """

    def __init__(self, path: str, task: str = "sst2", labels: list[str] | None = None, max_length: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_task(task, labels)
        self.net: PrunableModel = load_model(path, self.spec, max_length)
        self.metrics = build_metrics(self.spec)

    def collate(self, examples: list[Example]) -> Batch:
        return self.net.collate(examples)

    def _common_step(self, batch: Batch) -> None:
        predictions = self.net.predict(batch)
        self.metrics.update(*metric_inputs(self.spec, predictions, batch["labels"]))
        self.log_dict(self.metrics, on_step=False, on_epoch=True, batch_size=batch["labels"].shape[0])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._common_step(batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._common_step(batch)


class ScoringModule(LightningModule):
    """Runs a data scorer over ``trainer.predict`` batches and sums its scores over batches and processes.

    No optimizer and no ``training_step``: gradients, where the scorer needs them, are taken w.r.t.
    activations only. With ``labels="pseudo"`` the model's own predictions replace the gold labels, so
    supervised and unsupervised scoring differ only in the labels the scorer sees.
    """

    def __init__(
        self, net: PrunableModel, scorer: NeuronScorer, scorer_name: str, labels: LabelSource = "gold"
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "scorer"])
        self.net = net
        self.scorer = scorer
        self.scores: list[Tensor] = []  # per FFN layer, summed over examples (and processes, once done)
        self.examples_seen = torch.zeros((), dtype=torch.float64)

    def collate(self, examples: list[Example]) -> Batch:
        return self.net.collate(examples)

    def on_predict_epoch_start(self) -> None:
        self.scores = [torch.zeros(layer.size, dtype=torch.float64) for layer in self.net.ffn_layers()]
        self.examples_seen = torch.zeros((), dtype=torch.float64)

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        if self.hparams.labels == "pseudo":
            with torch.no_grad():
                batch = {**batch, "labels": self.net.predict(batch).to(batch["labels"].dtype)}
        grad_mode = torch.enable_grad() if self.scorer.needs_gradients else contextlib.nullcontext()
        with grad_mode:
            scores = self.scorer(self.net, batch)
        checked = check_scores(self.hparams.scorer_name, scores, self.net.ffn_layers())
        self.scores = [total + score for total, score in zip(self.scores, checked, strict=True)]
        self.examples_seen += batch["labels"].shape[0]

    def on_predict_epoch_end(self) -> None:
        """All-reduce (sum) the per-process sums in one collective, so every process holds the totals."""
        flat = torch.cat([*self.scores, self.examples_seen.view(1)]).to(self.device)
        flat = self.trainer.strategy.reduce(flat, reduce_op="sum").cpu()
        sizes = [s.numel() for s in self.scores]
        *self.scores, count = torch.split(flat, [*sizes, 1])
        self.examples_seen = count.squeeze()
