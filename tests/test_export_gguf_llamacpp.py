"""GGUF export checked in llama.cpp itself: tiny random Llama, Qwen2, Qwen3 and Gemma 3 models with tokenizers
trained on the fly, exported, loaded by llama-cpp-python (``pip install -e '.[llamacpp]'``: these tests are skipped
where it is not installed), and compared with transformers (logits at every position, token ids)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from torch import nn

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from lightning_prune.export.gguf import (  # noqa: E402
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    ExportReport,
    GGUFExportError,
    export_gguf,
    llama3_rope_factors,
)

CORPUS = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding .",
    "a gripping film with 12 twists in 2024 and 3 endings",
    "Review: a gripping film\nSentiment (positive or negative): positive",
    "I've been told he's there, we'll see; they'd REALLY like it!!",
] * 8
PROBES = [*CORPUS[:6], "unseen: ñandú, 🚀 and\ttabs 1234567", "  double  spaces \n\n", "x", "I'VE 'Re"]
BYTE_SETTINGS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
SPM_SETTINGS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
F32_KV = {"type_k": 0, "type_v": 0}  # F32 KV cache: the comparison then sees only the weights' rounding
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 10000.0}  # fmt: skip
GEMMA_LAYERS = ["sliding_attention", "sliding_attention", "full_attention"]
GEMMA_LINEAR_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}  # fmt: skip


def byte_level_tokenizer(pre: str) -> tokenizers.Tokenizer:
    """A ~300-token byte-level BPE with the pre-tokenizer of GPT-2, SmolLM, Llama 3 or Qwen2."""
    tok = tokenizers.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre in ("gpt-2", "smollm"))
    steps = {
        "gpt-2": [],
        "smollm": [pre_tokenizers.Digits(individual_digits=True)],
        "llama-bpe": [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")],
        "qwen2": [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")],
    }[pre]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, byte_level])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    )
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = pre == "llama-bpe"  # as Llama 3's tokenizer.json says
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def sentencepiece_tokenizer() -> tokenizers.Tokenizer:
    """A Gemma-style BPE: spaces as U+2581, byte fallback through <0xXX> tokens, <bos> added."""
    trained = tokenizers.Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120))
    data = json.loads(trained.to_str())["model"]
    specials = list(SPM_SETTINGS.values())[::-1]  # <pad> <unk> <eos> <bos>
    vocab = {text: i for i, text in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for text in sorted(data["vocab"], key=data["vocab"].get):
        vocab.setdefault(text, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return tok


def tiny_config(kind: str, vocab_size: int):
    """A 3-layer, 64-wide config of ``kind``: family, then variants (rope-llama3, rope-linear, multimodal)."""
    if kind.startswith("llama"):
        rope = {"rope-llama3": LLAMA3_ROPE, "rope-linear": {"rope_type": "linear", "factor": 4.0}}.get(kind[6:])
        return transformers.LlamaConfig(vocab_size=vocab_size, **TINY, head_dim=16, rope_parameters=rope)
    if kind == "qwen2":
        return transformers.Qwen2Config(vocab_size=vocab_size, **TINY, tie_word_embeddings=False)
    if kind == "qwen3":
        return transformers.Qwen3Config(vocab_size=vocab_size, **TINY, head_dim=16)
    rope = GEMMA_LINEAR_ROPE if kind == "gemma3-rope-linear" else None
    text = transformers.Gemma3TextConfig(vocab_size=vocab_size, **TINY, head_dim=16, query_pre_attn_scalar=16,
                                         sliding_window=4, layer_types=GEMMA_LAYERS, rope_parameters=rope)  # fmt: skip
    if kind != "gemma3-multimodal":
        return text
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    return transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                     image_token_index=vocab_size - 1, boi_token_index=vocab_size - 3,
                                     eoi_token_index=vocab_size - 2)  # fmt: skip


def random_model(config) -> nn.Module:
    """Random weights large enough that the logits differ (norm weights too, so Gemma's 1 + w matters)."""
    torch.manual_seed(0)
    if isinstance(config, transformers.Gemma3Config):
        model = transformers.Gemma3ForConditionalGeneration(config).float().eval()
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if "norm" in name else 0.15))
    return model


