"""Reading a Hugging Face model folder (or hub id): what every family's ``load`` shares. Weights that do not fit
their config, a missing tokenizer or damaged files become one line each."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lightning_prune.adapters.base import PER_LAYER_WEIGHTS_FILE, WEIGHTS_FILE
from lightning_prune.errors import UsageError
from lightning_prune.lora import merge_lora

SAFETENSORS_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def load_tokenizer(source: str | Path):
    """The fast tokenizer saved at ``source``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, ImportError) as error:  # missing files, or a slow tokenizer's missing backend
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"could not load the tokenizer from {source}: {first_line}") from None


def load_hf(loader, source: str | Path, plan: dict | None, adapter: str | None = None, named: str | None = None):
    """A Hugging Face model: ``from_pretrained`` when dense (with a LoRA ``adapter`` merged in), rebuilt from
    config when it carries a plan (its weights are loaded at the pruned shapes afterwards). ``named``: the model as
    the user named it, in messages about the adapter (``source`` may be a cached folder).

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
    _check_loading_info(model, info, source)
    return model if adapter is None else merge_lora(model, adapter, named or str(source))


def _check_loading_info(model, info: dict, source: str | Path) -> None:
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


def weights_file(folder: Path) -> Path | None:
    """A saved model's weights: ``model.safetensors``, or the per-layer-width file only ``load_model`` reads."""
    return next((folder / name for name in (WEIGHTS_FILE, PER_LAYER_WEIGHTS_FILE) if (folder / name).is_file()), None)


def stored_dtype(folder: Path, config) -> torch.dtype:
    """The floating dtype of the weights on disk (a local safetensors file's, else the config's), float32 if unknown."""
    weights = weights_file(folder) if folder.is_dir() else None
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
