"""The third adversarial pass (issue 36): the score cache and the GGUF cache as attack surfaces, --overwrite next to
a user's files, signals that must stop a run within moments, a help cache that is a pipe, settings that are not
finite, outputs that cannot be renamed into place, a sweep that chose nothing, JSON that is not JSON, and messages
that pointed the wrong way.

Every case checks the exit code, the one line it prints and the sha256 of every input before and after.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_input_safety import QUIET, Inputs, assert_refused

from conftest import digest, env_with, fit_free_args, install_plugin, one_error_line, run_cli
from lightning_prune.io import MARKER_FILE, MARKER_TEXT

RANDOM = ["--scorer", "random", "--scorer_options", "{}"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def inputs(bert_dir, glue_dir, tmp_path) -> Inputs:
    return Inputs(tmp_path, bert_dir, glue_dir)


def succeeds(args: list[str], capsys, watched: list[Path]) -> str:
    """Exit code 0, no error line, every watched input byte-identical; stderr."""
    before = digest(*watched)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "lightning-prune: error:" not in err
    assert digest(*watched) == before
    return err


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _edit(file: Path) -> None:
    """Flip a bit of the last byte (tensor data in a safetensors file: it stays loadable)."""
    data = file.read_bytes()
    file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# -- 1. the score cache: an entry is trusted only if it is a regular file that answers this request, unchanged -----


def _cache_entry(run: Path, cache: Path) -> Path:
    return cache / f"{metrics(run)['score_key']}.safetensors"


def test_a_cache_entry_replaced_by_a_symlink_is_neither_read_nor_written_through(inputs, capsys, caplog):
    """A shared cache: someone replaces an entry by a link to another user's file. The rerun must not overwrite the
    link's target when it stores the recomputed scores: it replaces the link (test_adversarial: nor is a link read)."""
    args = inputs.fit_free("--cache_dir", str(inputs.cache))
    succeeds(args, capsys, [inputs.model, inputs.glue])
    entry = _cache_entry(inputs.out, inputs.cache)
    victim = inputs.root / "thesis.tex"
    victim.write_text("another user's work\n")
    entry.unlink()
    entry.symlink_to(victim)
    rerun = [*args, "--output_dir", str(inputs.root / "again")]
    succeeds(rerun, capsys, [inputs.model, inputs.glue, victim])
    again = metrics(inputs.root / "again")
    assert not again["scores_from_cache"] and "is a symlink" in again["cache_entries_rejected"][0]
    assert caplog.text.count("is a symlink") == 1  # one note, not one per stage that looked at the cache
    assert entry.is_file() and not entry.is_symlink()
    assert victim.read_text() == "another user's work\n"
    first, second = (load_file(str(run / "scores.safetensors")) for run in (inputs.out, inputs.root / "again"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_cache_entry_with_a_changed_byte_or_another_requests_metadata_is_recomputed(inputs, capsys):
    """An entry of this key copied from another request (its own metadata), then one with a flipped byte."""
    args = inputs.fit_free("--cache_dir", str(inputs.cache))
    succeeds(args, capsys, [inputs.model, inputs.glue])
    succeeds([*args, "--data.batch_size", "8", "--output_dir", str(inputs.root / "other")], capsys, [inputs.model])
    entry, other = _cache_entry(inputs.out, inputs.cache), _cache_entry(inputs.root / "other", inputs.cache)
    cases = [(lambda: shutil.copy(other, entry), "answers another request"),
             (lambda: _edit(entry), "was changed after it was written (checksum)")]  # fmt: skip
    for number, (damage, note) in enumerate(cases):
        damage()
        run = inputs.root / f"rerun{number}"
        succeeds([*args, "--output_dir", str(run)], capsys, [inputs.model, inputs.glue])
        assert not metrics(run)["scores_from_cache"] and note in metrics(run)["cache_entries_rejected"][0]
        assert metrics(run)["examples_scored"] == 48


def test_progress_that_does_not_fit_the_shard_is_not_resumed(inputs, capsys):
    """Saved partial sums that claim more batches than the shard has, or other examples than its batches hold, are
    rejected (a resumed run would otherwise skip every batch and prune by the file's numbers)."""
    from lightning_prune.cache import Progress, ScoreCache

    args = inputs.fit_free("--cache_dir", str(inputs.cache), "--checkpoint_every", "1")
    succeeds(args, capsys, [inputs.model, inputs.glue])
    entry = _cache_entry(inputs.out, inputs.cache)
    with safe_open(str(entry), "pt") as handle:
        request = json.loads(handle.metadata()["request"])
    reference = load_file(str(inputs.out / "scores.safetensors"))
    for number, (examples, batches) in enumerate([(999.0, 99), (7.0, 2)]):  # 12 batches of 4
        entry.unlink()
        cache = ScoreCache(inputs.cache, entry.stem, request)
        sums = [torch.full((48,), 1e6, dtype=torch.float64) for _ in range(2)]
        cache.save_progress(0, 1, Progress(sums, examples, batches))
        run = inputs.root / f"resumed{number}"
        succeeds([*args, "--output_dir", str(run)], capsys, [inputs.model, inputs.glue])
        assert metrics(run)["batches_resumed"] == 0 and metrics(run)["examples_scored"] == 48
        assert f"claims {examples:g} examples in {batches} batches" in metrics(run)["cache_entries_rejected"][0]
        scores = load_file(str(run / "scores.safetensors"))
        assert all(torch.equal(scores[k], reference[k]) for k in reference)


def test_a_full_disk_while_writing_the_score_cache_is_one_line(inputs, capsys, monkeypatch):
    """ENOSPC when scoring progress is saved: was a traceback."""
    from lightning_prune import cache

    def full(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(cache, "save_file", full)
    args = inputs.fit_free("--cache_dir", str(inputs.cache))
    line = assert_refused(args, capsys, "No space left on device", [inputs.model, inputs.glue], absent=inputs.out)
    assert f"could not write the score cache {inputs.cache}" in line
    assert list(inputs.cache.iterdir()) == []


# -- 2. --overwrite replaces only what lightning-prune wrote -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda run: (run / "notes.txt").write_text("my notes"),
            "holds what lightning-prune did not write (notes.txt)",
        ),
        (lambda run: (run / MARKER_FILE).write_text(MARKER_TEXT), "an earlier lightning-prune that did not list"),
    ],
    ids=["a user's file in the run folder", "a marker without the list of files"],
)
def test_overwrite_leaves_a_run_folder_holding_files_it_did_not_write(inputs, capsys, change, message):
    succeeds(inputs.fit_free(*RANDOM), capsys, [inputs.model, inputs.glue])
    change(inputs.out)
    watched = [inputs.model, inputs.glue, inputs.out]
    assert_refused(inputs.fit_free(*RANDOM, "--overwrite", "true"), capsys, message, watched)


