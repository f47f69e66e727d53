"""Saved dtype, plain Hugging Face loading of pruned models, the sparsity sweep with automatic choice, and
the command line's own behaviour (help, scorer switching, offline data, advertisements)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import fit_free_args, one_error_line, run_cli
from lightning_prune import load_pruned_model
from lightning_prune.cli import PruneCLI, main
from lightning_prune.data import TaskDataModule
from lightning_prune.entry import COMMANDS, HELP
from lightning_prune.tasks import get_task
from lightning_prune.tasks.splits import HUB_OFFLINE_VARIABLES, PROXY_VARIABLES
from lightning_prune.testing import sentiment_rows

QUIET = ["--trainer.enable_progress_bar", "false"]


def magnitude_run(model_dir: Path, glue_dir: Path, out: Path, *extra: str) -> dict:
    main(fit_free_args(model_dir, glue_dir, out, "--scorer", "magnitude", "--scorer_options", "{}", *extra))
    return json.loads((out / "metrics.json").read_text())


def weights_dtype(folder: Path) -> str:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return handle.get_slice(next(iter(handle.keys()))).get_dtype()


def sst2_batch(model, glue_dir: Path):
    from lightning_prune.tasks import load_split

    return model.collate(load_split(get_task("sst2"), "validation", glue_dir)[:6])


@pytest.fixture(scope="session")
def bert_fp16_dir(bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with heads, its encoder stored in float16 (like the committed multi-task model)."""
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("bert16")
    AutoModel.from_pretrained(str(bert_dir), dtype=torch.float16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "multitask_heads.json", "multitask_heads.safetensors"):
        (folder / name).write_bytes((bert_dir / name).read_bytes())
    return folder


@pytest.fixture
def group_readable_umask():
    """umask 022 for the test (CI's may be stricter), so a file left 0600 is one the umask did not ask for."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_saved_in_the_source_dtype_and_smaller_than_the_source(bert_fp16_dir, glue_dir, tmp_path, group_readable_umask):
    # A plain cut (no bias compensation: compensated biases are float32 sums, rounded when saved as float16).
    metrics = magnitude_run(bert_fp16_dir, glue_dir, tmp_path / "auto", "--reconstruct", "none")
    assert weights_dtype(tmp_path / "auto" / "model") == "F16"
    # Every file readable as the umask asks (0644), not left at safetensors' own 0600.
    for path in (tmp_path / "auto").rglob("*"):
        assert path.stat().st_mode & 0o644 == 0o644, path
    assert metrics["saved_models"]["model"]["dtype"] == "float16"
    dense_size = (bert_fp16_dir / "model.safetensors").stat().st_size
    assert (tmp_path / "auto" / "model" / "model.safetensors").stat().st_size < dense_size
    # float16 in, float16 out is lossless: the kept weights were float16 values to begin with.
    reloaded = load_pruned_model(str(tmp_path / "auto" / "model"), "sst2")
    assert reloaded.source_dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())  # computation runs in float32

    magnitude_run(bert_fp16_dir, glue_dir, tmp_path / "f32", "--save_dtype", "float32", "--reconstruct", "none")
    assert weights_dtype(tmp_path / "f32" / "model") == "F32"
    again = load_pruned_model(str(tmp_path / "f32" / "model"), "sst2")
    batch = sst2_batch(reloaded, glue_dir)
    assert torch.equal(reloaded.outputs(batch), again.outputs(batch))


def plain_hf_outputs(folder: Path, pruned, batch, t5: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same inputs through plain ``from_pretrained`` and through lightning-prune's loader."""
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    if t5:
        plain = AutoModelForSeq2SeqLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        decoder = {"decoder_input_ids": torch.zeros_like(batch["input_ids"][:, :3])}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **decoder}
        with torch.no_grad():
            return plain(**inputs).logits, pruned.weights_module(**inputs).logits
    plain = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    inputs = {name: batch[name] for name in pruned.input_names}
    with torch.no_grad():
        return plain(**inputs).last_hidden_state, pruned.weights_module(**inputs).last_hidden_state


