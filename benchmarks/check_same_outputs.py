"""Outputs unchanged by a refactoring: the same fit-free runs with the code of ``--base`` (a commit) and with the
working tree's, compared byte for byte (scores, saved models, sweep reports) and field by field (metrics.json, its
seconds aside). Four runs cover the pipeline's paths: the quickstart (a main-table cell: MiniLM, SST-2, attribution,
50%), a FLOP-budget sweep with heads, ``--max_drop`` and the Fisher plugin, a global-scope least-squares sweep with
padding on STS-B (Wanda), and the multi-task SmolLM2 decoder (attribution, least squares, two sparsities).

    python benchmarks/check_same_outputs.py --base cd273c1

Writes ``benchmarks/results/same_outputs.md``. One thread per run, one run at a time (~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from results_io import write_report
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ["--config", "configs/quickstart.yaml"]
RUNS = {
    "quickstart": QUICKSTART,
    "speedup": [*QUICKSTART, "--sparsity", "null", "--target_speedup", "1.5,2", "--max_drop", "0.05",
                "--data.num_examples", "32", "--data.eval_examples", "200", "--save_models", "all",
                "--scorer", "fisher"],
    "global": [*QUICKSTART, "--data.task", "stsb", "--sparsity", "0.3,0.6", "--scope", "global", "--min_keep", "200",
               "--data.num_examples", "24", "--data.eval_examples", "150", "--reconstruct", "least_squares",
               "--save_models", "all", "--pad_uneven_ffn", "true", "--scorer", "wanda"],
    "decoder": ["--config", "configs/smollm2_multitask_sst2.yaml", "--data.num_examples", "8", "--data.eval_examples",
                "100", "--data.calibration_examples", "64", "--sparsity", "0.3,0.5", "--save_models", "all"],
}  # fmt: skip
IGNORED = ("seconds", "score_key", "evaluation_seconds_ratio")  # timings, and a key that hashes the code


def run_all(source: Path, out: Path) -> None:
    """Every run with the package code at ``source``, its own score cache (the GGUF cache shared: an input)."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(out / "cache")}
    (out / "cache").mkdir(parents=True)
    gguf = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-prune" / "gguf"
    (out / "cache" / "lightning-prune").mkdir()
    (out / "cache" / "lightning-prune" / "gguf").symlink_to(gguf)
    for name, args in RUNS.items():
        command = [sys.executable, "-m", "lightning_prune", "fit-free", *args, "--output_dir", str(out / name)]
        subprocess.run([*command, "--trainer.enable_progress_bar", "false"], check=True, cwd=ROOT, env=env)


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED}
    return [_strip(v) for v in value] if isinstance(value, list) else value


def _files(root: Path) -> dict[str, str]:
    skip = ("metrics.json", "scores.safetensors", "config.yaml")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def compare(before: Path, after: Path, name: str) -> list[str]:
    b, a = before / name, after / name
    mb, ma = (json.loads((d / "metrics.json").read_text()) for d in (b, a))
    same_json = _strip(mb) == _strip(ma) and list(mb) == list(ma)
    sb, sa = load_file(b / "scores.safetensors"), load_file(a / "scores.safetensors")
    same_scores = sb.keys() == sa.keys() and all(torch.equal(sb[k], sa[k]) for k in sb)
    files = _files(b)
    same_files = files == _files(a)
    metric = mb["primary_metric"]
    points = [p["metrics"][metric] for p in mb.get("sweep", [])] or [mb["pruned_metrics"][metric]]
    return [
        name,
        f"{metric} {', '.join(f'{v:.4f}' for v in points)}",
        "same" if same_json else "**differs**",
        "identical" if same_scores else "**differ**",
        f"{len(files)} identical" if same_files else "**differ**",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit whose code gives the reference outputs")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archive = subprocess.run(["git", "archive", args.base, "src"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
        run_all(work / "src", work / "before")
        run_all(ROOT / "src", work / "after")
        rows = [compare(work / "before", work / "after", name) for name in RUNS]
    table = ["| run | pruned metric per point | metrics.json | scores | models, reports, marker |", "|" + "---|" * 5]
    write_report(
        "same_outputs",
        [
            f"# The same outputs before and after: {args.base} against {head.strip()} (working tree)",
            "",
            "Each fit-free run twice, with the code of each side; metrics.json compared with its timings and code "
            "hash aside, everything else byte for byte. Written by "
            f"`python benchmarks/check_same_outputs.py --base {args.base}`.",
            "",
            *table,
            *("| " + " | ".join(row) + " |" for row in rows),
        ],
    )


if __name__ == "__main__":
    main()
