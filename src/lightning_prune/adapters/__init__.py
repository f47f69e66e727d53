"""Model adapters: load a (dense or pruned) multi-task model and bind it to one task.

Supported: T5-family text-to-text models (``t5``, ``mt5``: T5, Flan-T5, T5 v1.1, mT5), decoder-only
LMs with gated FFNs answering through a prompt (Llama, Mistral, Qwen2/3, Gemma 2/3; see ``causal_lm``) and
shared encoders with per-task heads (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, DistilBERT; see ``encoder``).
A folder written by ``lightning-prune`` holds ``pruning_plan.json`` and is rebuilt at its pruned shapes, and
``lightning_prune.json``: the task it answers and how (a decoder LM's prompt), used unless the caller gives
a prompt of its own.
A model may also be a ``.gguf`` file or a ``pkg:`` reference to a file in an installed package (``sources``),
and a dense one may come with a LoRA adapter, merged into it at load (``lora``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model

from lightning_prune.adapters.base import (
    ANSWER_FILE,
    PER_LAYER_WEIGHTS_FILE,
    WEIGHTS_FILE,
    Batch,
    FFNLayer,
    PrunableModel,
    UnitLayer,
)
from lightning_prune.adapters.causal_lm import CAUSAL_LM_MODEL_TYPES, CausalLMClassifier
from lightning_prune.adapters.encoder import (
    ENCODER_LAYOUTS,
    HEADS_CONFIG,
    EncoderWithHeads,
    load_heads,
    resolve_encoder_source,
)
from lightning_prune.adapters.t5 import T5_MODEL_TYPES, T5TextToText
from lightning_prune.errors import UsageError
from lightning_prune.lora import check_adapter_folder, merge_lora, require_peft
from lightning_prune.prompts import Prompt
from lightning_prune.pruning.plan import PADDING_KEYS, apply_plan, read_plan, trim_padding
from lightning_prune.sources import resolve_model_source, source_inputs
from lightning_prune.tasks import Example, TaskSpec

SAFETENSORS_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
DEFAULT_MAX_LENGTH = 128

__all__ = [
    "Batch",
    "FFNLayer",
    "PrunableModel",
    "UnitLayer",
    "load_model",
    "model_inputs",
    "position_limit",
    "read_answer_settings",
    "supported_architectures",
]


def supported_architectures() -> str:
    return (
        f"text-to-text: {', '.join(T5_MODEL_TYPES)}; decoder LM (gated FFN): {', '.join(CAUSAL_LM_MODEL_TYPES)}; "
        f"shared encoder + {HEADS_CONFIG}: {', '.join(ENCODER_LAYOUTS)}"
    )


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


def _load_tokenizer(loader, source: str | Path):
    try:
        return loader.from_pretrained(str(source))
    except (OSError, ValueError, ImportError) as error:  # missing files, or a slow tokenizer's missing backend
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"could not load the tokenizer from {source}: {first_line}") from None


def _load_hf(loader, source: str | Path, plan: dict | None, adapter: str | None = None):
    """A Hugging Face model: ``from_pretrained`` when dense (with a LoRA ``adapter`` merged in), rebuilt from
    config when it carries a plan.

    Weights that do not fit the config (missing, unexpected or mismatched keys: e.g. a DistilBERT config
    over BERT weights) are an error: transformers would fill the gaps with random weights.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the mismatch report becomes our one line below
    try:
        if plan is not None:
            return loader.from_config(AutoConfig.from_pretrained(str(source)), dtype=torch.float32)
        model, info = loader.from_pretrained(
            str(source), dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, SafetensorError, RuntimeError) as error:  # missing, truncated or corrupted weight files
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"could not load the model weights from {source}: {first_line}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = {kind: sorted(info.get(f"{kind}_keys") or []) for kind in ("missing", "unexpected", "mismatched")}
    # A checkpoint may carry heads the loaded class does not have (BERT's cls.*, RoBERTa's lm_head.*): harmless.
    # Unexpected keys inside the model's own modules (e.g. layers the config does not have) are not.
    own_modules = {name for name, _ in model.named_children()}
    problems["unexpected"] = [key for key in problems["unexpected"] if key.split(".")[0] in own_modules]
    if any(problems.values()):
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems.items() if keys)
        example = next(keys[0] for keys in problems.values() if keys)
        example = example[0] if isinstance(example, tuple) else example
        raise UsageError(
            f"the weights in {source} do not match its config.json (model_type {model.config.model_type!r}): "
            f"{counts} keys, e.g. {example}; the config belongs to another model: restore the model's own config.json"
        )
    return model if adapter is None else merge_lora(model, adapter, str(source))