# -- 3. the de-quantized copy of a GGUF file is checked at every use ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from lightning_prune.testing import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def gguf(tiny_gguf, tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    return Path(shutil.copy(tiny_gguf, tmp_path / "models" / "tiny.gguf"))


def _gguf_evaluate(gguf: Path, glue: Path) -> list[str]:
    return ["evaluate", "--model.path", str(gguf), "--data.task", "sst2", "--data.data_dir", str(glue),
            "--data.eval_examples", "4", *QUIET]  # fmt: skip


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:1000])


def _symlink_to_a_copy(folder: Path) -> Path:
    """The cached folder moved elsewhere and linked back: still intact, but never used through a link."""
    elsewhere = Path(shutil.copytree(folder, folder.parent.parent / "elsewhere"))
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


GGUF_DAMAGES = {
    "weights edited": (lambda f: _edit(f / "model.safetensors"), "checksums differ"),
    "weights truncated": (lambda f: _truncate(f / "model.safetensors"), "checksums differ"),
    "weights deleted": (lambda f: (f / "model.safetensors").unlink(), "checksums differ"),
    "checksums deleted": (lambda f: (f / "checksums.json").unlink(), "has no checksums"),
    "a symlink": (_symlink_to_a_copy, "is a symlink"),
}


@pytest.mark.parametrize("damage", list(GGUF_DAMAGES))
def test_a_damaged_de_quantized_copy_is_converted_again_with_a_note(gguf, glue_dir, tmp_path, capsys, damage):
    from lightning_prune.sources import gguf_cache_folder, gguf_folder

    folder = gguf_folder(gguf)
    intact = digest(folder)
    change, note = GGUF_DAMAGES[damage]
    elsewhere = change(folder)
    watched = [gguf.parent, glue_dir, *([elsewhere] if elsewhere else [])]
    err = succeeds(_gguf_evaluate(gguf, glue_dir), capsys, watched)
    assert f"lightning-prune: note: the de-quantized copy of {gguf}" in err and note in err
    assert folder == gguf_cache_folder(gguf) and folder.is_dir() and not folder.is_symlink()
    assert digest(folder) == intact  # converted again, to the same bytes
    err = succeeds(_gguf_evaluate(gguf, glue_dir), capsys, [gguf.parent, folder])  # intact now: used as it is
    assert "note:" not in err


