"""Vocabulary trimming on tiny tokenizers of the four supported kinds, trained here on a small corpus."""

from __future__ import annotations

import copy
import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lightning_prune.vocabulary.tokenizer import (
    BYTE_TOKENS,
    VocabularyError,
    base_alphabet,
    close_under_merges,
    compare_encodings,
    frequent_ids,
    id_map,
    kept_ids_for_texts,
    remap_token_ids,
    remap_tokenizer_config,
    tokenizer_kind,
    trim_tokenizer,
)

SUBJECTS = ["the film", "this movie", "the acting", "her performance", "the story", "its soundtrack", "the script"]
VERDICTS = [
    "is wonderful and moving",
    "was a dull, lifeless mess",
    "feels charming but overlong",
    "remains thoroughly entertaining",
    "seemed predictable and tiresome",
    "is quietly brilliant",
]
CORPUS = [f"{s} {v}." for s in SUBJECTS for v in VERDICTS] + [
    "an unexpected, heartfelt comedy with sharp dialogue",
    "The director's vision never quite comes together.",
    "Quick brown foxes jump over lazy dogs; zany wizards vex jolly kings.",
]
TASK = CORPUS[:12]  # the "task" texts whose tokens are kept
RECOMBINED = [
    "the film is wonderful and moving.",
    "this movie is wonderful and moving.",
    "the film was a dull, lifeless mess.",
]
UNSEEN = ["zany wizards", "unexpected heartfelt dialogue", "Jolly Foxes VEX kings"]
HARD_STRINGS = [
    "emoji 😀🎬 ok",
    "漢字とかな",
    "مرحبا بالعالم",
    "tab\there\nnew line",
    "ctrl \x00\x07\x1b end",
    "naïve café",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ["wordpiece", "byte_level_bpe", "sentencepiece_bpe", "unigram"]


def _wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=BERT_SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 0), ("<|endoftext|>", 0))
    tok.add_tokens(["<tag>"])  # a non-special added token
    return tok


