"""A user's inputs are sacred: every bad request is one line, exit code 2, and leaves every input byte-identical.

Each case names what it does, the message it must print and the inputs it must not change (the model
folder, the data folder and files, the score cache: hashed before and after). Outputs are checked
before any model is loaded or any example scored.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch
import yaml

from conftest import digest, fit_free_args, one_error_line, run_cli
from lightning_prune.cli import main
from lightning_prune.io import MARKER_FILE
from lightning_prune.sources import gguf_cache_folder
from lightning_prune.testing import write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
COMMITTED_MODEL = REPO / "models" / "minilm-glue-multitask"
QUIET = ["--trainer.enable_progress_bar", "false"]
UNWRITABLE = Path("/proc/lightning-prune-test")  # /proc takes no new files, not even from root
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="/proc is Linux's")


class Inputs:
    """A private copy of a tiny model and a GLUE-style folder, plus a scratch area, for one test."""

    def __init__(self, root: Path, model: Path, glue: Path) -> None:
        self.root = root
        self.model = Path(shutil.copytree(model, root / "model"))
        self.glue = Path(shutil.copytree(glue, root / "glue"))
        self.cache = root / "cache"
        self.out = root / "run"

    def fit_free(self, *extra: str) -> list[str]:
        return fit_free_args(self.model, self.glue, self.out, "--data.batch_size", "4", *extra)

    def evaluate(self, *extra: str) -> list[str]:
        return ["evaluate", "--model.path", str(self.model), "--data.task", "sst2", "--data.data_dir", str(self.glue),
                *QUIET, *extra]  # fmt: skip

    def data_file(self, name: str, content: bytes) -> Path:
        path = self.root / name
        path.write_bytes(content)
        return path


@pytest.fixture
def inputs(bert_dir, glue_dir, tmp_path) -> Inputs:
    return Inputs(tmp_path, bert_dir, glue_dir)


def assert_refused(args: list[str], capsys, message: str, watched: list[Path], absent: Path | None = None) -> str:
    """Exit code 2, exactly one error line containing ``message``, every watched input byte-identical."""
    before = digest(*watched)
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2, err
    assert message in line, line
    assert digest(*watched) == before
    assert absent is None or not absent.exists()
    return line


# -- outputs of fit-free: never an input, never above or inside one; found before any work ---------------------

OUTPUT_CASES: dict[str, tuple[Callable[[Inputs], list[str]], str]] = {
    "output_dir is the model folder, with --overwrite": (
        lambda i: i.fit_free("--output_dir", str(i.model), "--overwrite", "true"),
        "is the model folder",
    ),
    "output_dir is the data folder, with --overwrite": (
        lambda i: i.fit_free("--output_dir", str(i.glue), "--overwrite", "true"),
        "is data_dir",
    ),
    "output_dir inside the model folder": (lambda i: i.fit_free("--output_dir", str(i.model / "run")), "lies inside"),
    "output_dir above the model folder, with --overwrite": (
        lambda i: i.fit_free("--output_dir", str(i.root), "--overwrite", "true"),
        "contains the model folder",
    ),
    "output_dir is the score file": (
        lambda i: i.fit_free(
            "--data.score_file", str(i.glue / "sst2" / "train.tsv"), "--output_dir", str(i.glue / "sst2" / "train.tsv")
        ),
        "is score_file",
    ),
    "output_dir is the score cache": (
        lambda i: i.fit_free("--cache_dir", str(i.cache), "--output_dir", str(i.cache)),
        "is the score cache",
    ),
    "cache_dir inside output_dir": (
        lambda i: i.fit_free("--cache_dir", str(i.out / "cache")),
        "contains the score cache",
    ),
    "cache_dir is the model folder": (lambda i: i.fit_free("--cache_dir", str(i.model)), "is the model folder"),
    "output_dir below a file": (lambda i: i.fit_free("--output_dir", str(i.root / "notes.txt" / "run")), "is a file"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_outputs_that_would_touch_an_input_are_refused(inputs, capsys, case):
    make_args, message = OUTPUT_CASES[case]
    inputs.cache.mkdir()
    (inputs.cache / "earlier.safetensors").write_bytes(b"scores of an earlier run")
    (inputs.root / "notes.txt").write_text("my notes")
    watched = [inputs.model, inputs.glue, inputs.cache, inputs.root / "notes.txt"]
    assert_refused(make_args(inputs), capsys, message, watched, absent=inputs.out)


def test_output_dir_that_is_a_symlink_to_the_model_folder_is_refused(inputs, capsys):
    link = inputs.root / "link"
    link.symlink_to(inputs.model, target_is_directory=True)
    args = inputs.fit_free("--output_dir", str(link), "--overwrite", "true")
    assert_refused(args, capsys, "is the model folder", [inputs.model, inputs.glue])
    assert link.is_symlink()


def test_quickstart_config_cannot_delete_the_model(inputs, capsys):
    """The issue's first report: the quickstart YAML set overwrite, and output_dir = model folder deleted it."""
    assert "overwrite" not in yaml.safe_load(QUICKSTART.read_text())
    args = ["fit-free", "--config", str(QUICKSTART), "--model.path", str(inputs.model),
            "--data.data_dir", str(inputs.glue), "--output_dir", str(inputs.model), *QUIET]  # fmt: skip
    assert_refused(args, capsys, "is the model folder", [inputs.model, inputs.glue])
    assert_refused([*args, "--overwrite", "true"], capsys, "is the model folder", [inputs.model, inputs.glue])


