"""Attribution speed and memory: ours (exact, joint) against captum and against plain forward+backward.

Every method scores the same SST-2 training examples on the offline multi-task model (all-MiniLM-L6-v2,
6 FFN layers of 1536 neurons), with the same steps, zero baseline and target (probability of the gold
label). Each method runs in its own process so that its peak memory (max RSS) is its own:

- ``floor``: one forward and backward per example (no attribution at all): the speed limit;
- ``captum-padded``: captum's ``IntegratedGradients`` on each FFN layer's activations (riemann_middle,
  zero baseline, ``internal_batch_size`` = batch x steps_per_pass), inputs padded to 128 tokens as most
  attribution scripts tokenize (``padding="max_length"``) — how a user would do it today;
- ``captum``: the same with our dynamic padding (per batch), isolating the attribution engine;
- ``exact-plain``: ours, exact mode, same batches as captum, no prefix reuse;
- ``exact``: ours, exact mode, prefix reuse (blocks before the scaled layer run once);
- ``exact-bucketed``: as ``exact``, with examples sorted by length before batching (what fit-free does);
- ``joint``: ours, joint mode (all layers on one path: steps rows per example in all).

Then prunes with the exact and the joint scores and evaluates SST-2 dev accuracy: what joint mode costs.
Writes ``benchmarks/results/attribution_speed.csv``, ``attribution_quality.csv`` and ``attribution_speed.md``.
Re-run:

    python benchmarks/bench_attribution.py --examples 48 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from experiments import GLUE, MODEL
from results_io import write_csv, write_report
from safetensors.torch import load_file, save_file

from lightning_prune import load_model
from lightning_prune.data import subsample
from lightning_prune.scorers.attribution import AttributionScorer
from lightning_prune.tasks import TASKS, load_split

METHODS = ("floor", "captum-padded", "captum", "exact-plain", "exact", "exact-bucketed", "joint")
PADDED_LENGTH = 128


def pad_to(batch: dict, length: int) -> dict:
    """Right-pad token tensors to ``length`` (pad id and mask 0), as fixed-length tokenization does."""
    padded = {}
    for key, value in batch.items():
        grow = length - value.shape[1] if value.dim() == 2 else 0
        padded[key] = torch.nn.functional.pad(value, (0, grow)) if grow > 0 else value
    return padded


def batches(model, examples, batch_size: int, bucketed: bool, padded: bool):
    ordered = sorted(examples, key=lambda e: len(e.texts[0])) if bucketed else examples
    made = [model.collate(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)]
    return [pad_to(b, PADDED_LENGTH) for b in made] if padded else made


def captum_per_example(model, batch, layer, steps: int, steps_per_pass: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    clean = {}

    def record(_layer, activations):
        clean["a"] = activations.detach()
        return activations

    with torch.no_grad(), model.hook_activations([layer], record):
        model.target_log_prob(batch, batch["labels"])
    names = [k for k in batch if k != "index"]

    def forward(activation, *tensors):
        rows = dict(zip(names, tensors, strict=True))
        with model.hook_activations([layer], lambda _layer, _a: activation):
            return model.target_log_prob(rows, rows["labels"]).exp()

    ig = IntegratedGradients(forward, multiply_by_inputs=True)
    attributions = ig.attribute(
        clean["a"],
        baselines=torch.zeros_like(clean["a"]),
        additional_forward_args=tuple(batch[n] for n in names),
        n_steps=steps,
        method="riemann_middle",
        internal_batch_size=batch["labels"].shape[0] * steps_per_pass,
    )
    return attributions.sum(dim=1)


def floor_pass(model, batch) -> None:
    leaves = []

    def leaf(_layer, activations):
        leaves.append(activations.detach().requires_grad_(True))
        return leaves[-1]

    with torch.enable_grad(), model.hook_activations(model.ffn_layers(), leaf):
        probability = model.target_log_prob(batch, batch["labels"]).exp()
        torch.autograd.grad(probability.sum(), leaves)


def run_method(method: str, args) -> dict:
    torch.set_num_threads(args.threads)
    model = load_model(MODEL, TASKS["sst2"])
    examples = subsample(load_split(TASKS["sst2"], "train", args.data_dir), args.examples, 0, "examples")
    work = batches(model, examples, args.batch_size, method == "exact-bucketed", method == "captum-padded")
    layers = model.ffn_layers()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    start = time.perf_counter()
    for batch in work:
        if method == "floor":
            floor_pass(model, batch)
        elif method.startswith("captum"):
            for i, layer in enumerate(layers):
                per_layer[i].append(captum_per_example(model, batch, layer, args.steps, args.steps_per_pass))
        elif method == "joint":
            scorer = AttributionScorer(args.steps, steps_per_pass=args.steps_per_pass, mode="joint")
            for i, attributions in enumerate(scorer.joint_per_example(model, batch)):
                per_layer[i].append(attributions)
        else:
            scorer = AttributionScorer(
                args.steps, steps_per_pass=args.steps_per_pass, reuse_prefix=method != "exact-plain"
            )
            block_inputs = model.block_inputs(batch) if scorer.reuse_prefix else None
            for i, layer in enumerate(layers):
                per_layer[i].append(scorer.per_example(model, batch, layer, block_inputs))
    seconds = time.perf_counter() - start
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    if method != "floor" and args.save:
        order = torch.cat([b["index"] for b in work]).argsort()
        save_file({f"layer{i}": torch.cat(chunks)[order].contiguous() for i, chunks in enumerate(per_layer)}, args.save)
    return {
        "method": method,
        "seconds": seconds,
        "examples_per_second": len(examples) / seconds,
        "peak_extra_mb": peak_mb,
    }


def pruning_quality(saved: dict, args) -> list[dict]:
    """SST-2 dev accuracy after pruning with exact vs joint scores (abs_sum over the benchmark's examples)."""
    from lightning_prune.pruning import keep_neurons, prune_model
    from lightning_prune.tasks import build_metrics, metric_inputs

    torch.set_num_threads(args.threads)
    spec = TASKS["sst2"]
    dense = load_model(MODEL, spec)
    dev = load_split(spec, "validation", args.data_dir)
    dev_batches = [dense.collate(dev[i : i + 64]) for i in range(0, len(dev), 64)]

    def accuracy(model) -> float:
        metrics = build_metrics(spec)
        with torch.inference_mode():
            for batch in dev_batches:
                metrics.update(*metric_inputs(spec, model.predict(batch), batch["labels"]))
        return float(metrics.compute()["accuracy"])

    rows = [{"scores": "dense", "ffn_sparsity": 0.0, "sst2_dev_accuracy": accuracy(dense)}]
    for method in ("exact", "joint"):
        scores = [saved[method][f"layer{i}"].abs().sum(0) for i in range(len(dense.ffn_layers()))]
        for sparsity in (0.3, 0.5, 0.7):
            model = load_model(MODEL, spec)
            prune_model(model, keep_neurons(scores, sparsity))
            rows.append({"scores": method, "ffn_sparsity": sparsity, "sst2_dev_accuracy": accuracy(model)})
    return rows


def max_relative_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(GLUE))
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--steps-per-pass", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", choices=METHODS, help="internal: run one method in this process")
    parser.add_argument("--save", help="internal: where the method saves its attributions")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, args)))
        return

    rows, saved = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            save = str(Path(tmp) / f"{method}.safetensors")
            command = [sys.executable, __file__, "--method", method, "--save", save]
            for flag in ("data_dir", "examples", "batch_size", "steps", "steps_per_pass", "threads"):
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            result = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            rows.append(result)
            if method != "floor":
                saved[method] = load_file(save)
            print(json.dumps(result), flush=True)
    captum = next(r for r in rows if r["method"] == "captum-padded")
    for row in rows:
        row["speed_vs_captum"] = row["examples_per_second"] / captum["examples_per_second"]
        row["max_rel_diff_vs_captum"] = (
            max_relative_difference(saved[row["method"]], saved["captum-padded"]) if row["method"] in saved else None
        )
    write_csv("attribution_speed", rows)
    setting = (
        f"multi-task all-MiniLM-L6-v2 (6 x 1536 FFN neurons), {args.examples} SST-2 train examples, batch "
        f"{args.batch_size}, {args.steps} steps ({args.steps_per_pass} per pass), {args.threads} CPU threads, "
        f"torch {torch.__version__}"
    )
    lines = [
        "# Attribution speed",
        "",
        setting,
        "",
        "Ratios are against captum-padded. Joint mode is a different attribution (all layers on one path), so",
        "its difference from captum is large by design; its pruning quality is in the table below.",
        "",
        "| method | examples/s | x captum | peak extra memory (MB) | max rel. diff vs captum |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        diff = "—" if row["max_rel_diff_vs_captum"] is None else f"{row['max_rel_diff_vs_captum']:.1e}"
        lines.append(
            f"| {row['method']} | {row['examples_per_second']:.2f} | {row['speed_vs_captum']:.2f} | "
            f"{row['peak_extra_mb']:.0f} | {diff} |"
        )
    quality = pruning_quality(saved, args)
    lines += [
        "",
        "## What joint mode costs in pruning quality",
        "",
        f"SST-2 dev accuracy (872 examples) after pruning every layer with scores from the same {args.examples} "
        "examples (abs_sum).",
        "",
        "| scores | FFN sparsity | SST-2 dev accuracy |",
        "|---|---|---|",
    ]
    lines += [f"| {q['scores']} | {q['ffn_sparsity']:.1f} | {q['sst2_dev_accuracy']:.4f} |" for q in quality]
    write_csv("attribution_quality", quality)
    write_report("attribution_speed", lines)


if __name__ == "__main__":
    main()
