"""``--vocabulary task``: the embedding and output head cut to the task's tokens on every tokenizer kind and model
family, a saved folder plain ``transformers`` loads, answers unchanged on texts made of kept tokens, the cut undone
between sweep points, and bad input refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from conftest import digest, fit_free_args, one_error_line, run_cli
from lightning_prune import load_pruned_model
from lightning_prune.adapters import load_model
from lightning_prune.data import TaskDataModule
from lightning_prune.pruning import Cut, pruned
from lightning_prune.tasks import TASKS
from lightning_prune.testing import build_bert_with_heads, build_causal_lm, build_t5
from lightning_prune.vocabulary import plan_vocabulary

QUIET = ["--trainer.enable_progress_bar", "false"]
TASK_ONLY = ["--vocabulary", "task", "--vocabulary_frequent", "0"]  # tiny tokenizers: every merge is frequent
BUILDERS = {  # one model per tokenizer kind: WordPiece, Unigram, byte-level BPE, byte-fallback BPE
    "bert": build_bert_with_heads,
    "t5": lambda folder: build_t5(folder, unigram=True),
    "llama": lambda folder: build_causal_lm(folder, "llama"),
    "gemma3": lambda folder: build_causal_lm(folder, "gemma3_text", sentencepiece=True),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def test_the_saved_folder_is_plain_and_smaller(family, glue_dir, tmp_path, capsys):
    name, model = family
    out = tmp_path / "run"
    code, _, err = run_cli(fit_free_args(model, glue_dir, out, *TASK_ONLY, *QUIET), capsys)
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())
    tokens = summary["vocabulary"]["tokens"]
    assert tokens["kept"] < tokens["dense"]
    saved = out / "model"
    tokenizer, config = AutoTokenizer.from_pretrained(saved), AutoConfig.from_pretrained(saved)
    assert len(tokenizer) == config.vocab_size == tokens["kept"]
    reloaded = load_pruned_model(str(saved), "sst2")
    rows = reloaded.weights_module.get_input_embeddings().weight
    assert rows.shape[0] == tokens["kept"]
    head = reloaded.weights_module.get_output_embeddings() if name != "bert" else None
    if head is not None and config.tie_word_embeddings:
        assert head.weight.data_ptr() == rows.data_ptr()  # tied weights stay one tensor
    assert summary["parameters"]["pruned"] == reloaded.num_parameters()


def test_answers_are_unchanged_on_texts_made_of_kept_tokens(family, glue_dir):
    """The scoring source holds every word of the evaluation examples here: each one tokenizes to the same tokens,
    renumbered, and the model (the same FFN cut, with and without the vocabulary cut) answers alike."""
    _, folder = family
    net = load_model(folder, TASKS["sst2"])
    data = TaskDataModule("sst2", str(glue_dir))
    evaluation = net.vocabulary_texts(data.eval_examples())  # as the model reads them
    cut = plan_vocabulary(net, net.vocabulary_texts(data.vocabulary_examples()), evaluation, frequent=0)
    assert cut.evaluation.identical == cut.evaluation.covered == cut.evaluation.texts
    batch_full = net.collate(data.eval_examples())
    kept = [torch.arange(0, layer.size, 2) for layer in net.ffn_layers()]
    with pruned(net, Cut(0.5, kept)):
        expected = net.predict(batch_full)
    with pruned(net, Cut(0.5, kept, vocabulary=cut)):
        batch = net.collate(data.eval_examples())
        assert len(net.tokenizer) == cut.kept
        assert torch.equal(torch.tensor(cut.old_ids)[batch["input_ids"]], batch_full["input_ids"])
        answers = net.predict(batch)
    assert torch.equal(answers, expected)


def test_the_cut_is_undone_between_sweep_points(family, glue_dir):
    _, folder = family
    net = load_model(folder, TASKS["sst2"])
    data = TaskDataModule("sst2", str(glue_dir))
    before = (net.source_tokenizer, net.weights_module.get_input_embeddings(), net.weights_module.config.vocab_size)
    batch = net.collate(data.eval_examples())
    answers = net.predict(batch)
    cut = plan_vocabulary(net, net.vocabulary_texts(data.vocabulary_examples()), [], frequent=0)
    kept = [torch.arange(layer.size) for layer in net.ffn_layers()]
    with pruned(net, Cut(0.0, kept, vocabulary=cut)):
        assert net.weights_module.config.vocab_size == cut.kept
    after = (net.source_tokenizer, net.weights_module.get_input_embeddings(), net.weights_module.config.vocab_size)
    assert after == before
    assert torch.equal(net.predict(net.collate(data.eval_examples())), answers)


def test_the_tokenizers_frequent_tokens_are_kept_whatever_the_task(glue_dir, tmp_path):
    """Its first merges' tokens stay, so common words of unseen text stay whole."""
    model = build_causal_lm(tmp_path / "m", "llama")
    net = load_model(model, TASKS["sst2"])
    texts = net.vocabulary_texts(TaskDataModule("sst2", str(glue_dir)).vocabulary_examples())
    task_only, with_frequent = (plan_vocabulary(net, texts, [], frequent=n) for n in (0, 100))
    assert set(task_only.old_ids) < set(with_frequent.old_ids)
    merges = json.loads(net.source_tokenizer.backend_tokenizer.to_str())["model"]["merges"][:100]
    first = {"".join(m.split(" ") if isinstance(m, str) else m) for m in merges}
    assert {net.source_tokenizer.convert_tokens_to_ids(token) for token in first} <= set(with_frequent.old_ids)


