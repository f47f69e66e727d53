"""LoRA adapters (PEFT's format) merged into their base model at load.

Users often hold their task model as a LoRA adapter on a public base. ``--model.adapter FOLDER`` merges it
into the base weights once, right after loading: scoring, pruning and saving then see one plain model, and
the saved model loads with ``from_pretrained`` without PEFT. ``peft`` is optional (the ``lora`` and ``gguf``
extras) and imported only when an adapter is given. The adapter folder is an input: only read.

An adapter must fit its base exactly: every weight in the file must find its module (same names, same
shapes) and every injected LoRA module its weights; otherwise it was trained on another base, and merging
part of it would silently give a different model.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from lightning_prune.errors import UsageError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"  # weights come only through safetensors, never pickle
INSTALL_HINT = "pip install 'lightning-prune[lora]'"


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UsageError(f"a LoRA adapter needs the optional peft package: {INSTALL_HINT}") from None


def check_adapter_folder(adapter: str | Path) -> tuple[Path, Path]:
    """The adapter folder and its weight file, refusing a folder that is not a LoRA adapter (before loading)."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise UsageError(f"adapter {adapter} is not a folder: give a PEFT LoRA folder ({CONFIG_FILE} and weights)")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(f"adapter {adapter} has no {CONFIG_FILE}: it is not a PEFT adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{config_path} is damaged ({type(error).__name__}): restore the adapter's files") from None
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type != "LORA":
        raise UsageError(
            f"adapter {adapter} is a {peft_type or 'unknown'} adapter, not LoRA: only LoRA adapters can be merged "
            "into the base weights"
        )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = " (it has adapter_model.bin, a pickle this tool does not load: save it with safetensors)"
        raise UsageError(
            f"adapter {adapter} lacks {WEIGHTS_FILE}{pickled if (folder / 'adapter_model.bin').is_file() else ''}"
            ": restore its weights"
        )
    return folder, weights


def _adapter_weights(weights: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise UsageError(f"adapter weights {weights} are damaged ({error}): restore them") from None


@contextlib.contextmanager
def _quiet_hub_lookups() -> Iterator[None]:
    """peft looks the base model's config up on the hub (to tell whether the vocabulary changed): offline, that is
    only alarming noise ("Unable to fetch remote file ... Name or service not known")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(Unable to fetch remote file|Could not find a config file).*")
        yield


def merge_lora(model: nn.Module, adapter: str | Path, where: str) -> nn.Module:
    """``model`` with the LoRA adapter's weights merged in (a plain model again: no LoRA modules left).

    ``where``: how the model is named in errors (its path)."""
    folder, weights = check_adapter_folder(adapter)
    require_peft()
    from peft import PeftModel, get_peft_model_state_dict

    stored = _adapter_weights(weights)
    try:
        with _quiet_hub_lookups():
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:  # modules it targets missing, shapes, ...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        detail = next((line for line in lines if line.startswith("size mismatch")), lines[0])  # not the preamble
        raise UsageError(
            f"LoRA adapter {adapter} does not fit the model {where} ({detail[:300]}): give the base model it "
            "was trained on"
        ) from None
    with _quiet_hub_lookups():
        expected = get_peft_model_state_dict(peft_model)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if tuple(expected[k].shape) != tuple(stored[k].shape))
    if missing or unexpected or wrong:
        kinds = (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in kinds if keys)
        example = (missing or unexpected or wrong)[0]
        raise UsageError(
            f"LoRA adapter {adapter} does not fit the model {where}: {counts} weights, e.g. {example}; give the base "
            "model it was trained on"
        )
    return peft_model.merge_and_unload()
