"""The second adversarial pass: leftovers that are inputs, signals, cache integrity, a tokenizer that is not the
model's, one's own evaluation file, and settings that used to hang or end in a traceback.

Every refusal is one line, exit code 2, nothing written, and every input byte-identical (sha256 before/after).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_input_safety import COMMITTED_MODEL, QUIET, Inputs, assert_refused

from conftest import digest, env_with, fit_free_args, install_plugin, run_cli
from lightning_prune.cli import main


@pytest.fixture
def inputs(bert_dir, glue_dir, tmp_path) -> Inputs:
    return Inputs(tmp_path, bert_dir, glue_dir)


# -- a killed run's leftovers that the user gives as inputs are never cleaned up --------------------------------


def test_a_model_inside_a_killed_runs_temporary_folder_is_not_deleted(inputs, capsys):
    """A sweep killed mid-save leaves ``.v.tmp-<dead pid>/model``; pruning from it must not delete it."""
    leftover = inputs.root / ".v.tmp-99999"
    model = Path(shutil.copytree(inputs.model, leftover / "model"))
    before = digest(model)
    code, _, err = run_cli(fit_free_args(model, inputs.glue, inputs.root / "v", *QUIET), capsys)
    assert code == 0, err
    assert digest(model) == before
    assert (inputs.root / "v" / "metrics.json").is_file()


def test_an_eval_file_named_like_a_leftover_is_not_deleted(inputs, capsys):
    eval_file = inputs.root / ".res.json.tmp-99998"
    shutil.copy(inputs.glue / "sst2" / "dev.tsv", eval_file)
    before = digest(eval_file)
    result = inputs.root / "res.json"
    code, _, err = run_cli(inputs.evaluate("--data.eval_file", str(eval_file), "--output_file", str(result)), capsys)
    assert code == 0, err
    assert digest(eval_file) == before and result.is_file()


def test_a_model_named_like_a_moved_aside_output_is_not_moved_into_the_run(inputs, capsys):
    model = Path(shutil.copytree(inputs.model, inputs.root / ".v.old-99997"))
    before = digest(model)
    code, _, err = run_cli(fit_free_args(model, inputs.glue, inputs.root / "v", *QUIET), capsys)
    assert code == 0, err
    assert digest(model) == before
    assert not (inputs.root / "v" / "config.json").exists()  # the run folder holds the run, not the model


# -- the score cache: keyed by everything that changes scores, entries checked before use -------------------------


def _fit_free_json(args: list[str]) -> dict:
    main(args)
    out = Path(args[args.index("--output_dir") + 1])
    return json.loads((out / "metrics.json").read_text())


def test_a_partial_scoring_run_does_not_serve_a_full_one(inputs):
    cache = ["--cache_dir", str(inputs.cache), *QUIET]
    partial = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "a", *cache,
                                           "--trainer.limit_predict_batches", "1"))  # fmt: skip
    full = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "b", *cache))
    assert partial["examples_scored"] == 8 and full["examples_scored"] == 48
    assert not full["scores_from_cache"] and partial["score_key"] != full["score_key"]


def test_other_scorer_code_gets_another_key(inputs, monkeypatch):
    from lightning_prune import fingerprint

    first = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "a", *QUIET))
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *files: "edited code")
    second = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "b", *QUIET))
    assert first["score_key"] != second["score_key"] and not second["scores_from_cache"]


def _entry(key: str) -> Path:
    from lightning_prune.cache import cache_root

    return cache_root() / f"{key}.safetensors"


def _rewrite_entry(entry: Path, change, request=None) -> None:
    """Save ``change`` of the entry's tensors as a well-formed entry: its checksum valid, its request kept (or
    ``request(original)``), so only the fit checks can find what is wrong."""
    from lightning_prune.cache import tensors_digest

    with safe_open(str(entry), "pt") as handle:
        metadata = handle.metadata()
    tensors = change(load_file(str(entry)))
    answered = metadata["request"] if request is None else request(metadata["request"])
    save_file(tensors, str(entry), metadata={"request": answered, "sha256": tensors_digest(tensors)})


def _flip_last_byte(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0x01  # a byte of the last tensor's data: the file stays readable
    entry.write_bytes(bytes(data))


def _another_request(request: str) -> str:
    return json.dumps({**json.loads(request), "batch_size": 4}, sort_keys=True)


def _symlink_to_a_copy(entry: Path) -> None:
    """The very same (valid) entry, but through a link: entries are never read through links."""
    copy = entry.with_name("elsewhere.bin")
    entry.rename(copy)
    entry.symlink_to(copy)


DAMAGES = {
    "a layer of another shape": (
        lambda e: _rewrite_entry(e, lambda t: {**t, "layer0": torch.ones(10)}),
        "has scores of another shape",
    ),
    "NaN scores": (
        lambda e: _rewrite_entry(e, lambda t: {**t, "layer1": torch.full_like(t["layer1"], float("nan"))}),
        "holds NaN or infinite scores",
    ),
    "another example count": (
        lambda e: _rewrite_entry(e, lambda t: {**t, "examples": torch.tensor(2)}),
        "sums 2 examples, not 48",
    ),
    "a missing layer": (
        lambda e: _rewrite_entry(e, lambda t: {k: v for k, v in t.items() if k != "layer1"}),
        "lacks entries",
    ),
    "a changed byte": (_flip_last_byte, "was changed after it was written (checksum)"),
    "another request's entry": (
        lambda e: _rewrite_entry(e, lambda t: t, request=_another_request),
        "answers another request",
    ),
    "a symlink": (_symlink_to_a_copy, "is a symlink"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_entry_is_recomputed_with_a_note(inputs, damage):
    change, note = DAMAGES[damage]
    first = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "a", *QUIET))
    change(_entry(first["score_key"]))
    second = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "b", *QUIET))
    assert note in second["cache_entries_rejected"][0]
    assert not second["scores_from_cache"] and second["examples_scored"] == 48
    assert second["sparsity"] == second["achieved_sparsity"] == 0.5
    a = load_file(str(inputs.root / "a" / "scores.safetensors"))
    b = load_file(str(inputs.root / "b" / "scores.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    entry = _entry(first["score_key"])
    assert entry.is_file() and not entry.is_symlink()  # recomputed and written in its place
    third = _fit_free_json(fit_free_args(inputs.model, inputs.glue, inputs.root / "c", *QUIET))
    assert third["scores_from_cache"] and third["cache_entries_rejected"] == []


# -- a tokenizer that is not the model's -------------------------------------------------------------------------


def test_a_model_folder_without_its_tokenizer_is_refused(glue_dir, tmp_path, capsys):
    """Without tokenizer.json, transformers builds the committed model a tokenizer of its 5 special tokens."""
    inputs = Inputs(tmp_path, COMMITTED_MODEL, glue_dir)
    (inputs.model / "tokenizer.json").unlink()
    message = "tokens but the model's embedding has 30522 rows"
    assert_refused(inputs.evaluate(), capsys, message, [inputs.model, inputs.glue])
    assert_refused(inputs.fit_free(), capsys, message, [inputs.model, inputs.glue], absent=inputs.out)


# -- one's own evaluation file needs nothing else ---------------------------------------------------------------


def test_evaluate_with_an_eval_file_reads_no_scoring_split(inputs, capsys, monkeypatch):
    """No data_dir and no network: the eval file is all evaluate reads (the train split is never loaded)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    eval_file = inputs.root / "mine.tsv"
    shutil.copy(inputs.glue / "sst2" / "dev.tsv", eval_file)
    args = ["evaluate", "--model.path", str(inputs.model), "--data.task", "sst2", "--data.eval_file", str(eval_file),
            "--output_file", str(inputs.root / "r.json"), *QUIET]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads((inputs.root / "r.json").read_text())["eval_source"] == str(eval_file)
    (inputs.glue / "sst2" / "train.tsv").unlink()  # a data_dir without train.tsv is fine too
    code, _, err = run_cli([*args, "--data.data_dir", str(inputs.glue), "--overwrite", "true"], capsys)
    assert code == 0, err