def _sentencepiece_bpe() -> Tokenizer:
    """Llama 2 style: Metaspace, byte fallback with the 256 <0xXX> pieces right after the special tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=260, special_tokens=["<unk>", "<s>", "</s>"]))
    trained = json.loads(tok.to_str())["model"]
    tokens = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {t: i for i, t in enumerate([*tokens[:3], *BYTE_TOKENS, *tokens[3:]])}
    spm = Tokenizer(models.BPE(vocab, [tuple(m) for m in trained["merges"]], unk_token="<unk>", byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    spm.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    spm.add_special_tokens(["<unk>", "<s>", "</s>"])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return spm


def _unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


BUILDERS = {
    "wordpiece": _wordpiece,
    "byte_level_bpe": _byte_level_bpe,
    "sentencepiece_bpe": _sentencepiece_bpe,
    "unigram": _unigram,
}


@pytest.fixture(scope="module")
def originals() -> dict[str, dict]:
    return {kind: json.loads(build().to_str()) for kind, build in BUILDERS.items()}


def _fast(tokenizer_json: dict) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tokenizer_json)))


def _trim_for(tokenizer_json: dict, texts: list[str]):
    kept = base_alphabet(tokenizer_json) | kept_ids_for_texts(_fast(tokenizer_json), texts)
    return trim_tokenizer(tokenizer_json, close_under_merges(tokenizer_json, kept))


@pytest.mark.parametrize("kind", KINDS)
def test_kind_detected(originals, kind):
    assert tokenizer_kind(originals[kind]) == kind


@pytest.mark.parametrize("kind", KINDS)
def test_kept_texts_segment_as_before(originals, kind):
    """The task texts, and new texts made only of kept tokens, get the original tokens renumbered."""
    original = originals[kind]
    trimmed = _trim_for(original, TASK)
    assert len(trimmed.old_ids) < len(_fast(original))
    before, after = Tokenizer.from_str(json.dumps(original)), Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    for text in TASK + RECOMBINED:
        assert [trimmed.old_ids[i] for i in after.encode(text).ids] == before.encode(text).ids, text
    comparison = compare_encodings(original, trimmed, TASK + RECOMBINED)
    assert comparison.identical == comparison.covered == len(TASK + RECOMBINED)
    assert comparison.extra_tokens_percent == 0


@pytest.mark.parametrize("kind", KINDS)
def test_unseen_words_fall_back_to_kept_pieces(originals, kind):
    original = originals[kind]
    trimmed = _trim_for(original, TASK)
    comparison = compare_encodings(original, trimmed, UNSEEN)
    assert comparison.covered < len(UNSEEN)  # the test is about dropped tokens
    assert comparison.trimmed_tokens > comparison.original_tokens
    assert comparison.trimmed_unknown == comparison.original_unknown  # only characters the original lacks
    assert comparison.same_decode == len(UNSEEN)


@pytest.mark.parametrize("kind", ["byte_level_bpe", "sentencepiece_bpe"])
def test_any_string_decodes_as_the_original(originals, kind):
    original = originals[kind]
    trimmed = _trim_for(original, TASK)
    comparison = compare_encodings(original, trimmed, HARD_STRINGS)
    assert comparison.same_decode == len(HARD_STRINGS)
    assert comparison.trimmed_unknown == 0
    smaller = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    for text in HARD_STRINGS:
        assert smaller.decode(smaller.encode(text, add_special_tokens=False).ids) == text


def test_close_under_merges_is_needed_for_bpe(originals):
    """Without the parts that build a kept token, merges stop early and the token is never produced."""
    original = originals["byte_level_bpe"]
    before = Tokenizer.from_str(json.dumps(original))
    word = "Ġwonderful"
    word_id = original["model"]["vocab"][word]
    assert before.encode(" wonderful", add_special_tokens=False).ids == [word_id]
    closed = close_under_merges(original, base_alphabet(original) | {word_id})
    assert len(closed) > len(base_alphabet(original)) + 1
    for kept, same in ((base_alphabet(original) | {word_id}, False), (closed, True)):
        trimmed = trim_tokenizer(original, kept)
        after = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
        ids = after.encode(" wonderful", add_special_tokens=False).ids
        assert ([trimmed.old_ids[i] for i in ids] == [word_id]) is same


def test_wordpiece_unknown_only_for_missing_characters(originals):
    """[UNK] replaces a word only where a character is missing: from the original vocabulary (both tokenizers)
    or from the kept alphabet (trimmed only), and the comparison counts it."""
    original = originals["wordpiece"]
    trimmed = _trim_for(original, TASK)
    snowman = compare_encodings(original, trimmed, ["the film ☃ is fine"])
    assert snowman.original_unknown == snowman.trimmed_unknown == 1
    vocab = original["model"]["vocab"]
    kept = set(trimmed.old_ids) - {vocab["z"], vocab["##z"]}
    no_z = trim_tokenizer(original, kept)
    comparison = compare_encodings(original, no_z, ["zany wizards vex kings", "the film is quietly brilliant"])
    assert (comparison.original_unknown, comparison.trimmed_unknown) == (0, 2)  # "zany" and "wizards"


def test_special_and_added_tokens_keep_working(originals):
    bert = originals["wordpiece"]
    trimmed = _trim_for(bert, TASK)
    mapping = id_map(trimmed.old_ids)
    smaller = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    ids = smaller.encode("the film", "this movie").ids
    cls, sep = (bert["model"]["vocab"][t] for t in ("[CLS]", "[SEP]"))
    assert (ids[0], ids[3], ids[-1]) == (mapping[cls], mapping[sep], mapping[sep])
    original = Tokenizer.from_str(json.dumps(bert)).encode("the film", "this movie")
    assert [trimmed.old_ids[i] for i in ids] == original.ids
    assert smaller.encode("the film", "this movie").type_ids == original.type_ids
    gpt = originals["byte_level_bpe"]
    trimmed = _trim_for(gpt, TASK)
    smaller = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    tag = next(t["id"] for t in gpt["added_tokens"] if t["content"] == "<tag>")
    encoding = smaller.encode("a <tag> b")
    assert encoding.tokens[0] == encoding.tokens[-1] == "<|endoftext|>"  # RobertaProcessing's cls/sep remapped
    assert id_map(trimmed.old_ids)[tag] in encoding.ids
    assert id_map(trimmed.old_ids)[tag] < tag  # renumbered, not left as it was


def test_bert_processing_ids_remapped(originals):
    bert = dict(originals["wordpiece"])
    vocab = bert["model"]["vocab"]
    bert["post_processor"] = {
        "type": "BertProcessing",
        "sep": ["[SEP]", vocab["[SEP]"]],
        "cls": ["[CLS]", vocab["[CLS]"]],
    }
    trimmed = _trim_for(bert, TASK)
    processor = trimmed.tokenizer_json["post_processor"]
    assert trimmed.old_ids[processor["cls"][1]] == vocab["[CLS]"]
    assert trimmed.old_ids[processor["sep"][1]] == vocab["[SEP]"]


def test_string_merges_and_unigram_scores_survive(originals):
    spm = copy.deepcopy(originals["sentencepiece_bpe"])
    spm["model"]["merges"] = [" ".join(merge) for merge in spm["model"]["merges"]]  # the older serialization
    trimmed = _trim_for(spm, TASK)
    merges = trimmed.tokenizer_json["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    assert len(merges) < len(spm["model"]["merges"])
    assert compare_encodings(spm, trimmed, TASK).identical == len(TASK)
    unigram = originals["unigram"]
    trimmed = _trim_for(unigram, TASK)
    assert min(s for _, s in trimmed.tokenizer_json["model"]["vocab"]) == min(s for _, s in unigram["model"]["vocab"])
    assert trimmed.tokenizer_json["model"]["unk_id"] == id_map(trimmed.old_ids)[unigram["model"]["unk_id"]]


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_the_trimmed_tokenizer(originals, kind):
    trimmed = _trim_for(originals[kind], TASK)
    fast = _fast(trimmed.tokenizer_json)
    backend = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    assert fast(UNSEEN)["input_ids"] == [e.ids for e in backend.encode_batch(UNSEEN)]
    assert len(fast) == len(trimmed.old_ids)


def test_saved_bert_folder_reloads_with_auto_tokenizer(originals, tmp_path):
    """transformers 5 rebuilds a BertTokenizer from the file's vocabulary: the trimmed ids must survive that."""
    trimmed = _trim_for(originals["wordpiece"], TASK)
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(trimmed.tokenizer_json))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(remap_tokenizer_config(config, trimmed)))
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    backend = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json))
    assert len(reloaded) == len(trimmed.old_ids)
    assert reloaded(UNSEEN + TASK)["input_ids"] == [e.ids for e in backend.encode_batch(UNSEEN + TASK)]