def test_vocabulary_texts_keep_a_users_words(glue_dir, tmp_path, capsys):
    model = build_causal_lm(tmp_path / "m", "llama")
    texts = tmp_path / "traffic.txt"
    texts.write_text("a xylophone quartet\n\nzebras at the opera\n")
    before = digest(model, glue_dir, texts)
    outs = {}
    for name, extra in (("plain", []), ("with", ["--vocabulary_texts", str(texts)])):
        outs[name] = tmp_path / name
        args = fit_free_args(model, glue_dir, outs[name], *TASK_ONLY, *extra, *QUIET)
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    assert digest(model, glue_dir, texts) == before
    full = AutoTokenizer.from_pretrained(model)
    plain, with_texts = (AutoTokenizer.from_pretrained(outs[n] / "model") for n in ("plain", "with"))
    word = " xylophone"
    assert len(with_texts.tokenize(word)) == len(full.tokenize(word)) < len(plain.tokenize(word))
    assert plain.decode(plain(word, add_special_tokens=False)["input_ids"]) == word  # still encodes, in pieces


def test_a_trimmed_model_pruned_again_composes_the_plan(glue_dir, tmp_path, capsys):
    model = build_causal_lm(tmp_path / "m", "llama")
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli(fit_free_args(model, glue_dir, first, *TASK_ONLY, *QUIET), capsys)[0] == 0
    again = fit_free_args(first / "model", glue_dir, second, *TASK_ONLY, "--sparsity", "0.3", *QUIET)
    code, _, err = run_cli(again, capsys)
    assert code == 0, err
    plans = [json.loads((out / "model" / "pruning_plan.json").read_text()) for out in (first, second)]
    assert plans[1]["vocabulary"]["dense_size"] == plans[0]["vocabulary"]["dense_size"]
    assert set(plans[1]["vocabulary"]["kept"]) <= set(plans[0]["vocabulary"]["kept"])
    assert load_pruned_model(str(second / "model"), "sst2").weights_module.config.vocab_size == len(
        plans[1]["vocabulary"]["kept"]
    )


def test_a_speed_budget_with_the_task_vocabulary(glue_dir, tmp_path, capsys):
    model = build_causal_lm(tmp_path / "m", "llama")
    out = tmp_path / "run"
    args = fit_free_args(model, glue_dir, out, *TASK_ONLY, "--sparsity", "null", "--target_speedup", "1.3",
                         "--heads", "false", *QUIET)  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    flops = json.loads((out / "metrics.json").read_text())["flops"]
    assert flops["speedup"] >= 1.3  # the smaller output head only adds to the FFN's saving


@pytest.mark.parametrize(
    ("extra", "content", "message"),
    [
        (["--vocabulary_texts", "{texts}"], b"words\n", "add --vocabulary task"),
        (["--vocabulary", "task", "--vocabulary_texts", "{texts}"], b"\n \n", "is empty"),
        (["--vocabulary", "task", "--vocabulary_texts", "{texts}"], b"\xff\xfe\x00binary", "is not UTF-8"),
        (["--vocabulary", "task", "--vocabulary_texts", "{missing}"], b"", "does not exist"),
    ],
)
def test_bad_vocabulary_texts_are_one_line(glue_dir, tmp_path, capsys, extra, content, message):
    model = build_causal_lm(tmp_path / "m", "llama")
    texts = tmp_path / "texts.txt"
    texts.write_bytes(content)
    args = [a.format(texts=texts, missing=tmp_path / "missing.txt") for a in extra]
    before = digest(model, glue_dir, texts)
    code, _, err = run_cli(fit_free_args(model, glue_dir, tmp_path / "run", *args, *QUIET), capsys)
    assert code == 2 and message in one_error_line(err)
    assert digest(model, glue_dir, texts) == before and not (tmp_path / "run").exists()


def test_a_tokenizer_kind_not_handled_is_refused_before_any_work(t5_dir, glue_dir, tmp_path, capsys):
    """The tiny word-level T5 tokenizer has no pieces to fall back to: refused, nothing scored or written."""
    before = digest(t5_dir, glue_dir)
    code, _, err = run_cli(fit_free_args(t5_dir, glue_dir, tmp_path / "run", "--vocabulary", "task", *QUIET), capsys)
    assert code == 2 and "WordLevel" in one_error_line(err) and "scoring" not in err
    assert digest(t5_dir, glue_dir) == before and not (tmp_path / "run").exists()
