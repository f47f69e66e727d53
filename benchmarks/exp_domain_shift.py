"""Why pruning for SST-2 lost accuracy on long reviews, measured (issue 11).

On the SST-2 head, scored on 128 SST-2 training examples (seed 0), 50% FFN sparsity, evaluated on the
held-out tripadvisor_hotels reviews of ``exp_unseen_domain.py``:

1. evaluation length: the same pruned models evaluated with inputs cut at 24 ... 512 tokens, with
   accuracy, positive rate and AUROC of the logit margin (ranking quality, blind to a shifted threshold);
2. special tokens: per-neuron mean activation on [CLS]/[SEP] vs on words, and their share of tokens;
3. bias compensation with means over all real tokens vs over words only (content tokens).

Writes ``benchmarks/results/domain_shift.{csv,md}``. Re-run:

    python benchmarks/exp_domain_shift.py
"""

from __future__ import annotations

import copy

import torch
from exp_unseen_domain import domain_split
from experiments import (
    ATTRIBUTION,
    EVAL_LIMIT,
    Clock,
    bias_compensation,
    data_free_scores,
    data_scores,
    dense_model,
    score_pool,
)
from results_io import markdown_table, write_csv, write_report
from torchmetrics.functional.classification import binary_auroc

from lightning_prune.adapters import PrunableModel
from lightning_prune.pruning import Reconstruction, prune_model, select_neurons
from lightning_prune.tasks import TASKS, Example

SST2 = TASKS["sst2"]
LENGTHS = (24, 64, 128, 512)
SPARSITY = 0.5


def margin_metrics(model: PrunableModel, examples: list[Example], max_length: int) -> dict[str, float]:
    ordered = sorted(examples, key=lambda e: len(e.texts[0]))
    margins, labels = [], []
    with torch.inference_mode(), model.truncating_at(max_length):
        for i in range(0, len(ordered), 32):
            batch = model.collate(ordered[i : i + 32])
            logits = model.outputs(batch)
            margins.append(logits[:, 1] - logits[:, 0])
            labels.append(batch["labels"])
    margin, label = torch.cat(margins), torch.cat(labels)
    return {
        "accuracy": float(((margin > 0).long() == label).float().mean()),
        "positive_rate": float((margin > 0).float().mean()),
        "auroc": float(binary_auroc(margin, label)),
    }


def token_statistics(model: PrunableModel, examples: list[Example]) -> list[list[str]]:
    """Per layer: largest mean activation of any neuron on special tokens vs on words; special-token share."""
    special_ids = torch.tensor(model.tokenizer.all_special_ids)
    rows = []
    batch = model.collate(examples)
    real = batch["attention_mask"].bool()
    special = real & torch.isin(batch["input_ids"], special_ids)
    words = model.content_mask(batch, "encoder", batch["labels"])
    captured = {}
    with (
        torch.no_grad(),
        model.hook_activations(model.ffn_layers(), lambda layer, a: captured.setdefault(layer.name, a)),
    ):
        model.outputs(batch)
    for layer in model.ffn_layers():
        on_special, on_words = (captured[layer.name][mask].mean(0).abs().max() for mask in (special, words))
        rows.append([layer.name, f"{on_special:.2f}", f"{on_words:.2f}", f"{float(special.sum() / real.sum()):.1%}"])
    return rows


