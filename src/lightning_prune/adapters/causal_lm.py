"""Decoder-only LMs with gated FFNs (Llama, Mistral, Qwen2/3, Gemma 2/3, SmolLM, ...), answering by rank
classification over the task's label words after a prompt (``prompts``).

The answer's log-probability is the sum over its tokens (a label word may be several tokens), which are the
tokens the word has after the prompt, not alone (``CausalLMClassifier._label_word_ids``). Vocabulary
logits are computed only at the positions that predict answer tokens: the LM head (often tied to the
embeddings) is a large share of a small model's compute, and every other position's logits are unused.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_prune.adapters.base import AnswerSettings, Batch, BlockInput, FFNLayer, ModelSource, PrunableModel
from lightning_prune.adapters.hf import load_hf, load_tokenizer, stored_dtype
from lightning_prune.attention import AttentionLayer
from lightning_prune.cache import examples_fingerprint
from lightning_prune.errors import UsageError
from lightning_prune.prompts import Prompt, resolve_prompt
from lightning_prune.tasks import Example, TaskSpec

# Families whose decoder layers are ``model.layers[i].mlp`` with separate gate/up/down projections.
CAUSAL_LM_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
GATED_FFN = (("gate_proj", "up_proj"), "down_proj")


class CausalLMClassifier(PrunableModel):
    """A causal LM bound to one task through a prompt and one label word per answer.

    Scoring needs right padding (answers follow each prompt's last token), left truncation (a long input loses
    its start, never the question and cue at the end) and a pad token: ``tokenizer`` is a copy with those
    settings, and ``source_tokenizer`` the caller's, untouched, which ``save`` writes, so that the saved model
    pads, truncates and generates as its source did (a saved ``tokenizer.json`` would also carry the copy's
    padding and truncation state, which transformers reloads as its defaults).
    """

    ffn_width_key = "intermediate_size"
    head_count_keys = ("num_attention_heads", "num_key_value_heads")  # the config's head_dim keeps the head size
    model_types = CAUSAL_LM_MODEL_TYPES
    answers_through_prompt = True

    def __init__(
        self,
        model: nn.Module,
        task: TaskSpec,
        tokenizer,
        max_length: int,
        prompt: Prompt | None = None,
        demonstrations: list[Example] | None = None,
    ) -> None:
        super().__init__(task, tokenizer, max_length)
        self.architecture = model.config.model_type
        self.model = model
        self.prompt = resolve_prompt(task, prompt)
        if self.prompt.chat and not getattr(tokenizer, "chat_template", None):
            raise UsageError("prompt.chat is true but the model's tokenizer has no chat template: set chat to false")
        self.demonstrations = list(demonstrations or [])
        self.context = self._demonstration_context()
        self.bind_tokenizer(tokenizer)

    def bind_tokenizer(self, tokenizer) -> None:
        """Batches come from a copy of ``tokenizer`` padding right and truncating left (see the class doc); the label
        words' token ids from it."""
        super().bind_tokenizer(tokenizer)
        self.tokenizer = copy.deepcopy(tokenizer)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        ids, self.prompt_overlap = self._label_word_ids()
        for i, word in enumerate(self.prompt.label_words):
            if ids[i] in ids[:i]:
                raise UsageError(f"label word {word!r} tokenizes like another label word: give distinct words")
        width = max(len(i) for i in ids)
        candidates = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, word_ids in enumerate(ids):
            candidates[row, : len(word_ids)] = torch.tensor(word_ids)
            mask[row, : len(word_ids)] = 1
        self.register_buffer("candidate_ids", candidates, persistent=False)
        self.register_buffer("candidate_mask", mask, persistent=False)
        # Words whose tokens differ only in the last one are read as the same sequence: one pass serves them all
        # (STS-B's words " 0" ... " 5", "▁" then a digit for Gemma, are one sequence).
        reads = [tuple(word_ids[:-1]) for word_ids in ids]
        first_of_read = {read: word for word, read in reversed(list(enumerate(reads)))}
        representatives = sorted(first_of_read.values())
        self.register_buffer("read_words", torch.tensor(representatives), persistent=False)
        group = [representatives.index(first_of_read[read]) for read in reads]
        self.register_buffer("candidate_read", torch.tensor(group), persistent=False)

    @classmethod
    def load(cls, source: ModelSource, task: TaskSpec, answer: AnswerSettings) -> CausalLMClassifier:
        from transformers import AutoModelForCausalLM

        tokenizer = load_tokenizer(source.path)
        decoder = load_hf(AutoModelForCausalLM, source.path, source.plan, source.adapter, source.given)
        model = cls(decoder, task, tokenizer, answer.max_length, answer.prompt, answer.demonstrations)
        model.source_dtype = stored_dtype(source.folder, source.config)
        return model

    def _encode(self, text: str) -> list[int]:
        """The tokens of ``text``, without the special tokens the tokenizer adds around a text (BOS)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _label_word_ids(self) -> tuple[list[list[int]], int]:
        """Each label word's tokens as they follow the prompt, and how many of the prompt's last tokens they replace.

        A word is tokenized after the text before it, as lm-evaluation-harness does, never alone: SentencePiece
        tokenizers (Llama 2, Mistral, Gemma) start a text with "▁", so " negative" alone is ['▁', '▁negative'] but
        ['▁negative'] after a prompt. The text before it is the prompt rendered for a placeholder example (each
        field holds its name): chat template and demonstrations included; a template ending with a field gets the
        tokens that follow the placeholder.

        A word whose first token merges with the prompt's end ("Answer: " + "yes": [..., ':', '▁yes'], not
        [..., ':', '▁', 'yes']) starts where the tokens of prompt + word first differ from the prompt's, and
        ``collate`` drops the prompt tokens after that point: prompt + answer are the tokens of the whole text,
        which is what the model reads and writes. All words share one prompt batch, so words that replace
        different numbers of prompt tokens are refused rather than scored after a prompt they do not follow.
        """
        placeholder = Example(tuple(self.task.text_fields), 0, -1)
        context_text = self.render(placeholder)
        context = self._encode(context_text)
        ids, overlaps = [], []
        for word in self.prompt.label_words:
            full = self._encode(context_text + word)
            pairs = enumerate(zip(context, full, strict=False))  # of different lengths
            shared = next((i for i, (a, b) in pairs if a != b), min(len(context), len(full)))
            word_ids = full[shared:]
            unknown = self.tokenizer.unk_token_id
            if not word_ids or (unknown is not None and unknown in word_ids):
                raise UsageError(
                    f"label word {word!r} is not a word this model's tokenizer knows (tokens: "
                    f"{self.tokenizer.convert_ids_to_tokens(word_ids)}): choose another label word"
                )
            ids.append(word_ids)
            overlaps.append(len(context) - shared)
        if len(set(overlaps)) > 1:
            merged = dict(zip(self.prompt.label_words, overlaps, strict=True))
            raise UsageError(
                f"label words merge with different numbers of the prompt's last tokens ({merged}): start every "
                "label word the same way (e.g. all with a space, and no space at the template's end)"
            )
        return ids, overlaps[0]

    # -- prompts ----------------------------------------------------------------------------------------------

    def _demonstration_context(self) -> list[tuple[str, str]]:
        """(prompt, answer) pairs of the in-context demonstrations."""
        return [
            (self.prompt.fill(e), self.prompt.label_words[self.prompt.word_index(e.label)]) for e in self.demonstrations
        ]

    def render(self, example: Example) -> str:
        """The full text before the answer: demonstrations, then the example's prompt."""
        query = self.prompt.fill(example)
        if self.prompt.chat:
            messages = []
            for question, answer in self.context:
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": query})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        shots = [question + answer + self.prompt.separator for question, answer in self.context]
        return "".join([*shots, query])

    # -- the adapter interface --------------------------------------------------------------------------------

    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def _layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def ffn_layers(self) -> list[FFNLayer]:
        up, down = GATED_FFN
        return [
            FFNLayer(f"model.layers.{i}.mlp", layer.mlp, up, down, "decoder", i)
            for i, layer in enumerate(self._layers())
        ]

    def attention_layers(self) -> list[AttentionLayer]:
        return [
            AttentionLayer(
                f"model.layers.{i}.self_attn", layer, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", layer.self_attn.head_dim, layer.self_attn.num_key_value_groups, "decoder", i,
            )
            for i, layer in enumerate(self._layers())
        ]  # fmt: skip

    def collate(self, examples: list[Example]) -> Batch:
        """The rendered prompts, without their last ``prompt_overlap`` tokens (see ``_label_word_ids``)."""
        # A chat template writes its own special tokens.
        batch = self.text_batch([self.render(e) for e in examples], examples, add_special_tokens=not self.prompt.chat)
        # The example's own words, without the template, chat markup and demonstrations every prompt repeats.
        texts = [text for e in examples for text in e.texts]
        lengths = torch.tensor([len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]])
        own = lengths.view(len(examples), -1).sum(1)  # every example of a task has the same number of texts
        batch["example_tokens"] = torch.minimum(own, batch["attention_mask"].sum(1))
        if self.prompt_overlap:
            lengths = batch["attention_mask"].sum(1) - self.prompt_overlap
            keep = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
            batch["input_ids"] = batch["input_ids"][:, : keep.shape[1]].masked_fill(~keep, self.tokenizer.pad_token_id)
            batch["attention_mask"] = keep.long()
        return batch

    def candidate_index(self, labels: Tensor) -> Tensor:
        """Task-level labels to label-word indices (regression: the word of the nearest value)."""
        if not self.task.is_regression:
            return labels.long()
        return torch.tensor([self.prompt.word_index(v) for v in labels.tolist()], device=labels.device)

    def vocabulary_texts(self, examples: list[Example]) -> list[str]:
        """Each example's whole prompt (chat template and demonstrations included), and the prompt followed by each
        label word: the answers' tokens as they follow it."""
        before = self.render(Example(tuple(self.task.text_fields), 0, -1))
        return [self.render(e) for e in examples] + [before + word for word in self.prompt.label_words]

    def _sequences(self, batch: Batch, words: Tensor) -> dict[str, Tensor]:
        """Each prompt followed by all but the last token of its label word ``words[i]``.

        Returns the model inputs, and per answer token the position that predicts it, its id and its mask.
        """
        lengths = batch["attention_mask"].sum(1)
        targets, target_mask = self.candidate_ids[words], self.candidate_mask[words]
        positions = lengths.unsqueeze(1) - 1 + torch.arange(targets.shape[1], device=lengths.device)
        positions = torch.where(target_mask.bool(), positions, lengths.unsqueeze(1) - 1)
        if targets.shape[1] == 1:  # every label word is one token: the prompt alone predicts it
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        else:
            answer_lengths = target_mask.sum(1)
            width = int((lengths + answer_lengths - 1).max())
            input_ids = torch.full((len(words), width), int(self.tokenizer.pad_token_id), device=lengths.device)
            attention_mask = torch.zeros_like(input_ids)
            for row, (length, answer) in enumerate(zip(lengths.tolist(), answer_lengths.tolist(), strict=True)):
                input_ids[row, :length] = batch["input_ids"][row, :length]
                input_ids[row, length : length + answer - 1] = targets[row, : answer - 1]
                attention_mask[row, : length + answer - 1] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "positions": positions,
            "targets": targets,
            "target_mask": target_mask,
        }

    def _vocabulary_log_probs(self, hidden: Tensor) -> Tensor:
        """Log-softmax over the vocabulary of the LM head applied to ``hidden`` (final hidden states)."""
        logits = self.model.get_output_embeddings()(hidden).float()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)  # Gemma 2/3
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.log_softmax(logits, dim=-1)

    def _position_log_probs(self, hidden: Tensor, positions: Tensor) -> Tensor:
        """``[rows, answer tokens, vocabulary]`` log-probabilities at the positions that predict answer tokens."""
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self._vocabulary_log_probs(picked)

    def _answer_log_prob(self, hidden: Tensor, sequences: dict[str, Tensor]) -> Tensor:
        """Summed log-probabilities of the answer tokens, from the final hidden states at their positions."""
        log_probs = self._position_log_probs(hidden, sequences["positions"])
        token_log_probs = log_probs.gather(2, sequences["targets"].unsqueeze(-1)).squeeze(-1)
        return (token_log_probs * sequences["target_mask"]).sum(1)

    def _log_prob_of_words(self, batch: Batch, words: Tensor) -> Tensor:
        sequences = self._sequences(batch, words)
        hidden = self.model.model(
            input_ids=sequences["input_ids"], attention_mask=sequences["attention_mask"], use_cache=False
        ).last_hidden_state
        return self._answer_log_prob(hidden, sequences)

    def target_log_prob(self, batch: Batch, labels: Tensor) -> Tensor:
        return self._log_prob_of_words(batch, self.candidate_index(labels))

    def label_word_scores(self, batch: Batch) -> Tensor:
        """``[batch, label words]`` log-probabilities: one pass per sequence the words are read as (one when every
        word is one token)."""
        rows = batch["input_ids"].shape[0]
        reads = len(self.read_words)
        expanded = {key: batch[key].repeat_interleave(reads, 0) for key in ("input_ids", "attention_mask")}
        sequences = self._sequences(expanded, self.read_words.repeat(rows))
        hidden = self.model.model(
            input_ids=sequences["input_ids"], attention_mask=sequences["attention_mask"], use_cache=False
        ).last_hidden_state
        log_probs = self._position_log_probs(hidden, sequences["positions"])
        log_probs = log_probs.view(rows, reads, *log_probs.shape[1:])  # [rows, reads, answer tokens, vocabulary]
        steps = torch.arange(self.candidate_ids.shape[1], device=log_probs.device)
        per_token = log_probs[:, self.candidate_read.unsqueeze(1), steps, self.candidate_ids]  # [rows, words, tokens]
        return (per_token * self.candidate_mask).sum(-1)

    def predict(self, batch: Batch) -> Tensor:
        best = self.label_word_scores(batch).argmax(-1)
        if self.task.is_regression:
            return torch.tensor(self.prompt.word_values(), device=best.device)[best]
        return best

    def example_tokens(self, batch: Batch) -> Tensor:
        return batch["example_tokens"]

    def token_mask(self, batch: Batch, side: str, labels: Tensor) -> Tensor:
        return self._sequences(batch, self.candidate_index(labels))["attention_mask"]

    # -- prefix reuse -----------------------------------------------------------------------------------------

    def block_inputs(self, batch: Batch) -> list[BlockInput]:
        """Every decoder layer's call arguments from one clean pass over the prompts and answers of
        ``batch["labels"]``. Layers may get different masks and rotary tables (sliding-window layers of
        Gemma, Qwen), so each input also carries the arguments of the layers after it."""
        captured: list[BlockInput] = []

        def record(_module, args, kwargs):
            captured.append(BlockInput(args, kwargs))

        sequences = self._sequences(batch, self.candidate_index(batch["labels"]))
        handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in self._layers()]
        try:
            with torch.no_grad():
                self.model.model(
                    input_ids=sequences["input_ids"], attention_mask=sequences["attention_mask"], use_cache=False
                )
        finally:
            for handle in handles:
                handle.remove()
        return [
            BlockInput(item.args, item.kwargs, tuple(BlockInput((), later.kwargs) for later in captured[i + 1 :]))
            for i, item in enumerate(captured)
        ]

    def target_log_prob_from(self, batch: Batch, labels: Tensor, layer_index: int, block_input: BlockInput) -> Tensor:
        hidden = block_input.args[0]
        layer_kwargs = [block_input.kwargs, *(later.kwargs for later in block_input.following)]
        for layer, kwargs in zip(self._layers()[layer_index:], layer_kwargs, strict=True):
            out = layer(hidden, *block_input.args[1:], **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = self.model.model.norm(hidden)
        return self._answer_log_prob(hidden, self._sequences(batch, self.candidate_index(labels)))

    def _prompt_settings(self) -> dict:
        """The resolved prompt, as ``Prompt`` fields."""
        return {
            "template": self.prompt.template,
            "label_words": list(self.prompt.label_words),
            "chat": self.prompt.chat,
            "separator": self.prompt.separator,
        }

    def input_settings(self) -> dict:
        return {**self._prompt_settings(), "demonstrations": examples_fingerprint(self.demonstrations)}

    def answer_settings(self) -> dict:
        """Also the resolved prompt and the demonstrations themselves: reloaded, they are reproduced, not re-drawn."""
        demonstrations = [{"texts": list(e.texts), "label": e.label, "index": e.index} for e in self.demonstrations]
        return {**super().answer_settings(), "prompt": self._prompt_settings(), "demonstrations": demonstrations}

    def save_extras(self, directory: Path) -> None:
        generation_config = getattr(self.model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(directory)