def save_folder(folder: Path, model: nn.Module, tok: tokenizers.Tokenizer, settings: dict, layout: str) -> Path:
    """A model folder as lightning-prune writes one (``layout``): ``per-layer`` weights under the dense config, or
    ``padded`` ones with pruning_plan.json, both saved by safetensors' save_model (a tied embedding stays as
    lm_head only); ``plain``: as save_pretrained writes it."""
    if layout == "plain":
        model.save_pretrained(folder)
    else:
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        padded = layout == "padded"
        weights = pad_layers(model) if padded else model
        save_model(weights, str(folder / ("model.safetensors" if padded else "model.per-layer-ffn.safetensors")))
    if layout == "padded":
        layers = model.model.layers
        plan = {"layers": [{"kept": list(range(b.mlp.gate_proj.out_features))} for b in layers],
                "attention": [{"kept": list(range(b.self_attn.k_proj.out_features // 16))} for b in layers],
                "padded_width": 128, "padded_heads": 2}  # fmt: skip
        (folder / "pruning_plan.json").write_text(json.dumps(plan))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def pad_layers(model: nn.Module, head_dim: int = 16) -> nn.Module:
    """A copy of a sliced tiny model grown back to 128 neurons and 2 head groups per layer by all-zero ones after
    the kept ones, as lightning-prune's padded save stores uneven layers."""

    def grow(linear: nn.Linear, rows: int = 0, cols: int = 0) -> nn.Linear:
        weight = nn.functional.pad(linear.weight.data, (0, cols, 0, rows))
        grown = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
        grown.weight = nn.Parameter(weight)
        if linear.bias is not None:
            grown.bias = nn.Parameter(nn.functional.pad(linear.bias.data, (0, rows)))
        return grown

    padded = copy.deepcopy(model)
    for block in padded.model.layers:
        mlp, attn = block.mlp, block.self_attn
        neurons, queries = 128 - mlp.gate_proj.out_features, 4 * head_dim - attn.q_proj.out_features
        mlp.gate_proj, mlp.up_proj = grow(mlp.gate_proj, rows=neurons), grow(mlp.up_proj, rows=neurons)
        mlp.down_proj = grow(mlp.down_proj, cols=neurons)
        attn.q_proj, attn.o_proj = grow(attn.q_proj, rows=queries), grow(attn.o_proj, cols=queries)
        attn.k_proj, attn.v_proj = (grow(p, rows=2 * head_dim - p.out_features) for p in (attn.k_proj, attn.v_proj))
    return padded


def slice_layers(model: nn.Module, widths: list[int], groups: dict[int, list[int]], head_dim: int = 16) -> None:
    """Prune in place: layer i keeps its first widths[i] neurons and the head groups ``groups[i]`` (2 query heads
    per key/value head)."""

    def linear(weight, bias=None):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight = nn.Parameter(weight.clone())
        if bias is not None:
            layer.bias = nn.Parameter(bias.clone())
        return layer

    for i, block in enumerate(model.model.layers):
        mlp, attn, keep = block.mlp, block.self_attn, torch.arange(widths[i])
        mlp.gate_proj, mlp.up_proj = linear(mlp.gate_proj.weight[keep]), linear(mlp.up_proj.weight[keep])
        mlp.down_proj = linear(mlp.down_proj.weight[:, keep])
        kept = groups.get(i, [0, 1])
        q = torch.cat([torch.arange(g * 2 * head_dim, (g + 1) * 2 * head_dim) for g in kept])
        kv = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in kept])
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            old = getattr(attn, name)
            setattr(attn, name, linear(old.weight[rows], None if old.bias is None else old.bias[rows]))
        attn.o_proj = linear(attn.o_proj.weight[:, q])


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False, **F32_KV)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model: nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def assert_same_tokens(path: Path, tok: tokenizers.Tokenizer) -> None:
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in PROBES:
        assert llm.tokenize(text.encode(), add_bos=True) == tok.encode(text).ids, text


def check(
    tmp_path: Path, kind: str, arch: str, widths=None, groups=None, dtype="f32", atol=5e-3, padded=False
) -> ExportReport:
    """Export a tiny random ``kind`` model (pruned to ``widths``/``groups``, saved ``padded`` or per layer) and
    compare it in llama.cpp. The tolerance covers ggml's GELU, which goes through an F16 table."""
    gemma = kind.startswith("gemma3")
    tok = sentencepiece_tokenizer() if gemma else byte_level_tokenizer("smollm" if kind == "llama" else "qwen2")
    model = random_model(tiny_config(kind, tok.get_vocab_size() + 3))  # 3 rows past the vocabulary: [PAD] tokens
    if widths:
        slice_layers(model, widths, groups or {})
    layout = "padded" if padded else "per-layer" if widths else "plain"
    folder = save_folder(tmp_path / kind, model, tok, SPM_SETTINGS if gemma else BYTE_SETTINGS, layout)
    report = export_gguf(folder, tmp_path / f"{kind}.gguf", dtype)
    assert report.architecture == arch
    ids = tok.encode(PROBES[4] + " " + PROBES[2]).ids  # longer than Gemma's 4-token window
    np.testing.assert_allclose(llama_logits(report.output_file, ids), hf_logits(model, ids), atol=atol, rtol=0)
    assert_same_tokens(report.output_file, tok)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"
    return report


DENSE = [
    ("llama", "llama"),
    ("llama-rope-llama3", "llama"),
    ("llama-rope-linear", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma3", "gemma3"),
    ("gemma3-rope-linear", "gemma3"),
    ("gemma3-multimodal", "gemma3"),
]


@pytest.mark.parametrize(("kind", "arch"), DENSE)
def test_dense_matches_transformers(tmp_path, kind, arch):
    check(tmp_path, kind, arch)


@pytest.mark.parametrize("kind", ["llama", "llama-rope-llama3", "qwen2"])
def test_uneven_layers_run_as_deci(tmp_path, kind):
    check(tmp_path, kind, "deci", widths=[128, 96, 40], groups={1: [1]})


@pytest.mark.parametrize(("kind", "arch"), [("llama", "llama"), ("qwen2", "llama"), ("gemma3", "gemma3")])
def test_uniform_pruned_layers_keep_one_architecture(tmp_path, kind, arch):
    """One width and one head count everywhere: no deci. Qwen2 with fewer heads goes to llama (llama.cpp's qwen2
    assumes heads * head_dim == hidden)."""
    check(tmp_path, kind, arch, widths=[64, 64, 64], groups={0: [0], 1: [0], 2: [1]})


@pytest.mark.parametrize(
    ("kind", "arch", "widths"), [("llama", "deci", (128, 96, 40)), ("gemma3", "gemma3", (128,) * 3)]
)
def test_padding_is_dropped_where_deci_runs_the_real_widths(tmp_path, kind, arch, widths):
    """A padded save (pruning_plan.json): Llama goes back to its real widths in deci; Gemma 3 keeps the zeros."""
    report = check(tmp_path, kind, arch, widths=[128, 96, 40], groups={1: [1]}, padded=True)
    assert report.ffn_widths == widths


@pytest.mark.parametrize(("dtype", "atol"), [("f16", 0.05), ("q8_0", 0.5)])
def test_f16_and_q8_0_stay_close(tmp_path, dtype, atol):
    check(tmp_path, "llama", "deci", widths=[128, 96, 64], groups={1: [1]}, dtype=dtype, atol=atol)


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_byte_level_pre_tokenizers_tokenize_like_transformers(tmp_path, pre):
    tok = byte_level_tokenizer(pre)
    folder = save_folder(tmp_path / "m", random_model(tiny_config("llama", tok.get_vocab_size())), tok, {}, "plain")
    report = export_gguf(folder, tmp_path / "m.gguf")
    assert report.tokenizer == f"tokenizer.json (gpt2, pre {pre})"
    assert_same_tokens(report.output_file, tok)


def test_gguf_tokenizer_is_copied_as_is(tmp_path):
    first = check(tmp_path, "gemma3", "gemma3").output_file
    copied = export_gguf(tmp_path / "gemma3", tmp_path / "copy.gguf", "f16", tokenizer_source=first)
    assert copied.tokenizer == "copied from gemma3.gguf"
    assert_same_tokens(copied.output_file, sentencepiece_tokenizer())


def test_llama3_rope_factors_are_transformers_ones():
    config = tiny_config("llama-rope-llama3", 100)
    scaled, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    np.testing.assert_allclose(llama3_rope_factors(LLAMA3_ROPE, 16), (plain / scaled.double()).numpy(), rtol=1e-5)


def test_uneven_gemma_is_refused_and_nothing_is_written(tmp_path):
    tok = byte_level_tokenizer("smollm")
    model = random_model(tiny_config("gemma3", tok.get_vocab_size()))
    slice_layers(model, [128, 96, 40], {})
    folder = save_folder(tmp_path / "g", model, tok, BYTE_SETTINGS, "per-layer")
    with pytest.raises(GGUFExportError, match="save the pruned model padded"):
        export_gguf(folder, tmp_path / "g.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_bad_paths_and_mismatched_vocabularies(tmp_path):
    tok = byte_level_tokenizer("smollm")
    big = save_folder(tmp_path / "big", random_model(tiny_config("llama", 500)), tok, BYTE_SETTINGS, "plain")
    with pytest.raises(GGUFExportError, match=r"does not end in \.gguf"):
        export_gguf(big, tmp_path / "big.bin")
    exported = export_gguf(big, tmp_path / "big.gguf", "f16")  # 500 rows: the vocabulary is padded with [PAD<id>]
    small = save_folder(tmp_path / "small", random_model(tiny_config("llama", 200)), tok, BYTE_SETTINGS, "plain")
    with pytest.raises(GGUFExportError, match="ids up to"):
        export_gguf(small, tmp_path / "small.gguf")
    with pytest.raises(GGUFExportError, match="500 tokens, the embedding 200 rows"):
        export_gguf(small, tmp_path / "small.gguf", tokenizer_source=exported.output_file)