def model_inputs(path: str | Path, adapter: str | Path | None = None) -> dict[str, Path]:
    """What a model is read from: the model folder and, for heads, a separate encoder folder; for a ``.gguf``
    file or ``pkg:`` reference, the file and its de-quantized folder (``sources.source_inputs``); the LoRA
    ``adapter`` folder."""
    inputs = {} if adapter is None else {"the LoRA adapter folder": Path(adapter).expanduser()}
    from_source = source_inputs(str(path))
    if from_source is not None:
        return {**from_source, **inputs}
    folder = Path(path).expanduser()
    if not _is_local(str(path)):
        return inputs
    inputs["the model folder"] = folder
    try:
        heads_config = json.loads((folder / HEADS_CONFIG).read_text())
    except (OSError, ValueError):  # no heads, or damaged ones: loading reports that
        return inputs
    if isinstance(heads_config, dict) and isinstance(heads_config.get("encoder"), str):
        inputs["the encoder folder"] = resolve_encoder_source(folder, heads_config)
    return inputs


def _weights_file(folder: Path) -> Path | None:
    """A saved model's weights: ``model.safetensors``, or the per-layer-width file only ``load_model`` reads."""
    return next((folder / name for name in (WEIGHTS_FILE, PER_LAYER_WEIGHTS_FILE) if (folder / name).is_file()), None)


