"""The committed multi-task model on real SST-2 data: the quickstart's path, at a test's size."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import require_shared_data
from lightning_prune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_config_on_real_sst2(tmp_path):
    glue = require_shared_data() / "glue"
    out = tmp_path / "run"
    main(
        [
            "fit-free",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--data.data_dir",
            str(glue),
            "--data.num_examples",
            "4",
            "--data.eval_examples",
            "128",
            "--scorer_options",
            '{"steps": 2}',
            "--sparsity",
            "0.3",
            "--output_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["architecture"] == "bert+heads" and metrics["examples_scored"] == 4
    assert metrics["parameters"]["dense"] == 22_713_986  # all-MiniLM-L6-v2 (22,713,216) + the SST-2 head
    assert all(v == {"dense": 1536, "kept": 1075} for v in metrics["ffn_neurons"].values())
    assert metrics["dense_metrics"]["accuracy"] > 0.8  # a fine-tuned model, far from chance
    assert (out / "model" / "vocab.txt").is_file() or (out / "model" / "tokenizer.json").is_file()
