"""Export a (pruned) Hugging Face causal-LM folder to one GGUF file that llama.cpp runs.

llama.cpp's own converter reads one FFN width and one head count from the config, so it cannot write a folder
whose layers were pruned to different widths. This writer takes every layer's shape from its tensors instead:
when all layers match, the model is written as its own llama.cpp architecture (``llama``, ``qwen2``, ``qwen3``,
``gemma3``); a Llama-family (or Qwen2) model whose layers differ is written as llama.cpp's ``deci``
architecture, which reads the FFN width and the head counts per layer. Gemma 3 and Qwen3 have no such
architecture in llama.cpp: save those padded (all-zero neurons and heads add exactly nothing).

Key names and tensor layouts follow the llama.cpp that llama-cpp-python 0.3.36 bundles (``src/llama-arch.cpp``,
``src/models/*.cpp``, ``src/llama-vocab.cpp`` there).
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import SafetensorError, safe_open

from lightning_prune.adapters.base import PER_LAYER_WEIGHTS_FILE, WEIGHTS_FILE
from lightning_prune.errors import UsageError
from lightning_prune.export.dtypes import GGUFDtype
from lightning_prune.io import atomic_path
from lightning_prune.pruning.plan import PLAN_FILE
from lightning_prune.sources import GGUF_SUFFIX
from lightning_prune.vocabulary.tokenizer import merge_parts, token_text

WEIGHT_FILES = (WEIGHTS_FILE, PER_LAYER_WEIGHTS_FILE)  # plain save, per-layer widths
SHARD_INDEX = "model.safetensors.index.json"
EMBEDDING = "model.embed_tokens.weight"
Q8_0_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# What a user can do when a tokenizer.json cannot be converted: have the input GGUF's tokenizer copied instead
COPY_TOKENIZER = "export the model read from its .gguf file (its tokenizer is copied as it is), with --vocabulary full"
EXPORTED_BY_KEY = "lightning_prune.exported_by"  # marks a file this writer made: only such a file is overwritten
PAIRED_ROPE_ARCHES = ("llama", "deci")  # rotate adjacent pairs, where Hugging Face rotates the two halves
T = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType


class GGUFExportError(UsageError):
    """A model or file the export cannot write: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model type maps onto llama.cpp."""

    arch: str  # the llama.cpp architecture for layers that all have one shape
    uneven_arch: str | None  # the one that reads per-layer widths (None: llama.cpp has none for this family)
    gemma: bool = False  # (1 + w) norms, post-attention and post-FFN norms, sliding-window layers


GGUF_FAMILIES = {
    "llama": Family("llama", "deci"),
    "mistral": Family("llama", "deci"),
    # Qwen2 is Llama with q/k/v biases: deci (and llama) read those biases too
    "qwen2": Family("qwen2", "deci"),
    "qwen3": Family("qwen3", None),  # per-head q/k norms: deci has none
    "gemma3_text": Family("gemma3", None, gemma=True),
    "gemma3": Family("gemma3", None, gemma=True),
}


@dataclass(frozen=True)
class LayerShape:
    ffn: int  # FFN neurons
    heads: int  # query heads
    kv_heads: int  # key/value heads (head groups)


@dataclass(frozen=True)
class MetaEntry:
    """One GGUF key/value pair, typed as llama.cpp reads it."""

    key: str
    value: Any
    vtype: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: known before any data is read, so the header goes first and the data streams."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (GGUF lists the dimensions reversed)
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 data in ``shape``


@dataclass(frozen=True)
class ExportReport:
    output_file: Path
    architecture: str  # the llama.cpp architecture written
    dtype: str
    tokenizer: str  # where the vocabulary came from
    ffn_widths: tuple[int, ...]
    file_bytes: int
    seconds: float


# --- weights -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightStore:
    """Where each tensor of a model folder lies (one file, shards, or the per-layer file of a pruned save); read
    one at a time, so exporting never holds the whole model in memory."""

    files: dict[str, Path]  # text-model name -> file
    stored_names: dict[str, str]  # text-model name -> name inside the file

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.files:
            raise GGUFExportError(
                f"the weights have no tensor {name!r}: the model folder is incomplete or not a causal LM"
            )
        with _reading(self.files[name]), safe_open(self.files[name], framework="pt") as handle:
            return tuple(handle.get_slice(self.stored_names[name]).get_shape())

    def alias(self, name: str, existing: str) -> WeightStore:
        """This store with ``name`` also reading tensor ``existing``."""
        return WeightStore(
            {**self.files, name: self.files[existing]}, {**self.stored_names, name: self.stored_names[existing]}
        )

    def read(self, name: str) -> np.ndarray:
        with _reading(self.files[name]), safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(self.stored_names[name]).float().numpy()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A damaged or unreadable weights file of the model: one line that names it."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise GGUFExportError(
            f"{path} is damaged or unreadable ({type(error).__name__}): save the model again"
        ) from None


def _text_model_name(name: str) -> str | None:
    """The causal-LM name of a stored tensor (a Gemma 3 multimodal save nests it under ``language_model``);
    None for vision tensors, which a text GGUF leaves out."""
    if "vision_tower." in name or "multi_modal_projector." in name:
        return None
    for nested, plain in (
        ("model.language_model.", "model."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ):
        if name.startswith(nested):
            return plain + name.removeprefix(nested)
    return name


def open_weights(folder: Path) -> WeightStore:
    """Index the folder's safetensors: sharded, ``model.safetensors``, or ``model.per-layer-ffn.safetensors``."""
    index = folder / SHARD_INDEX
    if index.is_file():
        with _reading(index):
            located = {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    else:
        found = [folder / file for file in WEIGHT_FILES if (folder / file).is_file()]
        if len(found) != 1:
            what = "no weights" if not found else "both plain and per-layer weights"
            raise GGUFExportError(f"{folder} has {what} ({' or '.join(WEIGHT_FILES)}): give one saved model folder")
        with _reading(found[0]), safe_open(found[0], framework="pt") as handle:
            located = dict.fromkeys(handle.keys(), found[0])
    files, stored = {}, {}
    for name, path in located.items():
        if (text_name := _text_model_name(name)) is not None:
            files[text_name], stored[text_name] = path, name
    return WeightStore(files, stored)


# --- shapes and architecture ---------------------------------------------------------------------------------


def read_layer_shapes(store: WeightStore, n_layers: int, head_dim: int) -> list[LayerShape]:
    """Every layer's FFN width and head counts, from its tensors (a pruned config holds the dense sizes)."""
    shapes = []
    for i in range(n_layers):
        prefix = f"model.layers.{i}."
        q, k, v, o = (store.shape(f"{prefix}self_attn.{p}_proj.weight") for p in "qkvo")
        gate, up, down = (store.shape(f"{prefix}mlp.{p}_proj.weight") for p in ("gate", "up", "down"))
        if gate[0] != up[0] or down[1] != gate[0]:
            raise GGUFExportError(f"layer {i}: gate {gate}, up {up} and down {down} projections disagree on the width")
        if q[0] % head_dim or k[0] % head_dim or v != k or o[1] != q[0]:
            raise GGUFExportError(f"layer {i}: q {q}, k {k}, v {v}, o {o} are not whole heads of size {head_dim}")
        heads, kv_heads = q[0] // head_dim, k[0] // head_dim
        if gate[0] == 0 or kv_heads == 0 or heads % kv_heads:
            raise GGUFExportError(
                f"layer {i} keeps {gate[0]} FFN neurons, {heads} query and {kv_heads} key/value heads: llama.cpp "
                "needs at least one neuron and one whole head group per layer"
            )
        shapes.append(LayerShape(gate[0], heads, kv_heads))
    return shapes


def unpadded_shapes(shapes: list[LayerShape], plan: dict | None) -> list[LayerShape]:
    """The shapes without the all-zero neurons and head groups a padded save appended after the kept ones
    (``pruning_plan.json`` lists those): written at their real widths, the model is smaller and faster."""
    if plan is None:
        return shapes
    ffn = [len(entry["kept"]) for entry in plan.get("layers", [])] if plan.get("padded_width") else None
    groups = [len(entry["kept"]) for entry in plan.get("attention", [])] if plan.get("padded_heads") else None
    for sizes, unit in ((ffn, "FFN"), (groups, "attention")):
        if sizes is not None and len(sizes) != len(shapes):
            raise GGUFExportError(f"{PLAN_FILE} lists {len(sizes)} {unit} layers, the weights have {len(shapes)}")
    return [
        LayerShape(
            ffn[i] if ffn else shape.ffn,
            (groups[i] if groups else shape.kv_heads) * (shape.heads // shape.kv_heads),
            groups[i] if groups else shape.kv_heads,
        )
        for i, shape in enumerate(shapes)
    ]


def choose_arch(family: Family, shapes: list[LayerShape], hidden: int, head_dim: int, model_type: str) -> str:
    """The llama.cpp architecture that builds these layers exactly."""
    uniform = len(set(shapes)) == 1
    if uniform and (family.arch != "qwen2" or shapes[0].heads * head_dim == hidden):
        return family.arch
    if uniform:
        return "llama"  # llama.cpp's qwen2 assumes heads * head_dim == hidden; llama reads key_length (and biases)
    if family.uneven_arch is None:
        raise GGUFExportError(
            f"{model_type} layers of different widths cannot run in llama.cpp (it has no per-layer variant of "
            f"{family.arch}): save the pruned model padded (exact: zero neurons and heads add nothing) and export that"
        )
    return family.uneven_arch


# --- tensors -------------------------------------------------------------------------------------------------

LAYER_TENSORS = {
    "input_layernorm": gguf.MODEL_TENSOR.ATTN_NORM,
    "self_attn.q_proj": gguf.MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": gguf.MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": gguf.MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "self_attn.q_norm": gguf.MODEL_TENSOR.ATTN_Q_NORM,
    "self_attn.k_norm": gguf.MODEL_TENSOR.ATTN_K_NORM,
    "pre_feedforward_layernorm": gguf.MODEL_TENSOR.FFN_NORM,  # Gemma
    "post_feedforward_layernorm": gguf.MODEL_TENSOR.FFN_POST_NORM,  # Gemma
    "mlp.gate_proj": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}
GLOBAL_TENSORS = {
    "model.embed_tokens": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "model.norm": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head": gguf.MODEL_TENSOR.OUTPUT,
}
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


def gguf_tensor_name(name: str, family: Family) -> tuple[str, int | None]:
    """The GGUF name of Hugging Face tensor ``name`` and its layer (None: not per layer)."""
    if (match := LAYER_NAME.fullmatch(name)) is not None:
        layer, module, kind = int(match[1]), match[2], match[3]
        if module == "post_attention_layernorm":  # before the FFN in Llama/Qwen, after the attention in Gemma
            tensor = gguf.MODEL_TENSOR.ATTN_POST_NORM if family.gemma else gguf.MODEL_TENSOR.FFN_NORM
        elif module in LAYER_TENSORS:
            tensor = LAYER_TENSORS[module]
        else:
            raise GGUFExportError(f"tensor {name!r} has no llama.cpp counterpart for {family.arch}: not exported")
        return f"{gguf.TENSOR_NAMES[tensor].format(bid=layer)}.{kind}", layer
    base, _, kind = name.rpartition(".")
    if base not in GLOBAL_TENSORS:
        raise GGUFExportError(f"tensor {name!r} has no llama.cpp counterpart for {family.arch}: not exported")
    return f"{gguf.TENSOR_NAMES[GLOBAL_TENSORS[base]]}.{kind}", None


def kept_extent(name: str, layer: LayerShape, head_dim: int) -> tuple[int | None, int | None]:
    """How many rows and columns of a layer tensor its real shape keeps (None: all): the rest is padding."""
    module = name.split(".")[-2]
    extents = {
        "gate_proj": (layer.ffn, None),
        "up_proj": (layer.ffn, None),
        "down_proj": (None, layer.ffn),
        "q_proj": (layer.heads * head_dim, None),
        "k_proj": (layer.kv_heads * head_dim, None),
        "v_proj": (layer.kv_heads * head_dim, None),
        "o_proj": (None, layer.heads * head_dim),
    }
    return extents.get(module, (None, None))


def interleave_rotary_halves(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Reorder each head's rows of a q/k projection from Hugging Face's rotate-half layout (dimension i pairs
    with i + head_dim/2) to the adjacent pairs llama.cpp's ``llama``/``deci`` rope rotates (2i with 2i + 1)."""
    half = head_dim // 2
    within = np.arange(head_dim).reshape(2, half).T.reshape(-1)  # 0, half, 1, half + 1, ...
    order = (np.arange(rows.shape[0] // head_dim)[:, None] * head_dim + within).reshape(-1)
    return rows[order]


def _cut(data: np.ndarray, rows: int | None, cols: int | None, name: str) -> np.ndarray:
    """``data`` without the padding past ``rows``/``cols``, which must be all zeros."""
    kept = data[:rows] if data.ndim == 1 else data[:rows, :cols]
    if kept.size != data.size and np.count_nonzero(data) != np.count_nonzero(kept):
        raise GGUFExportError(f"{name}: the padding {PLAN_FILE} records is not all zeros: the folder is damaged")
    return kept


def _qtype(dtype: GGUFDtype, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
    """Matrices in ``dtype``, vectors (norms, biases) in F32 as llama.cpp's converter keeps them; Q8_0 needs
    rows of whole 32-value blocks (others stay F16)."""
    if len(shape) == 1 or dtype == "f32":
        return Q.F32
    if dtype == "q8_0" and shape[-1] % Q8_0_BLOCK == 0:
        return Q.Q8_0
    return Q.F16


@dataclass(frozen=True)
class Layout:
    """What the tensors are written as."""

    arch: str
    family: Family
    shapes: tuple[LayerShape, ...]  # real shapes (padding excluded where the architecture allows)
    head_dim: int
    tied: bool  # the output projection is the token embedding (no output.weight)


def tensor_specs(store: WeightStore, layout: Layout, dtype: GGUFDtype) -> list[TensorSpec]:
    """Every tensor of the GGUF, in order, with its shape and type; data is read when written."""
    specs = []
    for source in store.files:
        if source.endswith("rotary_emb.inv_freq") or (layout.tied and source.startswith("lm_head.")):
            continue
        name, layer = gguf_tensor_name(source, layout.family)
        if layer is not None and layer >= len(layout.shapes):
            raise GGUFExportError(f"tensor {source!r} is past the config's {len(layout.shapes)} layers: damaged folder")
        shape = store.shape(source)
        rows, cols = kept_extent(source, layout.shapes[layer], layout.head_dim) if layer is not None else (None, None)
        shape = (rows or shape[0], *(() if len(shape) == 1 else (cols or shape[1],)))
        offset = 1.0 if layout.family.gemma and source.endswith("norm.weight") else 0.0  # Gemma scales by (1 + w)
        rotate = layout.arch in PAIRED_ROPE_ARCHES and source.split(".")[-2] in ("q_proj", "k_proj")
        load = _loader(store, source, (rows, cols), offset, layout.head_dim if rotate else 0)
        specs.append(TensorSpec(name, shape, _qtype(dtype, shape), load))
    return specs


def _loader(
    store: WeightStore, source: str, extent: tuple[int | None, int | None], offset: float, rotary_head_dim: int
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = _cut(store.read(source), *extent, source)
        if offset:
            data = data + np.float32(offset)
        return interleave_rotary_halves(data, rotary_head_dim) if rotary_head_dim else data

    return load


# --- hyperparameters -----------------------------------------------------------------------------------------


def _u32(key: str, value: int) -> MetaEntry:
    return MetaEntry(key, int(value), T.UINT32)


def _f32(key: str, value: float) -> MetaEntry:
    return MetaEntry(key, float(value), T.FLOAT32)


def _u32_or_array(key: str, values: list[int], per_layer: bool) -> MetaEntry:
    return MetaEntry(key, [int(v) for v in values], T.ARRAY, T.UINT32) if per_layer else _u32(key, values[0])


def _rope_params(config: Any) -> tuple[dict, dict | None]:
    """The RoPE parameters of the full-attention layers and of the sliding-window ones (None: no such layers).
    Transformers 5 gives ``rope_parameters``; older configs ``rope_theta`` and ``rope_scaling``."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        params = {"rope_theta": getattr(config, "rope_theta", 10000.0), **(getattr(config, "rope_scaling", None) or {})}
    if "full_attention" in params:
        return params["full_attention"], params.get("sliding_attention")
    return params, None


def rope_entries(arch: str, config: Any, head_dim: int) -> tuple[list[MetaEntry], np.ndarray | None]:
    """RoPE keys, and the per-frequency factors ``rope_freqs.weight`` holds for Llama 3 scaling (None: none)."""
    params, _ = _rope_params(config)
    entries = [_f32(f"{arch}.rope.freq_base", params.get("rope_theta", 10000.0))]
    kind = params.get("rope_type", "default")
    if kind == "linear":
        entries += [
            MetaEntry(f"{arch}.rope.scaling.type", "linear", T.STRING),
            _f32(f"{arch}.rope.scaling.factor", params["factor"]),
        ]
        return entries, None
    if kind == "llama3" and arch in PAIRED_ROPE_ARCHES:
        return entries, llama3_rope_factors(params, head_dim)
    if kind != "default":
        raise GGUFExportError(
            f"RoPE scaling {kind!r} is not supported by the GGUF export of {arch} (only linear, llama3)"
        )
    return entries, None


def llama3_rope_factors(params: dict, head_dim: int) -> np.ndarray:
    """How much Llama 3's RoPE scaling slows each frequency: by ``factor`` for wavelengths beyond the original
    context / low_freq_factor, not at all below context / high_freq_factor, blended in between (llama.cpp divides
    each frequency by these)."""
    base, factor = params.get("rope_theta", 10000.0), params["factor"]
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    context = params.get("original_max_position_embeddings", 8192)
    wavelength = 2 * np.pi * base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    blend = np.clip((context / wavelength - low) / (high - low), 0.0, 1.0)  # 0: long waves, 1: short waves
    return (1.0 / ((1.0 - blend) / factor + blend)).astype(np.float32)


def gemma_entries(arch: str, config: Any, layout: Layout) -> list[MetaEntry]:
    """Gemma 3's sliding-window layers, their RoPE base, logit soft-capping; and a check that llama.cpp's
    attention scale (fixed by the layer count) is the config's."""
    if getattr(config, "attn_logit_softcapping", None):
        raise GGUFExportError(
            "attention logit soft-capping is not in llama.cpp's gemma3: this model cannot be exported"
        )
    n_embd, first = config.hidden_size, layout.shapes[0]
    used = n_embd // first.heads if len(layout.shapes) == 62 else layout.head_dim  # llama.cpp's rule: 27B or not
    wanted = getattr(config, "query_pre_attn_scalar", None) or layout.head_dim
    if abs(used - wanted) > 1e-6 * wanted:
        raise GGUFExportError(
            f"llama.cpp scales queries by 1/sqrt({used:g}), the model by 1/sqrt({wanted:g}): not exportable"
        )
    entries = []
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * len(layout.shapes)
    if "sliding_attention" in kinds:
        _, sliding = _rope_params(config)
        if (sliding or {}).get("rope_type", "default") != "default":
            raise GGUFExportError("scaled RoPE on sliding-window layers is not in llama.cpp's gemma3: not exportable")
        base = (sliding or {}).get("rope_theta", getattr(config, "rope_local_base_freq", 10000.0))
        pattern = [kind == "sliding_attention" for kind in kinds]
        entries += [
            _u32(f"{arch}.attention.sliding_window", config.sliding_window),
            MetaEntry(f"{arch}.attention.sliding_window_pattern", pattern, T.ARRAY, T.BOOL),
            _f32(f"{arch}.rope.freq_base_swa", base),
        ]
    if getattr(config, "final_logit_softcapping", None):
        entries.append(_f32(f"{arch}.final_logit_softcapping", config.final_logit_softcapping))
    return entries


def model_entries(layout: Layout, config: Any, dtype: GGUFDtype, n_vocab: int, name: str) -> list[MetaEntry]:
    """The general keys and the hyperparameters llama.cpp reads for ``layout.arch`` (arrays per layer for deci)."""
    a, shapes, per_layer = layout.arch, layout.shapes, layout.arch == "deci"
    entries = [
        MetaEntry("general.name", name, T.STRING),
        MetaEntry(EXPORTED_BY_KEY, f"lightning-prune {version('lightning-prune')}", T.STRING),
        _u32("general.file_type", FILE_TYPES[dtype]),
        _u32(f"{a}.context_length", config.max_position_embeddings),
        _u32(f"{a}.embedding_length", config.hidden_size),
        _u32(f"{a}.block_count", len(shapes)),
        _u32_or_array(f"{a}.feed_forward_length", [s.ffn for s in shapes], per_layer),
        _u32_or_array(f"{a}.attention.head_count", [s.heads for s in shapes], per_layer),
        _u32_or_array(f"{a}.attention.head_count_kv", [s.kv_heads for s in shapes], per_layer),
        _u32(f"{a}.attention.key_length", layout.head_dim),  # pruned heads: no longer hidden / heads
        _u32(f"{a}.attention.value_length", layout.head_dim),
        _u32(f"{a}.rope.dimension_count", layout.head_dim),
        _f32(f"{a}.attention.layer_norm_rms_epsilon", config.rms_norm_eps),
        _u32(f"{a}.vocab_size", n_vocab),
    ]
    if dtype == "q8_0":
        entries.append(_u32("general.quantization_version", gguf.GGML_QUANT_VERSION))
    if layout.family.gemma:
        entries += gemma_entries(a, config, layout)
    return entries


# --- tokenizer -----------------------------------------------------------------------------------------------

# The pre-tokenizers llama.cpp implements, recognised from tokenizer.json's pre_tokenizer steps (llama.cpp's
# converter hashes the ids of a check string instead, which only knows published vocabularies).
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = _WORDS + r"\p{N}{1,3}" + _REST  # numbers in runs of up to three digits
QWEN2_SPLIT = _WORDS + r"\p{N}" + _REST  # single digits
SPLITS = {LLAMA3_SPLIT: "split-llama3", QWEN2_SPLIT: "split-qwen2"}
BPE_PRE_TOKENIZERS = {
    ("bytelevel-regex",): "gpt-2",
    ("digits", "bytelevel-regex"): "smollm",  # SmolLM/SmolLM2: single digits, then GPT-2's split
    ("split-llama3", "bytelevel"): "llama-bpe",
    ("split-qwen2", "bytelevel"): "qwen2",
}
IGNORE_MERGES = ("llama-bpe",)  # llama.cpp looks whole words up first for these, as their tokenizer.json says
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def _pre_steps(pre: dict | None) -> tuple[str, ...]:
    """A pre-tokenizer as one word per step."""
    if pre is None:
        return ()
    kind = pre["type"]
    if kind == "Sequence":
        return tuple(step for inner in pre["pretokenizers"] for step in _pre_steps(inner))
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            return ("bytelevel-prefix",)
        return ("bytelevel-regex" if pre.get("use_regex", True) else "bytelevel",)
    if kind == "Digits":
        return ("digits" if pre.get("individual_digits") else "digit-runs",)
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        return (SPLITS.get(pre["pattern"].get("Regex", ""), "split-other"),)
    return (kind,)


def bpe_pre_name(data: dict) -> str:
    """The ``tokenizer.ggml.pre`` name of a byte-level BPE tokenizer.json; refuses one llama.cpp would split
    differently."""
    steps = _pre_steps(data.get("pre_tokenizer"))
    name = BPE_PRE_TOKENIZERS.get(steps)
    if name is None:
        raise GGUFExportError(
            f"pre-tokenizer {'+'.join(steps) or 'none'} is not one this export knows for llama.cpp (GPT-2, SmolLM, "
            f"Llama 3, Qwen2): {COPY_TOKENIZER}"
        )
    if (name in IGNORE_MERGES) != bool(data["model"].get("ignore_merges")):
        raise GGUFExportError(f"tokenizer.json's ignore_merges does not match llama.cpp's {name!r}: {COPY_TOKENIZER}")
    if (data.get("normalizer") or {"type": "NFC"})["type"] != "NFC":
        raise GGUFExportError(f"a byte-level tokenizer.json with a normalizer is not supported: {COPY_TOKENIZER}")
    return name


def spm_space_prefix(data: dict) -> bool:
    """Whether a SentencePiece-style tokenizer.json (spaces written as U+2581) prepends one to the text."""
    normalizer = data.get("normalizer") or {"type": "Sequence", "normalizers": []}
    steps = normalizer.get("normalizers", [normalizer])
    pre = data.get("pre_tokenizer")
    if pre is not None and pre["type"] == "Metaspace" and not pre.get("split", True):
        return pre.get("prepend_scheme", "always") != "never"
    replaces = any(
        s["type"] == "Replace" and s["pattern"].get("String") == " " and s["content"] == "\u2581" for s in steps
    )
    # Gemma's Split on " " comes after the normalizer turned every space into U+2581: it never splits
    inert = pre is None or (pre["type"] == "Split" and pre["pattern"].get("String") == " " and replaces)
    if not (replaces and inert):
        raise GGUFExportError(f"tokenizer.json is neither byte-level nor SentencePiece-style BPE: {COPY_TOKENIZER}")
    return any(s["type"] == "Prepend" for s in steps)


def _token_table(data: dict, n_rows: int, spm: bool) -> tuple[list[str], list[int], list[float]]:
    """Tokens, token types and scores by id, padded to the embedding's rows with unused ``[PAD<id>]`` tokens.
    SentencePiece-style scores rank tokens by the merge that makes them (earlier: higher)."""
    model = data["model"]
    added = {token["id"]: token for token in data.get("added_tokens", [])}
    by_id = {index: text for text, index in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    if max(by_id) >= n_rows:
        raise GGUFExportError(
            f"the tokenizer has ids up to {max(by_id)}, the embedding {n_rows} rows: they do not match"
        )
    rank = {"".join(pair): -float(i) for i, pair in reversed(list(enumerate(_merge_pairs(data))))}
    tokens, types, scores = [], [], []
    for i in range(n_rows):
        text = by_id.get(i)
        if text is None:
            kind, text = gguf.TokenType.UNUSED, f"[PAD{i}]"
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
        elif spm and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.UNKNOWN if spm and text == model.get("unk_token") else gguf.TokenType.NORMAL
        tokens.append(text)
        types.append(int(kind))
        scores.append(rank.get(text, 0.0 if len(text) == 1 or kind == gguf.TokenType.BYTE else -1e6))
    if len(set(tokens)) != len(tokens):  # llama.cpp aborts the process on a repeated token
        repeated = next(text for text in tokens if tokens.count(text) > 1)
        raise GGUFExportError(f"token {repeated!r} has two ids in tokenizer.json: {COPY_TOKENIZER}")
    return tokens, types, scores


def _merge_pairs(data: dict) -> list[tuple[str, str]]:
    return [merge_parts(merge) for merge in data["model"].get("merges", [])]


def special_entries(folder: Path, data: dict, lookup: dict[str, int]) -> list[MetaEntry]:
    """Special token ids (config.json's, overridden by tokenizer_config.json's tokens), whether BOS/EOS are
    added (the post-processor's template), and the chat template."""
    settings = _read_json(folder / "tokenizer_config.json")
    config = _read_json(folder / "config.json")
    ids = {kind: config.get(f"{kind}_token_id") for kind in SPECIAL_KEYS}
    for kind in SPECIAL_KEYS:
        if (text := token_text(settings.get(f"{kind}_token"))) in lookup:
            ids[kind] = lookup[text]
    entries = [_u32(f"tokenizer.ggml.{SPECIAL_KEYS[k]}", v) for k, v in ids.items() if isinstance(v, int)]
    add_bos, add_eos = _template_adds(data.get("post_processor"))
    add_bos = settings.get("add_bos_token", False) if add_bos is None else add_bos
    add_eos = settings.get("add_eos_token", False) if add_eos is None else add_eos
    entries += [
        MetaEntry("tokenizer.ggml.add_bos_token", bool(add_bos), T.BOOL),
        MetaEntry("tokenizer.ggml.add_eos_token", bool(add_eos), T.BOOL),
    ]
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if template:
        entries.append(MetaEntry("tokenizer.chat_template", template, T.STRING))
    return entries


def _template_adds(processor: dict | None) -> tuple[bool | None, bool | None]:
    """Whether the post-processor's single-sequence template starts and ends with a special token (None: no
    template)."""
    if processor is None:
        return None, None
    if processor["type"] == "Sequence":
        found = [_template_adds(inner) for inner in processor["processors"]]
        return next((f for f in found if f[0] is not None), (None, None))
    if processor["type"] != "TemplateProcessing":
        return None, None
    single = processor["single"]
    return "SpecialToken" in single[0], "SpecialToken" in single[-1]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_tokenizer_json(folder: Path) -> dict:
    """``folder/tokenizer.json``, refused unless llama.cpp can take it converted: checked before any work."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{folder} has no tokenizer.json: {COPY_TOKENIZER}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        check_convertible(data)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise GGUFExportError(f"{path} is damaged ({type(error).__name__}): save the model again") from None
    return data


def check_convertible(data: dict) -> None:
    """Refuse a tokenizer.json (its parsed data) that llama.cpp could not read as this export converts it."""
    kind = data["model"]["type"]
    if kind != "BPE":
        raise GGUFExportError(f"a {kind} tokenizer.json is not supported: {COPY_TOKENIZER}")
    if not data["model"].get("vocab"):
        raise GGUFExportError(f"tokenizer.json has no vocabulary: {COPY_TOKENIZER}")
    if is_byte_level(data):
        bpe_pre_name(data)
    elif data["model"].get("byte_fallback"):
        spm_space_prefix(data)
    else:
        raise GGUFExportError(f"tokenizer.json is BPE without byte-level or byte fallback: {COPY_TOKENIZER}")


def is_byte_level(data: dict) -> bool:
    return "bytelevel" in "".join(_pre_steps(data.get("pre_tokenizer"))) or (
        (data.get("decoder") or {}).get("type") == "ByteLevel"
    )


def tokenizer_from_json(folder: Path, n_rows: int) -> tuple[list[MetaEntry], str]:
    """The llama.cpp vocabulary of ``folder/tokenizer.json``: byte-level BPE (``gpt2``, with merges and the
    pre-tokenizer's name) or SentencePiece-style BPE with byte fallback (``llama``, with scores)."""
    data = read_tokenizer_json(folder)
    byte_level = is_byte_level(data)
    tokens, types, scores = _token_table(data, n_rows, spm=not byte_level)
    entries = [
        MetaEntry("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        MetaEntry("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
    ]
    if byte_level:
        pre = bpe_pre_name(data)
        merges = [f"{a} {b}" for a, b in _merge_pairs(data)]
        entries += [
            MetaEntry("tokenizer.ggml.model", "gpt2", T.STRING),
            MetaEntry("tokenizer.ggml.pre", pre, T.STRING),
            MetaEntry("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING),
        ]
        described = f"tokenizer.json (gpt2, pre {pre})"
    else:
        entries += [
            MetaEntry("tokenizer.ggml.model", "llama", T.STRING),
            MetaEntry("tokenizer.ggml.pre", "default", T.STRING),
            MetaEntry("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32),
            MetaEntry("tokenizer.ggml.add_space_prefix", spm_space_prefix(data), T.BOOL),
        ]
        described = "tokenizer.json (llama/SentencePiece-style)"
    lookup = {text: i for i, text in enumerate(tokens)}
    return entries + special_entries(folder, data, lookup), described


def _field_value(field: Any) -> Any:
    """A GGUF reader field as a value the writer takes back unchanged (strings as their bytes)."""
    kind = field.types[0]
    if kind == T.ARRAY:
        if field.types[1] == T.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        if field.types[1] == T.ARRAY:
            raise GGUFExportError(f"{field.name}: nested arrays are not supported")
        return np.concatenate([field.parts[i] for i in field.data]).tolist() if field.data else []
    if kind == T.STRING:
        return bytes(field.parts[field.data[0]])
    return field.parts[field.data[0]][0].item()


def tokenizer_from_gguf(path: Path, n_rows: int) -> tuple[list[MetaEntry], str]:
    """Every ``tokenizer.*`` key of a GGUF, as it is (vocabulary, merges or scores, pre-tokenizer, special ids,
    chat template): the model it came from tokenizes exactly like that file."""
    reader = gguf.GGUFReader(path)
    entries = [
        MetaEntry(key, _field_value(field), field.types[0], field.types[1] if field.types[0] == T.ARRAY else None)
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.")
    ]
    tokens = next((e.value for e in entries if e.key == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise GGUFExportError(f"{path} has no tokenizer (tokenizer.ggml.tokens): export the model from a folder")
    if len(tokens) != n_rows:
        raise GGUFExportError(
            f"{path} has {len(tokens)} tokens, the embedding {n_rows} rows: the tokenizer belongs to another model"
        )
    return entries, f"copied from {path.name}"


def tokenizer_entries(model_folder: Path, source: Path | None, n_rows: int) -> tuple[list[MetaEntry], str]:
    """The vocabulary from a GGUF (copied), or from a tokenizer.json (converted), by default the model's own."""
    source = Path(source) if source is not None else model_folder
    if source.suffix == GGUF_SUFFIX and source.is_file():
        return tokenizer_from_gguf(source, n_rows)
    if source.is_file() and source.name == "tokenizer.json":
        source = source.parent
    if not source.is_dir():
        raise GGUFExportError(f"tokenizer_source {source} is not a .gguf file, a tokenizer.json or a model folder")
    return tokenizer_from_json(source, n_rows)


# --- writing -------------------------------------------------------------------------------------------------


def _encode(spec: TensorSpec) -> np.ndarray:
    data = np.ascontiguousarray(spec.load(), dtype=np.float32)
    if data.shape != spec.shape:
        raise GGUFExportError(
            f"{spec.name}: read {data.shape}, expected {spec.shape}: the weights changed during export"
        )
    encoded = gguf.quants.quantize(data, spec.qtype)
    if spec.qtype == Q.F16 and not np.isfinite(encoded).all():
        raise GGUFExportError(f"{spec.name} has values beyond float16's range: export with dtype f32 or q8_0")
    return encoded


def write_gguf(path: Path, arch: str, entries: list[MetaEntry], specs: list[TensorSpec]) -> None:
    """Write header, keys and tensor table, then stream each tensor's data (one tensor in memory at a time)."""
    writer = gguf.GGUFWriter(path, arch)
    for entry in entries:
        writer.add_key_value(entry.key, entry.value, entry.vtype, entry.sub_type)
    for spec in specs:
        byte_shape = gguf.quant_shape_to_byte_shape(spec.shape, spec.qtype) if spec.qtype == Q.Q8_0 else spec.shape
        dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(spec.qtype, np.uint8)
        nbytes = int(np.prod(byte_shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(spec.name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=spec.qtype)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for spec in specs:
            writer.write_tensor_data(_encode(spec))
    finally:
        writer.close()


def _check_paths(model_folder: Path, output_file: Path, tokenizer_source: Path | None, dtype: str) -> None:
    if dtype not in FILE_TYPES:
        raise GGUFExportError(f"dtype {dtype!r} is not one of {', '.join(FILE_TYPES)}")
    if not (model_folder / "config.json").is_file():
        raise GGUFExportError(f"{model_folder} has no config.json: give a saved Hugging Face model folder")
    if output_file.suffix != GGUF_SUFFIX:
        raise GGUFExportError(f"{output_file} does not end in {GGUF_SUFFIX}: name the output file *.gguf")
    if tokenizer_source is not None and output_file.resolve() == Path(tokenizer_source).resolve():
        raise GGUFExportError(f"{output_file} is the tokenizer source: write the export to another file")
    if not output_file.parent.is_dir():
        raise GGUFExportError(f"{output_file.parent} does not exist: create the output folder first")


def plan_export(model_folder: Path) -> tuple[Layout, Any, WeightStore]:
    """Read the folder's config, weights index and pruning plan; decide the architecture and layer shapes."""
    from transformers import AutoConfig  # heavy: only when exporting

    config = AutoConfig.from_pretrained(model_folder)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(config, "model_type", "?")
    family = gguf_family(model_type, _read_json(model_folder / "config.json").get("model_type", ""))
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise GGUFExportError("Qwen2 with use_sliding_window is not in llama.cpp: not exportable")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    store = open_weights(model_folder)
    shapes = read_layer_shapes(store, config.num_hidden_layers, head_dim)
    real = unpadded_shapes(shapes, _read_json(model_folder / PLAN_FILE) or None)
    if family.uneven_arch is None and len(set(real)) > 1:
        real = shapes  # keep the padding: exact, and the only form this architecture runs
    arch = choose_arch(family, real, config.hidden_size, head_dim, model_type)
    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in store.files
    if tied and EMBEDDING not in store.files and "lm_head.weight" in store.files:
        store = store.alias(EMBEDDING, "lm_head.weight")  # safetensors' save_model keeps one name of tied tensors
    return Layout(arch, family, tuple(real), head_dim, tied), config, store


def export_gguf(
    model_folder: Path, output_file: Path, dtype: GGUFDtype = "f16", tokenizer_source: Path | None = None
) -> ExportReport:
    """Write ``model_folder`` (a Hugging Face causal LM, pruned or not) as one GGUF file llama.cpp loads.

    ``dtype``: f16, q8_0 (matrices whose rows are whole 32-value blocks; the rest F16, vectors F32) or f32.
    ``tokenizer_source``: a GGUF whose ``tokenizer.*`` keys are copied as they are, or a folder / tokenizer.json
    to convert (default: the model folder's). Layers of different shapes are written as llama.cpp's ``deci``
    (Llama family, Qwen2); padding a padded save recorded is dropped there and kept elsewhere.
    """
    started = time.perf_counter()
    model_folder, output_file = Path(model_folder), Path(output_file)
    _check_paths(model_folder, output_file, tokenizer_source, dtype)
    layout, config, store = plan_export(model_folder)
    n_rows = store.shape(EMBEDDING)[0]
    vocab, described = tokenizer_entries(model_folder, tokenizer_source, n_rows)
    specs = tensor_specs(store, layout, dtype)
    rope, factors = rope_entries(layout.arch, config, layout.head_dim)
    if factors is not None:
        specs.append(TensorSpec("rope_freqs.weight", factors.shape, Q.F32, lambda: factors))
    entries = model_entries(layout, config, dtype, n_rows, model_folder.resolve().name) + rope + vocab
    with atomic_path(output_file) as temporary:  # never a half-written .gguf under the name
        write_gguf(temporary, layout.arch, entries, specs)
    shapes = layout.shapes
    return ExportReport(
        output_file=output_file,
        architecture=layout.arch,
        dtype=dtype,
        tokenizer=described,
        ffn_widths=tuple(s.ffn for s in shapes),
        file_bytes=output_file.stat().st_size,
        seconds=round(time.perf_counter() - started, 2),
    )


def exported_by_lightning_prune(path: Path) -> bool:
    """Whether ``path`` is a GGUF file this writer made (its ``EXPORTED_BY_KEY``): what ``--overwrite`` may replace."""
    try:
        return EXPORTED_BY_KEY in gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError, KeyError, IndexError, struct.error):  # not a GGUF file, truncated, damaged
        return False


def gguf_family(model_type: str, outer_type: str = "") -> Family:
    """How ``model_type`` (or the multimodal ``outer_type`` holding it) maps onto llama.cpp; refused if it does not."""
    family = GGUF_FAMILIES.get(model_type) or GGUF_FAMILIES.get(outer_type)
    if family is None:
        raise GGUFExportError(
            f"{model_type} models have no GGUF export (supported: {', '.join(GGUF_FAMILIES)}); encoders and T5 "
            "are not run in llama.cpp"
        )
    return family


def check_exportable(model_type: str, uneven: bool, padded: bool) -> None:
    """Refuse, before any work, a model this writer cannot give llama.cpp: another family, or layers of uneven
    widths (``uneven``, not ``padded``) of a family llama.cpp builds at one width only (Gemma 3, Qwen3)."""
    family = gguf_family(model_type)
    if uneven and not padded and family.uneven_arch is None:
        raise GGUFExportError(
            f"llama.cpp builds {model_type} layers at one width only, and this run may give them different "
            "widths (global scope, or heads): add --pad_uneven_ffn true (all-zero neurons and heads, exact), or "
            "use --scope layer"
        )
