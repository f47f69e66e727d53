"""Tiny models built from configs, with tokenizers trained on the fly, and a small GLUE-style folder.

What this project's tests prune, and what a scorer plugin's tests can use: every supported adapter
(shared encoder + heads, T5, gated T5, each decoder-LM family) in a few hundred KB, built in a second,
no download.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from lightning_prune.prompts import DEFAULT_PROMPTS
from lightning_prune.tasks import TASKS

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
NOUNS = ["movie", "film", "plot", "cast", "story", "scene", "music", "ending"]


def sentiment_rows(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = [rng.choice(POSITIVE if label else NEGATIVE), rng.choice(NOUNS)]
        words += [rng.choice(NOUNS) for _ in range(rng.randint(0, 4))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_glue_dir(root: Path, train: int = 48, dev: int = 24) -> Path:
    """A GLUE-style folder with sst2 and stsb, in the original TSV formats."""
    for split, count, seed in (("train", train, 1), ("dev", dev, 2)):
        sst2 = root / "sst2"
        sst2.mkdir(parents=True, exist_ok=True)
        lines = ["sentence\tlabel", *(f"{s}\t{y}" for s, y in sentiment_rows(count, seed))]
        (sst2 / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        stsb = root / "stsb"
        stsb.mkdir(parents=True, exist_ok=True)
        pairs = sentiment_rows(2 * count, seed + 10)
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        lines = [header] + [
            f"{i}\tmain\tf\t2012\t{i}\ts\ts\t{a[0]}\t{b[0]}\t{5.0 * (a[1] == b[1]) * (0.4 + 0.6 * (i % 2)):.2f}"
            for i, (a, b) in enumerate(zip(pairs[::2], pairs[1::2], strict=True))
        ]
        (stsb / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def _corpus() -> list[str]:
    words = POSITIVE + NEGATIVE + NOUNS
    label_words = [w for spec in TASKS.values() for w in spec.t5_label_words]
    prefixes = [spec.t5_prefix + " " + " ".join(f"{f}:" for f in spec.t5_field_names) for spec in TASKS.values()]
    prompts = [template + " ".join(answers) for template, answers in DEFAULT_PROMPTS.values()]
    return (
        [" ".join(words)] * 5
        + [" ".join(label_words)] * 5
        + prefixes * 5
        + prompts * 5
        + [s for s, _ in sentiment_rows(200, 3)]
    )


def bert_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def t5_tokenizer(unigram: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer, or with ``unigram`` a SentencePiece Unigram one as T5's own."""
    specials = ["<pad>", "</s>", "<unk>"]
    if unigram:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(_corpus(), trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                                   unk_token="<unk>"))  # fmt: skip
    else:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_bert_with_heads(
    folder: Path,
    pooling: str = "mean",
    seed: int = 0,
    hidden_size: int = 32,
    intermediate_size: int = 48,
    layers: int = 2,
) -> Path:
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=intermediate_size,
        max_position_embeddings=64,
        hidden_act="gelu",
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    heads = {"sst2": 2, "stsb": 1, "mnli": 3, "rte": 2}
    weights = {}
    for name, outputs in heads.items():
        weights[f"{name}.weight"] = torch.randn(outputs, hidden_size) * 0.5
        weights[f"{name}.bias"] = torch.randn(outputs) * 0.1
    save_file(weights, str(folder / "multitask_heads.safetensors"))
    spec = {"pooling": pooling, "heads": {name: {"num_labels": n} for name, n in heads.items()}}
    (folder / "multitask_heads.json").write_text(json.dumps(spec))
    return folder


def build_t5(folder: Path, gated: bool = False, seed: int = 0, unigram: bool = False) -> Path:
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer(unigram)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=40,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu" if gated else "relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
        tie_word_embeddings=not gated,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# model_type -> config settings of a tiny decoder LM of that family. Gemma gets a sliding window shorter
# than the test prompts, so its sliding and full-attention layers see different masks.
CAUSAL_LM_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": 4, "attn_logit_softcapping": None, "query_pre_attn_scalar": 8},
    "gemma3_text": {"head_dim": 8, "sliding_window": 4, "query_pre_attn_scalar": 8, "sliding_window_pattern": 2},
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def decoder_tokenizer(word_level: bool = False, sentencepiece: bool = False) -> PreTrainedTokenizerFast:
    """A tokenizer for the tiny decoder LMs, knowing the default prompts, with a chat template: byte-level
    BPE as Llama 3, Qwen and SmolLM use (every text tokenizes), ``word_level`` with an unknown token, or
    ``sentencepiece``: BPE over text whose spaces are "▁" and which starts with one, as in Llama 2's, Mistral's
    and Gemma's tokenizer.json, so that " negative" alone is ['▁', '▁negative'] but after a prompt ['▁negative']."""
    if word_level and sentencepiece:
        raise ValueError("word_level and sentencepiece are different tokenizers: choose one")
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
    if sentencepiece:
        trained = Tokenizer(models.BPE(unk_token="<unk>"))
        trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        # Trained on words (each "▁" starts one) so that no token spans two, as SentencePiece's pieces; used,
        # like Llama 2's, without a pre-tokenizer; with its 256 byte-fallback pieces after the special tokens.
        trained.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
        trained.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
        model = json.loads(trained.to_str())["model"]
        pieces = sorted(model["vocab"], key=model["vocab"].get)
        order = [*pieces[: len(specials)], *(f"<0x{b:02X}>" for b in range(256)), *pieces[len(specials) :]]
        merges = [tuple(m) for m in model["merges"]]
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(order)}, merges, unk_token="<unk>", byte_fallback=True))
        tok.normalizer = trained.normalizer
        tok.add_special_tokens(specials)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    elif word_level:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=specials))
        tok.decoder = decoders.WordPiece()  # joins words with spaces
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=alphabet)
        tok.train_from_iterator(_corpus(), trainer)
        tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_causal_lm(
    folder: Path,
    model_type: str = "llama",
    seed: int = 0,
    word_level: bool = False,
    sentencepiece: bool = False,
    key_value_heads: int = 2,
) -> Path:
    """A tiny random decoder LM of family ``model_type`` (2 layers, hidden 32, FFN 48, 4 query heads sharing
    ``key_value_heads``, tied embeddings), with the ``decoder_tokenizer`` of ``word_level`` and ``sentencepiece``."""
    torch.manual_seed(seed)
    tokenizer = decoder_tokenizer(word_level, sentencepiece)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=key_value_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        **CAUSAL_LM_CONFIGS[model_type],
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny float32 Llama GGUF file (2 layers, hidden 32, FFN 48) with the byte-level BPE tokenizer, as
    llama.cpp writes them: what the GGUF conversion is tested on. Needs the ``gguf`` package."""
    import gguf
    import numpy as np

    state = json.loads(decoder_tokenizer().backend_tokenizer.to_str())
    tokens = {index: token for token, index in state["model"]["vocab"].items()}
    tokens.update({added["id"]: added["content"] for added in state["added_tokens"]})
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    vocab, hidden, ffn, layers, heads, kv_heads = len(tokens), 32, 48, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([tokens[i] for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    rng = np.random.default_rng(seed)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv, hidden),
            f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
