"""Cutting a fast tokenizer's vocabulary down to the tokens one task uses, while it still encodes any text.

Works on the ``tokenizer.json`` of a Hugging Face fast tokenizer (as a dict). The kept ids are the task's tokens
(``kept_ids_for_texts``), the ``base_alphabet`` that lets every text fall back to shorter pieces, and for BPE the
pieces that build the kept tokens (``close_under_merges``). ``trim_tokenizer`` renumbers them contiguously in the
old order, so the embedding and output-head rows are ``weight[old_ids]``: a text whose original tokens were all kept
gets the same tokens, renumbered; any other text gets shorter kept pieces and decodes to the same string.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import ByteLevel

from lightning_prune.errors import UsageError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # SentencePiece byte-fallback pieces
# tokenizer_config.json / special_tokens_map.json entries that name one token the model's pipeline relies on
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIAL_TOKENS = ("additional_special_tokens", "extra_special_tokens")


class VocabularyError(UsageError):
    """A tokenizer or kept set that a vocabulary cannot be trimmed to: the message says what is wrong and what to
    do."""


@dataclass(frozen=True)
class TrimmedTokenizer:
    """The trimmed ``tokenizer.json`` and, for each new id, the old id (ascending): slice rows with
    ``weight[old_ids]``."""

    tokenizer_json: dict
    old_ids: list[int]


@dataclass(frozen=True)
class EncodingComparison:
    """How the trimmed tokenizer encodes texts next to the original (special tokens not added)."""

    texts: int
    original_tokens: int
    trimmed_tokens: int
    original_unknown: int  # unknown-token ids emitted ([UNK] replaces a whole WordPiece word)
    trimmed_unknown: int
    covered: int  # texts whose original tokens were all kept
    identical: int  # texts whose trimmed ids are their original ids renumbered (should equal ``covered``)
    same_decode: int  # texts whose trimmed ids decode to what the original ids decode to

    @property
    def extra_tokens_percent(self) -> float:
        return 100.0 * (self.trimmed_tokens - self.original_tokens) / max(self.original_tokens, 1)


def _components(component: Any) -> Iterable[dict]:
    """A normalizer, pre-tokenizer, post-processor or decoder and everything nested in its ``Sequence``s."""
    if isinstance(component, dict):
        yield component
        for value in component.values():
            if isinstance(value, list):
                for item in value:
                    yield from _components(item)


def tokenizer_kind(tokenizer_json: Mapping) -> str:
    """``wordpiece``, ``byte_level_bpe``, ``sentencepiece_bpe`` (byte fallback) or ``unigram``, checked before any
    work: only these can encode any text with a subset of their vocabulary (bytes, byte fallback or single
    characters); anything else is refused."""
    model = tokenizer_json.get("model") or {}
    model_type = model.get("type")
    if model_type == "WordPiece":
        return "wordpiece"
    if model_type == "Unigram":
        return "unigram"
    if model_type != "BPE":
        raise VocabularyError(
            f"tokenizer model {model_type!r} is not supported for vocabulary trimming; "
            "use a WordPiece, BPE (byte-level or byte-fallback) or Unigram tokenizer"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise VocabularyError(
            "BPE with a continuing_subword_prefix or end_of_word_suffix is not supported for vocabulary trimming; "
            "use a byte-level or byte-fallback BPE tokenizer"
        )
    if model.get("dropout"):
        raise VocabularyError("BPE dropout makes encodings random; set model.dropout to null before trimming")
    if any(c.get("type") == "ByteLevel" for c in _components(tokenizer_json.get("pre_tokenizer"))):
        return "byte_level_bpe"
    if model.get("byte_fallback") and all(token in model["vocab"] for token in BYTE_TOKENS):
        return "sentencepiece_bpe"
    raise VocabularyError(
        "BPE without a ByteLevel pre-tokenizer or byte fallback (all 256 <0xXX> tokens) cannot encode every text "
        "with fewer tokens; vocabulary trimming supports byte-level and byte-fallback BPE only"
    )


def _vocab(tokenizer_json: Mapping) -> dict[str, int]:
    """The model's token -> id (Unigram's vocabulary is a list of [piece, score], its id the position)."""
    vocab = tokenizer_json["model"]["vocab"]
    if isinstance(vocab, list):
        return {piece: i for i, (piece, _) in enumerate(vocab)}
    return dict(vocab)


def _post_processor_tokens(post_processor: Any) -> dict[str, list[int]]:
    """Token name -> ids that the post-processor inserts ([CLS]/[SEP], <s>, <bos>, ...)."""
    tokens: dict[str, list[int]] = {}
    for component in _components(post_processor):
        for name, entry in (component.get("special_tokens") or {}).items():  # TemplateProcessing
            tokens[name] = list(entry["ids"])
        for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
            if isinstance(component.get(key), list):
                tokens[component[key][0]] = [component[key][1]]
    return tokens


def _required_ids(tokenizer_json: Mapping) -> dict[int, str]:
    """Ids the trimmed tokenizer cannot work without, with what needs each: post-processor tokens, the
    model's unknown token, the padding token."""
    model = tokenizer_json["model"]
    vocab = _vocab(tokenizer_json)
    required = {}
    for name, ids in _post_processor_tokens(tokenizer_json.get("post_processor")).items():
        required.update(dict.fromkeys(ids, f"post-processor token {name!r}"))
    if model.get("unk_id") is not None:
        required[model["unk_id"]] = "the Unigram unk_id"
    if model.get("unk_token") in vocab:
        required[vocab[model["unk_token"]]] = f"unk_token {model['unk_token']!r}"
    if padding := tokenizer_json.get("padding"):
        required[padding["pad_id"]] = f"padding token {padding['pad_token']!r}"
    return required