def test_tokenizer_config_and_model_config_remapped(originals):
    bert = originals["wordpiece"]
    vocab = bert["model"]["vocab"]
    trimmed = _trim_for(bert, TASK)
    mapping = id_map(trimmed.old_ids)
    dropped = next(i for t, i in vocab.items() if i not in mapping)
    decoder = {str(vocab[t]): {"content": t, "special": True} for t in BERT_SPECIALS}
    decoder[str(dropped)] = {"content": "gone", "special": True}
    config = {"added_tokens_decoder": decoder, "cls_token": "[CLS]", "additional_special_tokens": ["[MASK]", "gone"]}
    remapped = remap_tokenizer_config(config, trimmed)
    assert remapped["added_tokens_decoder"] == {
        str(mapping[vocab[t]]): {"content": t, "special": True} for t in BERT_SPECIALS
    }
    assert remapped["additional_special_tokens"] == ["[MASK]"]
    with pytest.raises(VocabularyError, match="bos_token 'gone' was dropped"):
        remap_tokenizer_config({"bos_token": {"content": "gone"}}, trimmed)
    model_config = {"pad_token_id": vocab["[PAD]"], "text_config": {"eos_token_id": [vocab["[SEP]"], vocab["[CLS]"]]}}
    assert remap_token_ids(model_config, mapping) == {
        "pad_token_id": mapping[vocab["[PAD]"]],
        "text_config": {"eos_token_id": [mapping[vocab["[SEP]"]], mapping[vocab["[CLS]"]]]},
    }
    with pytest.raises(VocabularyError, match="eos_token_id"):
        remap_token_ids({"eos_token_id": dropped}, mapping)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unsupported_tokenizers_refused_with_one_line(originals):
    word_level = json.loads(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str())
    with pytest.raises(VocabularyError) as error:
        base_alphabet(word_level)
    assert "'WordLevel' is not supported" in _one_line(error)
    clip_like = copy.deepcopy(originals["byte_level_bpe"])
    clip_like["model"]["end_of_word_suffix"] = "</w>"
    with pytest.raises(VocabularyError) as error:
        close_under_merges(clip_like, {0})
    assert "end_of_word_suffix is not supported" in _one_line(error)
    plain_bpe = copy.deepcopy(originals["sentencepiece_bpe"])
    plain_bpe["model"]["byte_fallback"] = False
    with pytest.raises(VocabularyError) as error:
        trim_tokenizer(plain_bpe, {0})
    assert "byte fallback" in _one_line(error)