def test_overwrite_replaces_only_a_folder_lightning_prune_wrote(inputs, capsys):
    mine = inputs.root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    args = inputs.fit_free("--output_dir", str(mine), "--overwrite", "true")
    assert_refused(args, capsys, f"lightning-prune did not write (no {MARKER_FILE}", [mine, inputs.model])


@pytest.mark.parametrize("where", ["current folder", "repository root"])
def test_output_dir_is_the_current_folder_or_a_repository_root(inputs, capsys, monkeypatch, where):
    work = inputs.root / "work"
    work.mkdir()
    if where == "repository root":
        (work / ".git").mkdir()
        target = str(work)
    else:
        monkeypatch.chdir(work)
        target = "."
    args = inputs.fit_free("--output_dir", target, "--overwrite", "true")
    assert_refused(args, capsys, "is the current folder" if target == "." else "is a repository root", [work])


@linux_only
@pytest.mark.parametrize("option", ["--output_dir", "--cache_dir"])
def test_unwritable_output_or_cache_is_found_before_any_work(inputs, capsys, option):
    args = inputs.fit_free(option, str(UNWRITABLE / "x"))
    assert_refused(args, capsys, "does not accept new files", [inputs.model, inputs.glue])


def test_symlinked_output_dir_is_replaced_through_the_link_without_leftovers(inputs):
    target = inputs.root / "real"
    target.mkdir()
    link = inputs.root / "linkout"
    link.symlink_to(target, target_is_directory=True)
    random = ["--scorer", "random", "--scorer_options", "{}", "--output_dir", str(link)]
    main(inputs.fit_free(*random))
    main(inputs.fit_free(*random, "--overwrite", "true", "--sparsity", "0.25"))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert json.loads((target / "metrics.json").read_text())["sparsity"] == 0.25
    assert (target / MARKER_FILE).is_file()
    assert sorted(p.name for p in inputs.root.iterdir() if p.name.startswith(".")) == []  # no .linkout.old-PID


# -- models given as a .gguf file or a pkg: reference: the file and its de-quantized copy are inputs too ----------

