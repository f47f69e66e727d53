"""What every model adapter offers: its FFN layers, batching, and the task's outputs.

An adapter binds one model to one task. Scorers, pruning and the Lightning modules only talk to this
interface, so a new architecture needs an adapter and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_prune.attention import AttentionLayer
from lightning_prune.errors import UsageError
from lightning_prune.ffn import FFNLayer
from lightning_prune.prompts import Prompt
from lightning_prune.tasks import TASKS, Example, TaskSpec

Batch = dict[str, Tensor]
WEIGHTS_FILE = "model.safetensors"
# Weights whose FFN layers differ in width: ``from_pretrained`` does not look for this name, so plain Hugging
# Face loading fails loudly ("no file named model.safetensors") instead of loading random FFN weights.
PER_LAYER_WEIGHTS_FILE = "model.per-layer-ffn.safetensors"
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# How a saved model answers its task (``PrunableModel.answer_settings``): loading it without settings of
# one's own reproduces the classifier that was pruned and measured.
ANSWER_FILE = "lightning_prune.json"


UnitLayer = FFNLayer | AttentionLayer  # a layer whose units (neurons, head groups) feed its down projection
ActivationHook = Callable[[UnitLayer, Tensor], Tensor]


@dataclass
class BlockInput:
    """The positional and keyword arguments one transformer block was called with.

    ``following``: the keyword arguments of the blocks after it, for models whose blocks get different
    ones (sliding-window and full-attention layers have different masks and rotary tables).
    """

    args: tuple
    kwargs: dict
    following: tuple[BlockInput, ...] = ()

    def expand(self, repeats: int, rows: int | None = None) -> BlockInput:
        """Repeat every batch-shaped tensor like ``expand_batch`` does (example i -> rows i*repeats ...).

        Batch-shaped means at least two dimensions, the first of ``rows`` (the hidden states' batch size):
        one-dimensional arguments are per position (e.g. ``cache_position``), never per example.
        """
        rows = self.args[0].shape[0] if rows is None else rows

        def grow(value):
            if isinstance(value, tuple):  # e.g. rotary (cos, sin)
                return tuple(grow(v) for v in value)
            if isinstance(value, Tensor) and value.dim() > 1 and value.shape[0] == rows:
                return value.repeat_interleave(repeats, dim=0)
            return value

        return BlockInput(
            tuple(grow(a) for a in self.args),
            {k: grow(v) for k, v in self.kwargs.items()},
            tuple(later.expand(repeats, rows) for later in self.following),
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a model is read from: a local folder (or, online, a hub id) with its pruning plan if lightning-prune
    wrote it, and the LoRA adapter to merge into a dense one; ``given``: the path as the user gave it (a ``.gguf``
    file or ``pkg:`` reference read from a cached folder), for messages."""

    path: str
    folder: Path
    plan: dict | None
    adapter: str | None
    given: str

    @property
    def is_folder(self) -> bool:
        return self.folder.is_dir()

    @functools.cached_property
    def config(self):
        """The folder's (or hub id's) ``config.json``, read once."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.path)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"could not read a model config from {self.path!r} ({type(error).__name__}): give a local model "
                "folder, or a hub id when online"
            ) from None


@dataclass(frozen=True)
class AnswerSettings:
    """How a loaded model reads and answers its task: tokens kept per input and, for decoder LMs
    (``answers_through_prompt``), the prompt and the in-context demonstrations."""

    max_length: int
    prompt: Prompt | None = None
    demonstrations: list[Example] | None = None


class UnsupportedArchitecture(UsageError):
    """A model no adapter handles: ``load_model`` adds the supported architectures to the message."""


class PrunableModel(nn.Module, ABC):
    """A model bound to one task, exposing its FFN neurons.

    Outputs are task-level: ``predict`` gives a class index (or a float for regression), and
    ``target_log_prob`` the log-probability of a given answer — what attribution explains.
    """

    architecture: str
    pruning_plan: dict | None = None  # the plan a pruned model was loaded with; pruning again composes with it
    # The config attribute holding the FFN width: when every layer keeps the same number of neurons, the
    # saved config carries the kept width, so plain ``from_pretrained`` builds the pruned shapes.
    ffn_width_key: str | None = None
    # The config attributes holding the query and key/value head counts: when every attention layer keeps the
    # same number of head groups, the saved config carries them and plain ``from_pretrained`` builds the pruned
    # shapes. None where a config cannot express fewer heads of the same size (BERT derives the head size from
    # the count): such models are saved at their pruned shapes for ``load_model``, or padded.
    head_count_keys: tuple[str, str] | None = None
    # Why this model's heads cannot be removed (None: they can, ``attention_layers`` lists them).
    head_pruning_unsupported: str | None = None
    # The weights' dtype on disk when loaded (set by ``load``; computation runs in float32): what
    # ``save`` writes by default, so a pruned model is never larger than its source for lack of precision.
    source_dtype: torch.dtype = torch.float32
    model_types: tuple[str, ...] = ()  # the config ``model_type``s of the family this adapter loads
    answers_through_prompt = False  # decoder LMs: a prompt and demonstrations apply

    @classmethod
    def claims(cls, source: ModelSource) -> bool:
        """Whether this adapter loads ``source`` (by default: its config's ``model_type`` is one of this family's)."""
        return source.config.model_type in cls.model_types

    @classmethod
    @abstractmethod
    def load(cls, source: ModelSource, task: TaskSpec, answer: AnswerSettings) -> PrunableModel:
        """The model at ``source`` bound to ``task`` (dense weights, or dense shapes a plan then cuts), in float32,
        with ``source_dtype`` set, answering as ``answer`` says."""

    def __init__(self, task: TaskSpec, tokenizer, max_length: int) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer  # what batches are made with (an adapter may adjust a copy of the user's)
        self.source_tokenizer = tokenizer  # the user's, saved with the pruned model
        self.max_length = max_length

    def bind_tokenizer(self, tokenizer) -> None:
        """Make batches with ``tokenizer`` (the user's, saved with the model) and derive every token id this adapter
        holds from it (a decoder's label words): adapters call it once their own settings are in place, and a
        vocabulary cut calls it again with the smaller tokenizer."""
        self.tokenizer = self.source_tokenizer = tokenizer

    def vocabulary_texts(self, examples: list[Example]) -> list[str]:
        """The texts the tokenizer reads for ``examples``, as this model reads them (a decoder's whole prompt, a T5
        task prefix) and its answers: what a task vocabulary keeps the tokens of."""
        return [text for example in examples for text in example.texts]

    @abstractmethod
    def ffn_layers(self) -> list[FFNLayer]:
        """The FFN layers, in network order."""

    def attention_layers(self) -> list[AttentionLayer]:
        """The self-attention layers whose head groups can be removed, in network order (none by default)."""
        return []

    def unit_layers(self, heads: bool = False) -> list[UnitLayer]:
        """What a run prunes: the FFN layers, then (``heads``) the attention layers."""
        return [*self.ffn_layers(), *(self.attention_layers() if heads else [])]

    @abstractmethod
    def collate(self, examples: list[Example]) -> Batch:
        """Tokenize examples into a batch holding ``labels`` and ``index`` besides the model inputs."""

    def text_batch(self, texts: list[str], examples: list[Example], **tokenizer_options) -> Batch:
        """One text per example, tokenized (padded, cut at ``max_length``), with the examples' labels and indices."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", **tokenizer_options
        )
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            **example_fields(examples, self.task.is_regression),
        }

    @abstractmethod
    def target_log_prob(self, batch: Batch, labels: Tensor) -> Tensor:
        """Log-probability of the answer ``labels`` for each example, shape ``[batch]``."""

    @abstractmethod
    def predict(self, batch: Batch) -> Tensor:
        """The model's answer per example: class index, or a float for regression."""

    @abstractmethod
    def token_mask(self, batch: Batch, side: str, labels: Tensor) -> Tensor:
        """``[batch, tokens]`` mask of the real tokens that FFN layers on ``side`` see (decoders: of ``labels``)."""

    def content_mask(self, batch: Batch, side: str, labels: Tensor) -> Tensor:
        """Boolean ``token_mask`` without special tokens ([CLS], [SEP], </s>, ...) on the encoder side: the
        tokens that carry a text's words, whatever its length."""
        mask = self.token_mask(batch, side, labels).bool()
        if side == "encoder" and "input_ids" in batch:
            special = torch.tensor(self.tokenizer.all_special_ids, device=batch["input_ids"].device)
            mask = mask & ~torch.isin(batch["input_ids"], special)
        return mask

    def example_tokens(self, batch: Batch) -> Tensor:
        """Tokens of each example's own text, shape ``[batch]``: what an example weighs when scores sum over
        examples in proportion to their length (the first FFN layer's content tokens)."""
        return self.content_mask(batch, self.ffn_layers()[0].side, batch["labels"]).sum(1)

    @property
    @abstractmethod
    def weights_module(self) -> nn.Module:
        """The Hugging Face model whose weights are saved to ``model.safetensors``."""

    def save_extras(self, directory: Path) -> None:
        """Write what the adapter needs besides config, tokenizer and weights."""

    def answer_settings(self) -> dict:
        """What ``ANSWER_FILE`` records: the task, its label set where it is not a GLUE task's, the input length."""
        labels = {"labels": list(self.task.labels)} if self.task.name not in TASKS and self.task.labels else {}
        return {"task": self.task.name, **labels, "max_length": self.max_length}

    def block_inputs(self, batch: Batch) -> list[BlockInput] | None:
        """Each FFN layer's block inputs from one clean pass, if the adapter can restart from a block
        (``target_log_prob_from``): attribution then skips recomputing the unchanged prefix. None if not."""
        return None

    def target_log_prob_from(self, batch: Batch, labels: Tensor, layer_index: int, block_input: BlockInput) -> Tensor:
        """``target_log_prob`` restarted at the block of FFN layer ``layer_index`` (see ``block_inputs``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart from a block")

    def input_settings(self) -> dict:
        """What besides the examples decides the model's inputs (a decoder LM's prompt): part of score cache keys."""
        return {}

    @contextlib.contextmanager
    def truncating_at(self, max_length: int | None) -> Iterator[None]:
        """Batches collated inside truncate inputs at ``max_length`` tokens (None: at ``self.max_length``):
        evaluation can see whole long texts while scoring keeps its own length."""
        own = self.max_length
        self.max_length = max_length or own
        try:
            yield
        finally:
            self.max_length = own

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def hook_activations(self, layers: list[UnitLayer], hook: ActivationHook) -> Iterator[None]:
        """Route each layer's unit outputs (the down projection's input: FFN neuron activations, or the heads'
        outputs before the attention's output projection) through ``hook``."""

        def make(layer: UnitLayer):
            return lambda _module, args: (hook(layer, args[0]), *args[1:])

        handles = [layer.down_proj.register_forward_pre_hook(make(layer)) for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def expand_batch(batch: Batch, repeats: int) -> Batch:
    """Repeat each example ``repeats`` times in a row (example i fills rows i*repeats ... i*repeats+repeats-1)."""
    return {key: value.repeat_interleave(repeats, dim=0) for key, value in batch.items()}


def example_fields(examples: list[Example], regression: bool) -> Batch:
    """The non-token part of every batch: ``labels`` (float for regression, else class index) and ``index``."""
    labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if regression else torch.long)
    return {"labels": labels, "index": torch.tensor([e.index for e in examples])}