def main() -> None:
    clock = Clock()
    dense = dense_model(SST2)
    pool = score_pool(SST2, 0)
    held_out = domain_split("tripadvisor_hotels", EVAL_LIMIT)[1]
    scores = {
        "attribution, uniform (before)": data_scores(
            dense, "attribution", {**ATTRIBUTION, "example_weight": "uniform"}, pool, 128
        ),
        "attribution, tokens (now)": data_scores(dense, "attribution", ATTRIBUTION, pool, 128),
        "activation": data_scores(dense, "activation", {}, pool, 128),
        "random": data_free_scores(dense, "random", {"seed": 0}),
    }
    clock.lap("score")
    models = {"dense": dense}
    for name, method_scores in scores.items():
        models[name] = copy.deepcopy(dense)
        prune_model(models[name], select_neurons(method_scores, SPARSITY))
    rows = []
    for length in LENGTHS:
        for name, model in models.items():
            rows.append(
                {"part": "length", "model": name, "max_length": length, **margin_metrics(model, held_out, length)}
            )
            print(rows[-1], flush=True)
    # Compensation: means over every real token (special tokens included) vs over words only.
    words_only = bias_compensation(dense, pool, 128)
    batches = [dense.collate(pool[i : i + 16]) for i in range(0, 128, 16)]
    all_tokens = Reconstruction("bias", all_token_means(dense, batches))
    for name in ("random", "attribution, tokens (now)"):
        for means_name, means in (("all real tokens", all_tokens), ("words only", words_only)):
            model = copy.deepcopy(dense)
            prune_model(model, select_neurons(scores[name], SPARSITY), means)
            rows.append({"part": f"compensation: {means_name}", "model": name, "max_length": 256,
                         **margin_metrics(model, held_out, 256)})  # fmt: skip
            print(rows[-1], flush=True)
    clock.lap("evaluate")
    write_csv("domain_shift", [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    lines = [
        "# Why the SST-2-pruned model lost accuracy on long reviews (issue 11)",
        "",
        f"SST-2 head, 128 SST-2 training examples (seed 0), {SPARSITY:.0%} FFN sparsity per layer, attribution "
        f"m = {ATTRIBUTION['steps']}; {len(held_out)} held-out tripadvisor_hotels reviews. Cells: accuracy / "
        "positive rate / AUROC of the logit margin (ranking quality, independent of the decision threshold).",
        "",
        "## 1. Evaluation length: the loss appears only once inputs are longer than the scoring sentences",
        "",
    ]
    lines += markdown_table(
        ["model", *(f"cut at {n} tokens" for n in LENGTHS)],
        [[name, *(_cell(rows, "length", name, n) for n in LENGTHS)] for name in models],
    )
    lines += ["", "## 2. Special tokens on the 128 SST-2 scoring examples", ""]
    lines += markdown_table(
        [
            "layer",
            "largest absolute mean activation on [CLS]/[SEP]",
            "largest absolute mean activation on words",
            "special share of tokens",
        ],
        token_statistics(dense, pool[:128]),
    )
    lines += ["", "## 3. Bias compensation: which tokens the means come from (inputs cut at 256)", ""]
    lines += markdown_table(
        ["pruned by", "means over all real tokens", "means over words only"],
        [
            [name, *(_cell(rows, f"compensation: {m}", name, 256) for m in ("all real tokens", "words only"))]
            for name in ("random", "attribution, tokens (now)")
        ],
    )
    write_report("domain_shift", [*lines, "", clock.line()])


def all_token_means(model: PrunableModel, batches: list) -> list[torch.Tensor]:
    """Mean activation over every real token, special tokens included (the naive compensation)."""
    sums = [torch.zeros(layer.size, dtype=torch.float64) for layer in model.ffn_layers()]
    count = 0.0
    index = {layer.name: i for i, layer in enumerate(model.ffn_layers())}
    for batch in batches:
        real = batch["attention_mask"].bool()

        def record(layer, activations, real=real):
            sums[index[layer.name]] += activations[real].double().sum(0)
            return activations

        with torch.no_grad(), model.hook_activations(model.ffn_layers(), record):
            model.outputs(batch)
        count += float(real.sum())
    return [s / count for s in sums]


def _cell(rows: list[dict], part: str, model: str, length: int) -> str:
    (row,) = [r for r in rows if r["part"] == part and r["model"] == model and r["max_length"] == length]
    return f"{row['accuracy']:.3f} / {row['positive_rate']:.2f} / {row['auroc']:.3f}"


if __name__ == "__main__":
    main()