@pytest.mark.parametrize("fixture", ["bert_dir", "t5_gated_dir"])
def test_uniform_widths_load_with_plain_transformers(request, glue_dir, tmp_path, fixture):
    model_dir = request.getfixturevalue(fixture)
    metrics = magnitude_run(model_dir, glue_dir, tmp_path / "run")
    folder = tmp_path / "run" / "model"
    layout = metrics["saved_models"]["model"]
    assert layout["ffn_widths"] == "uniform" and layout["plain_hf_loadable"]
    config = json.loads((folder / "config.json").read_text())
    width = {v["kept"] for v in metrics["ffn_neurons"].values()}.pop()
    assert config["d_ff" if fixture.startswith("t5") else "intermediate_size"] == width
    pruned = load_pruned_model(str(folder), "sst2")
    plain, ours = plain_hf_outputs(folder, pruned, sst2_batch(pruned, glue_dir), fixture.startswith("t5"))
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=1e-5)


def test_uneven_widths_fail_plain_loading_or_pad_exactly(bert_dir, glue_dir, tmp_path):
    from transformers import AutoModel

    global_scope = ["--scope", "global", "--sparsity", "0.6"]
    metrics = magnitude_run(bert_dir, glue_dir, tmp_path / "exact", *global_scope)
    widths = [v["kept"] for v in metrics["ffn_neurons"].values()]
    assert len(set(widths)) > 1, "the test needs layers of different widths"
    layout = metrics["saved_models"]["model"]
    assert layout["ffn_widths"] == "per-layer" and not layout["plain_hf_loadable"]
    with pytest.raises(OSError):  # loudly, even where mismatched sizes would be ignored
        AutoModel.from_pretrained(str(tmp_path / "exact" / "model"), ignore_mismatched_sizes=True)
    exact = load_pruned_model(str(tmp_path / "exact" / "model"), "sst2")
    assert [layer.size for layer in exact.ffn_layers()] == widths

    metrics = magnitude_run(bert_dir, glue_dir, tmp_path / "padded", *global_scope, "--pad_uneven_ffn", "true")
    layout = metrics["saved_models"]["model"]
    assert layout["ffn_widths"] == "padded" and layout["plain_hf_loadable"] and layout["padded_width"] == max(widths)
    folder = tmp_path / "padded" / "model"
    padded = load_pruned_model(str(folder), "sst2")
    assert [layer.size for layer in padded.ffn_layers()] == widths  # the padding is stripped again
    batch = sst2_batch(padded, glue_dir)
    assert torch.equal(padded.outputs(batch), exact.outputs(batch))
    plain, ours = plain_hf_outputs(folder, padded, batch, t5=False)
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=1e-5)


def test_sweep_scores_once_and_chooses_on_held_apart_examples(bert_dir, glue_dir, tmp_path):
    sweep = ["--sparsity", "0.25,0.5,0.75", "--data.num_examples", "16", "--data.selection_examples", "24"]
    out = tmp_path / "sweep"
    main(fit_free_args(bert_dir, glue_dir, out, *sweep, "--max_drop", "0.1", "--save_models", "all"))
    metrics = json.loads((out / "metrics.json").read_text())
    points = metrics["sweep"]
    assert [p["sparsity"] for p in points] == [0.25, 0.5, 0.75]
    selection = metrics["selection"]
    assert selection["examples"] == 24 and "not drawn for scoring" in selection["source"]
    dense_selection = selection["dense_metrics"]["accuracy"]
    within = [p["sparsity"] for p in points if dense_selection - p["selection_metrics"]["accuracy"] <= 0.1 + 1e-12]
    assert [p["sparsity"] for p in points if p["within_drop"]] == within
    assert metrics["sparsity"] == (max(within) if within else None)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model")) == sorted(
        ["model-0.25", "model-0.5", "model-0.75", *(["model"] if within else [])]
    )
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["sparsity"] for r in rows] == ["0.0", "0.25", "0.5", "0.75"]
    report = (out / "sweep.md").read_text()
    assert report.count("\n|") >= 5
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "sweep.png").stat().st_size > 0
    else:  # an optional import: without it the plot is skipped with a note
        assert "matplotlib is not installed" in report and not (out / "sweep.png").exists()

    # One implementation: a single-sparsity run (scores from the sweep's cache) gives the sweep's point.
    single = tmp_path / "single"
    main(fit_free_args(bert_dir, glue_dir, single, "--sparsity", "0.5", "--data.num_examples", "16"))
    alone = json.loads((single / "metrics.json").read_text())
    assert alone["scores_from_cache"] and alone["pruned_metrics"] == points[1]["metrics"]
    assert alone["parameters"]["pruned"] == points[1]["parameters"]
    saved = load_pruned_model(str(out / "model-0.5"), "sst2")
    assert saved.num_parameters() == points[1]["parameters"]


