"""Loading a (dense or pruned) model bound to one task: the source is resolved (``pkg:``, ``.gguf``, folder, hub
id), the family whose adapter claims it loads it (``PrunableModel.claims`` and ``load``: no family is named here),
then what every family shares: the saved task and prompt, the input length, a pruned folder's shapes and weights.

A folder written by ``lightning-prune`` holds ``pruning_plan.json`` and is rebuilt at its pruned shapes, and
``lightning_prune.json``: the task it answers and how (a decoder LM's prompt), used unless the caller gives
a prompt of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_model

from lightning_prune.adapters.base import (
    ANSWER_FILE,
    WEIGHTS_FILE,
    AnswerSettings,
    ModelSource,
    PrunableModel,
    UnsupportedArchitecture,
)
from lightning_prune.adapters.causal_lm import CAUSAL_LM_MODEL_TYPES, CausalLMClassifier
from lightning_prune.adapters.encoder import ENCODER_LAYOUTS, HEADS_CONFIG, EncoderWithHeads, resolve_encoder_source
from lightning_prune.adapters.hf import weights_file
from lightning_prune.adapters.t5 import T5_MODEL_TYPES, T5TextToText
from lightning_prune.errors import UsageError
from lightning_prune.lora import check_adapter_folder, require_peft
from lightning_prune.prompts import Prompt
from lightning_prune.pruning.plan import PADDING_KEYS, apply_plan, read_plan, trim_padding
from lightning_prune.sources import resolve_model_source, source_inputs
from lightning_prune.tasks import Example, TaskSpec

DEFAULT_MAX_LENGTH = 128
# Each family's adapter, asked in this order whether it loads a source (the encoder by its heads file, the others
# by their config's model_type).
FAMILIES: tuple[type[PrunableModel], ...] = (EncoderWithHeads, T5TextToText, CausalLMClassifier)


def supported_architectures() -> str:
    return (
        f"text-to-text: {', '.join(T5_MODEL_TYPES)}; decoder LM (gated FFN): {', '.join(CAUSAL_LM_MODEL_TYPES)}; "
        f"shared encoder + {HEADS_CONFIG}: {', '.join(ENCODER_LAYOUTS)}"
    )


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


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


def open_source(path: str | Path, adapter: str | Path | None = None) -> ModelSource:
    """Where the model at ``path`` is read from (``pkg:`` references and ``.gguf`` files resolved to folders), checked
    to be a model folder or a hub id, with its plan; a bad ``adapter`` fails before any model loads."""
    if adapter is not None:
        adapter = str(check_adapter_folder(adapter)[0])
        require_peft()
    given, path = str(path), resolve_model_source(str(path))
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
    return ModelSource(path, folder, plan, None if adapter is None else str(adapter), given)


def family_of(source: ModelSource) -> type[PrunableModel]:
    """The adapter that loads ``source``."""
    family = next((family for family in FAMILIES if family.claims(source)), None)
    if family is not None:
        return family
    model_type = source.config.model_type
    if model_type in ENCODER_LAYOUTS:
        raise UsageError(
            f"{source.path} is a bare {model_type} encoder without task heads: add {HEADS_CONFIG} "
            "(see README, 'Model formats') or use a text-to-text model"
        )
    raise UsageError(
        f"architecture {model_type!r} of {source.path} is not supported; supported: {supported_architectures()}"
    )


def _load_pruned_weights(model: PrunableModel, folder: Path, plan: dict) -> None:
    apply_plan(model, plan, folder)
    weights = weights_file(folder)
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
    source = open_source(path, adapter)
    saved = read_answer_settings(source.folder) if source.is_folder else {}
    _check_saved_task(saved, task, source.path)
    given_length = max_length is not None or "max_length" in saved
    if max_length is None:
        max_length = saved.get("max_length", DEFAULT_MAX_LENGTH)
    if prompt is None and not demonstrations and saved.get("prompt") is not None:
        prompt, demonstrations = saved["prompt"], saved["demonstrations"]
    family = family_of(source)
    try:
        model = family.load(source, task, AnswerSettings(max_length, prompt, demonstrations))
    except UnsupportedArchitecture as error:
        raise UsageError(f"{error}; supported: {supported_architectures()}") from None
    if not family.answers_through_prompt and (prompt is not None or demonstrations):
        raise UsageError(
            f"prompt and demonstrations apply to decoder LMs ({', '.join(CAUSAL_LM_MODEL_TYPES)}); "
            f"{source.path} is a {model.architecture} model: drop them"
        )
    _check_tokenizer(model, source.path)
    _fit_length(model, max_length, given_length, source.path)
    if source.plan is not None:
        _load_pruned_weights(model, source.folder, source.plan)
        # the padding belonged to the folder: the model is trimmed, and a new save pads (or not) afresh
        model.pruning_plan = {key: value for key, value in source.plan.items() if key not in PADDING_KEYS}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _fit_length(model: PrunableModel, max_length: int, given: bool, path: str) -> None:
    """A ``max_length`` beyond the model's positions is refused when asked for; the default is cut to them."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        if given:
            raise UsageError(
                f"max_length {max_length} exceeds the {limit} positions of {path}: give at most {limit} tokens"
            )
        model.max_length = limit


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
