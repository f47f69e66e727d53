"""A sparsity sweep in one run against one fit-free run per sparsity, on the quickstart (SST-2, the
committed multi-task model, 64 attribution examples, m = 20).

- sweep: ``--sparsity 0.1,0.3,0.5,0.7,0.9`` in one run, with an empty score cache: it evaluates the
  dense model once, scores once, then prunes and evaluates each sparsity;
- separate: five runs with another empty score cache, 0.5 first (it scores: this is the quickstart
  itself), the four others reuse its cached scores — the fairest use of separate runs; each evaluates
  the dense model again;
- choice: the sweep again with ``--max_drop 0.01`` (scores cached by the sweep): it also evaluates the
  dense model and every sparsity on the 500 selection examples and picks one.

Also measured: dense vs pruned ``model.safetensors`` sizes, and the pruned model loaded with plain
``transformers.AutoModel`` against ``load_pruned_model`` (max abs difference of the encoder outputs on 64
SST-2 dev sentences). Each run is a fresh ``lightning-prune`` process (OMP_NUM_THREADS=1).
Writes ``benchmarks/results/sweep.csv``, ``sweep.md``, ``sweep_runs.json`` and ``quickstart_sweep.png``.
Re-run (``--report-only`` rebuilds the report from ``sweep_runs.json``; ``--dev-halves`` runs the sweep
choosing on the first half of SST-2 dev and reporting on the second, see ``dev_halves``):

    python benchmarks/bench_sweep.py
    python benchmarks/bench_sweep.py --dev-halves
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from experiments import GLUE, MODEL, ROOT
from results_io import RESULTS, markdown_table, write_csv, write_report

from lightning_prune import load_pruned_model
from lightning_prune.tasks import get_task, load_split

SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
CONFIG = ROOT / "configs" / "quickstart.yaml"
RAW = RESULTS / "sweep_runs.json"  # every run's metrics.json and wall time; ``--report-only`` rebuilds from it


def fit_free(out: Path, cache: Path, sparsity: str, *extra: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "lightning_prune", "fit-free", "--config", str(CONFIG), "--sparsity", sparsity]
    command += ["--output_dir", str(out), "--cache_dir", str(cache), "--trainer.enable_progress_bar", "false", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    return wall, json.loads((out / "metrics.json").read_text())


def plain_loading_difference(folder: Path) -> float:
    from transformers import AutoModel

    ours = load_pruned_model(str(folder), "sst2")
    plain = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    batch = ours.collate(load_split(get_task("sst2"), "validation", GLUE)[:64])
    inputs = {name: batch[name] for name in ours.input_names}
    with torch.no_grad():
        return float((plain(**inputs).last_hidden_state - ours.weights_module(**inputs).last_hidden_state).abs().max())


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        swept = ",".join(map(str, SPARSITIES))
        sweep_wall, sweep = fit_free(work / "sweep", work / "cache-sweep", swept)
        separate = {}
        for sparsity in (0.5, *(s for s in SPARSITIES if s != 0.5)):
            separate[sparsity] = fit_free(work / f"single-{sparsity}", work / "cache-single", str(sparsity))
        choice_wall, choice = fit_free(work / "choice", work / "cache-sweep", swept, "--max_drop", "0.01")
        shutil.copyfile(work / "choice" / "sweep.png", RESULTS / "quickstart_sweep.png")
        quickstart = work / "single-0.5" / "model"
        max_difference = plain_loading_difference(quickstart)
        dense_bytes = (MODEL / "model.safetensors").stat().st_size
        pruned_bytes = (quickstart / "model.safetensors").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = {
        "sweep_wall": sweep_wall,
        "sweep": sweep,
        "choice_wall": choice_wall,
        "choice": choice,
        "separate": {str(s): list(run) for s, run in separate.items()},
        "max_difference": max_difference,
        "dense_bytes": dense_bytes,
        "pruned_bytes": pruned_bytes,
    }
    RAW.write_text(json.dumps(raw, indent=1))
    report(raw)


def write_timings(sweep_wall: float, sweep: dict, choice_wall: float, choice: dict, separate: dict) -> None:
    """benchmarks/results/sweep.csv: wall time and stage seconds of each run."""
    rows = [
        {
            "run": "sweep (5 sparsities)",
            "sparsity": ",".join(map(str, SPARSITIES)),
            "wall_s": round(sweep_wall, 1),
            "scores_from_cache": sweep["scores_from_cache"],
            **{f"{k}_s": round(v, 1) for k, v in sweep["seconds"].items()},
        }
    ]
    rows.append(
        {
            "run": "sweep with --max_drop 0.01 (scores cached)",
            "sparsity": ",".join(map(str, SPARSITIES)),
            "wall_s": round(choice_wall, 1),
            "scores_from_cache": choice["scores_from_cache"],
            **{f"{k}_s": round(v, 1) for k, v in choice["seconds"].items()},
        }
    )
    for sparsity, (wall, metrics) in separate.items():
        rows.append(
            {
                "run": "separate",
                "sparsity": str(sparsity),
                "wall_s": round(wall, 1),
                "scores_from_cache": metrics["scores_from_cache"],
                **{f"{k}_s": round(v, 1) for k, v in metrics["seconds"].items()},
            }
        )
    columns = sorted({key for row in rows for key in row}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    write_csv("sweep", [{column: row.get(column, "") for column in columns} for row in rows])


def choice_rows(sweep: dict, choice: dict, metric: str) -> list[list[str]]:
    """The dense model and every swept point: parameters, the metric on dev and on selection, within the drop."""
    selection = choice["selection"]
    points = [
        [
            f"{p['sparsity']:g}",
            f"{p['parameters']:,}",
            f"{p['metrics'][metric]:.4f}",
            f"{p['selection_metrics'][metric]:.4f}",
            "yes" if p["within_drop"] else "no",
        ]
        for p in choice["sweep"]
    ]
    dense_row = [
        "dense",
        f"{sweep['parameters']['dense']:,}",
        f"{sweep['dense_metrics'][metric]:.4f}",
        f"{selection['dense_metrics'][metric]:.4f}",
        "",
    ]
    return [dense_row, *points]


def report(raw: dict) -> None:
    sweep_wall, sweep = raw["sweep_wall"], raw["sweep"]
    choice_wall, choice = raw["choice_wall"], raw["choice"]
    separate = {float(s): tuple(run) for s, run in raw["separate"].items()}
    max_difference, dense_bytes, pruned_bytes = raw["max_difference"], raw["dense_bytes"], raw["pruned_bytes"]
    metric = sweep["primary_metric"]
    write_timings(sweep_wall, sweep, choice_wall, choice, separate)
    separate_wall = sum(wall for wall, _ in separate.values())
    by_sparsity = {point["sparsity"]: point for point in sweep["sweep"]}
    same = all(by_sparsity[s]["metrics"] == m["pruned_metrics"] for s, (_, m) in separate.items())
    same = same and all(p["metrics"] == by_sparsity[p["sparsity"]]["metrics"] for p in choice["sweep"])
    selection = choice["selection"]
    chosen = selection["chosen_sparsity"]
    stage = " + ".join(f"{k} {v:.0f}" for k, v in sweep["seconds"].items())
    quick_wall, quick = separate[0.5]
    startup = sum(wall - sum(m["seconds"].values()) for wall, m in separate.values()) / len(separate)
    lines = [
        "# Sparsity sweep vs separate runs (quickstart: SST-2, 64 attribution examples, m = 20)",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end), one thread per run; `python benchmarks/bench_sweep.py`.",
        "",
        *markdown_table(
            ["run", "wall time", "scores", "wall time without scoring"],
            [
                [
                    f"one sweep run over {len(SPARSITIES)} sparsities",
                    f"{sweep_wall:.0f} s",
                    "computed (empty cache)",
                    f"{sweep_wall - sweep['seconds']['score']:.0f} s",
                ],
                [
                    f"{len(separate)} separate runs",
                    f"{separate_wall:.0f} s",
                    "computed by the first (0.5), cached for the other four",
                    f"{separate_wall - sum(m['seconds']['score'] for _, m in separate.values()):.0f} s",
                ],
            ],
        ),
        "",
        "Both do the same scoring once; what the sweep saves is four dense evaluations and four process "
        f"start-ups with model loading ({startup:.0f} s each here on average). On this shared machine the same "
        f"stage takes very different times from run to run (scoring: {quick['seconds']['score']:.0f} s in the "
        f"first separate run, {sweep['seconds']['score']:.0f} s in the sweep), so compare the wall time without "
        "scoring.",
        "",
        f"Sweep stages (s): {stage}. Every sweep point equals the separate run at that sparsity: {same}. "
        f"The `--max_drop` run (scores cached) took {choice_wall:.0f} s: "
        + " + ".join(f"{k} {v:.0f}" for k, v in choice["seconds"].items())
        + ".",
        "",
        f"Choice with `--max_drop 0.01` on {selection['examples']} selection examples ({selection['source']}): "
        + (f"**sparsity {chosen:g}**" if chosen is not None else "**none qualifies**")
        + f"; dense {metric} on selection {selection['dense_metrics'][metric]:.4f}"
        + (f" -> {selection['chosen_metrics'][metric]:.4f}" if chosen is not None else "")
        + f", on the reported evaluation (SST-2 dev, 872) {sweep['dense_metrics'][metric]:.4f}"
        + (f" -> {choice['pruned_metrics'][metric]:.4f}" if chosen is not None else "")
        + ".",
        "",
        *markdown_table(
            ["FFN sparsity", "parameters", f"{metric} (dev)", f"{metric} (selection)", "within 0.01"],
            choice_rows(sweep, choice, metric),
        ),
        "",
        f"Quickstart (the separate 0.5 run, cold cache): {quick_wall:.0f} s wall time; stages (s): "
        + " + ".join(f"{k} {v:.0f}" for k, v in quick["seconds"].items())
        + ".",
        f"File sizes: dense `models/minilm-glue-multitask/model.safetensors` {dense_bytes / 2**20:.1f} MiB "
        f"({dense_bytes:,} B, float16); pruned `model/model.safetensors` {pruned_bytes / 2**20:.1f} MiB "
        f"({pruned_bytes:,} B, {quick['saved_models']['model']['dtype']}).",
        f"Plain `AutoModel.from_pretrained(model/)` vs `load_pruned_model`: max abs difference of the encoder "
        f"outputs on 64 SST-2 dev sentences {max_difference:.2e}.",
        "",
        "![metric and parameters vs sparsity](quickstart_sweep.png)",
    ]
    write_report("sweep", lines)


def dev_halves() -> None:
    """The same sweep choosing on unseen data: score and select on the first half of SST-2 dev, report on the
    second half (the model was fine-tuned on SST-2 train, so train examples make a biased selection set).
    Copies the run's sweep.csv/md/png to ``results/sweep_dev_halves.*``."""
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-dev-"))
    try:
        halves = ["--data.score_split", "validation_first_half", "--data.eval_split", "validation_second_half"]
        wall, metrics = fit_free(
            work / "sweep", work / "cache", ",".join(map(str, SPARSITIES)), "--max_drop", "0.01", *halves
        )
        for suffix in ("csv", "md", "png"):
            shutil.copyfile(work / "sweep" / f"sweep.{suffix}", RESULTS / f"sweep_dev_halves.{suffix}")
        (RESULTS / "sweep_dev_halves.json").write_text(json.dumps({"wall": wall, "metrics": metrics}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--report-only"]:
        report(json.loads(RAW.read_text()))
    elif sys.argv[1:] == ["--dev-halves"]:
        dev_halves()
    else:
        main()