def test_selection_examples_are_disjoint_from_scoring_and_evaluation(glue_dir):
    data = TaskDataModule("sst2", str(glue_dir), num_examples=20, selection_examples=28)
    scoring = {e.index for e in data.score_examples()}
    selection = {e.index for e in data.selection_examples_list()}
    assert len(selection) == 28 and not scoring & selection
    with pytest.raises(Exception, match="overlaps the evaluation"):
        TaskDataModule("sst2", str(glue_dir), score_split="validation", num_examples=8).selection_examples_list()
    with pytest.raises(Exception, match="none is left"):
        TaskDataModule("sst2", str(glue_dir)).selection_examples_list()


def test_calibration_examples_extend_the_scoring_examples_apart_from_the_selection(glue_dir):
    data = TaskDataModule("sst2", str(glue_dir), num_examples=8, selection_examples=10, calibration_examples=30)
    scoring = [e.index for e in data.score_examples()]
    calibration = [e.index for e in data.calibration_examples_list(avoid_selection=True)]  # a max_drop run
    selection = {e.index for e in data.selection_examples_list()}
    assert calibration[:8] == scoring and len(set(calibration)) == 30 and not selection & set(calibration)
    # Without calibration examples the selection draw is what it always was.
    plain = TaskDataModule("sst2", str(glue_dir), num_examples=8, selection_examples=10, calibration_examples=None)
    assert {e.index for e in plain.selection_examples_list()} == selection
    assert [e.index for e in plain.calibration_examples_list()] == scoring
    # Fewer than the scoring examples: a draw among them; more than the data has: as many as there are.
    fewer = TaskDataModule("sst2", str(glue_dir), num_examples=8, calibration_examples=3)
    assert len(fewer.calibration_examples_list()) == 3 and set(fewer.calibration_examples_list()) <= set(
        fewer.score_examples()
    )
    rows = len(TaskDataModule("sst2", str(glue_dir)).score_examples())
    many = TaskDataModule("sst2", str(glue_dir), num_examples=8, selection_examples=10, calibration_examples=10**6)
    assert len(many.calibration_examples_list()) == rows  # no max_drop run: nothing held apart
    assert len(many.calibration_examples_list(avoid_selection=True)) == rows - 10


def test_eval_seed_keeps_the_evaluation_examples_of_other_scoring_draws(glue_dir):
    settings = {"num_examples": 8, "eval_examples": 10, "eval_seed": 0}
    draws = [TaskDataModule("sst2", str(glue_dir), seed=s, **settings) for s in (0, 1)]
    assert draws[0].eval_examples() == draws[1].eval_examples()
    assert draws[0].score_examples() != draws[1].score_examples()