def _stored_dtype(folder: Path, config) -> torch.dtype:
    """The floating dtype of the weights on disk (a local safetensors file's, else the config's), float32 if unknown."""
    weights = _weights_file(folder) if folder.is_dir() else None
    if weights is not None:
        try:
            with safe_open(str(weights), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                    dtype = handle.get_slice(name).get_dtype()
                    if dtype in SAFETENSORS_FLOAT_DTYPES:
                        return SAFETENSORS_FLOAT_DTYPES[dtype]
        except (SafetensorError, OSError):
            pass  # unreadable weights are reported by the loader itself
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _load_pruned_weights(model: PrunableModel, folder: Path, plan: dict) -> None:
    apply_plan(model, plan, folder)
    weights = _weights_file(folder)
    if weights is None:
        raise UsageError(f"pruned model {folder} lacks {WEIGHTS_FILE}: the folder is incomplete; prune again")
    try:
        load_safetensors_model(model.weights_module, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UsageError(
            f"weights {weights} are corrupted or do not match the plan ({type(error).__name__}): prune again"
        ) from None
    trim_padding(model, plan)


def read_answer_settings(folder: Path) -> dict:
    """A saved model's ``ANSWER_FILE`` (``PrunableModel.answer_settings``), with its prompt as a ``Prompt`` and
    its demonstrations as ``Example`` records; {} for a folder without one (dense models, older runs)."""
    file = Path(folder) / ANSWER_FILE
    if not file.is_file():
        return {}
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(settings["task"], str) or not isinstance(settings.get("max_length", 1), int):
            raise TypeError("task must be a name, max_length a number of tokens")
        prompt = settings.get("prompt")
        settings["prompt"] = None if prompt is None else Prompt(**prompt)
        settings["demonstrations"] = [
            Example(tuple(d["texts"]), d["label"], d["index"]) for d in settings.get("demonstrations") or []
        ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{file} is damaged ({type(error).__name__}: {error}): restore it from the run that wrote the model"
        ) from None
    return settings


def _check_saved_task(settings: dict, task: TaskSpec, path: str) -> None:
    """A saved model answers the task it was saved for, with the label set it was saved with."""
    if not settings:
        return
    if settings["task"] != task.name:
        raise UsageError(
            f"{path} was saved for task {settings['task']} ({ANSWER_FILE}), not {task.name}: "
            f"give task {settings['task']}, or the dense model for another task"
        )
    labels = settings.get("labels")
    if labels is not None and tuple(labels) != task.labels:
        raise UsageError(
            f"{path} was saved for task {task.name} with labels {labels} ({ANSWER_FILE}), not "
            f"{list(task.labels or ())}: give its labels, in that order"
        )


def load_model(
    path: str | Path,
    task: TaskSpec,
    max_length: int | None = None,
    prompt: Prompt | None = None,
    demonstrations: list[Example] | None = None,
    adapter: str | Path | None = None,
) -> PrunableModel:
    """Load the model at ``path`` (local folder, ``.gguf`` file, ``pkg:`` reference, or for T5 and decoder
    LMs a hub id) bound to ``task``, in float32, frozen. ``prompt`` and ``demonstrations`` (in-context
    examples) apply to decoder LMs only; ``adapter``, a PEFT LoRA folder, is merged into a dense model.

    A folder lightning-prune saved (``ANSWER_FILE``) must be asked for its own task; it answers with its
    saved prompt and demonstrations unless ``prompt`` or ``demonstrations`` are given (they replace both), and
    truncates at its saved ``max_length`` unless one is given (otherwise ``DEFAULT_MAX_LENGTH``)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if adapter is not None:  # a bad adapter fails before the model loads
        adapter = str(check_adapter_folder(adapter)[0])
        require_peft()
    path = resolve_model_source(str(path))
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
    if plan is not None and adapter is not None:
        raise UsageError(
            f"{path} is a pruned model; a LoRA adapter fits the dense model it was trained on: give that model"
        )
    saved = read_answer_settings(folder) if folder.is_dir() else {}
    _check_saved_task(saved, task, path)
    given_length = max_length is not None or "max_length" in saved
    if max_length is None:
        max_length = saved.get("max_length", DEFAULT_MAX_LENGTH)
    if prompt is None and not demonstrations and saved.get("prompt") is not None:
        prompt, demonstrations = saved["prompt"], saved["demonstrations"]

    if (folder / HEADS_CONFIG).is_file():
        heads_config, head = load_heads(folder, task)
        source = folder if plan is not None else resolve_encoder_source(folder, heads_config)
        config_type = _model_type(source)
        if config_type not in ENCODER_LAYOUTS:
            raise UsageError(f"encoder of {path} is {config_type!r}; supported: {supported_architectures()}")
        encoder = _load_hf(AutoModel, source, plan, adapter)
        source_dtype = _stored_dtype(source, AutoConfig.from_pretrained(str(source)))
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
        if config.model_type not in (*T5_MODEL_TYPES, *CAUSAL_LM_MODEL_TYPES):
            raise UsageError(
                f"architecture {config.model_type!r} of {path} is not supported; supported: {supported_architectures()}"
            )
        source_dtype = _stored_dtype(folder, config)
        if config.model_type in CAUSAL_LM_MODEL_TYPES:
            tokenizer = _load_tokenizer(AutoTokenizer, path)
            decoder = _load_hf(AutoModelForCausalLM, path, plan, adapter)
            model = CausalLMClassifier(decoder, task, tokenizer, max_length, prompt, demonstrations)
        else:
            seq2seq = _load_hf(AutoModelForSeq2SeqLM, path, plan, adapter)
            model = T5TextToText(seq2seq, task, _load_tokenizer(AutoTokenizer, path), max_length)
    if not isinstance(model, CausalLMClassifier) and (prompt is not None or demonstrations):
        raise UsageError(
            f"prompt and demonstrations apply to decoder LMs ({', '.join(CAUSAL_LM_MODEL_TYPES)}); "
            f"{path} is a {model.architecture} model: drop them"
        )

    _check_tokenizer(model, path)
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        if given_length:
            raise UsageError(
                f"max_length {max_length} exceeds the {limit} positions of {path}: give at most {limit} tokens"
            )
        model.max_length = limit  # the default is cut to what the model can read
    model.source_dtype = source_dtype
    if plan is not None:
        _load_pruned_weights(model, folder, plan)
        # the padding belonged to the folder: the model is trimmed, and a new save pads (or not) afresh
        model.pruning_plan = {key: value for key, value in plan.items() if key not in PADDING_KEYS}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _check_tokenizer(model: PrunableModel, path: str) -> None:
    """The tokenizer belongs to the model: its size is within a factor of two of the embedding's rows (padding
    rows, or a few added tokens, are common). A folder without its tokenizer files gets a handful of special
    tokens from transformers, and every word would be read as unknown."""
    rows = model.weights_module.get_input_embeddings().num_embeddings
    size = len(model.tokenizer)
    if not rows // 2 <= size <= 2 * rows:
        raise UsageError(
            f"the tokenizer of {path} has {size} tokens but the model's embedding has {rows} rows: its tokenizer "
            "files (tokenizer.json, vocab) are missing or belong to another model; restore the model's own"
        )


def position_limit(model: PrunableModel) -> int | None:
    """The most positions the model's position embeddings or rotary tables were trained for (None: relative
    positions, e.g. T5)."""
    return getattr(model.weights_module.config, "max_position_embeddings", None)


def _model_type(source: Path) -> str:
    config_path = source / "config.json"
    if not config_path.is_file():
        raise UsageError(f"encoder folder {source} has no config.json: the encoder is missing")
    try:
        return json.loads(config_path.read_text()).get("model_type", "?")
    except json.JSONDecodeError as error:
        raise UsageError(f"{config_path} is not valid JSON ({error}): the model folder is damaged") from None
