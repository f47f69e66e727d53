"""``lightning-prune export`` and ``fit-free --export_gguf``: the GGUF files they write (architecture, shapes, the
tokenizer, the mark that lets ``--overwrite`` replace only its own files), and every bad request refused with one
line before any work, inputs untouched. What llama.cpp makes of the files: ``test_export_gguf_llamacpp.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_lora import make_adapter

from conftest import digest, fit_free_args, one_error_line, run_cli

gguf = pytest.importorskip("gguf")

QUIET = ["--trainer.enable_progress_bar", "false"]


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            fields[name] = bytes(field.parts[field.data[0]]).decode()
        elif field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            fields[name] = field.parts[field.data[0]].tolist()[0]
        else:
            fields[name] = [field.parts[i].tolist()[0] for i in field.data] if len(field.data) < 64 else field.data
    return {**fields, "tensors": {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}}


def test_a_dense_decoder_is_exported_with_its_tokenizer(llama_dir, tmp_path, capsys):
    out = tmp_path / "dense.gguf"
    code, stdout, err = run_cli(["export", "--model.path", str(llama_dir), "--output_file", str(out)], capsys)
    assert code == 0, err
    fields = _fields(out)
    assert fields["general.architecture"] == "llama" and fields["llama.feed_forward_length"] == 48
    assert fields["tokenizer.ggml.model"] == "gpt2" and "lightning_prune.exported_by" in fields
    assert "wrote" in stdout and "llama" in stdout


def test_uneven_widths_become_deci_and_the_adapter_is_merged(llama_dir, glue_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = fit_free_args(llama_dir, glue_dir, run, "--scope", "global", "--sparsity", "0.6", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    widths = [layer["kept"] for layer in json.loads((run / "model" / "pruning_plan.json").read_text())["layers"]]
    assert len({len(kept) for kept in widths}) > 1  # the global ranking gave uneven widths
    out = tmp_path / "pruned.gguf"
    code, _, err = run_cli(["export", "--model.path", str(run / "model"), "--output_file", str(out)], capsys)
    assert code == 0, err
    fields = _fields(out)
    assert fields["general.architecture"] == "deci"
    assert fields["deci.feed_forward_length"] == [len(kept) for kept in widths]
    adapter = make_adapter(llama_dir, "llama", tmp_path / "adapter")
    merged = tmp_path / "merged.gguf"
    args = ["export", "--model.path", str(llama_dir), "--model.adapter", str(adapter), "--output_file", str(merged)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert gguf.GGUFReader(str(merged)).tensors[0].data.tobytes() != gguf.GGUFReader(str(out)).tensors[0].data.tobytes()


def test_fit_free_writes_model_gguf_beside_the_model(llama_dir, glue_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(fit_free_args(llama_dir, glue_dir, run, "--export_gguf", "q8_0", *QUIET), capsys)
    assert code == 0, err
    saved = json.loads((run / "metrics.json").read_text())["saved_models"]["model"]["gguf"]
    assert saved["file"] == "model.gguf" and saved["dtype"] == "q8_0" and (run / "model.gguf").is_file()
    assert _fields(run / "model.gguf")["llama.feed_forward_length"] == 24


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("encoder", "bert models have no GGUF export"),
        ("exists", "exists: choose another file"),
        ("not ours", "was not exported by lightning-prune"),
        ("input", "is the model folder"),
        ("suffix", "does not end in .gguf"),
        ("dtype", "dtype"),
    ],
)
def test_bad_exports_are_one_line(case, message, llama_dir, bert_dir, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    args = ["export", "--model.path", str(llama_dir), "--output_file", str(out)]
    if case == "encoder":
        args[2] = str(bert_dir)
    elif case == "exists":
        out.write_bytes(b"mine")
    elif case == "not ours":
        out.write_bytes(b"mine")
        args += ["--overwrite", "true"]
    elif case == "input":
        args[4] = str(llama_dir)
    elif case == "suffix":
        args[4] = str(tmp_path / "out.bin")
    else:
        args += ["--dtype", "q4_0"]
    before = digest(llama_dir, bert_dir, out)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in one_error_line(err)
    assert digest(llama_dir, bert_dir, out) == before


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("bert", [], "writes decoder LMs"),
        ("word_level", [], "a WordLevel tokenizer.json is not supported"),
        ("llama", ["--save_models", "none"], "saves none"),
        ("llama", ["--sparsity", "0.3,0.5"], "saves none"),
    ],
)
def test_fit_free_export_requests_that_cannot_be_met(model, extra, message, request, glue_dir, tmp_path, capsys):
    if model == "word_level":  # a tokenizer llama.cpp cannot take converted: refused before scoring
        from lightning_prune.testing import build_causal_lm

        folder = build_causal_lm(tmp_path / "word-level", word_level=True)
    else:
        folder = request.getfixturevalue(f"{model}_dir")
    run = tmp_path / "run"
    before = digest(folder, glue_dir)
    code, _, err = run_cli(fit_free_args(folder, glue_dir, run, "--export_gguf", "f16", *extra, *QUIET), capsys)
    assert code == 2 and message in one_error_line(err) and "scoring" not in err
    assert digest(folder, glue_dir) == before and not run.exists()


def test_export_without_the_gguf_package_names_what_to_install(llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # import gguf now fails as if it were not installed
    out = tmp_path / "out.gguf"
    code, _, err = run_cli(["export", "--model.path", str(llama_dir), "--output_file", str(out)], capsys)
    assert code == 2 and "writing a .gguf file needs gguf: pip install" in one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize("damaged", ["model.safetensors", "tokenizer.json"])
def test_a_damaged_model_folder_is_one_line(damaged, llama_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(llama_dir, folder)
    data = (folder / damaged).read_bytes()
    (folder / damaged).write_bytes(data[: len(data) // 3])
    out = tmp_path / "out.gguf"
    code, _, err = run_cli(["export", "--model.path", str(folder), "--output_file", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and "damaged" in line and damaged in line, err
    assert not out.exists() and not list(tmp_path.glob("*.gguf*"))
