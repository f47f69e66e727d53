"""Do pruned models run faster? Dense vs pruned multi-task model on this CPU, next to the FLOP ideal.

For FFN sparsity 0.3 / 0.5 / 0.7 / 0.9 (every layer, magnitude scores — speed does not depend on which
neurons go) the script measures, side by side in one process:

- latency at batch 1 over real SST-2 dev sentences (dynamic length), mean ms per sentence;
- throughput at batch 32 (padded per batch), sentences per second;
- parameters and the size of the saved ``model.safetensors`` (float32);
- the FLOP-ideal speedup: dense FLOPs / pruned FLOPs for the same token counts (Q/K/V/O projections,
  attention score and value products, FFN up and down projections), and measured / ideal.

Dense and pruned models are timed in alternating rounds (median of rounds) so drift hits both alike.
Writes ``benchmarks/results/inference_speed.csv`` and ``.md``. Re-run:

    python benchmarks/bench_inference.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from experiments import GLUE, MODEL
from results_io import write_csv, write_report

from lightning_prune import load_model
from lightning_prune.adapters import PrunableModel
from lightning_prune.export import save_model_folder
from lightning_prune.pruning import prune_model, select_neurons
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import TASKS, load_split

SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def encoder_flops(model: PrunableModel, token_counts: list[tuple[int, int]]) -> float:
    """FLOPs of the encoder for batches given as (rows, padded length): 2 x multiply-adds."""
    config = model.weights_module.config
    hidden = config.hidden_size
    ffn = sum(layer.size for layer in model.ffn_layers())
    layers = len(model.ffn_layers())
    total = 0.0
    for rows, length in token_counts:
        tokens = rows * length
        projections = layers * 4 * tokens * hidden * hidden
        attention = layers * 2 * rows * length * length * hidden
        total += 2 * (projections + attention + 2 * tokens * hidden * ffn)
    return total


def time_batches(model: PrunableModel, batches: list[dict]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model.predict(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(GLUE))
    parser.add_argument("--latency-examples", type=int, default=64)
    parser.add_argument("--throughput-examples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense = load_model(MODEL, TASKS["sst2"])
    examples = load_split(TASKS["sst2"], "validation", args.data_dir)
    single = [dense.collate([e]) for e in examples[: args.latency_examples]]
    pool = examples[: args.throughput_examples]
    batched = [dense.collate(pool[i : i + 32]) for i in range(0, len(pool), 32)]
    scores = create_scorer("magnitude")(dense, None)
    models = {0.0: dense}
    for sparsity in SPARSITIES:
        models[sparsity] = copy.deepcopy(dense)
        prune_model(models[sparsity], select_neurons(scores, sparsity))
    for model in models.values():  # warm-up
        time_batches(model, single[:8] + batched[:1])

    latency = {s: [] for s in models}
    throughput = {s: [] for s in models}
    for _ in range(args.rounds):
        for sparsity, model in models.items():
            latency[sparsity].append(1000 * time_batches(model, single) / len(single))
            throughput[sparsity].append(len(pool) / time_batches(model, batched))

    single_tokens = [tuple(b["input_ids"].shape) for b in single]
    batch_tokens = [tuple(b["input_ids"].shape) for b in batched]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity, model in models.items():
            folder = Path(tmp) / str(sparsity)
            folder.mkdir()
            save_model_folder(model, folder)
            ms = statistics.median(latency[sparsity])
            per_second = statistics.median(throughput[sparsity])
            ideal_latency = encoder_flops(dense, single_tokens) / encoder_flops(model, single_tokens)
            ideal_throughput = encoder_flops(dense, batch_tokens) / encoder_flops(model, batch_tokens)
            speed_latency = statistics.median(latency[0.0]) / ms
            speed_throughput = per_second / statistics.median(throughput[0.0])
            rows.append(
                {
                    "ffn_sparsity": sparsity,
                    "parameters": model.num_parameters(),
                    "file_mib": (folder / "model.safetensors").stat().st_size / 2**20,
                    "latency_ms_batch1": ms,
                    "latency_speedup": speed_latency,
                    "latency_flop_ideal": ideal_latency,
                    "latency_of_ideal": speed_latency / ideal_latency,
                    "throughput_per_s_batch32": per_second,
                    "throughput_speedup": speed_throughput,
                    "throughput_flop_ideal": ideal_throughput,
                    "throughput_of_ideal": speed_throughput / ideal_throughput,
                }
            )
    write_csv("inference_speed", rows)
    lines = [
        "# Inference speed: dense vs pruned",
        "",
        f"multi-task all-MiniLM-L6-v2 + SST-2 head, {args.threads} CPU threads, torch {torch.__version__}, median of "
        f"{args.rounds} alternating rounds; latency over {len(single)} dev sentences one by one, throughput over "
        f"{len(pool)} in batches of 32. 'of ideal' = measured speedup / FLOP-ideal speedup."
        "",
        "",
        "| FFN sparsity | parameters | file MiB | latency ms (b=1) | speedup | FLOP ideal | of ideal "
        "| throughput/s (b=32) | speedup | FLOP ideal | of ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['ffn_sparsity']:.1f} | {row['parameters']:,} | {row['file_mib']:.1f} | "
            f"{row['latency_ms_batch1']:.2f} | {row['latency_speedup']:.2f} | {row['latency_flop_ideal']:.2f} | "
            f"{row['latency_of_ideal']:.0%} | "
            f"{row['throughput_per_s_batch32']:.1f} | {row['throughput_speedup']:.2f} | "
            f"{row['throughput_flop_ideal']:.2f} | {row['throughput_of_ideal']:.0%} |"
        )
    write_report("inference_speed", lines)


if __name__ == "__main__":
    main()