def test_a_truncated_gguf_file_is_one_line(gguf, glue_dir, capsys):
    """Was a struct.error traceback from transformers' GGUF reader."""
    _truncate(gguf)
    assert_refused(_gguf_evaluate(gguf, glue_dir), capsys, "it is damaged, truncated", [gguf.parent, glue_dir])


def test_a_full_disk_while_converting_a_gguf_file_is_one_line(gguf, glue_dir, capsys, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    from lightning_prune.sources import gguf_cache_folder

    def full(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    line = assert_refused(_gguf_evaluate(gguf, glue_dir), capsys, "No space left on device", [gguf.parent, glue_dir])
    assert "could not write the GGUF cache" in line
    folder = gguf_cache_folder(gguf)
    assert [p.name for p in folder.parent.iterdir()] == [f"{folder.name}.lock"]  # nothing half-written


# -- 4. SIGTERM and Ctrl-C stop a run within moments, dropping the batch in flight ----------------------------------

STALLING_PLUGIN = """
import os
import signal
import time
from pathlib import Path

from lightning_prune.scorers.attribution import AttributionScorer


class Stalling(AttributionScorer):
    '''Attribution whose call number ``STOP_AT`` sends ``STOP_SIGNAL`` to its own process, or with ``STOP_GROUP``
    to its process group as a terminal's Ctrl-C does (noting when in ``STOP_NOTE``), and then works for another
    minute: a batch that long must not delay the stop.'''

    calls = 0

    def __call__(self, model, batch):
        Stalling.calls += 1
        if str(Stalling.calls) == os.environ.get("STOP_AT"):
            Path(os.environ["STOP_NOTE"]).write_text(str(time.monotonic()))
            number = getattr(signal, os.environ["STOP_SIGNAL"])
            os.killpg(0, number) if os.environ.get("STOP_GROUP") else os.kill(os.getpid(), number)
            for _ in range(600):
                time.sleep(0.1)
        return super().__call__(model, batch)
"""


@pytest.fixture
def stalling_env(tmp_path) -> dict[str, str]:
    entry_points = "[lightning_prune.scorers]\nstalling = stalling_plugin:Stalling\n"
    return env_with(install_plugin(tmp_path, "stalling-plugin", entry_points, "stalling_plugin", STALLING_PLUGIN))


@pytest.fixture(scope="module")
def uninterrupted_scores(bert_dir, glue_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Attribution scores of an uninterrupted run in batches of 4 (what the stalling plugin computes)."""
    from lightning_prune.cli import main

    root = tmp_path_factory.mktemp("uninterrupted")
    main(fit_free_args(bert_dir, glue_dir, root / "run", "--data.batch_size", "4", "--cache_dir", str(root / "cache"),
                       *QUIET))  # fmt: skip
    return load_file(str(root / "run" / "scores.safetensors"))


def _run(args: list[str], env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    """``lightning-prune args`` in a process group of its own (a signal to the group stops at it)."""
    return subprocess.run([sys.executable, "-m", "lightning_prune", *args], env={**env, **extra},
                          capture_output=True, text=True, timeout=300, start_new_session=True)  # fmt: skip


SIGNALS = {  # how the signal is sent: (signal, to the process group, options, the line)
    "SIGTERM to the process (docker stop)": ("SIGTERM", "", [], "stopped by SIGTERM; "),
    "Ctrl-C, with 2 data loader workers": ("SIGINT", "1", ["--data.num_workers", "2"], "stopped by SIGINT (Ctrl-C); "),
}


@pytest.mark.parametrize("case", list(SIGNALS))
def test_a_signal_stops_scoring_within_moments_and_the_rerun_resumes(inputs, stalling_env, uninterrupted_scores, case):
    """Before: Lightning noted SIGTERM and stopped after the batch (a minute here; docker kills after 10 s), and
    Ctrl-C exited 1 after "Detected KeyboardInterrupt". Now: 128 + signal within seconds, one line (none from the
    data loader workers Ctrl-C reaches too), no output, and the rerun resumes batches 1-2."""
    name, group, options, line = SIGNALS[case]
    args = inputs.fit_free(
        "--scorer", "stalling", "--checkpoint_every", "1", "--cache_dir", str(inputs.cache), *options
    )
    watched = [inputs.model, inputs.glue]
    before = digest(*watched)
    note = inputs.root / "signalled-at"
    stopped = _run(args, stalling_env, STOP_AT="3", STOP_SIGNAL=name, STOP_GROUP=group, STOP_NOTE=str(note))
    ended = time.monotonic()
    assert stopped.returncode == 128 + getattr(signal, name), stopped.stderr[-3000:]
    assert ended - float(note.read_text()) < 20  # the stalled batch (60 s) was not waited for
    [said] = [text for text in stopped.stderr.splitlines() if text.startswith("lightning-prune:")]
    assert said.startswith(f"lightning-prune: {line}nothing was written")
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert not inputs.out.exists() and digest(*watched) == before
    resumed = _run(args, stalling_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(inputs.out)["batches_resumed"] == 2  # the batch in flight (3) was dropped, not half counted
    scores = load_file(str(inputs.out / "scores.safetensors"))
    assert all(torch.equal(scores[k], uninterrupted_scores[k]) for k in uninterrupted_scores)
    assert digest(*watched) == before


@pytest.mark.parametrize("how", ["SIGINT", "KeyboardInterrupt"])
def test_ctrl_c_while_the_model_loads_is_one_line(inputs, capsys, monkeypatch, how):
    """Ctrl-C (the signal, or a KeyboardInterrupt raised by a library) before any scoring: exit 130, one line."""
    from lightning_prune import modules

    def interrupted(*args, **kwargs):
        if how == "SIGINT":
            os.kill(os.getpid(), signal.SIGINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(modules, "load_model", interrupted)
    before = digest(inputs.model, inputs.glue)
    try:
        code, _, err = run_cli(inputs.fit_free(), capsys)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")
    assert code == 130, err
    [said] = [text for text in err.splitlines() if text.startswith("lightning-prune:")]
    assert said.startswith("lightning-prune: stopped by SIGINT (Ctrl-C); nothing was written")
    assert not inputs.out.exists() and digest(inputs.model, inputs.glue) == before


def test_the_cli_runs_in_a_thread_other_than_the_main_one(inputs, capsys):
    """Signal handlers can only be set in the main thread: elsewhere (a job runner's worker thread) the run goes on
    without them, instead of ending in "ValueError: signal only works in main thread"."""
    outcome = []

    def run() -> None:
        try:
            outcome.append(run_cli(inputs.fit_free("--checkpoint_every", "0"), capsys))
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert len(outcome) == 1 and isinstance(outcome[0], tuple), outcome
    code, _, err = outcome[0]
    assert code == 2 and "checkpoint_every" in one_error_line(err)


# -- 5. the help cache and the command name ------------------------------------------------------------------------


def _help_cache(monkeypatch, tmp_path) -> tuple[Path, dict[str, str]]:
    """The help cache file of ``fit-free --help`` under a private cache and a fixed terminal size, and the
    environment a subprocess needs to look for it at the same place."""
    from lightning_prune.entry import _help_cache_file

    sizes = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "COLUMNS": "100", "LINES": "40"}
    for key, value in sizes.items():
        monkeypatch.setenv(key, value)
    return _help_cache_file(["fit-free", "--help"]), {**os.environ, **sizes}


def test_a_fifo_in_place_of_the_help_cache_does_not_block_help(tmp_path, monkeypatch):
    cached, env = _help_cache(monkeypatch, tmp_path)
    cached.parent.mkdir(parents=True)
    os.mkfifo(cached)
    shown = subprocess.run([sys.executable, "-m", "lightning_prune", "fit-free", "--help"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "--model.path" in shown.stdout and "--scorer" in shown.stdout
    assert cached.is_file()  # the pipe is replaced by the help text


def test_a_changed_help_cache_is_not_printed(tmp_path, monkeypatch, capsys):
    cached, _ = _help_cache(monkeypatch, tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_text("garbage that someone wrote here\n")
    code, out, err = run_cli(["fit-free", "--help"], capsys)
    assert code == 0, err
    assert "garbage" not in out and "--model.path" in out
    code, again, _ = run_cli(["fit-free", "--help"], capsys)  # from the cache now
    assert code == 0 and again == out


def test_a_mistyped_command_is_one_line(inputs, capsys):
    args = ["fit-fre", *inputs.fit_free()[1:]]
    line = assert_refused(args, capsys, "unknown command 'fit-fre'", [inputs.model, inputs.glue], absent=inputs.out)
    assert "fit-free, evaluate, export, scorers" in line


# -- 6. settings and outputs checked before the work ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("max_drop: .nan\n", "max_drop nan is not a drop"),
        ("max_drop: .inf\n", "max_drop inf is not a drop"),
        ("damping: .nan\n", 'Parser key "damping": Not of type PositiveFloat: nan'),  # NaN > 0 is false
        ("damping: .inf\n", "damping inf is not a finite number"),
    ],
    ids=["max_drop .nan", "max_drop .inf", "damping .nan", "damping .inf"],
)
def test_settings_that_are_not_finite_are_one_line(inputs, capsys, config, message):
    """Each was accepted and the run went on (exit 0); max_drop NaN chose nothing, infinite everything."""
    file = inputs.root / "settings.yaml"
    file.write_text(config)
    args = [*inputs.fit_free()[:1], "--config", str(file), *inputs.fit_free("--data.num_examples", "16")[1:]]
    assert_refused(args, capsys, message, [inputs.model, inputs.glue, file], absent=inputs.out)


def test_a_width_multiple_of_the_widest_layer_is_one_line(inputs, capsys):
    message = "width_multiple 48 is at least the width of every FFN layer"
    assert_refused(inputs.fit_free("--width_multiple", "48"), capsys, message, [inputs.model, inputs.glue])


def _output(inputs: Inputs, command: str) -> tuple[list[str], Path]:
    if command == "fit-free":
        return inputs.fit_free(*RANDOM), inputs.out
    result = inputs.root / "result.json"
    return inputs.evaluate("--output_file", str(result)), result


@pytest.mark.parametrize("command", ["fit-free", "fit-free through a symlink", "evaluate"])
def test_an_output_that_is_a_mount_point_is_one_line(inputs, capsys, monkeypatch, command):
    """``docker run -v host:/out ... --output_dir /out``: renaming a mount point fails (EBUSY), and only after the
    work. A symlink to one is replaced at its target, so it is refused too. (``ismount`` answers for a fake mount.)"""
    args, output = _output(inputs, command.split()[0])
    if command == "fit-free through a symlink":
        output = inputs.root / "volume"
        inputs.out.symlink_to(output, target_is_directory=True)
    output.mkdir() if command != "evaluate" else output.write_text('{"format": "lightning-prune/evaluation"}\n')
    mounted = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == output or mounted(path))
    args = [*args, "--overwrite", "true"]
    assert_refused(args, capsys, "is a mount point", [inputs.model, inputs.glue, output])


@pytest.mark.parametrize("command", ["fit-free", "evaluate"])
def test_an_output_beside_which_nothing_can_be_renamed_is_one_line(inputs, capsys, monkeypatch, command):
    args, output = _output(inputs, command)
    rename = os.replace

    def refused_in_root(source, target):
        if Path(source).parent == inputs.root:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        rename(source, target)

    monkeypatch.setattr(os, "replace", refused_in_root)
    message = "does not let files be created and renamed (Invalid cross-device link)"
    assert_refused(args, capsys, message, [inputs.model, inputs.glue], absent=output)
    assert sorted(p.name for p in inputs.root.iterdir()) == ["glue", "model"]  # no probe left behind


def test_a_dead_runs_moved_aside_output_is_not_restored_over_a_deleted_one(inputs, capsys):
    """A run killed between moving the old output aside and moving the new one in left ``.run.old-<pid>``; the user
    then deleted ``run``. The next run deletes the leftover: it never brings back what the user deleted."""
    old = inputs.root / f".run.old-{dead_pid()}"
    old.mkdir()
    (old / MARKER_FILE).write_text(MARKER_TEXT)
    (old / "metrics.json").write_text('{"from": "the killed run"}\n')
    succeeds(inputs.fit_free(*RANDOM), capsys, [inputs.model, inputs.glue])
    assert not old.exists() and "from" not in metrics(inputs.out)


# -- 7. a --max_drop sweep that chose nothing ------------------------------------------------------------------------


def test_a_sweep_that_chose_nothing_writes_its_reports_and_exits_3(inputs, capsys, caplog):
    """Every swept point lowers the selection Pearson (by about 0.002): with max_drop 0 none is chosen. The run
    finished but has no model to give: its reports are written, and exit code 3 says so (it was 0)."""
    selection = inputs.data_file("selection.tsv", (inputs.glue / "stsb" / "dev.tsv").read_bytes())
    args = inputs.fit_free(*RANDOM, "--data.task", "stsb", "--reconstruct", "none", "--sparsity", "0.5,0.9",
                           "--max_drop", "0", "--data.selection_file", str(selection))  # fmt: skip
    before = digest(inputs.model, inputs.glue, selection)
    code, _, err = run_cli(args, capsys)
    assert code == 3, err
    assert "lightning-prune: error:" not in err and digest(inputs.model, inputs.glue, selection) == before
    summary = metrics(inputs.out)
    dense = summary["selection"]["dense_metrics"]["pearson"]
    assert all(point["selection_metrics"]["pearson"] < dense and not point["within_drop"] for point in summary["sweep"])
    assert summary["pruned_metrics"] is None and not (inputs.out / "model").exists()
    assert (inputs.out / "sweep.csv").is_file() and (inputs.out / "sweep.md").is_file()
    assert "swept 2 sparsities (no swept point keeps the selection pearson within 0 of the dense model)" in caplog.text


# -- 8. strict JSON; a correlation needs two examples ----------------------------------------------------------------


def _stsb_file(inputs: Inputs, scores: list[str]) -> Path:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = "".join(f"{i}\tmain\tf\t2012\t{i}\ts\ts\tgood film {i}\tfine film\t{s}\n" for i, s in enumerate(scores))
    return inputs.data_file("stsb.tsv", (header + rows).encode())


def _strict(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_correlation_that_is_undefined_is_written_as_null_in_strict_json(inputs, capsys):
    """Every gold score alike: Pearson's r is NaN, which JSON has no word for (the file held a bare NaN)."""
    eval_file = _stsb_file(inputs, ["3.0", "3.0", "3.0"])
    result = inputs.root / "result.json"
    args = inputs.evaluate("--data.task", "stsb", "--data.eval_file", str(eval_file), "--output_file", str(result))
    succeeds(args, capsys, [inputs.model, inputs.glue, eval_file])
    written = _strict(result.read_text())
    assert set(written["null_because_not_finite"]) == {"metrics.pearson"} and written["metrics"]["pearson"] is None


@pytest.mark.parametrize("what", ["eval", "selection"])
def test_a_single_regression_example_to_measure_on_is_one_line(inputs, capsys, what):
    one = _stsb_file(inputs, ["3.0"])
    given = (
        ["--data.eval_file", str(one)] if what == "eval" else ["--max_drop", "0.1", "--data.selection_file", str(one)]
    )
    args = inputs.fit_free("--data.task", "stsb", *given)
    message = f"1 {what} example(s): task stsb's pearson is a correlation, undefined on fewer than 2 examples"
    assert_refused(args, capsys, message, [inputs.model, inputs.glue, one], absent=inputs.out)


# -- 9. a trainer limit on calibration is reported as what the statistics saw -------------------------------------


def test_limit_predict_batches_counts_the_calibration_examples_really_seen(inputs, capsys, caplog):
    args = inputs.fit_free("--trainer.limit_predict_batches", "1", "--reconstruct", "bias", *RANDOM)
    succeeds(args, capsys, [inputs.model, inputs.glue])
    assert metrics(inputs.out)["calibration_examples"] == 4  # one batch of 4, of the 48 drawn
    assert "reconstruction statistics from 4 examples" in caplog.text


# -- 10. messages that pointed the wrong way -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kept", "shown"), [([0, 1, 99], "from 0 to 99"), ([-1, 0, 1], "from -1 to "), ([0, 0, 1], "from 0 to ")],
    ids=["out of range", "negative", "repeated"],
)  # fmt: skip
def test_a_plan_with_indices_that_do_not_fit_is_damaged_not_anothers(inputs, capsys, kept, shown):
    run = inputs.root / "pruned"
    succeeds(inputs.fit_free(*RANDOM, "--scope", "global", "--output_dir", str(run)), capsys, [inputs.model])
    plan_file = run / "model" / "pruning_plan.json"
    plan = json.loads(plan_file.read_text())
    layer = next(entry for entry in plan["layers"] if len(entry["kept"]) < entry["dense_size"])
    layer["kept"] = kept + layer["kept"][len(kept) :]
    plan_file.write_text(json.dumps(plan))
    args = inputs.evaluate("--model.path", str(run / "model"))
    line = assert_refused(args, capsys, "the plan is damaged; prune again", [run, inputs.glue])
    assert shown in line and "belongs to another model" not in line


@pytest.mark.parametrize("device", ["FIFO", "/dev/zero"])
def test_a_data_file_that_is_not_a_regular_file_is_one_line(inputs, capsys, device):
    """Reading a pipe waited forever; /dev/zero filled the memory."""
    path = Path("/dev/zero") if device == "/dev/zero" else inputs.root / "pipe.tsv"
    if device == "FIFO":
        os.mkfifo(path)
    args = inputs.fit_free("--data.score_file", str(path))
    assert_refused(args, capsys, f"score_file {path} is not a regular file", [inputs.model, inputs.glue], inputs.out)


def test_a_lora_adapter_of_another_shape_says_size_mismatch(llama_dir, glue_dir, tmp_path, capsys):
    from test_lora import _reshape_first, _rewrite_weights, make_adapter

    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    _rewrite_weights(adapter, _reshape_first)
    out = tmp_path / "run"
    args = fit_free_args(llama_dir, glue_dir, out, "--model.adapter", str(adapter))
    line = assert_refused(args, capsys, "does not fit the model", [adapter, llama_dir, glue_dir], absent=out)
    assert "(size mismatch for " in line


def test_an_offline_run_with_an_adapter_of_a_hub_model_prints_no_hub_warning(llama_dir, glue_dir, tmp_path, capsys,
                                                                             monkeypatch, recwarn):  # fmt: skip
    """The adapter names its base by hub id; offline, peft warned it could not fetch that model's config."""
    from test_lora import make_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "someone/tiny-llama"}))
    result = tmp_path / "result.json"
    args = ["evaluate", "--model.path", str(llama_dir), "--model.adapter", str(adapter), "--data.task", "sst2",
            "--data.data_dir", str(glue_dir), "--data.eval_examples", "4", "--output_file", str(result),
            *QUIET]  # fmt: skip
    succeeds(args, capsys, [adapter, llama_dir, glue_dir])
    hub = [str(w.message) for w in recwarn if "someone/tiny-llama" in str(w.message)]
    assert hub == [] and result.is_file()


def test_an_error_after_the_seed_is_set_is_the_only_line(inputs):
    """Lightning's "Seed set to 0" came before the error line; the whole of stderr is now that one line."""
    (inputs.model / "model.safetensors").write_bytes(b"\0" * 64)
    before = digest(inputs.model, inputs.glue)
    run = subprocess.run([sys.executable, "-m", "lightning_prune", *inputs.fit_free()], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [one_error_line(run.stderr)] and "Seed set to" not in run.stderr + run.stdout
    assert digest(inputs.model, inputs.glue) == before and not inputs.out.exists()
