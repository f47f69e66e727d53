from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import fit_free_args, run_cli
from lightning_prune import entry, load_model, load_pruned_model
from lightning_prune.cli import main
from lightning_prune.modules import TaskModel
from lightning_prune.pruning import PLAN_FILE
from lightning_prune.tasks import TASKS, read_tsv

QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize("fixture", ["bert_dir", "t5_gated_dir"])
def test_fit_free_writes_every_output(request, glue_dir, tmp_path, fixture):
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "run"
    main(fit_free_args(model_dir, glue_dir, out))
    assert sorted(p.name for p in out.iterdir()) == [
        ".lightning-prune-output",
        "config.yaml",
        "metrics.json",
        "model",
        "scores.safetensors",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "sst2" and metrics["scorer"] == "attribution" and metrics["sparsity"] == 0.5
    assert set(metrics["dense_metrics"]) == set(metrics["pruned_metrics"]) == {"accuracy", "positive_rate"}
    assert metrics["parameters"]["pruned"] < metrics["parameters"]["dense"]
    assert all(v["kept"] == v["dense"] // 2 for v in metrics["ffn_neurons"].values())
    statistics = {"statistics"} if metrics["reconstruct"] != "none" else set()  # for the repair of the cut
    stages = {"evaluate_dense", "score", "select", "prune", "evaluate_pruned", "save", *statistics}
    assert set(metrics["seconds"]) == stages
    assert metrics["examples_scored"] == 48
    scores = load_file(str(out / "scores.safetensors"))
    assert sorted(scores) == sorted(metrics["ffn_neurons"])
    assert [scores[name].numel() for name in metrics["ffn_neurons"]] == [
        v["dense"] for v in metrics["ffn_neurons"].values()
    ]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["scorer"] == "attribution" and config["model"]["path"] == str(model_dir)
    assert not list(tmp_path.glob(".run.*"))  # no temporary directory left behind

    # The saved model loads back at its pruned size and scores as fit-free measured.
    pruned = load_pruned_model(str(out / "model"), "sst2")
    assert pruned.num_parameters() == metrics["parameters"]["pruned"]
    evaluation = tmp_path / "eval.json"
    main(
        [
            "evaluate",
            "--model.path",
            str(out / "model"),
            "--data.task",
            "sst2",
            "--data.data_dir",
            str(glue_dir),
            "--output_file",
            str(evaluation),
            *QUIET,
        ]
    )
    assert json.loads(evaluation.read_text())["metrics"] == pytest.approx(metrics["pruned_metrics"])


def test_config_file_and_print_config(bert_dir, glue_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(bert_dir)},
                "data": {"task": "sst2", "data_dir": str(glue_dir)},
                "scorer": "magnitude",
                "sparsity": 0.25,
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    with pytest.raises(SystemExit) as exit_:
        main(["fit-free", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["scorer"] == "magnitude" and printed["sparsity"] == 0.25 and printed["data"]["task"] == "sst2"
    main(["fit-free", "--config", str(config), *QUIET])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["scorer"] == "magnitude" and metrics["examples_scored"] == 0
    assert all(v["kept"] == 36 for v in metrics["ffn_neurons"].values())


def test_unseen_domain_evaluation_file(bert_dir, glue_dir, tmp_path):
    domain = tmp_path / "domain.tsv"
    domain.write_text("sentence\tlabel\ngood movie\t1\nawful plot\t0\nnice cast\t1\nboring story\t0\n")
    out = tmp_path / "run"
    main(
        fit_free_args(
            bert_dir, glue_dir, out, "--data.eval_file", str(domain), "--scorer", "activation", "--scorer_options", "{}"
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_pruned_model(str(out / "model"), "sst2")
    with torch.no_grad():
        predictions = model.predict(model.collate(read_tsv(domain, TASKS["sst2"])))
    expected = float((predictions == torch.tensor([1, 0, 1, 0])).float().mean())
    assert metrics["pruned_metrics"]["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--scorer", "fisher2"], "unknown scorer 'fisher2'"),
        (["--data.task", "sst3"], "unknown task 'sst3'"),
        (["--sparsity", "1.0"], "sparsity 1.0 is outside [0, 1)"),
        (["--sparsity", "-0.2"], "sparsity -0.2 is outside [0, 1)"),
        (["--data.score_file", "/nonexistent/x.tsv"], "does not exist"),
        (["--model.path", "/nonexistent/model"], "is not a folder"),
        (["--scorer_options", '{"stpes": 3}'], "has no option stpes"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(bert_dir, glue_dir, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    code, _, err = run_cli(fit_free_args(bert_dir, glue_dir, out, *change), capsys)
    lines = [line for line in err.splitlines() if line.startswith("lightning-prune: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_bad_data_and_models(bert_dir, glue_dir, tmp_path, capsys):
    bad_labels = tmp_path / "labels.tsv"
    bad_labels.write_text("sentence\tlabel\ngood movie\t3\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    unsupported = tmp_path / "gpt2"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases = [
        (["--data.score_file", str(bad_labels)], "label '3' is not in the label set of task sst2"),
        (["--data.eval_file", str(empty)], "is empty"),
        (["--model.path", str(not_a_model)], "is not a model folder"),
        (["--model.path", str(unsupported)], "architecture 'gpt2'"),
    ]
    for change, message in cases:
        out = tmp_path / "run"
        code, _, err = run_cli(fit_free_args(bert_dir, glue_dir, out, *change), capsys)
        assert code == 2 and message in err, (change, err)
        assert not out.exists()


def test_existing_output_dir_is_not_overwritten_unless_asked(bert_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    random = ["--scorer", "random", "--scorer_options", "{}"]
    main(fit_free_args(bert_dir, glue_dir, out, *random))
    code, _, err = run_cli(fit_free_args(bert_dir, glue_dir, out), capsys)
    assert code == 2 and "already holds files" in err
    (out / "keep.txt").write_text("my notes")  # a file the run did not write: --overwrite leaves the folder alone
    code, _, err = run_cli(fit_free_args(bert_dir, glue_dir, out, "--overwrite", "true", *random), capsys)
    assert code == 2 and "holds what lightning-prune did not write (keep.txt)" in err
    assert (out / "keep.txt").read_text() == "my notes"
    (out / "keep.txt").unlink()
    main(fit_free_args(bert_dir, glue_dir, out, "--overwrite", "true", *random, "--sparsity", "0.25"))
    assert json.loads((out / "metrics.json").read_text())["sparsity"] == 0.25


def test_summary_line_without_a_dense_evaluation(bert_dir, glue_dir, tmp_path, caplog):
    """--evaluate_dense false: the summary gives the pruned metric alone, never a NaN for the missing dense one."""
    fast = ["--scorer", "magnitude", "--scorer_options", "{}", "--evaluate_dense", "false"]
    with caplog.at_level(logging.INFO):
        main(fit_free_args(bert_dir, glue_dir, tmp_path / "run", *fast))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sst2: accuracy")]
    assert line.startswith("sst2: accuracy pruned ") and "nan" not in line


def test_global_scope_and_an_empty_existing_output_dir(bert_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an empty folder is no earlier run: it is used
    main(fit_free_args(bert_dir, glue_dir, out, "--scope", "global", "--sparsity", "0.75"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scope"] == "global"
    assert sum(v["kept"] for v in metrics["ffn_neurons"].values()) == 24  # a quarter of 2 x 48, anywhere


def test_t5_regression_with_pseudo_labels_then_evaluate(t5_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    main(fit_free_args(t5_dir, glue_dir, out, "--data.task", "stsb", "--labels", "pseudo", "--sparsity", "0.3"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["pruned_metrics"]) == {"pearson", "spearman"} and metrics["labels"] == "pseudo"
    evaluation = tmp_path / "eval.json"
    main(["evaluate", "--model.path", str(out / "model"), "--data.task", "stsb", "--data.data_dir", str(glue_dir),
          "--output_file", str(evaluation), *QUIET])  # fmt: skip
    result = json.loads(evaluation.read_text())
    assert result["metrics"] == pytest.approx(metrics["pruned_metrics"], rel=1e-5, nan_ok=True)  # float32 rounding
    assert result["ffn_neurons"] == {name: v["kept"] for name, v in metrics["ffn_neurons"].items()}


def test_scorers_command_lists_built_ins(capsys):
    entry.main(["scorers"])
    out = capsys.readouterr().out
    for name in ("attribution", "activation", "magnitude", "random"):
        assert f"\n{name} " in out and "lightning-prune" in out


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux CI")
@pytest.mark.parametrize("budget", [[], ["--sparsity", "null", "--target_speedup", "1.3", "--scope", "global"]])
def test_ddp_two_processes_match_one(bert_dir, glue_dir, tmp_path, budget):
    """Two CPU processes (gloo) score each of 47 examples exactly once and all-reduce to the 1-process scores;
    the least-squares refit's statistics (48 calibration examples), and the residuals refit-aware scoring weighs,
    too; with a FLOP budget, head scores and the heads kept as well."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = fit_free_args(bert_dir, glue_dir, tmp_path / "one", "--data.num_examples", "47", "--data.batch_size", "4",
                         "--reconstruct", "least_squares", *budget)  # fmt: skip
    runs = {"one": [], "two": ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]}
    for name, extra in runs.items():
        args = [a if a != str(tmp_path / "one") else str(tmp_path / name) for a in base]
        own_cache = ["--cache_dir", str(tmp_path / f"cache-{name}")]  # both runs really score
        result = subprocess.run(
            [sys.executable, "-m", "lightning_prune", *args, *extra, *own_cache],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert not one["scores_from_cache"] and not two["scores_from_cache"]
    assert one["examples_scored"] == two["examples_scored"] == 47
    assert one["pruned_metrics"] == pytest.approx(two["pruned_metrics"])
    scores_one, scores_two = (load_file(str(tmp_path / n / "scores.safetensors")) for n in ("one", "two"))
    assert one["refit_aware"] and two["refit_aware"]
    for key in scores_one:  # FFN scores weigh residuals of float32 second-moment sums (below) through their inverse
        tolerance = (1e-3, 1e-6) if key in one["ffn_neurons"] else (1e-5, 1e-9)
        torch.testing.assert_close(scores_one[key], scores_two[key], rtol=tolerance[0], atol=tolerance[1])
    assert one["ffn_neurons"] == two["ffn_neurons"]
    assert one["calibration_examples"] == two["calibration_examples"] == 48
    assert one.get("attention_heads") == two.get("attention_heads")
    assert ("attention_heads" in one) == ("flops" in one) == bool(budget)
    weights = one["saved_models"]["model"]["weights_file"]
    weights_one, weights_two = (load_file(str(tmp_path / n / "model" / weights)) for n in ("one", "two"))
    for key in weights_one:  # the float32 second-moment sums add up in another order over two processes
        torch.testing.assert_close(weights_one[key], weights_two[key], rtol=1e-4, atol=1e-5)
    assert (
        Path(tmp_path / "two" / "model" / "pruning_plan.json").read_text()
        == Path(tmp_path / "one" / "model" / "pruning_plan.json").read_text()
    )


def test_bias_compensation_is_the_default_and_lives_in_the_saved_biases(bert_dir, glue_dir, tmp_path):
    random_run = ["--scorer", "random", "--scorer_options", "{}"]
    main(fit_free_args(bert_dir, glue_dir, tmp_path / "on", *random_run))
    main(fit_free_args(bert_dir, glue_dir, tmp_path / "off", *random_run, "--reconstruct", "none"))
    runs = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("on", "off")}
    assert runs["on"]["reconstruct"] == "bias" and runs["off"]["reconstruct"] == "none"
    plans = {name: json.loads((tmp_path / name / "model" / PLAN_FILE).read_text()) for name in ("on", "off")}
    assert all(layer["reconstruction"] == ["bias"] for layer in plans["on"]["layers"])
    assert not any(layer["reconstruction"] for layer in plans["off"]["layers"])
    assert [layer["kept"] for layer in plans["on"]["layers"]] == [layer["kept"] for layer in plans["off"]["layers"]]
    on, off = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("on", "off"))
    biases = [name for name in on if name.endswith("output.dense.bias") and "attention" not in name]
    assert biases and all(not torch.equal(on[name], off[name]) for name in biases)
    assert all(torch.equal(on[name], off[name]) for name in on if name not in biases)


def test_evaluation_length_is_set_apart_from_scoring_length(bert_dir, glue_dir):
    examples = read_tsv(glue_dir / "sst2" / "dev.tsv", TASKS["sst2"])[:8]
    model = TaskModel(str(bert_dir), max_length=64, eval_max_length=4)
    assert model.collate(examples)["input_ids"].shape[1] == 4
    assert model.net.collate(examples)["input_ids"].shape[1] > 4 and model.net.max_length == 64


def test_refit_aware_scoring_comes_with_the_least_squares_refit(llama_dir, glue_dir, tmp_path):
    """A decoder LM is refitted by least squares, and attribution then weighs each neuron's residual: recorded,
    cached under its own key (never served to a plain request), off with --refit_aware false."""
    runs, scores = {}, {}
    for name, extra in (("aware", []), ("plain", ["--refit_aware", "false"]), ("damped", ["--damping", "0.5"])):
        out = tmp_path / name
        main(fit_free_args(llama_dir, glue_dir, out, "--data.num_examples", "8", "--data.calibration_examples", "20",
                           "--cache_dir", str(tmp_path / "cache"), *extra))  # fmt: skip
        runs[name] = json.loads((out / "metrics.json").read_text())
        scores[name] = load_file(str(out / "scores.safetensors"))
    assert runs["aware"]["refit_aware"] and not runs["plain"]["refit_aware"]
    assert runs["aware"]["score_key"] != runs["plain"]["score_key"] and not runs["plain"]["scores_from_cache"]
    # other residuals (another damping), other scores: never served from the cache
    assert runs["damped"]["score_key"] != runs["aware"]["score_key"] and not runs["damped"]["scores_from_cache"]
    assert all(not torch.allclose(scores["aware"][name], scores["plain"][name]) for name in scores["plain"])


@pytest.mark.parametrize(
    ("fixture", "extra", "message"),
    [
        ("bert_dir", [], "this run's reconstruction is 'bias'"),
        ("llama_dir", ["--reconstruct", "none"], "this run's reconstruction is 'none'"),
        ("llama_dir", ["--scorer", "magnitude", "--scorer_options", "{}"], "cannot score their residuals"),
    ],
)
def test_refit_aware_scoring_without_a_refit_to_be_aware_of_is_refused(
    request, glue_dir, tmp_path, capsys, fixture, extra, message
):
    out = tmp_path / "run"
    code, _, err = run_cli(
        fit_free_args(request.getfixturevalue(fixture), glue_dir, out, "--refit_aware", "true", *extra), capsys
    )
    assert code == 2 and message in err, err
    assert not out.exists()


def test_least_squares_reconstruction_saves_a_plain_decoder_model(llama_dir, glue_dir, tmp_path):
    """The refit changes weight values only: plain from_pretrained loads the saved model and agrees with ours."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ls"
    main(fit_free_args(llama_dir, glue_dir, out, "--reconstruct", "least_squares", "--damping", "0.05",
                       "--data.num_examples", "8", "--data.calibration_examples", "20"))  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reconstruct"] == "least_squares" and metrics["seconds"]["statistics"] > 0
    assert metrics["calibration_examples"] == 20 and metrics["examples_scored"] == 8
    plan = json.loads((out / "model" / PLAN_FILE).read_text())
    assert all(layer["reconstruction"] == ["least_squares"] for layer in plan["layers"])
    ours = load_model(out / "model", TASKS["sst2"])
    plain = AutoModelForCausalLM.from_pretrained(out / "model")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, ours.model(input_ids=ids).logits)
