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
from lightning_prune.pruning.plan import PLAN_FILE
from lightning_prune.pruning.slicing import pad_ffn, pad_heads


def _heads_layout(model: PrunableModel, pad_uneven: bool) -> tuple[bool, int | None]:
    """Whether the head counts can be stored plainly, and the head-group count to pad every layer to (None: none).

    Plain when no layer lost heads, or every layer keeps the same number and the config can say so
    (``head_count_keys``); otherwise padding makes it plain: to the largest count, or to the dense count where the
    config cannot express fewer heads (BERT derives the head size from the count)."""
    layers = model.attention_layers()
    entries = (model.pruning_plan or {}).get("attention") or []
    if not entries:
        return True, None
    counts = [layer.size for layer in layers]
    if model.head_count_keys is not None and len(set(counts)) == 1:
        return True, None
    if not pad_uneven:
        return False, None
    return True, max(counts) if model.head_count_keys is not None else entries[0]["dense_size"]


def save_model_folder(
    model: PrunableModel, directory: Path, dtype: torch.dtype | None = None, pad_uneven: bool = False
) -> dict:
    """Write config, tokenizer, weights in ``dtype`` (default: ``source_dtype``; shared tensors once), the
    adapter's extras, ``ANSWER_FILE`` and, for a pruned model, ``PLAN_FILE`` (with any padding); return how the FFN
    widths and head counts were stored (``metrics.json`` reports it).

    Plain ``from_pretrained`` needs one FFN width, in the config's ``ffn_width_key``, and one head count per
    attention layer in ``head_count_keys``. Layers of different widths (global scope), or heads the config cannot
    describe, are either padded with all-zero neurons and heads (``pad_uneven``: exact, they add nothing;
    ``pruning_plan.json`` says so, and ``load_model`` strips the padding) or written as ``PER_LAYER_WEIGHTS_FILE``,
    which only ``load_model`` reads.
    """
    dtype = dtype or model.source_dtype
    layers = model.ffn_layers()
    widths = [layer.size for layer in layers]
    uniform = len(set(widths)) == 1
    heads_plain, padded_heads = _heads_layout(model, pad_uneven)
    plain = model.ffn_width_key is not None and (uniform or pad_uneven) and heads_plain
    module = copy.deepcopy(model.weights_module).to(dtype)  # the live model stays float32 and unpadded
    names = {id(m): name for name, m in model.weights_module.named_modules()}

    def in_copy(layer):
        return replace(layer, block=module.get_submodule(names[id(layer.block)]))

    if plain and not uniform:
        for layer in layers:
            pad_ffn(in_copy(layer), max(widths))
    if plain and padded_heads is not None:
        for layer in model.attention_layers():
            pad_heads(in_copy(layer), padded_heads)
    plan = model.pruning_plan
    if plain:
        setattr(module.config, model.ffn_width_key, max(widths))
    elif model.ffn_width_key is not None and plan is not None:
        # per-layer weights are rebuilt from the dense config: a re-pruned model's config held a pruned width
        setattr(module.config, model.ffn_width_key, plan["layers"][0]["dense_size"])
    attention = (plan or {}).get("attention")
    if attention and model.head_count_keys is not None:
        first = model.attention_layers()[0]
        groups = (padded_heads or first.size) if plain else attention[0]["dense_size"]
        heads_key, groups_key = model.head_count_keys
        setattr(module.config, heads_key, groups * first.queries_per_group)
        setattr(module.config, groups_key, groups)
        module.config.head_dim = first.head_dim  # no longer hidden_size / heads
    module.config.dtype = dtype
    module.config.save_pretrained(directory)
    model.source_tokenizer.save_pretrained(directory)
    weights_file = WEIGHTS_FILE if plain else PER_LAYER_WEIGHTS_FILE
    save_model(module, str(directory / weights_file))
    model.save_extras(directory)
    write_json(directory / ANSWER_FILE, model.answer_settings())
    padding = {"padded_width": max(widths) if plain and not uniform else None, "padded_heads": padded_heads}
    if plan is not None:  # load_model rebuilds the pruned shapes (and strips the padding) from it
        write_json(directory / PLAN_FILE, {**plan, **{key: size for key, size in padding.items() if size is not None}})
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "weights_file": weights_file,
        "ffn_widths": "uniform" if uniform else ("padded" if plain else "per-layer"),
        **({"heads": "padded" if padded_heads else ("uniform" if plain else "per-layer")} if attention else {}),
        **padding,
        "plain_hf_loadable": plain,
    }