GGUF_CASES: dict[str, tuple[Callable[[Path, Path, Path], list[str]], str]] = {
    # name: (options given the GGUF file, its de-quantized copy and a scratch folder; message)
    "output_dir is the GGUF file, with --overwrite": (
        lambda gguf, copy, root: ["--output_dir", str(gguf), "--overwrite", "true"],
        "is the GGUF file",
    ),
    "output_dir is the GGUF file's folder, with --overwrite": (
        lambda gguf, copy, root: ["--output_dir", str(gguf.parent), "--overwrite", "true"],
        "contains the GGUF file",
    ),
    "output_dir is the de-quantized copy, with --overwrite": (
        lambda gguf, copy, root: ["--output_dir", str(copy), "--overwrite", "true"],
        "is the de-quantized copy of the GGUF file",
    ),
    "output_dir inside the de-quantized copy": (
        lambda gguf, copy, root: ["--output_dir", str(copy / "run")],
        "lies inside the de-quantized copy of the GGUF file",
    ),
    "output_dir above the de-quantized copy, with --overwrite": (
        lambda gguf, copy, root: ["--output_dir", str(copy.parent), "--overwrite", "true"],
        "contains the de-quantized copy of the GGUF file",
    ),
    "cache_dir is the de-quantized copy": (
        lambda gguf, copy, root: ["--cache_dir", str(copy), "--output_dir", str(root / "run")],
        "is the de-quantized copy of the GGUF file",
    ),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_outputs_that_would_touch_a_gguf_model_are_refused(glue_dir, tmp_path, capsys, case):
    pytest.importorskip("gguf")
    (tmp_path / "models").mkdir()
    gguf = write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    copy = gguf_cache_folder(gguf)  # as a conversion leaves it: a folder lightning-prune wrote, with the marker
    copy.mkdir(parents=True)
    (copy / MARKER_FILE).write_text("written by lightning-prune")
    (copy / "config.json").write_text("{}")
    make_args, message = GGUF_CASES[case]
    args = fit_free_args(gguf, glue_dir, tmp_path / "run", *make_args(gguf, copy, tmp_path))
    assert_refused(args, capsys, message, [gguf.parent, copy, glue_dir])


def test_outputs_that_would_touch_a_package_file_are_refused(glue_dir, tmp_path, capsys):
    dist = distribution("safetensors")
    inner = next(str(f) for f in dist.files if str(f).endswith("__init__.py"))
    shipped = Path(dist.locate_file(inner))
    args = fit_free_args(f"pkg:safetensors/{inner}", glue_dir, tmp_path / "run", "--output_dir", str(shipped.parent),
                         "--overwrite", "true")  # fmt: skip
    assert_refused(args, capsys, "contains the model file", [shipped.parent])


# -- evaluate --output_file --------------------------------------------------------------------------------------

EVALUATE_CASES: dict[str, tuple[Callable[[Inputs], list[str]], str]] = {
    "a data TSV, with --overwrite": (
        lambda i: i.evaluate("--output_file", str(i.glue / "sst2" / "dev.tsv"), "--overwrite", "true"),
        "lies inside data_dir",
    ),
    "the model's config.json, with --overwrite": (
        lambda i: i.evaluate("--output_file", str(i.model / "config.json"), "--overwrite", "true"),
        "lies inside the model folder",
    ),
    "the evaluation file itself": (
        lambda i: i.evaluate(
            "--data.eval_file", str(i.root / "domain.tsv"), "--output_file", str(i.root / "domain.tsv")
        ),
        "is eval_file",
    ),
    "someone else's file, with --overwrite": (
        lambda i: i.evaluate("--output_file", str(i.root / "notes.json"), "--overwrite", "true"),
        "was not written by lightning-prune evaluate",
    ),
    "an earlier result, without --overwrite": (
        lambda i: i.evaluate("--output_file", str(i.root / "result.json")),
        "exists: choose another file, or pass --overwrite true",
    ),
    "a folder": (lambda i: i.evaluate("--output_file", str(i.root / "folder")), "is a folder"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_output_file_never_replaces_a_file_it_did_not_write(inputs, capsys, case):
    make_args, message = EVALUATE_CASES[case]
    (inputs.root / "domain.tsv").write_text("sentence\tlabel\ngood movie\t1\nawful plot\t0\n")
    (inputs.root / "notes.json").write_text('{"mine": true}\n')
    (inputs.root / "result.json").write_text('{"format": "lightning-prune/evaluation"}\n')
    (inputs.root / "folder").mkdir()
    watched = [inputs.model, inputs.glue, *(inputs.root / n for n in ("domain.tsv", "notes.json", "result.json"))]
    assert_refused(make_args(inputs), capsys, message, watched)


def test_evaluate_overwrites_its_own_result_when_asked(inputs):
    result = inputs.root / "result.json"
    main(inputs.evaluate("--output_file", str(result)))
    first = json.loads(result.read_text())
    main(inputs.evaluate("--output_file", str(result), "--overwrite", "true", "--data.eval_examples", "8"))
    second = json.loads(result.read_text())
    assert first["format"] == second["format"] == "lightning-prune/evaluation" and first != second


# -- pruning a pruned model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["bert_dir", "t5_gated_dir"])
def test_pruning_a_pruned_model_composes_the_plan(request, glue_dir, tmp_path, fixture):
    model_dir = request.getfixturevalue(fixture)
    first, second = tmp_path / "first", tmp_path / "second"
    main(fit_free_args(model_dir, glue_dir, first, "--scorer", "activation", "--scorer_options", "{}"))
    length = 64 if fixture == "bert_dir" else 128  # the default 128 is cut to the tiny BERT's 64 positions
    assert json.loads((first / "model" / "lightning_prune.json").read_text()) == {"task": "sst2", "max_length": length}
    before = digest(first)
    main(fit_free_args(first / "model", glue_dir, second, "--scorer", "activation", "--scorer_options", "{}"))
    assert digest(first) == before
    plans = [json.loads((run / "model" / "pruning_plan.json").read_text())["layers"] for run in (first, second)]
    for one, two in zip(*plans, strict=True):
        assert two["dense_size"] == one["dense_size"]  # refers to the original dense model
        assert len(two["kept"]) == len(one["kept"]) // 2 and set(two["kept"]) <= set(one["kept"])
        assert two["kept"] == sorted(two["kept"])
    metrics = json.loads((second / "metrics.json").read_text())
    evaluation = tmp_path / "eval.json"
    main(["evaluate", "--model.path", str(second / "model"), "--data.task", "sst2", "--data.data_dir", str(glue_dir),
          "--output_file", str(evaluation), *QUIET])  # fmt: skip
    result = json.loads(evaluation.read_text())
    assert result["metrics"] == pytest.approx(metrics["pruned_metrics"])
    assert result["parameters"] == metrics["parameters"]["pruned"]


def test_a_pruned_model_pruned_again_with_global_scope_loads(bert_dir, glue_dir, tmp_path):
    """Uneven widths are saved per layer and rebuilt from the dense config, even when the source was pruned."""
    first, second = tmp_path / "first", tmp_path / "second"
    main(fit_free_args(bert_dir, glue_dir, first, "--scorer", "activation", "--scorer_options", "{}"))
    main(fit_free_args(first / "model", glue_dir, second, "--scorer", "activation", "--scorer_options", "{}",
                       "--scope", "global"))  # fmt: skip
    metrics = json.loads((second / "metrics.json").read_text())
    evaluation = tmp_path / "eval.json"
    main(["evaluate", "--model.path", str(second / "model"), "--data.task", "sst2", "--data.data_dir", str(glue_dir),
          "--output_file", str(evaluation), *QUIET])  # fmt: skip
    assert json.loads(evaluation.read_text())["metrics"] == pytest.approx(metrics["pruned_metrics"])


def test_the_default_repair_is_bias_compensation_where_a_down_bias_takes_it_else_least_squares(
    request, glue_dir, tmp_path
):
    cases = [("bert_dir", [], "bias"), ("t5_gated_dir", [], "least_squares"), ("llama_dir", [], "least_squares"),
             ("t5_gated_dir", ["--reconstruct", "bias"], "none")]  # fmt: skip
    for fixture, options, expected in cases:
        out = tmp_path / f"{fixture}{len(options)}"
        main(fit_free_args(request.getfixturevalue(fixture), glue_dir, out, "--scorer", "activation",
                           "--scorer_options", "{}", *options))  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        # the activation scorer weighs the neurons' residuals wherever the least-squares refit runs
        assert (metrics["reconstruct"], metrics["refit_aware"]) == (expected, expected == "least_squares")


# -- weights that do not match their config ------------------------------------------------------------------------


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("fixture", "changes", "message"),
    [
        ("bert_dir", {"model_type": "distilbert"}, "missing, "),  # DistilBERT config over BERT weights
        ("bert_dir", {"intermediate_size": 64}, "mismatched keys"),
        ("t5_dir", {"d_ff": 64}, "mismatched keys"),
        ("t5_dir", {"num_layers": 1, "num_decoder_layers": 1}, "unexpected keys"),
    ],
)
def test_weights_that_do_not_match_the_config_are_an_error(request, glue_dir, tmp_path, capsys, fixture, changes,
                                                           message):  # fmt: skip
    model = Path(shutil.copytree(request.getfixturevalue(fixture), tmp_path / "model"))
    _edit_config(model, **changes)
    args = ["evaluate", "--model.path", str(model), "--data.task", "sst2", "--data.data_dir", str(glue_dir), *QUIET]
    line = assert_refused(args, capsys, message, [model, glue_dir])
    assert "do not match its config.json" in line
    out = tmp_path / "run"
    assert_refused(fit_free_args(model, glue_dir, out), capsys, message, [model, glue_dir], absent=out)


def test_pretraining_heads_in_the_checkpoint_are_not_an_error(bert_dir, glue_dir, tmp_path):
    """A stock checkpoint carries heads the bare encoder lacks (BERT's cls.*): those keys are harmless."""
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(bert_dir, tmp_path / "model"))
    weights = load_file(model / "model.safetensors")
    weights["cls.predictions.bias"] = torch.zeros(8)
    save_file(weights, model / "model.safetensors")
    main(["evaluate", "--model.path", str(model), "--data.task", "sst2", "--data.data_dir", str(glue_dir), *QUIET])


# -- bad data ------------------------------------------------------------------------------------------------------

SENTENCES = b"sentence\tlabel\n"


def stsb(score: bytes) -> bytes:
    header = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    return header + b"0\tmain\tf\t2012\t0\ts\ts\tgood film\tfine film\t" + score + b"\n"


DATA_CASES: dict[str, tuple[bytes, str, str]] = {
    # name: (file content, task, message; {file} is the file's path)
    "not UTF-8": (SENTENCES + b"good film\t1\ncaf\xe9\t0\n", "sst2", "{file} is not UTF-8: byte offset 30 (line 3)"),
    "superscript label": (SENTENCES + "good movie\t¹\n".encode(), "sst2", "{file}:2: label '¹' is not in the"),
    "full-width digit label": (SENTENCES + "good movie\t１\n".encode(), "sst2", "{file}:2: label '１' is not in the"),
    "blank lines keep line numbers": (SENTENCES + b"\ngood movie\t1\n\n\nawful plot\t7\n", "sst2", "{file}:6: label"),
    "STS-B NaN": (stsb(b"NaN"), "stsb", "{file}:2: label 'NaN' is not a number"),
    "STS-B infinite": (stsb(b"inf"), "stsb", "{file}:2: label 'inf' is not a number"),
    "STS-B full-width digit": (stsb("３".encode()), "stsb", "{file}:2: label '３' is not a number"),
    "STS-B above 5": (stsb(b"5.5"), "stsb", "{file}:2: label '5.5' is outside 0-5"),
    "STS-B below 0": (stsb(b"-1"), "stsb", "{file}:2: label '-1' is outside 0-5"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_names_the_file_and_line(inputs, capsys, case):
    content, task, message = DATA_CASES[case]
    file = inputs.data_file("bad.tsv", content)
    args = inputs.fit_free("--data.task", task, "--data.score_file", str(file))
    assert_refused(args, capsys, message.format(file=file), [file, inputs.model, inputs.glue], absent=inputs.out)


def test_a_folder_given_as_a_data_file(inputs, capsys):
    args = inputs.fit_free("--data.score_file", str(inputs.glue / "sst2"))
    assert_refused(args, capsys, "is a folder, not a file", [inputs.model, inputs.glue], absent=inputs.out)
    (inputs.glue / "sst2" / "train.tsv").unlink()
    (inputs.glue / "sst2" / "train.tsv").mkdir()
    assert_refused(inputs.fit_free(), capsys, "train.tsv is a folder, not a file", [inputs.model, inputs.glue])


# -- trainer, seed and scorer options ------------------------------------------------------------------------------

RANDOM = ["--scorer", "random", "--scorer_options"]
SETTING_CASES: dict[str, tuple[list[str], str]] = {
    "devices 0": (["--trainer.devices", "0"], "--trainer.devices 0: give a positive number"),
    "negative seed_everything": (["--seed_everything", "-1"], "seed_everything -1 is outside 0..4294967295"),
    "random seed not an integer": ([*RANDOM, '{"seed": 2.5}'], "seed must be an integer"),
    "random seed a string": ([*RANDOM, '{"seed": "abc"}'], "seed must be an integer"),
    "random seed oversized": ([*RANDOM, '{"seed": 2e30}'], "seed must be an integer"),
    "random seed beyond 64 bits": ([*RANDOM, '{"seed": 18446744073709551616}'], "integer from 0 to 2**64 - 1"),
    "random seed negative": ([*RANDOM, '{"seed": -3}'], "integer from 0 to 2**64 - 1"),
    "steps 2.5": (["--scorer_options", '{"steps": 2.5}'], "steps must be a positive integer, not 2.5"),
    "steps 0": (["--scorer_options", '{"steps": 0}'], "steps must be a positive integer, not 0"),
    "steps a word": (["--scorer_options", '{"steps": "twenty"}'], "steps must be a positive integer, not 'twenty'"),
    "steps_per_pass 1.5": (["--scorer_options", '{"steps_per_pass": 1.5}'], "steps_per_pass must be a positive"),
    "steps too many": (["--scorer_options", '{"steps": 1000000000000}'], "is more than 10,000"),
}
if not torch.cuda.is_available():
    SETTING_CASES["accelerator gpu without a GPU"] = (["--trainer.accelerator", "gpu"], "no GPU is visible to torch")


@pytest.mark.parametrize("case", list(SETTING_CASES))
def test_bad_settings_are_one_line(inputs, capsys, case):
    change, message = SETTING_CASES[case]
    assert_refused(inputs.fit_free(*change), capsys, message, [inputs.model, inputs.glue], absent=inputs.out)


def test_steps_per_pass_too_large_for_memory(glue_dir, tmp_path, capsys):
    """16 examples x 10,000 steps per pass of the committed model need far more than any machine has."""
    out = tmp_path / "run"
    args = fit_free_args(COMMITTED_MODEL, glue_dir, out, "--data.batch_size", "16",
                         "--scorer_options", '{"steps": 10000, "steps_per_pass": 10000}')  # fmt: skip
    line = assert_refused(args, capsys, "GiB per pass (160,000 rows = 16 examples x 10000 steps per pass", [glue_dir])
    assert "lower steps_per_pass" in line and not out.exists()
