"""Prompts for decoder LMs: how a task's example becomes text, and which label words answer it.

A decoder LM answers a classification task by rank classification: the prompt is followed by each
label word in turn, and the word with the highest (summed) log-probability is the answer. Each task has
a default prompt; a run overrides it with ``--model.prompt`` (YAML: ``model: prompt: {template: ...}``):

- ``template``: the text before the answer, with the task's fields as ``{name}`` (``{sentence}``,
  ``{sentence1}``, ``{premise}``, ...; literal braces as ``{{`` ``}}``);
- ``label_words``: one per label, in the task's label order, written exactly as they follow the prompt
  (usually with a leading space); for regression (STS-B) numbers, the answer being the value of the best word;
- ``chat``: wrap the prompt in the tokenizer's chat template (the label word is the assistant's reply;
  default label words then lose their leading space);
- ``separator``: between in-context demonstrations (``--data.demonstrations k``) and the query.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from lightning_prune.errors import UsageError
from lightning_prune.tasks import Example, TaskSpec

YES_NO = (" no", " yes")

# task -> (template, label words in the task's label order)
DEFAULT_PROMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sst2": ("Review: {sentence}\nSentiment (positive or negative):", (" negative", " positive")),
    "cola": ("Sentence: {sentence}\nIs this sentence grammatically correct (yes or no)?\nAnswer:", YES_NO),
    "mrpc": (
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo both sentences mean the same thing (yes or no)?\nAnswer:",
        YES_NO,
    ),
    "qqp": (
        "Question 1: {question1}\nQuestion 2: {question2}\nDo both questions ask the same thing (yes or no)?\nAnswer:",
        YES_NO,
    ),
    "stsb": (
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
        "How similar are the two sentences, from 0 (unrelated) to 5 (same meaning)?\nAnswer:",
        tuple(f" {k}" for k in range(6)),
    ),
    "mnli": (
        "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise imply the hypothesis (yes, maybe or no)?\n"
        "Answer:",
        (" yes", " maybe", " no"),
    ),
    "qnli": (
        "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question (yes or no)?\nAnswer:",
        (" yes", " no"),
    ),
    "rte": (
        "Premise: {sentence1}\nHypothesis: {sentence2}\nDoes the premise imply the hypothesis (yes or no)?\nAnswer:",
        (" yes", " no"),
    ),
}


@dataclass
class Prompt:
    """A task prompt for decoder LMs; every unset field takes the task's default (see module doc)."""

    template: str | None = None
    label_words: list[str] | None = None
    chat: bool = False
    separator: str = "\n\n"


def default_prompt(task: TaskSpec) -> tuple[str, tuple[str, ...]]:
    """The built-in template and label words of ``task``; a single-sentence task outside GLUE (AG News
    topics, sentiment files) is asked for one of its label names."""
    if task.name in DEFAULT_PROMPTS:
        return DEFAULT_PROMPTS[task.name]
    assert task.labels is not None  # tasks outside GLUE are classification tasks (tasks.sentence_task)
    choices = ", ".join(task.labels[:-1]) + f" or {task.labels[-1]}"
    return f"Text: {{sentence}}\nCategory ({choices}):", tuple(f" {label}" for label in task.labels)


@dataclass(frozen=True)
class ResolvedPrompt:
    """A checked prompt: fills examples in and knows each label's word."""

    template: str
    label_words: tuple[str, ...]
    chat: bool
    separator: str
    task: TaskSpec

    def fill(self, example: Example) -> str:
        return self.template.format(**dict(zip(self.task.text_fields, example.texts, strict=True)))

    def word_index(self, label: float | int) -> int:
        """The label word that stands for ``label`` (regression: the word of the nearest value)."""
        if not self.task.is_regression:
            return int(label)
        values = self.word_values()
        return min(range(len(values)), key=lambda i: abs(values[i] - float(label)))

    def word_values(self) -> list[float]:
        return [float(word) for word in self.label_words]


def resolve_prompt(task: TaskSpec, prompt: Prompt | None) -> ResolvedPrompt:
    """The task's prompt with ``prompt``'s overrides, checked against the task's fields and labels."""
    prompt = prompt or Prompt()
    default_template, default_words = default_prompt(task)
    template = default_template if prompt.template is None else prompt.template
    if prompt.label_words is not None:
        words = tuple(prompt.label_words)
    else:
        words = tuple(word.lstrip() for word in default_words) if prompt.chat else default_words
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise UsageError(
            f"prompt template {template!r} is malformed ({error}); write literal braces as {{{{ }}}}"
        ) from None
    unknown, missing = fields - set(task.text_fields), set(task.text_fields) - fields
    if unknown or missing:
        problem = f"has unknown field(s) {sorted(unknown)}" if unknown else f"lacks field(s) {sorted(missing)}"
        raise UsageError(
            f"prompt template {template!r} {problem}: task {task.name} fills in "
            f"{', '.join('{' + f + '}' for f in task.text_fields)}"
        )
    if task.is_regression:
        try:
            [float(word) for word in words]
        except ValueError:
            raise UsageError(
                f"label words {list(words)} of regression task {task.name} must be numbers (the answer's value)"
            ) from None
    elif len(words) != task.num_labels:
        raise UsageError(
            f"{len(words)} label words {list(words)} for task {task.name}, which has {task.num_labels} labels "
            f"({', '.join(task.labels or ())}): give one word per label, in that order"
        )
    return ResolvedPrompt(template, words, prompt.chat, prompt.separator, task)
