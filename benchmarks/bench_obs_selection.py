"""What ``--keep_rule obs`` costs: the greedy structured-OBS removal order (``pruning.obs.removal_order``, the
function fit-free's sweep calls) per FFN layer of a multi-task decoder LM (``--model``), in seconds and memory,
for the removals 50% and 70% sparsity need.

The order's cost depends on the layer's shapes, not on the statistics' values: each removal updates the down
projection [d_model, n] and the precision [n, n] by a rank-one term (float64, on the CPU). The precision here is
the inverse of a second moment of random activations (4 n samples, damped as the refit damps); the weights are the
model's own. Memory is what the function holds: the two float64 copies and its own vectors. Timed on
``--layers`` layers (median) and multiplied by the model's layer count. Compare with the scoring's seconds in the
sweeps' results (``seconds.score``; ``seconds.select`` in a fit-free run's metrics.json is this stage).
Writes ``benchmarks/results/obs_selection.{csv,md}``. Re-run (alone: timings):

    python benchmarks/bench_obs_selection.py --model multitask gemma3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results_io import markdown_table, write_csv, write_report
from runner import MULTITASK_GEMMA3, MULTITASK_LM

from lightning_prune import load_model
from lightning_prune.pruning.obs import removal_order
from lightning_prune.tasks import TASKS

MODELS = {"multitask": MULTITASK_LM, "gemma3": MULTITASK_GEMMA3}
SPARSITIES = (0.5, 0.7)


def random_precision(n: int, damping: float = 0.01) -> torch.Tensor:
    """A damped float64 precision of ``n`` correlated activations (the shape the refit's statistics have)."""
    mixing = torch.randn(n, n, dtype=torch.float64) / n**0.5
    samples = torch.randn(4 * n, n, dtype=torch.float64) @ mixing
    moment = samples.T @ samples / len(samples)
    return torch.linalg.inv(moment + damping * moment.diagonal().mean() * torch.eye(n, dtype=torch.float64))


def measure(name: str, layers: int) -> list[dict]:
    options = MODELS[name]
    model = load_model(options["path"], TASKS["sst2"], adapter=options["adapter"], max_length=options["max_length"])
    ffn = model.ffn_layers()
    rows = []
    for sparsity in SPARSITIES:
        seconds = []
        for layer in ffn[:layers]:
            weight, n = layer.down_proj.weight, layer.size
            precision = random_precision(n)
            start = time.perf_counter()
            removal_order(weight, precision, torch.ones(n), round(sparsity * n))
            seconds.append(time.perf_counter() - start)
        width, out = ffn[0].size, ffn[0].down_proj.weight.shape[0]
        held = 8 * (width * width + out * width)  # float64 copies of the precision and the weight
        rows.append({
            "model": name, "layers": len(ffn), "width": width, "d_model": out, "sparsity": sparsity,
            "removals": round(sparsity * width), "seconds_per_layer": round(statistics.median(seconds), 2),
            "seconds_model": round(statistics.median(seconds) * len(ffn), 1), "memory_mib": round(held / 2**20, 1),
            "threads": torch.get_num_threads(),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", choices=sorted(MODELS), default=["multitask"])
    parser.add_argument("--layers", type=int, default=3, help="layers timed (median), of the model's first")
    args = parser.parse_args()
    rows = [row for name in args.model for row in measure(name, args.layers)]
    write_csv("obs_selection", rows)
    header = ["model", "FFN layers × width", "sparsity", "removals per layer", "s per layer", "s per model", "MiB"]
    table = [
        [r["model"], f"{r['layers']} × {r['width']}", f"{r['sparsity']:g}", str(r["removals"]),
         f"{r['seconds_per_layer']:.2f}", f"{r['seconds_model']:.1f}", f"{r['memory_mib']:.1f}"]
        for r in rows
    ]  # fmt: skip

    write_report(
        "obs_selection",
        [
            "# What `--keep_rule obs` costs: the greedy structured-OBS removal order per FFN layer",
            "",
            f"`benchmarks/bench_obs_selection.py`: `pruning.obs.removal_order` on the model's own down projections "
            f"(precision of random activations: the cost depends on shapes only), float64 on the CPU, "
            f"{rows[0]['threads']} torch thread(s), median of {args.layers} layers, times the layer count. Memory: "
            "the float64 copies of the precision and the down projection the function holds (one layer at a time).",
            "",
            *markdown_table(header, table),
        ],
    )


if __name__ == "__main__":
    main()