def test_top_level_help_is_answered_without_importing_the_model_stack():
    code = (
        "import sys; from lightning_prune.entry import main; main(['--help']); "
        "assert not {'torch', 'lightning', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "{fit-free,evaluate,export,scorers}" in done.stdout.splitlines()[0]
    # The hand-written help names exactly the CLI's commands, with their functions' first docstring lines.
    assert set(COMMANDS) == {*PruneCLI.subcommands(), "scorers", "export"}
    from lightning_prune.commands.evaluate import evaluate
    from lightning_prune.commands.export import export
    from lightning_prune.commands.fit_free import fit_free

    for name, function in (("fit-free", fit_free), ("evaluate", evaluate), ("export", export)):
        assert COMMANDS[name] == function.__doc__.splitlines()[0]
    assert HELP.startswith("usage: lightning-prune")


def test_command_help_lists_own_options_first_describes_every_option_and_folds_the_trainer(capsys):
    code, out, _ = run_cli(["fit-free", "--help"], capsys)
    assert code == 0
    assert out.index("--scorer ") < out.index("--model.path") < out.index("--data.task") < out.index("--trainer.")
    assert "--trainer.max_epochs" not in out and "--trainer.devices" in out and "--help-all" in out
    lines = out.splitlines()
    options = [i for i, line in enumerate(lines) if line.startswith("  --")]
    # An option's description follows on its line (after a gap) or on the next, indented line.
    undescribed = [
        lines[i].split()[0]
        for i in options
        if "   " not in lines[i].strip() and not (i + 1 < len(lines) and lines[i + 1].startswith(" " * 24))
    ]
    assert len(options) > 30 and not undescribed, undescribed
    assert len(out.splitlines()) < 320  # the options a training-free run takes, each with its help (not ~40 more)
    code, out, _ = run_cli(["fit-free", "--help-all"], capsys)
    assert code == 0 and "--trainer.max_epochs" in out


def test_switching_scorer_over_a_config_drops_the_old_scorers_options(bert_dir, glue_dir, tmp_path, capsys, caplog):
    config = tmp_path / "attribution.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(bert_dir)},
                "data": {"task": "sst2", "data_dir": str(glue_dir), "batch_size": 8},
                "scorer": "attribution",
                "scorer_options": {"steps": 2, "aggregate": "abs_sum"},
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    code, _, err = run_cli(["fit-free", "--config", str(config), "--scorer", "magnitude", *QUIET], capsys)
    assert code == 0, err
    assert "does not take aggregate, steps" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["scorer"] == "magnitude" and metrics["scorer_options"] == {}
    logged = [record.getMessage() for record in caplog.records]
    assert any("GPU available" in message for message in logged)  # Lightning's log lines are captured here ...
    assert not any("💡" in message for message in logged)  # ... but not its advertisement for litlogger


def test_unreachable_hub_without_data_dir_fails_at_once_naming_the_option(bert_dir, tmp_path, capsys, monkeypatch):
    for name in (*HUB_OFFLINE_VARIABLES, *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    args = ["fit-free", "--model.path", str(bert_dir), "--data.task", "sst2", "--output_dir", str(tmp_path / "o")]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--data.data_dir" in one_error_line(err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_offline_mode_reads_the_datasets_cache(bert_dir, tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE does not refuse up front: datasets reads its cache (faked here, no network), and a
    task missing there is one line naming data_dir, with nothing written."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("offline mode touched the network"))
    asked = []

    def cached(path, name, split):
        asked.append((path, name, split))
        return [{"sentence": text, "label": label} for text, label in sentiment_rows(8, 5)]

    monkeypatch.setattr(datasets, "load_dataset", cached)
    result = tmp_path / "eval.json"
    args = ["evaluate", "--model.path", str(bert_dir), "--data.task", "sst2", "--output_file", str(result), *QUIET]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert ("nyu-mll/glue", "sst2", "validation") in asked and "accuracy" in json.loads(result.read_text())["metrics"]

    def missing(path, name, split):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    out = tmp_path / "o"
    code, _, err = run_cli(["fit-free", "--model.path", str(bert_dir), "--data.task", "sst2", "--output_dir", str(out),
                            *QUIET], capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "from the datasets cache (offline mode) (ConnectionError): give data_dir" in line
    assert not out.exists()


def test_scoring_progress_moves_within_a_batch(bert_dir, glue_dir, tmp_path, capsys):
    tqdm_bar = '[{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}]'
    args = fit_free_args(bert_dir, glue_dir, tmp_path / "o", "--trainer.callbacks", tqdm_bar)
    code, out, err = run_cli([*args, "--trainer.enable_progress_bar", "true", "--data.batch_size", "48"], capsys)
    assert code == 0, err
    # One batch of 48 examples; the bar still counts the passes through the model while it runs.
    assert re.search(r"0/1 \[[^\]]*, 3 model passes", out), out  # 3 passes shown before the batch completes


def test_sweep_over_a_pruned_model_composes_each_point_with_the_loaded_plan(bert_dir, glue_dir, tmp_path):
    magnitude_run(bert_dir, glue_dir, tmp_path / "first")
    first = tmp_path / "first" / "model"
    out = tmp_path / "again"
    metrics = magnitude_run(first, glue_dir, out, "--sparsity", "0.25,0.5", "--save_models", "all")
    first_kept = [entry["kept"] for entry in json.loads((first / "pruning_plan.json").read_text())["layers"]]
    for point in metrics["sweep"]:
        folder = out / point["saved_as"]
        layers = json.loads((folder / "pruning_plan.json").read_text())["layers"]
        for entry, kept_before in zip(layers, first_kept, strict=True):
            # Indices into the original dense model, a subset of the first pruning's, at this point's size.
            assert set(entry["kept"]) <= set(kept_before)
            assert len(entry["kept"]) == round((1 - point["sparsity"]) * len(kept_before))
        assert load_pruned_model(str(folder), "sst2").num_parameters() == point["parameters"]
