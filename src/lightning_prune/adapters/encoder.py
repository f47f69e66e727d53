"""Shared-encoder multi-task models: one pretrained encoder, one linear head per task (MT-DNN style).

On disk such a model is a Hugging Face encoder folder plus two files:

- ``multitask_heads.json``: ``{"pooling": "mean" | "cls", "heads": {"<task>": {"num_labels": N}}}``
  and optionally ``"encoder"``: where the encoder lives if not in this folder — a path relative to
  the folder (several heads folders can share one encoder);
- ``multitask_heads.safetensors``: ``<task>.weight`` ``[num_labels, hidden]`` and ``<task>.bias``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lightning_prune.adapters.base import (
    AnswerSettings,
    Batch,
    BlockInput,
    FFNLayer,
    ModelSource,
    PrunableModel,
    UnsupportedArchitecture,
    example_fields,
)
from lightning_prune.adapters.hf import load_hf, load_tokenizer, stored_dtype
from lightning_prune.attention import AttentionLayer
from lightning_prune.errors import UsageError
from lightning_prune.io import atomic_path, write_json
from lightning_prune.tasks import Example, TaskSpec

HEADS_CONFIG = "multitask_heads.json"
HEADS_WEIGHTS = "multitask_heads.safetensors"

# model_type -> (path of the layer list inside the encoder, up projection, down projection), relative to a layer
ENCODER_LAYOUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bert": ("encoder.layer", ("intermediate.dense",), "output.dense"),
    "roberta": ("encoder.layer", ("intermediate.dense",), "output.dense"),
    "xlm-roberta": ("encoder.layer", ("intermediate.dense",), "output.dense"),
    "electra": ("encoder.layer", ("intermediate.dense",), "output.dense"),
    "distilbert": ("transformer.layer", ("ffn.lin1",), "ffn.lin2"),
}

# model_type -> (query, key, value, output projection) of a layer's self-attention, relative to the layer
ATTENTION_LAYOUTS: dict[str, tuple[str, str, str, str]] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "electra"),
        ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    ),
    "distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
}

# The config attribute holding the FFN width, where it is not ``intermediate_size``.
FFN_WIDTH_KEYS = {"distilbert": "hidden_dim"}


def resolve_encoder_source(folder: Path, heads_config: dict) -> Path:
    """Where the encoder weights and tokenizer of a heads folder live."""
    return (folder / heads_config.get("encoder", ".")).resolve()


class EncoderWithHeads(PrunableModel):
    """A shared encoder and the bound task's head."""

    ffn_width_key = "intermediate_size"  # DistilBERT: ``hidden_dim`` (FFN_WIDTH_KEYS), set per instance

    def __init__(self, encoder: nn.Module, head: nn.Linear, pooling: str, task: TaskSpec, tokenizer, max_length: int):
        super().__init__(task, tokenizer, max_length)
        model_type = encoder.config.model_type  # load_model checked it against ENCODER_LAYOUTS
        if pooling not in ("mean", "cls"):
            raise UsageError(f"{HEADS_CONFIG}: pooling {pooling!r} is not supported: use 'mean' or 'cls'")
        self.architecture = f"{model_type}+heads"
        self.ffn_width_key = FFN_WIDTH_KEYS.get(model_type, "intermediate_size")
        self.encoder = encoder
        self.head = head
        self.pooling = pooling
        self.bind_tokenizer(tokenizer)

    def bind_tokenizer(self, tokenizer) -> None:
        """The model inputs ``tokenizer`` makes that the encoder takes."""
        super().bind_tokenizer(tokenizer)
        self.input_names = [
            n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")
        ]

    @classmethod
    def claims(cls, source: ModelSource) -> bool:
        return (source.folder / HEADS_CONFIG).is_file()

    @classmethod
    def load(cls, source: ModelSource, task: TaskSpec, answer: AnswerSettings) -> EncoderWithHeads:
        """The heads folder's encoder (in the folder, or where ``multitask_heads.json`` points) and ``task``'s
        head; a pruned folder holds its encoder itself."""
        from transformers import AutoConfig, AutoModel

        heads_config, head = load_heads(source.folder, task)
        pruned = source.plan is not None
        encoder_folder = source.folder if pruned else resolve_encoder_source(source.folder, heads_config)
        model_type = _model_type(encoder_folder)
        if model_type not in ENCODER_LAYOUTS:
            raise UnsupportedArchitecture(f"encoder of {source.path} is {model_type!r}")
        encoder = load_hf(AutoModel, encoder_folder, source.plan, source.adapter)
        tokenizer_folder = source.folder if (source.folder / "tokenizer_config.json").is_file() else encoder_folder
        pooling = heads_config.get("pooling", "mean")
        model = cls(encoder, head, pooling, task, load_tokenizer(tokenizer_folder), answer.max_length)
        model.source_dtype = stored_dtype(encoder_folder, AutoConfig.from_pretrained(str(encoder_folder)))
        return model

    @property
    def weights_module(self) -> nn.Module:
        return self.encoder

    def ffn_layers(self) -> list[FFNLayer]:
        layers_path, up, down = ENCODER_LAYOUTS[self.encoder.config.model_type]
        layers = self.encoder.get_submodule(layers_path)
        return [FFNLayer(f"{layers_path}.{i}", block, up, down, block_index=i) for i, block in enumerate(layers)]

    def attention_layers(self) -> list[AttentionLayer]:
        config = self.encoder.config
        heads = getattr(config, "num_attention_heads", None) or config.n_heads  # DistilBERT: n_heads
        head_dim = (getattr(config, "hidden_size", None) or config.dim) // heads
        query, key, value, out = ATTENTION_LAYOUTS[config.model_type]
        return [
            AttentionLayer(f"{layer.name}.attention", layer.block, query, key, value, out, head_dim, 1, block_index=i)
            for i, layer in enumerate(self.ffn_layers())
        ]

    def collate(self, examples: list[Example]) -> Batch:
        columns = list(zip(*(e.texts for e in examples), strict=True))
        encoded = self.tokenizer(
            list(columns[0]),
            list(columns[1]) if len(columns) > 1 else None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {name: encoded[name] for name in self.input_names if name in encoded}
        batch.update(example_fields(examples, self.task.is_regression))
        return batch

    def _blocks(self) -> nn.ModuleList:
        return self.encoder.get_submodule(ENCODER_LAYOUTS[self.encoder.config.model_type][0])

    def _head_outputs(self, hidden: Tensor, batch: Batch) -> Tensor:
        """Pool the last hidden states and apply the head: logits ``[batch, labels]`` or values ``[batch]``."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out = self.head(pooled)
        return out.squeeze(-1) if self.task.is_regression else out

    def outputs(self, batch: Batch) -> Tensor:
        hidden = self.encoder(**{n: batch[n] for n in self.input_names if n in batch}).last_hidden_state
        return self._head_outputs(hidden, batch)

    def _answer_log_prob(self, out: Tensor, labels: Tensor) -> Tensor:
        if self.task.is_regression:  # a unit-variance Gaussian around the prediction, up to a constant
            return -0.5 * (out - labels.to(out.dtype)) ** 2
        return torch.log_softmax(out, dim=-1).gather(1, labels.long().unsqueeze(1)).squeeze(1)

    def target_log_prob(self, batch: Batch, labels: Tensor) -> Tensor:
        return self._answer_log_prob(self.outputs(batch), labels)

    def block_inputs(self, batch: Batch) -> list[BlockInput]:
        """Every block's call arguments from one clean pass; the hidden states are the first argument."""
        captured: list[BlockInput] = []

        def record(_module, args, kwargs):
            captured.append(BlockInput(args, kwargs))

        handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in self._blocks()]
        try:
            with torch.no_grad():
                self.encoder(**{n: batch[n] for n in self.input_names if n in batch})
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def target_log_prob_from(self, batch: Batch, labels: Tensor, layer_index: int, block_input: BlockInput) -> Tensor:
        """``target_log_prob`` computed from block ``layer_index`` on: the blocks before it are not rerun.

        Every block of these encoders receives the same extra arguments (attention mask, ...), so the
        captured ones of block ``layer_index`` serve all later blocks.
        """
        hidden, *rest = block_input.args
        for block in self._blocks()[layer_index:]:
            out = block(hidden, *rest, **block_input.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return self._answer_log_prob(self._head_outputs(hidden, batch), labels)

    def predict(self, batch: Batch) -> Tensor:
        out = self.outputs(batch)
        return out if self.task.is_regression else out.argmax(-1)

    def token_mask(self, batch: Batch, side: str, labels: Tensor) -> Tensor:
        return batch["attention_mask"]

    def save_extras(self, directory: Path) -> None:
        heads = {"pooling": self.pooling, "heads": {self.task.name: {"num_labels": self.task.num_labels}}}
        write_json(directory / HEADS_CONFIG, heads)
        with atomic_path(directory / HEADS_WEIGHTS) as tmp:
            save_file(
                {f"{self.task.name}.weight": self.head.weight.contiguous(), f"{self.task.name}.bias": self.head.bias},
                str(tmp),
            )


def load_heads(folder: Path, task: TaskSpec) -> tuple[dict, nn.Linear]:
    """The heads config and the bound task's head, checked against the task."""
    try:
        config = json.loads((folder / HEADS_CONFIG).read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{folder / HEADS_CONFIG} is not valid JSON ({error}): the model folder is damaged") from None
    heads = config.get("heads", {})
    if task.name not in heads:
        raise UsageError(
            f"model {folder} has no head for task {task.name!r} (heads: {', '.join(heads) or 'none'}): "
            "choose one of those tasks"
        )
    weights_path = folder / HEADS_WEIGHTS
    if not weights_path.is_file():
        raise UsageError(f"model {folder} lacks {HEADS_WEIGHTS}: the multi-task model folder is incomplete")
    try:
        weights = load_file(str(weights_path))
        weight, bias = weights[f"{task.name}.weight"], weights[f"{task.name}.bias"]
    except (SafetensorError, OSError, KeyError) as error:
        raise UsageError(
            f"{weights_path} is damaged or lacks head {task.name!r} ({type(error).__name__}): rebuild the model folder"
        ) from None
    if weight.shape[0] != task.num_labels:
        raise UsageError(
            f"head {task.name!r} of {folder} has {weight.shape[0]} outputs but task {task.name} has "
            f"{task.num_labels} labels: the head was trained for another label set"
        )
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return config, head


def _model_type(source: Path) -> str:
    config_path = source / "config.json"
    if not config_path.is_file():
        raise UsageError(f"encoder folder {source} has no config.json: the encoder is missing")
    try:
        return json.loads(config_path.read_text()).get("model_type", "?")
    except json.JSONDecodeError as error:
        raise UsageError(f"{config_path} is not valid JSON ({error}): the model folder is damaged") from None
