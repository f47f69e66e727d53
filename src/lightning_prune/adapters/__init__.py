"""Model adapters: load a (dense or pruned) multi-task model and bind it to one task.

Supported: T5-family text-to-text models (``t5``, ``mt5``: T5, Flan-T5, T5 v1.1, mT5) and shared
encoders with per-task heads (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, DistilBERT; see ``encoder``).
A folder written by ``lightning-prune`` holds ``pruning_plan.json`` and is rebuilt at its pruned shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_model

from lightning_prune.adapters.base import WEIGHTS_FILE, Batch, FFNLayer, PrunableModel
from lightning_prune.adapters.encoder import (
    ENCODER_LAYOUTS,
    HEADS_CONFIG,
    EncoderWithHeads,
    load_heads,
    resolve_encoder_source,
)
from lightning_prune.adapters.t5 import T5_MODEL_TYPES, T5TextToText
from lightning_prune.errors import UsageError
from lightning_prune.pruning.plan import apply_plan, read_plan
from lightning_prune.tasks import TaskSpec

__all__ = ["Batch", "FFNLayer", "PrunableModel", "load_model", "supported_architectures"]


def supported_architectures() -> str:
    return f"text-to-text: {', '.join(T5_MODEL_TYPES)}; shared encoder + {HEADS_CONFIG}: {', '.join(ENCODER_LAYOUTS)}"


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


def _load_tokenizer(loader, source: str | Path):
    try:
        return loader.from_pretrained(str(source))
    except (OSError, ValueError, ImportError) as error:  # missing files, or a slow tokenizer's missing backend
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"could not load the tokenizer from {source}: {first_line}") from None


def _load_hf(loader, source: str | Path, plan: dict | None):
    """A Hugging Face model: ``from_pretrained`` when dense, rebuilt from config when it carries a plan."""
    from transformers import AutoConfig

    try:
        if plan is None:
            return loader.from_pretrained(str(source), dtype=torch.float32)
        return loader.from_config(AutoConfig.from_pretrained(str(source)), dtype=torch.float32)
    except (OSError, SafetensorError) as error:  # missing, truncated or corrupted weight files
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"could not load the model weights from {source}: {first_line}") from None


def _load_pruned_weights(model: PrunableModel, folder: Path, plan: dict) -> None:
    apply_plan(model.ffn_layers(), plan, folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"pruned model {folder} lacks {WEIGHTS_FILE}: the folder is incomplete; prune again")
    try:
        load_safetensors_model(model.weights_module, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UsageError(
            f"weights {weights} are corrupted or do not match the plan ({type(error).__name__}): prune again"
        ) from None


def load_model(path: str | Path, task: TaskSpec, max_length: int = 128) -> PrunableModel:
    """Load the model at ``path`` (local folder or, for T5, a hub id) bound to ``task``, in float32, frozen."""
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

    path = str(path)
    folder = Path(path).expanduser()
    if _is_local(path):
        path = str(folder)
        if not folder.is_dir():
            raise UsageError(
                f"model path {path} is not a folder: give a model folder (config.json, weights, tokenizer)"
            )
        if not (folder / HEADS_CONFIG).is_file() and not (folder / "config.json").is_file():
            raise UsageError(f"{path} is not a model folder: it has neither config.json nor {HEADS_CONFIG}")
    plan = read_plan(folder) if folder.is_dir() else None

    if (folder / HEADS_CONFIG).is_file():
        heads_config, head = load_heads(folder, task)
        source = folder if plan is not None else resolve_encoder_source(folder, heads_config)
        config_type = _model_type(source)
        if config_type not in ENCODER_LAYOUTS:
            raise UsageError(f"encoder of {path} is {config_type!r}; supported: {supported_architectures()}")
        encoder = _load_hf(AutoModel, source, plan)
        tokenizer_source = folder if (folder / "tokenizer_config.json").is_file() else source
        model: PrunableModel = EncoderWithHeads(
            encoder,
            head,
            heads_config.get("pooling", "mean"),
            task,
            _load_tokenizer(AutoTokenizer, tokenizer_source),
            max_length,
        )
    else:
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"could not read a model config from {path!r} ({type(error).__name__}): give a local model folder, "
                "or a hub id when online"
            ) from None
        if config.model_type in ENCODER_LAYOUTS:
            raise UsageError(
                f"{path} is a bare {config.model_type} encoder without task heads: add {HEADS_CONFIG} "
                "(see README, 'Model formats') or use a text-to-text model"
            )
        if config.model_type not in T5_MODEL_TYPES:
            raise UsageError(
                f"architecture {config.model_type!r} of {path} is not supported; supported: {supported_architectures()}"
            )
        seq2seq = _load_hf(AutoModelForSeq2SeqLM, path, plan)
        model = T5TextToText(seq2seq, task, _load_tokenizer(AutoTokenizer, path), max_length)

    if plan is not None:
        _load_pruned_weights(model, folder, plan)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _model_type(source: Path) -> str:
    config_path = source / "config.json"
    if not config_path.is_file():
        raise UsageError(f"encoder folder {source} has no config.json: the encoder is missing")
    try:
        return json.loads(config_path.read_text()).get("model_type", "?")
    except json.JSONDecodeError as error:
        raise UsageError(f"{config_path} is not valid JSON ({error}): the model folder is damaged") from None
