"""The task's vocabulary: which tokens a task uses, the tokenizer that encodes any text with only those
(``tokenizer``), and cutting a model's embedding and output head down to them (``cut``)."""

from lightning_prune.vocabulary.cut import VocabularyCut, cut_vocabulary, plan_vocabulary

__all__ = ["VocabularyCut", "cut_vocabulary", "plan_vocabulary"]