def _alphabet(tokenizer_json: Mapping, kind: str) -> set[int]:
    """The model's pieces every text can fall back to (see ``base_alphabet``)."""
    model = tokenizer_json["model"]
    vocab = _vocab(tokenizer_json)
    if kind == "byte_level_bpe":
        return {vocab[c] for c in ByteLevel.alphabet() if c in vocab}
    if kind == "wordpiece":
        prefix = model["continuing_subword_prefix"]
        return {i for t, i in vocab.items() if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)}
    alphabet = {i for t, i in vocab.items() if len(t) == 1}
    if kind == "sentencepiece_bpe" or model.get("byte_fallback"):
        alphabet |= {vocab[t] for t in BYTE_TOKENS if t in vocab}
    if kind == "unigram":  # the lowest score sets the unknown-character penalty: keeping it keeps the penalty
        alphabet.add(min(range(len(model["vocab"])), key=lambda i: model["vocab"][i][1]))
    return alphabet


def base_alphabet(tokenizer_json: Mapping) -> set[int]:
    """Ids that must stay whatever the task, so no text fails to encode and the pipeline still works.

    Byte-level BPE: the 256 byte tokens. Byte-fallback BPE: the 256 ``<0xXX>`` tokens and the single-character
    pieces (without them an unseen character costs one token per UTF-8 byte). WordPiece: every single character
    and its continuation (``##c``), else a word with that character becomes [UNK]. Unigram: every
    single-character piece and the lowest-scoring piece (the unknown-character penalty is the lowest score minus
    10). Always: the post-processor's tokens, the unknown and padding tokens and every added token (Gemma's 6,242
    ``<unusedN>`` placeholders too: a chat token such as ``<start_of_turn>`` must stay whatever the task's texts).
    """
    kept = _alphabet(tokenizer_json, tokenizer_kind(tokenizer_json)) | set(_required_ids(tokenizer_json))
    return kept | {token["id"] for token in tokenizer_json.get("added_tokens", [])}


def kept_ids_for_texts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], batch_size: int = 1024) -> set[int]:
    """Ids that encoding the texts uses, with and without special tokens, plus the tokenizer's special tokens
    (bos/eos/pad/mask...: transformers would append a missing one as a new id past the embedding). Pass the texts
    as the model sees them (prompt wording, chat template) so their tokens are kept too."""
    kept = set(tokenizer.all_special_ids)
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        for add_special_tokens in (True, False):
            for ids in tokenizer(batch, add_special_tokens=add_special_tokens)["input_ids"]:
                kept.update(ids)
    return kept


