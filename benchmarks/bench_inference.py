"""Do pruned models run faster? Dense vs pruned multi-task model on this CPU, next to the FLOP ideal.

Two families of pruned models of the multi-task MiniLM (SST-2), side by side in one process:

- FFN sparsity 0.3 / 0.5 / 0.7 / 0.9 (every layer, magnitude scores: speed does not depend on which neurons go);
- ``--target_speedup`` 1.3 / 1.6 / 2.0, heads and FFN neurons together (``heads+ffn``) and FFN neurons only
  (``ffn``), chosen as fit-free chooses them (its checks, attribution or Fisher scores, ``selections``; fit-free's
  default layer scope and data: 128 SST-2 training sentences).

For each the script measures latency at batch 1 over real SST-2 dev sentences (dynamic length, mean ms per
sentence), throughput at batch 32 (padded per batch, sentences per second), parameters, the saved
``model.safetensors`` size, and the FLOP-ideal speedup: dense / pruned FLOPs counted by
``torch.utils.flop_counter`` (``pruning.budget.count_flops``, fit-free's own count) on the same batches.
Models are timed in alternating rounds (median of rounds) so drift hits all alike.
Writes ``benchmarks/results/inference_speed.csv`` and ``.md``. Re-run (on an otherwise idle machine):

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
from experiments import ATTRIBUTION, GLUE, MODEL
from results_io import write_csv, write_report
from runner import glue_data, trainer

from lightning_prune.adapters import PrunableModel
from lightning_prune.data import TaskDataModule
from lightning_prune.errors import UsageError
from lightning_prune.export import save_model_folder
from lightning_prune.modules import TaskModel
from lightning_prune.pipeline import FitFreeSettings, score_units, set_up_run
from lightning_prune.pipeline.sweep import plan_cuts
from lightning_prune.pruning import keep_neurons, prune_model
from lightning_prune.pruning.budget import count_flops
from lightning_prune.scorers import create_scorer
from lightning_prune.tasks import TASKS, load_split

SPARSITIES = (0.3, 0.5, 0.7, 0.9)
TARGETS = (1.3, 1.6, 2.0)
SCORERS = ("attribution", "fisher")  # their selections differ in how many heads go


def budget_models(targets: tuple[float, ...], scorers: tuple[str, ...]) -> dict[str, PrunableModel]:
    """The models fit-free writes for each FLOP target and scorer, with and without heads (pruned, not repaired:
    the repair changes weights, not shapes)."""
    model = TaskModel(path=str(MODEL), task="sst2")
    datamodule = TaskDataModule(**glue_data("sst2", num_examples=128, batch_size=16, eval_examples=300, eval_seed=0))
    runner = trainer()
    models = {}
    for scorer_name in scorers:
        for heads in (True, False):
            for target in targets:
                settings = FitFreeSettings(
                    scorer=scorer_name, scorer_options=dict(ATTRIBUTION) if scorer_name == "attribution" else None,
                    target_speedup=target, heads=heads, output_dir="runs/benchmarks/inference_speed",
                )  # fmt: skip
                try:
                    setup = set_up_run(runner, model, datamodule, settings)
                except UsageError as error:  # unreachable with FFN neurons only
                    print(f"target {target} heads={heads}: {error}")
                    continue
                scores = score_units(runner, model, datamodule, setup, None)
                [cut] = plan_cuts(model.net, setup, scores)
                pruned = copy.deepcopy(model.net)
                prune_model(pruned, cut.kept, None, cut.kept_heads)
                models[f"{scorer_name} {'heads+ffn' if heads else 'ffn'} {target:g}x"] = pruned
    return models


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
    budgets = budget_models(TARGETS, SCORERS)
    dense = TaskModel(path=str(MODEL), task="sst2").net
    examples = load_split(TASKS["sst2"], "validation", args.data_dir)
    single = [dense.collate([e]) for e in examples[: args.latency_examples]]
    pool = examples[: args.throughput_examples]
    batched = [dense.collate(pool[i : i + 32]) for i in range(0, len(pool), 32)]
    scores = create_scorer("magnitude")(dense, None)
    models: dict[str, PrunableModel] = {"dense": dense}
    for sparsity in SPARSITIES:
        models[f"ffn sparsity {sparsity:g}"] = copy.deepcopy(dense)
        prune_model(models[f"ffn sparsity {sparsity:g}"], keep_neurons(scores, sparsity))
    models.update(budgets)
    for model in models.values():  # warm-up
        time_batches(model, single[:8] + batched[:1])

    latency = {name: [] for name in models}
    throughput = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            latency[name].append(1000 * time_batches(model, single) / len(single))
            throughput[name].append(len(pool) / time_batches(model, batched))

    dense_single, dense_batched = count_flops(dense, single), count_flops(dense, batched)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            folder = Path(tmp) / name.replace(" ", "_")
            folder.mkdir()
            layout = save_model_folder(model, folder)
            ms = statistics.median(latency[name])
            per_second = statistics.median(throughput[name])
            ideal_latency = dense_single / count_flops(model, single)
            ideal_throughput = dense_batched / count_flops(model, batched)
            speed_latency = statistics.median(latency["dense"]) / ms
            speed_throughput = per_second / statistics.median(throughput["dense"])
            heads = sum(layer.num_heads for layer in model.attention_layers())
            rows.append(
                {
                    "model": name,
                    "ffn_neurons": sum(layer.size for layer in model.ffn_layers()),
                    "heads": heads,
                    "parameters": model.num_parameters(),
                    "file_mib": (folder / layout["weights_file"]).stat().st_size / 2**20,
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
    report(rows, args, len(single), len(pool))


def report(rows: list[dict], args: argparse.Namespace, latency_examples: int, throughput_examples: int) -> None:
    lines = [
        "# Inference speed: dense vs pruned",
        "",
        f"multi-task all-MiniLM-L6-v2 + SST-2 head, {args.threads} CPU threads, torch {torch.__version__}, median of "
        f"{args.rounds} alternating rounds; latency over {latency_examples} dev sentences one by one, throughput over "
        f"{throughput_examples} in batches of 32. FLOP ideal: dense / pruned FLOPs counted by "
        "`torch.utils.flop_counter` on the same batches; 'of ideal' = measured speedup / FLOP-ideal speedup. "
        "`fisher heads+ffn 1.6x`: fit-free `--scorer fisher --target_speedup 1.6` (layer scope); `ffn`: the same "
        "with `--heads false`.",
        "",
        "| model | FFN neurons | heads | parameters | file MiB | latency ms (b=1) | speedup | FLOP ideal | of ideal "
        "| throughput/s (b=32) | speedup | FLOP ideal | of ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['ffn_neurons']:,} | {row['heads']} | {row['parameters']:,} | "
            f"{row['file_mib']:.1f} | {row['latency_ms_batch1']:.2f} | {row['latency_speedup']:.2f} | "
            f"{row['latency_flop_ideal']:.2f} | {row['latency_of_ideal']:.0%} | "
            f"{row['throughput_per_s_batch32']:.1f} | {row['throughput_speedup']:.2f} | "
            f"{row['throughput_flop_ideal']:.2f} | {row['throughput_of_ideal']:.0%} |"
        )
    write_report("inference_speed", lines)


if __name__ == "__main__":
    main()
