"""Cutting a model's vocabulary to the tokens its task uses: the embedding rows and the output head's rows of the
kept tokens (tied weights stay tied), the config's size and token ids, and a tokenizer that still encodes any text
(``tokenizer``). The cut can be undone (``vocabulary_state``, ``restore_vocabulary``): a sweep cuts the same model
again and again."""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.errors import UsageError
from lightning_prune.vocabulary.tokenizer import (
    EncodingComparison,
    VocabularyError,
    base_alphabet,
    close_under_merges,
    compare_encodings,
    frequent_ids,
    id_map,
    kept_ids_for_texts,
    remap_token_ids,
    remap_tokenizer_config,
    tokenizer_kind,
    trim_tokenizer,
)

if TYPE_CHECKING:
    from lightning_prune.adapters.base import PrunableModel

TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")
# The tokenizer's most frequent tokens a task vocabulary keeps whatever the task (``--vocabulary_frequent``): common
# words of unseen text stay whole (measured: benchmarks/results/vocabulary.md).
FREQUENT_TOKENS = 16384


@dataclass(frozen=True)
class VocabularyCut:
    """The tokens a task keeps (old ids ascending: the rows kept) of ``total``, the tokenizer that encodes any text
    with them, and how the evaluation texts fare with it next to the full vocabulary."""

    old_ids: list[int]
    total: int
    tokenizer: Any  # a transformers tokenizer of the model's own class
    evaluation: EncodingComparison | None = None

    @property
    def kept(self) -> int:
        return len(self.old_ids)