def test_bad_kept_sets_refused_with_one_line(originals):
    bert = originals["wordpiece"]
    kept = base_alphabet(bert) - {bert["model"]["vocab"]["[CLS]"]}
    with pytest.raises(VocabularyError) as error:
        trim_tokenizer(bert, kept)
    assert "(post-processor token '[CLS]') is not kept" in _one_line(error)
    with pytest.raises(VocabularyError) as error:
        trim_tokenizer(bert, base_alphabet(bert) | {10**6})
    assert "are not in the tokenizer" in _one_line(error)


def test_frequent_ids_follow_the_tokenizers_own_ranking(originals):
    """BPE: the results of its first merges; Unigram: its best-scored pieces; WordPiece ranks nothing."""
    bpe = originals["byte_level_bpe"]
    vocab = bpe["model"]["vocab"]
    first = ["".join(m.split(" ") if isinstance(m, str) else m) for m in bpe["model"]["merges"][:5]]
    assert frequent_ids(bpe, 5) == {vocab[token] for token in first}
    unigram = originals["unigram"]
    scores = [score for _, score in unigram["model"]["vocab"]]
    picked = frequent_ids(unigram, 3)
    assert len(picked) == 3 and min(scores[i] for i in picked) >= sorted(scores, reverse=True)[2]
    assert frequent_ids(originals["wordpiece"], 50) == set() and frequent_ids(bpe, 0) == set()


def test_padding_id_remapped(originals):
    """A ``tokenizer.json`` may carry padding (MiniLM's does): its id is renumbered like the others."""
    gpt = copy.deepcopy(originals["byte_level_bpe"])
    tag = next(t["id"] for t in gpt["added_tokens"] if t["content"] == "<tag>")
    gpt["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": tag,
                      "pad_type_id": 0, "pad_token": "<tag>"}  # fmt: skip
    trimmed = _trim_for(gpt, TASK)
    assert trimmed.tokenizer_json["padding"]["pad_id"] == id_map(trimmed.old_ids)[tag] < tag
    padded = Tokenizer.from_str(json.dumps(trimmed.tokenizer_json)).encode_batch(["a", "the film"])
    assert padded[0].ids[-1] == id_map(trimmed.old_ids)[tag]


def test_llama3_style_byte_level_bpe(originals):
    """Llama 3 / Qwen layout: ByteLevel nested in a Sequence pre-tokenizer and ``ignore_merges`` (a word that is
    a token is looked up whole, skipping merges)."""
    llama3 = copy.deepcopy(originals["byte_level_bpe"])
    split = {"type": "Split", "pattern": {"Regex": r" ?\p{L}+| ?[^\s\p{L}]+|\s+"}, "behavior": "Isolated",
             "invert": False}  # fmt: skip
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    llama3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    llama3["model"]["ignore_merges"] = True
    assert tokenizer_kind(llama3) == "byte_level_bpe"
    trimmed = _trim_for(llama3, TASK)
    comparison = compare_encodings(llama3, trimmed, TASK + RECOMBINED + UNSEEN + HARD_STRINGS)
    assert comparison.identical == comparison.covered >= len(TASK + RECOMBINED)
    assert comparison.same_decode == comparison.texts
