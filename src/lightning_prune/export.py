"""Saving a (pruned) model as a folder: config, tokenizer, weights, the adapter's extras and how it answers.

Kept apart from the adapter interface: adapters describe a model; this module decides how its pruned shapes are
stored so that plain ``from_pretrained`` rebuilds them where it can.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_model

from lightning_prune.adapters.base import ANSWER_FILE, PER_LAYER_WEIGHTS_FILE, WEIGHTS_FILE, PrunableModel
from lightning_prune.io import write_json
from lightning_prune.pruning.slicing import pad_ffn


def save_model_folder(
    model: PrunableModel, directory: Path, dtype: torch.dtype | None = None, pad_uneven: bool = False
) -> dict:
    """Write config, tokenizer, weights in ``dtype`` (default: ``source_dtype``; shared tensors once), the
    adapter's extras and ``ANSWER_FILE``; return how the FFN widths were stored (``metrics.json`` reports it).

    Plain ``from_pretrained`` needs one FFN width, in the config's ``ffn_width_key``. Layers of different
    widths (global scope) are either padded to the widest with all-zero neurons (``pad_uneven``: exact,
    zero down-projection columns add nothing; ``pruning_plan.json`` says so, and ``load_model`` strips
    the padding) or written as ``PER_LAYER_WEIGHTS_FILE``, which only ``load_model`` reads.
    """
    dtype = dtype or model.source_dtype
    layers = model.ffn_layers()
    widths = [layer.size for layer in layers]
    uniform = len(set(widths)) == 1
    plain = model.ffn_width_key is not None and (uniform or pad_uneven)
    module = copy.deepcopy(model.weights_module).to(dtype)  # the live model stays float32 and unpadded
    if plain and not uniform:
        names = {id(m): name for name, m in model.weights_module.named_modules()}
        for layer in layers:
            pad_ffn(replace(layer, block=module.get_submodule(names[id(layer.block)])), max(widths))
    if plain:
        setattr(module.config, model.ffn_width_key, max(widths))
    elif model.ffn_width_key is not None and model.pruning_plan is not None:
        # per-layer weights are rebuilt from the dense config: a re-pruned model's config held a pruned width
        setattr(module.config, model.ffn_width_key, model.pruning_plan["layers"][0]["dense_size"])
    module.config.dtype = dtype
    module.config.save_pretrained(directory)
    model.source_tokenizer.save_pretrained(directory)
    weights_file = WEIGHTS_FILE if plain else PER_LAYER_WEIGHTS_FILE
    save_model(module, str(directory / weights_file))
    model.save_extras(directory)
    write_json(directory / ANSWER_FILE, model.answer_settings())
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "weights_file": weights_file,
        "ffn_widths": "uniform" if uniform else ("padded" if plain else "per-layer"),
        "padded_width": max(widths) if plain and not uniform else None,
        "plain_hf_loadable": plain,
    }