def tokenizer_json(net: PrunableModel) -> dict:
    """The model's ``tokenizer.json``, refused with one line where there is none or its kind cannot be trimmed."""
    backend = getattr(net.source_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError(
            "--vocabulary task needs a fast tokenizer (tokenizer.json); this model has a slow one only: "
            "use --vocabulary full, or save the tokenizer as a fast one"
        )
    parsed = json.loads(backend.to_str())
    tokenizer_kind(parsed)
    return parsed


def plan_vocabulary(
    net: PrunableModel, texts: list[str], evaluation_texts: list[str], frequent: int = FREQUENT_TOKENS
) -> VocabularyCut:
    """The vocabulary of ``texts`` (what the model reads for the task, ``PrunableModel.vocabulary_texts``): their
    tokens, the tokenizer's ``frequent`` most frequent tokens (``frequent_ids``), every special and added token, its
    base alphabet (any text still encodes), closed under the merges that build kept tokens (kept texts segment as
    before). Rows the embedding has beyond the tokenizer's tokens go."""
    parsed = tokenizer_json(net)
    hf = net.weights_module
    rows = hf.get_input_embeddings().num_embeddings
    kept = kept_ids_for_texts(net.source_tokenizer, texts) | frequent_ids(parsed, frequent) | base_alphabet(parsed)
    kept |= _config_token_ids(hf.config) | _config_token_ids(getattr(hf, "generation_config", None))
    kept = {i for i in close_under_merges(parsed, kept) if i < rows}
    try:
        trimmed = trim_tokenizer(parsed, kept)
        tokenizer = _load_trimmed(net.source_tokenizer, trimmed)
    except VocabularyError as error:  # a tokenizer whose special tokens lie outside the embedding, say
        raise VocabularyError(f"the task vocabulary cannot be cut here ({error}): use --vocabulary full") from None
    evaluation = compare_encodings(parsed, trimmed, evaluation_texts) if evaluation_texts else None
    return VocabularyCut(trimmed.old_ids, rows, tokenizer, evaluation)


def _load_trimmed(source, trimmed) -> Any:
    """The trimmed tokenizer as transformers loads it from a saved folder: the source's class and settings (chat
    template, special tokens), its ``tokenizer.json`` and id-keyed configs replaced."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source.save_pretrained(folder)
        (folder / "tokenizer.json").write_text(json.dumps(trimmed.tokenizer_json, ensure_ascii=False), encoding="utf-8")
        for name in TOKENIZER_CONFIGS:
            path = folder / name
            if path.is_file():
                config = remap_tokenizer_config(json.loads(path.read_text(encoding="utf-8")), trimmed)
                path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != len(trimmed.old_ids):
        raise UsageError(
            f"the trimmed tokenizer has {len(tokenizer)} tokens, not the {len(trimmed.old_ids)} kept: this "
            f"tokenizer class ({type(source).__name__}) rebuilds its vocabulary; use --vocabulary full"
        )
    return tokenizer


@dataclass(frozen=True)
class VocabularyState:
    """What a vocabulary cut changes, to put back: the embedding and head modules, the tokenizer, the token ids of
    the configs."""

    input_embeddings: nn.Module
    output_embeddings: nn.Module | None
    tokenizer: Any
    config: dict[str, Any]
    generation_config: dict[str, Any]


def _token_settings(config: Any) -> dict[str, Any]:
    """A config's vocabulary size and token ids (``*_token_id``), as they are."""
    if config is None:
        return {}
    names = [name for name in config.to_dict() if name.endswith("_token_id")] + ["vocab_size"]
    return {name: copy.deepcopy(getattr(config, name)) for name in names if hasattr(config, name)}


def _config_token_ids(config: Any) -> set[int]:
    """The token ids a config names (bos, eos, pad, decoder start, ...): kept, so the configs stay valid."""
    ids = set()
    for name, value in _token_settings(config).items():
        if name != "vocab_size" and value is not None:
            ids |= {i for i in (value if isinstance(value, list) else [value]) if isinstance(i, int) and i >= 0}
    return ids


def vocabulary_state(net: PrunableModel) -> VocabularyState:
    hf = net.weights_module
    return VocabularyState(
        hf.get_input_embeddings(),
        hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None,
        net.source_tokenizer,
        _token_settings(hf.config),
        _token_settings(getattr(hf, "generation_config", None)),
    )


def restore_vocabulary(net: PrunableModel, state: VocabularyState) -> None:
    """Put back what ``vocabulary_state`` recorded (a no-op for a model whose vocabulary was not cut)."""
    hf = net.weights_module
    if hf.get_input_embeddings() is state.input_embeddings and net.source_tokenizer is state.tokenizer:
        return
    hf.set_input_embeddings(state.input_embeddings)
    if state.output_embeddings is not None:
        hf.set_output_embeddings(state.output_embeddings)
    for name, value in state.config.items():
        setattr(hf.config, name, value)
    for name, value in state.generation_config.items():
        setattr(hf.generation_config, name, value)
    net.bind_tokenizer(state.tokenizer)


def cut_vocabulary(net: PrunableModel, cut: VocabularyCut) -> None:
    """Keep only ``cut``'s tokens: embedding and output-head rows (tied ones stay one tensor), the configs' size
    and token ids, and the trimmed tokenizer, to which the adapter rebinds (``bind_tokenizer``)."""
    hf = net.weights_module
    rows = torch.tensor(cut.old_ids, dtype=torch.long)
    mapping = id_map(cut.old_ids)
    embeddings = hf.get_input_embeddings()
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    smaller = _embedding_rows(embeddings, rows, mapping)
    hf.set_input_embeddings(smaller)
    if head is not None:
        tied = smaller.weight if head.weight is embeddings.weight else None
        hf.set_output_embeddings(_head_rows(head, rows, tied))
    for config in (hf.config, getattr(hf, "generation_config", None)):
        if config is not None:
            for name, value in remap_token_ids(_token_settings(config), mapping).items():
                setattr(config, name, value)
    hf.config.vocab_size = cut.kept  # after the token settings, which carry the old size
    net.bind_tokenizer(cut.tokenizer)


def _with_parameter(module: nn.Module, name: str, value: torch.Tensor | nn.Parameter) -> nn.Module:
    """A shallow copy of ``module`` (its class, buffers and settings: Gemma's scaled embedding keeps its scale)
    holding ``value`` as parameter ``name``; ``module`` itself is unchanged."""
    smaller = copy.copy(module)
    smaller._parameters = dict(module._parameters)
    smaller._buffers = dict(module._buffers)
    parameter = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    setattr(smaller, name, parameter)
    return smaller


def _embedding_rows(embedding: nn.Embedding, rows: torch.Tensor, mapping: dict[int, int]) -> nn.Embedding:
    smaller = _with_parameter(embedding, "weight", embedding.weight.detach()[rows.to(embedding.weight.device)])
    smaller.num_embeddings = len(rows)
    if embedding.padding_idx is not None:
        smaller.padding_idx = mapping.get(embedding.padding_idx)
    return smaller


def _head_rows(head: nn.Linear, rows: torch.Tensor, tied: nn.Parameter | None) -> nn.Linear:
    weight = tied if tied is not None else head.weight.detach()[rows.to(head.weight.device)]
    smaller = _with_parameter(head, "weight", weight)
    if head.bias is not None:
        smaller = _with_parameter(smaller, "bias", head.bias.detach()[rows.to(head.bias.device)])
    smaller.out_features = len(rows)
    return smaller