def frequent_ids(tokenizer_json: Mapping, count: int) -> set[int]:
    """The tokenizer's ``count`` most frequent tokens, as its own training ranked them: the results of its first
    ``count`` BPE merges (merges are learned most frequent first), or its ``count`` best-scored Unigram pieces (a
    piece's score is its log-probability); WordPiece keeps no frequencies: none. Common words of any text then stay
    whole, whatever the task's data held (capitalized ones too, where the task's text is lowercased)."""
    kind = tokenizer_kind(tokenizer_json)
    if count <= 0 or kind == "wordpiece":
        return set()
    model = tokenizer_json["model"]
    if kind == "unigram":
        ranked = sorted(range(len(model["vocab"])), key=lambda i: -model["vocab"][i][1])
        return set(ranked[:count])
    vocab = model["vocab"]
    merged = ("".join(merge_parts(merge)) for merge in model["merges"][:count])
    return {vocab[token] for token in merged if token in vocab}


def merge_parts(merge: str | list[str]) -> tuple[str, str]:
    """A merge's two parts, from either serialization: ``"a b"`` (older files) or ``["a", "b"]``."""
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


def _merge_table(tokenizer_json: Mapping, vocab: Mapping[str, int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(left id, right id) -> (rank, merged id), as the BPE model builds it."""
    table: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, merge in enumerate(tokenizer_json["model"]["merges"]):
        left, right = merge_parts(merge)
        if left in vocab and right in vocab and left + right in vocab:
            table.setdefault((vocab[left], vocab[right]), (rank, vocab[left + right]))
    return table


def _replay_merges(token: str, vocab: Mapping[str, int], table: Mapping, byte_fallback: bool) -> set[int]:
    """Every id the BPE model passes through when it encodes ``token`` alone: its characters (or bytes), then the
    lowest-ranked adjacent pair, leftmost first, merged until none is left (``ignore_merges`` is not applied)."""
    symbols: list[int] = []
    for char in token:
        if char in vocab:
            symbols.append(vocab[char])
        elif byte_fallback:
            symbols.extend(vocab[BYTE_TOKENS[b]] for b in char.encode())
    seen = set(symbols)
    while True:
        candidates = [(table[pair][0], i) for i, pair in enumerate(itertools.pairwise(symbols)) if pair in table]
        if not candidates:
            return seen
        _, i = min(candidates)
        symbols[i : i + 2] = [table[symbols[i], symbols[i + 1]][1]]
        seen.add(symbols[i])


def close_under_merges(tokenizer_json: Mapping, ids: Iterable[int]) -> set[int]:
    """``ids`` plus, for BPE, every token the merges pass through to build each kept token, so that a text made
    only of kept tokens segments exactly as before.

    Inside any text, the merges that build a token are those that build it alone (each step is the lowest-ranked
    pair of the whole word, hence of the token's own span), so replaying them on the token's text finds them even
    where several merges make the same token (SentencePiece-converted BPE, e.g. Gemma: 515k merges, 262k tokens).
    Keeping their parts keeps every merge the original applied; a dropped merge was never the lowest available.
    WordPiece needs nothing: greedy longest match over a subset that still holds the original match finds it
    again. Unigram neither: the original Viterbi optimum over the full lattice stays optimal on a sub-lattice
    that contains it (ties go to the same earlier candidate)."""
    kept = set(ids)
    kind = tokenizer_kind(tokenizer_json)
    if kind not in ("byte_level_bpe", "sentencepiece_bpe"):
        return kept
    vocab = _vocab(tokenizer_json)
    tokens = {i: t for t, i in vocab.items()}
    added = {token["id"] for token in tokenizer_json.get("added_tokens", [])}  # matched before the model
    table = _merge_table(tokenizer_json, vocab)
    byte_fallback = bool(tokenizer_json["model"].get("byte_fallback"))
    for i in sorted(kept - added):
        if i in tokens:
            kept |= _replay_merges(tokens[i], vocab, table, byte_fallback)
    return kept


def id_map(old_ids: Iterable[int]) -> dict[int, int]:
    """Old id -> new id."""
    return {old: new for new, old in enumerate(old_ids)}


def _check_kept(tokenizer_json: Mapping, kept: set[int]) -> None:
    """Refuse ids the tokenizer does not have, and a kept set without the ids the pipeline needs."""
    known = set(_vocab(tokenizer_json).values()) | {t["id"] for t in tokenizer_json.get("added_tokens", [])}
    if unknown := sorted(kept - known):
        raise VocabularyError(f"kept ids {unknown[:5]} are not in the tokenizer (it has {len(known)} tokens)")
    for i, what in sorted(_required_ids(tokenizer_json).items()):
        if i not in kept:
            raise VocabularyError(f"id {i} ({what}) is not kept; add base_alphabet(tokenizer_json) to the kept ids")


def _remap_post_processor(post_processor: Any, mapping: Mapping[int, int]) -> Any:
    """The post-processor with the ids of the tokens it inserts renumbered."""
    post_processor = copy.deepcopy(post_processor)
    for component in _components(post_processor):
        for entry in (component.get("special_tokens") or {}).values():
            entry["ids"] = [mapping[i] for i in entry["ids"]]
        for key in ("sep", "cls"):
            if isinstance(component.get(key), list):
                component[key] = [component[key][0], mapping[component[key][1]]]
    return post_processor


def _trim_model(model: Mapping, mapping: Mapping[int, int]) -> dict:
    """The model section with the kept tokens renumbered, and for BPE only the merges among kept tokens."""
    model = dict(model)
    if model["type"] == "Unigram":
        model["vocab"] = [piece for i, piece in enumerate(model["vocab"]) if i in mapping]
        if model.get("unk_id") is not None:
            model["unk_id"] = mapping[model["unk_id"]]
        return model
    model["vocab"] = {
        t: mapping[i] for t, i in sorted(model["vocab"].items(), key=lambda item: item[1]) if i in mapping
    }
    if model["type"] == "BPE":
        vocab = model["vocab"]
        parts = [merge_parts(merge) for merge in model["merges"]]
        model["merges"] = [
            merge
            for merge, (left, right) in zip(model["merges"], parts, strict=True)
            if left in vocab and right in vocab and left + right in vocab
        ]
    return model


def trim_tokenizer(tokenizer_json: Mapping, kept: Iterable[int]) -> TrimmedTokenizer:
    """A tokenizer with only the ``kept`` ids, renumbered contiguously in the old order.

    Rewritten: the vocabulary, the BPE merges (one whose parts or result was dropped is removed), the added
    tokens, the post-processor's ids, the padding id and the Unigram ``unk_id``; normalizer, pre-tokenizer and
    decoder do not name ids and stay. ``kept`` should hold ``base_alphabet`` (any text still encodes) and, for BPE,
    be closed with ``close_under_merges`` (kept texts segment as before); ids the pipeline needs are checked."""
    tokenizer_kind(tokenizer_json)
    kept = set(kept)
    _check_kept(tokenizer_json, kept)
    old_ids = sorted(kept)
    mapping = id_map(old_ids)
    trimmed = copy.deepcopy({k: v for k, v in tokenizer_json.items() if k != "model"})
    trimmed["model"] = _trim_model(tokenizer_json["model"], mapping)
    trimmed["added_tokens"] = [
        {**token, "id": mapping[token["id"]]} for token in trimmed.get("added_tokens", []) if token["id"] in mapping
    ]
    trimmed["post_processor"] = _remap_post_processor(trimmed.get("post_processor"), mapping)
    if trimmed.get("padding"):
        trimmed["padding"]["pad_id"] = mapping[trimmed["padding"]["pad_id"]]
    return TrimmedTokenizer(tokenizer_json=trimmed, old_ids=old_ids)


def _token_names(trimmed: TrimmedTokenizer) -> set[str]:
    return set(_vocab(trimmed.tokenizer_json)) | {t["content"] for t in trimmed.tokenizer_json["added_tokens"]}


def token_text(entry: Any) -> str | None:
    """A special-token entry's text: a string, or an AddedToken dict's ``content``."""
    return entry.get("content") if isinstance(entry, dict) else entry


def remap_tokenizer_config(config: Mapping, trimmed: TrimmedTokenizer) -> dict:
    """``tokenizer_config.json`` or ``special_tokens_map.json`` for the trimmed tokenizer.

    ``added_tokens_decoder`` is keyed by id: renumbered, dropped tokens removed. A named special token (bos, eos,
    unk, sep, pad, cls, mask) must still exist, or transformers would append it as a new id past the embedding;
    extra special tokens that were dropped are removed from their lists for the same reason."""
    mapping = id_map(trimmed.old_ids)
    names = _token_names(trimmed)
    config = copy.deepcopy(dict(config))
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {
            str(mapping[int(i)]): token for i, token in config["added_tokens_decoder"].items() if int(i) in mapping
        }
    for key in NAMED_SPECIAL_TOKENS:
        name = token_text(config.get(key))
        if name is not None and name not in names:
            raise VocabularyError(f"{key} {name!r} was dropped; keep its id (kept_ids_for_texts adds special tokens)")
    for key in EXTRA_SPECIAL_TOKENS:
        extras = config.get(key)
        if isinstance(extras, list):
            config[key] = [entry for entry in extras if token_text(entry) in names]
        elif isinstance(extras, dict):
            config[key] = {k: entry for k, entry in extras.items() if token_text(entry) in names}
    return config


def remap_token_ids(config: Mapping, mapping: Mapping[int, int]) -> dict:
    """``config.json`` or ``generation_config.json`` with every ``*_token_id`` (an id or a list of ids, also in
    nested configs such as ``text_config``) renumbered; the caller sets ``vocab_size`` to ``len(old_ids)``."""
    config = copy.deepcopy(dict(config))
    for key, value in config.items():
        if isinstance(value, dict):
            config[key] = remap_token_ids(value, mapping)
        elif key.endswith("_token_id") and value is not None:
            ids = value if isinstance(value, list) else [value]
            if missing := [i for i in ids if i not in mapping]:
                raise VocabularyError(f"{key} {missing} was dropped; add it to the kept ids")
            config[key] = [mapping[i] for i in ids] if isinstance(value, list) else mapping[value]
    return config


def _unknown_id(tokenizer_json: Mapping) -> int | None:
    model = tokenizer_json["model"]
    if model.get("unk_id") is not None:
        return model["unk_id"]
    return _vocab(tokenizer_json).get(model.get("unk_token"))


def _unpadded(tokenizer_json: Mapping) -> Tokenizer:
    """The tokenizer without the padding and truncation a ``tokenizer.json`` may carry (MiniLM's pads every batch
    to its longest text and cuts at 128), so token counts are the texts' own."""
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def compare_encodings(original_json: Mapping, trimmed: TrimmedTokenizer, texts: list[str]) -> EncodingComparison:
    """Encode the texts with both tokenizers (no special tokens added) and count tokens, unknown tokens, texts
    segmented identically and texts decoded identically."""
    original, smaller = (_unpadded(tokenizer_json) for tokenizer_json in (original_json, trimmed.tokenizer_json))
    mapping = id_map(trimmed.old_ids)
    unknown = (_unknown_id(original_json), _unknown_id(trimmed.tokenizer_json))
    before = [e.ids for e in original.encode_batch(texts, add_special_tokens=False)]
    after = [e.ids for e in smaller.encode_batch(texts, add_special_tokens=False)]
    covered = [all(i in mapping for i in ids) for ids in before]
    return EncodingComparison(
        texts=len(texts),
        original_tokens=sum(map(len, before)),
        trimmed_tokens=sum(map(len, after)),
        original_unknown=sum(ids.count(unknown[0]) for ids in before),
        trimmed_unknown=sum(ids.count(unknown[1]) for ids in after),
        covered=sum(covered),
        identical=sum(c and [mapping[i] for i in b] == a for c, b, a in zip(covered, before, after, strict=True)),
        same_decode=sum(
            d == e for d, e in zip(original.decode_batch(before), smaller.decode_batch(after), strict=True)
        ),
    )
