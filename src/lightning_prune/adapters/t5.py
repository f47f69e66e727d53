"""T5-family text-to-text models (T5, Flan-T5, T5 v1.1 and mT5 with gated FFNs).

A task becomes text as in the T5 paper (``"rte sentence1: ... sentence2: ..."``); the answer is one of
the task's label words, chosen by rank classification: the label word whose target tokens have the
highest log-probability. STS-B uses the T5 paper's 26 label words ``"0.0" ... "5.0"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_prune.adapters.base import AnswerSettings, Batch, FFNLayer, ModelSource, PrunableModel
from lightning_prune.adapters.hf import load_hf, load_tokenizer, stored_dtype
from lightning_prune.tasks import Example, TaskSpec

T5_MODEL_TYPES = ("t5", "mt5")


class T5TextToText(PrunableModel):
    """A seq2seq model answering the bound task with its label words."""

    ffn_width_key = "d_ff"  # one width for the encoder and decoder FFNs
    model_types = T5_MODEL_TYPES
    head_pruning_unsupported = (
        "T5's relative position bias is computed once per stack for every head of every layer, so no layer can "
        "lose heads of its own (transformers 5 dropped T5's pruned_heads)"
    )

    def __init__(self, model: nn.Module, task: TaskSpec, tokenizer, max_length: int):
        super().__init__(task, tokenizer, max_length)
        self.architecture = model.config.model_type
        self.model = model
        self.bind_tokenizer(tokenizer)

    def bind_tokenizer(self, tokenizer) -> None:
        """The label words' target tokens from ``tokenizer``."""
        super().bind_tokenizer(tokenizer)
        targets = tokenizer(list(self.task.t5_label_words), padding=True, return_tensors="pt")
        # Padding of the candidate targets is excluded from every sum; the mask keeps it explicit.
        self.register_buffer("candidate_ids", targets["input_ids"], persistent=False)
        self.register_buffer("candidate_mask", targets["attention_mask"], persistent=False)

    def vocabulary_texts(self, examples: list[Example]) -> list[str]:
        """Each example in the T5 format (task prefix, field names) and the label words."""
        return [self.format(e.texts) for e in examples] + list(self.task.t5_label_words)

    @classmethod
    def load(cls, source: ModelSource, task: TaskSpec, answer: AnswerSettings) -> T5TextToText:
        from transformers import AutoModelForSeq2SeqLM

        seq2seq = load_hf(AutoModelForSeq2SeqLM, source.path, source.plan, source.adapter, source.given)
        model = cls(seq2seq, task, load_tokenizer(source.path), answer.max_length)
        model.source_dtype = stored_dtype(source.folder, source.config)
        return model

    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def ffn_layers(self) -> list[FFNLayer]:
        layers = []
        for side, stack, ff_index in (("encoder", self.model.encoder, 1), ("decoder", self.model.decoder, 2)):
            for i, block in enumerate(stack.block):
                ff = block.layer[ff_index].DenseReluDense
                up = ("wi_0", "wi_1") if hasattr(ff, "wi_0") else ("wi",)
                layers.append(FFNLayer(f"{side}.block.{i}.layer.{ff_index}.DenseReluDense", ff, up, "wo", side))
        return layers

    def format(self, texts: tuple[str, ...]) -> str:
        by_field = dict(zip(self.task.text_fields, texts, strict=True))
        parts = [f"{name}: {by_field[name]}" for name in self.task.t5_field_names]
        return " ".join([self.task.t5_prefix, *parts])

    def collate(self, examples: list[Example]) -> Batch:
        return self.text_batch([self.format(e.texts) for e in examples], examples)

    def candidate_index(self, labels: Tensor) -> Tensor:
        """Task-level labels to label-word indices (STS-B scores round to the nearest 0.2)."""
        if self.task.is_regression:
            return (labels.float() * 5).round().clamp(0, len(self.task.t5_label_words) - 1).long()
        return labels.long()

    def _sequence_log_probs(self, batch: Batch, candidates: Tensor, encoder_outputs=None) -> Tensor:
        """Sum of target-token log-probs of label word ``candidates[i]`` for example row i."""
        targets = self.candidate_ids[candidates]
        mask = self.candidate_mask[candidates]
        start = torch.full_like(targets[:, :1], self.model.config.decoder_start_token_id)
        decoder_input_ids = torch.cat([start, targets[:, :-1]], dim=1)
        logits = self.model(
            input_ids=None if encoder_outputs is not None else batch["input_ids"],
            attention_mask=batch["attention_mask"],
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=mask,
        ).logits
        token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.unsqueeze(-1)).squeeze(-1)
        return (token_log_probs * mask).sum(1)

    def target_log_prob(self, batch: Batch, labels: Tensor) -> Tensor:
        return self._sequence_log_probs(batch, self.candidate_index(labels))

    def label_word_scores(self, batch: Batch) -> Tensor:
        """``[batch, label words]`` log-probabilities: one encoder pass, one decoder pass per label word."""
        num_words = self.candidate_ids.shape[0]
        hidden = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        rows = batch["input_ids"].shape[0]
        expanded = {"attention_mask": batch["attention_mask"].repeat_interleave(num_words, 0)}
        candidates = torch.arange(num_words, device=hidden.device).repeat(rows)
        scores = self._sequence_log_probs(expanded, candidates, (hidden.repeat_interleave(num_words, 0),))
        return scores.view(rows, num_words)

    def predict(self, batch: Batch) -> Tensor:
        best = self.label_word_scores(batch).argmax(-1)
        return best.float() / 5 if self.task.is_regression else best

    def token_mask(self, batch: Batch, side: str, labels: Tensor) -> Tensor:
        if side == "encoder":
            return batch["attention_mask"]
        return self.candidate_mask[self.candidate_index(labels)]
