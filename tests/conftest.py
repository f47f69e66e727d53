from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest

from lightning_prune.testing import build_bert_with_heads, build_causal_lm, build_t5, write_glue_dir

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue_dir(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return build_bert_with_heads(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def t5_gated_dir(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5gated"), gated=True)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(params=["bert", "t5", "t5_gated", "llama"])
def model_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def fit_free_args(model_dir: Path, glue_dir: Path, out: Path, *extra: str) -> list[str]:
    """A small attribution run on a tiny model; later options in ``extra`` override earlier ones."""
    return [
        "fit-free", "--model.path", str(model_dir), "--data.task", "sst2", "--data.data_dir", str(glue_dir),
        "--data.batch_size", "8", "--scorer", "attribution", "--scorer_options", '{"steps": 3}', "--sparsity", "0.5",
        "--output_dir", str(out), "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def one_error_line(err: str) -> str:
    """The single ``lightning-prune: error:`` line of ``err`` (there must be exactly one)."""
    lines = [line for line in err.splitlines() if line.startswith("lightning-prune: error:")]
    assert len(lines) == 1, err
    return lines[0]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``lightning-prune`` in-process: exit code, stdout, stderr."""
    from lightning_prune.entry import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under each path (and of the path's absence), keyed by path."""
    hashes = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            hashes[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
        if not root.exists():
            hashes[str(root)] = "missing"
    return hashes


def install_plugin(root: Path, distribution: str, entry_points: str, module: str, source: str) -> Path:
    """A site folder holding ``distribution`` 1.0 (its ``entry_points.txt`` text) and ``module``'s ``source``:
    a third-party plugin as pip would install it, for ``sys.path`` or ``PYTHONPATH``."""
    site = root / "site"
    dist_info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(entry_points)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


def env_with(site: Path) -> dict[str, str]:
    """The environment of a subprocess that imports from ``site`` first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
