"""Model adapters: each family of models loads itself and describes its prunable layers (``base``), and
``load_model`` binds a model to one task.

Supported: T5-family text-to-text models (``t5``, ``mt5``: T5, Flan-T5, T5 v1.1, mT5), decoder-only
LMs with gated FFNs answering through a prompt (Llama, Mistral, Qwen2/3, Gemma 2/3; see ``causal_lm``) and
shared encoders with per-task heads (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, DistilBERT; see ``encoder``).
A model may also be a ``.gguf`` file or a ``pkg:`` reference to a file in an installed package (``sources``),
and a dense one may come with a LoRA adapter, merged into it at load (``lora``).
"""

from lightning_prune.adapters.base import Batch, FFNLayer, ModelSource, PrunableModel, UnitLayer
from lightning_prune.adapters.load import (
    load_model,
    model_inputs,
    position_limit,
    read_answer_settings,
    supported_architectures,
)

__all__ = [
    "Batch",
    "FFNLayer",
    "ModelSource",
    "PrunableModel",
    "UnitLayer",
    "load_model",
    "model_inputs",
    "position_limit",
    "read_answer_settings",
    "supported_architectures",
]