# -- settings that hung or ended in a traceback: one line, before the work -----------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


REFUSED = {
    "checkpoint_every 0": (lambda i: i.fit_free("--checkpoint_every", "0"), "checkpoint_every"),
    "checkpoint_every -1": (lambda i: i.fit_free("--checkpoint_every", "-1"), "checkpoint_every"),
    "num_workers -1": (lambda i: i.fit_free("--data.num_workers", "-1"), "num_workers"),
    "eval_max_length past the positions": (
        lambda i: i.evaluate("--model.eval_max_length", "2000"),
        "eval_max_length 2000 exceeds the 64 positions",
    ),
    "max_length past the positions": (
        lambda i: i.fit_free("--model.max_length", "2000"),
        "max_length 2000 exceeds the 64 positions",
    ),
    "limit_test_batches 0": (lambda i: i.evaluate("--trainer.limit_test_batches", "0"), "runs no batch at all"),
    "limit_predict_batches 0": (lambda i: i.fit_free("--trainer.limit_predict_batches", "0"), "runs no batch at all"),
    "min_keep above every layer": (lambda i: i.fit_free("--min_keep", "5000"), "nothing would be pruned"),
    "empty output_dir": (lambda i: i.fit_free("--output_dir", ""), "output_dir is empty"),
    "empty output_file": (lambda i: i.evaluate("--output_file", ""), "output_file is empty"),
    "output_file is a FIFO": (
        lambda i: i.evaluate("--output_file", str(_fifo(i.root / "fifo")), "--overwrite", "true"),
        "is not a regular file",
    ),
    "output_file is /dev/zero": (
        lambda i: i.evaluate("--output_file", "/dev/zero", "--overwrite", "true"),
        "is not a regular file",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_settings_that_hung_or_crashed_are_one_line(inputs, capsys, case):
    make_args, message = REFUSED[case]
    assert_refused(make_args(inputs), capsys, message, [inputs.model, inputs.glue], absent=inputs.out)


def test_min_keep_that_limits_pruning_reports_the_achieved_sparsity(inputs, capsys, caplog):
    """Tiny BERT FFN layers have 48 neurons: min_keep 30 keeps 30 of them where 50% would keep 24."""
    args = inputs.fit_free("--min_keep", "30", "--scorer", "magnitude", "--scorer_options", "{}")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((inputs.out / "metrics.json").read_text())
    assert metrics["sparsity"] == 0.5 and metrics["achieved_sparsity"] == pytest.approx(18 / 48)
    assert "FFN sparsity 0.375 (asked 0.5; min_keep kept more)" in caplog.text


def test_width_multiple_rounds_every_kept_width_down(inputs, capsys, caplog):
    """48 neurons at sparsity 0.4 keep 29; rounded down to a multiple of 8: 24, and the report says why."""
    args = inputs.fit_free(
        "--sparsity", "0.4", "--width_multiple", "8", "--scorer", "magnitude", "--scorer_options", "{}"
    )
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads((inputs.out / "metrics.json").read_text())
    assert {v["kept"] for v in metrics["ffn_neurons"].values()} == {24} and metrics["achieved_sparsity"] == 0.5
    assert "FFN sparsity 0.500 (asked 0.4; widths rounded to multiples of 8)" in caplog.text


def test_a_full_disk_is_one_line_and_leaves_nothing(inputs, capsys, monkeypatch):
    """Saving fails with ENOSPC (injected where the weights are written): one line, no output folder."""
    from lightning_prune.export import folder as export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_model", full_disk)
    assert_refused(inputs.fit_free(), capsys, "No space left on device", [inputs.model, inputs.glue], absent=inputs.out)
    assert not list(inputs.root.glob(".run.*"))


# -- deterministic fault injection: a scorer plugin that signals or kills its own process after N batches ------

FAULTS_PLUGIN = """
import os
import signal

from lightning_prune.scorers.attribution import AttributionScorer


class Faulty(AttributionScorer):
    '''Attribution that sends its own process ``FAULT_SIGNAL`` at call number ``FAULT_AT`` (unset: never).'''

    calls = 0

    def __call__(self, model, batch):
        Faulty.calls += 1
        if str(Faulty.calls) == os.environ.get("FAULT_AT"):
            os.kill(os.getpid(), getattr(signal, os.environ["FAULT_SIGNAL"]))
        return super().__call__(model, batch)
"""


@pytest.fixture
def faulty_env(tmp_path) -> dict[str, str]:
    entry_points = "[lightning_prune.scorers]\nfaulty = faults_plugin:Faulty\n"
    return env_with(install_plugin(tmp_path, "faults-plugin", entry_points, "faults_plugin", FAULTS_PLUGIN))


def _run(args: list[str], env: dict[str, str], **faults: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_prune", *args], env={**env, **faults},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("fault", ["SIGTERM", "SIGKILL"])
def test_a_run_stopped_while_scoring_writes_nothing_and_resumes_to_identical_scores(inputs, faulty_env, fault):
    """SIGTERM (docker stop, schedulers) stops within the batch it arrived in, drops that batch and saves the
    progress of the batches before it; SIGKILL keeps the progress saved before it. Either way the rerun resumes
    after batch 2 and ends with an uninterrupted run's scores."""
    args = fit_free_args(inputs.model, inputs.glue, inputs.out, "--scorer", "faulty", "--data.batch_size", "4",
                         "--checkpoint_every", "1", "--cache_dir", str(inputs.cache), *QUIET)  # fmt: skip
    stopped = _run(args, faulty_env, FAULT_AT="3", FAULT_SIGNAL=fault)
    if fault == "SIGTERM":
        assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
        assert "stopped by SIGTERM" in stopped.stderr
    else:
        assert stopped.returncode == -signal.SIGKILL
    assert not inputs.out.exists()
    resumed = _run(args, faulty_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((inputs.out / "metrics.json").read_text())
    assert summary["batches_resumed"] == 2
    fresh = inputs.root / "fresh"
    fresh_args = [*args[: args.index("--cache_dir")], "--cache_dir", str(inputs.root / "other-cache")]
    fresh_args[fresh_args.index("--output_dir") + 1] = str(fresh)
    assert _run(fresh_args, faulty_env).returncode == 0
    a, b = load_file(str(inputs.out / "scores.safetensors")), load_file(str(fresh / "scores.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_while_evaluating_stops_with_nothing_written(inputs, faulty_env):
    """SIGTERM during the dense evaluation (injected through a test batch hook): exit 143, no result file."""
    sitecustomize = Path(faulty_env["PYTHONPATH"].split(os.pathsep)[0]) / "sitecustomize.py"
    sitecustomize.write_text(
        textwrap.dedent("""
        import os, signal
        from lightning_prune import modules
        original = modules.TaskModel.test_step
        def test_step(self, batch, batch_idx):
            if batch_idx == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, batch, batch_idx)
        modules.TaskModel.test_step = test_step
    """)
    )
    result = inputs.root / "r.json"
    stopped = _run(inputs.evaluate("--data.batch_size", "4", "--output_file", str(result)), faulty_env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "stopped by SIGTERM" in stopped.stderr and not result.exists()
