"""Distributed score collection: 1 vs 2 processes give the same scores; how long each takes.

Runs the real command twice on the multi-task model — ``lightning-prune fit-free`` with
``--trainer.devices 1`` and with ``--trainer.devices 2 --trainer.strategy ddp`` (CPU: gloo) — with a fresh
score cache each, and compares the saved scores and the pruning plans. The dense evaluation runs first,
so process start-up is not counted in the scoring seconds (it is in the wall seconds). The same command runs NCCL on
GPUs: ``--trainer.accelerator gpu --trainer.devices N --trainer.strategy ddp``.

Writes ``benchmarks/results/ddp.csv`` and ``.md``. Re-run:

    python benchmarks/bench_ddp.py --examples 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_io import write_csv, write_report
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in args.devices:
            out = Path(tmp) / f"devices{devices}"
            command = [
                sys.executable, "-m", "lightning_prune", "fit-free",
                "--config", str(ROOT / "configs" / "quickstart.yaml"),
                "--data.data_dir", args.data_dir, "--data.num_examples", str(args.examples),
                "--data.eval_examples", "128", "--scorer_options", json.dumps({"steps": args.steps}),
                "--cache_dir", str(Path(tmp) / f"cache{devices}"),
                "--output_dir", str(out),
                "--trainer.accelerator", args.accelerator, "--trainer.devices", str(devices),
                "--trainer.strategy", "ddp" if devices > 1 else "auto", "--trainer.enable_progress_bar", "false",
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True, env={**os.environ})
            wall = time.perf_counter() - start
            metrics = json.loads((out / "metrics.json").read_text())
            outputs[devices] = out
            rows.append(
                {
                    "devices": devices,
                    "wall_seconds": wall,
                    "score_seconds": metrics["seconds"]["score"],
                    "examples_scored": metrics["examples_scored"],
                    "pruned_accuracy": metrics["pruned_metrics"]["accuracy"],
                }
            )
        base = load_file(str(outputs[args.devices[0]] / "scores.safetensors"))
        base_plan = (outputs[args.devices[0]] / "model" / "pruning_plan.json").read_text()
        for row in rows:
            other = load_file(str(outputs[row["devices"]] / "scores.safetensors"))
            row["max_rel_diff_scores"] = max(
                float((other[k] - base[k]).abs().max() / base[k].abs().max()) for k in base
            )
            row["same_pruning_plan"] = (
                outputs[row["devices"]] / "model" / "pruning_plan.json"
            ).read_text() == base_plan
            row["score_speedup"] = rows[0]["score_seconds"] / row["score_seconds"]
    write_csv("ddp", rows)
    lines = [
        "# Distributed scoring: one vs several processes",
        "",
        f"fit-free on the multi-task model, attribution ({args.steps} steps) over {args.examples} SST-2 examples, "
        f"accelerator {args.accelerator} ({os.cpu_count()} cores), torch {torch.__version__}.",
        "",
        "| processes | wall s | scoring s | scoring speedup | examples scored | max rel. diff of scores | same plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['devices']} | {row['wall_seconds']:.1f} | {row['score_seconds']:.1f} | "
            f"{row['score_speedup']:.2f} | "
            f"{row['examples_scored']} | {row['max_rel_diff_scores']:.1e} | {row['same_pruning_plan']} |"
        )
    write_report("ddp", lines)


if __name__ == "__main__":
    main()
